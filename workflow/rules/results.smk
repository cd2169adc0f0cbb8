localrules:
    model_config,
    table,
    figure,
    configured_scale,
    check_table3,
    check_committed,


rule table:
    """A table of the paper at a scale beside the paper's values, with verdicts and provenance."""
    input:
        unpack(table_inputs),
    output:
        csv=report(
            E.result_file("{scale}", "{table}", ".csv"),
            caption="../report/table.rst",
            category="Tables",
            labels={"scale": "{scale}", "file": "{table}.csv"},
        ),
        md=E.result_file("{scale}", "{table}", ".md"),
        html=report(
            E.result_file("{scale}", "{table}", ".html"),
            caption="../report/table.rst",
            category="Tables",
            labels={"scale": "{scale}", "file": "{table}.html"},
        ),
        provenance=E.result_file("{scale}", "{table}", ".provenance.json"),
    params:
        config=lambda wc: E.table_config(config, wc.scale, wc.table),
    log:
        "logs/{scale}/{table}/table.log",
    conda:
        ENV
    script:
        "../scripts/table.py"


rule figure:
    """A neighbourhood-width figure (Figure 2): each model's bits/px against the width."""
    input:
        unpack(figure_inputs),
    output:
        csv=E.result_file("{scale}", "{figure}", ".csv"),
        png=report(
            E.result_file("{scale}", "{figure}", ".png"),
            caption="../report/figure.rst",
            category="Figures",
            labels={"scale": "{scale}", "file": "{figure}.png"},
        ),
    params:
        config=lambda wc: E.table_config(config, wc.scale, E.figure_spec(config, wc.figure)["table"]),
    log:
        "logs/{scale}/{figure}.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"


rule configured_scale:
    """results/<table>.* and results/<figure>.*: untracked copies of the configured scale's files
    (every row names its scale). The committed results live in results/<scale>/ only. One job
    per file, so that `snakemake results/table3.csv` builds Table 3 and nothing else."""
    input:
        lambda wc: copy_source(wc.file),
    output:
        "results/{file}",
    wildcard_constraints:
        file=copy_pattern(),
    log:
        f"logs/{SCALE}/configured_scale/" + "{file}.log",
    conda:
        ENV
    script:
        "../scripts/copy_files.py"


rule check_table3:
    """Rebuild Table 3 of the configured scale if needed, then exit 1 naming every row outside
    its tolerance (paper) or expectation (other scales)."""
    input:
        table=E.result_file(SCALE, "table3", ".csv"),
        config="config/config.yaml",
        runs=[v for k, v in table_files(SCALE, "table3").items() if k.startswith(("eval_", "model_", "train_"))],
    log:
        f"logs/{SCALE}/check_table3.log",
    conda:
        ENV
    shell:
        "ride table check --config {input.config} {input.table} 2>&1 | tee {log}"


rule check_committed:
    """Judge the committed tables (results/<scale>/<table>.csv) with today's config, in seconds.
    Exits 1 when a row MISSes or a table has nothing to judge (the all-pending paper table says
    so by name): an unjudged table is not a pass. The tables are deliberately not declared
    inputs: as inputs Snakemake would rebuild them (and retrain their models) on a fresh clone
    before checking anything."""
    input:
        config="config/config.yaml",
    params:
        tables=lambda wc: sorted(
            str(p) for s in E.SCALES for t in TABLES for p in [Path(E.result_file(s, t, ".csv"))] if p.exists()
        ),
    log:
        "logs/check_committed.log",
    conda:
        ENV
    shell:
        "ride table check --config {input.config} {params.tables} 2>&1 | tee {log}"
