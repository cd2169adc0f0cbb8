localrules:
    model_config,
    table3,
    figure2,
    configured_scale,
    check_table3,


rule table3:
    """Table 3 of a scale beside the paper's values, with verdicts and provenance."""
    input:
        unpack(lambda wc: {f"evaljson_{k}": v for k, v in table_evals(wc).items()}),
        unpack(lambda wc: {f"trainjson_{k}": v for k, v in table_trains(wc).items()}),
        checksum_train=dataset("{scale}", "train") + ".sha256",
        checksum_test=dataset("{scale}", "test") + ".sha256",
    output:
        csv=report(
            "results/{scale}/table3.csv",
            caption="../report/table3.rst",
            category="Table 3",
            labels={"scale": "{scale}", "file": "table3.csv"},
        ),
        md="results/{scale}/table3.md",
        html=report(
            "results/{scale}/table3.html",
            caption="../report/table3.rst",
            category="Table 3",
            labels={"scale": "{scale}", "file": "table3.html"},
        ),
        provenance="results/{scale}/provenance.json",
    params:
        config=lambda wc: T.table_config(config, wc.scale),
    log:
        "logs/{scale}/table3.log",
    conda:
        ENV
    script:
        "../scripts/table3.py"


rule figure2:
    """Figure 2: MCGSM and RIDE bits/px against the neighbourhood width."""
    input:
        unpack(figure_evals),
    output:
        csv="results/{scale}/figure2.csv",
        png=report(
            "results/{scale}/figure2.png",
            caption="../report/figure2.rst",
            category="Figure 2",
            labels={"scale": "{scale}", "file": "figure2.png"},
        ),
    params:
        config=lambda wc: T.table_config(config, wc.scale),
    log:
        "logs/{scale}/figure2.log",
    conda:
        ENV
    script:
        "../scripts/figure2.py"


rule configured_scale:
    """results/table3.* and results/figure2.* are the configured scale's files (scale in every row)."""
    input:
        [f"results/{SCALE}/table3.csv", f"results/{SCALE}/table3.md"]
        + ([f"results/{SCALE}/figure2.csv", f"results/{SCALE}/figure2.png"] if has_figure(SCALE) else []),
    output:
        ["results/table3.csv", "results/table3.md"]
        + (["results/figure2.csv", "results/figure2.png"] if has_figure(SCALE) else []),
    log:
        f"logs/{SCALE}/configured_scale.log",
    conda:
        ENV
    script:
        "../scripts/copy_files.py"


rule check_table3:
    """Exit non-zero naming every row outside its tolerance (paper) or expectation (other scales)."""
    input:
        f"results/{SCALE}/table3.csv",
    log:
        f"logs/{SCALE}/check_table3.log",
    conda:
        ENV
    shell:
        "python -m ride.tables check {input} 2>&1 | tee {log}"
