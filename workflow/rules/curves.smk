# Learning curves (ride/curves.py; config `curves`): test bit/px against SGD training pixels for
# some rows of a table, each trained once more with `budget` times its scale's SGD steps.
# Not part of `all`; build with e.g.  snakemake --cores all results/quick/learning_curves.csv

from ride import curves as C

try:
    C.validate_curves(config)
except E.ConfigError as err:
    raise ValueError(f"config/config.yaml: {err}") from None


localrules:
    curve_config,
    learning_curves,


rule curve_config:
    """The `ride curve run --config` file: the row's `ride train` config plus the curve schedule."""
    output:
        C.curve_file("{scale}", "{variant}", "curve_config.json"),
    params:
        cfg=lambda wc: C.curve_config(config, wc.scale, wc.variant),
    log:
        "logs/{scale}/curves/curve_config/{variant}.log",
    conda:
        ENV
    script:
        "../scripts/write_json.py"


rule curve:
    """Train one row with the curve's budget, scoring the test tiles on the schedule. Always
    trains afresh: an interrupted curve cannot be resumed (its points would be missing)."""
    input:
        data=lambda wc: C.curve_data_file(config, wc.scale, "train"),
        checksum=lambda wc: C.curve_data_file(config, wc.scale, "train") + ".sha256",
        test=lambda wc: C.curve_data_file(config, wc.scale, "test"),
        test_checksum=lambda wc: C.curve_data_file(config, wc.scale, "test") + ".sha256",
        cfg=C.curve_file("{scale}", "{variant}", "curve_config.json"),
    output:
        curve=C.curve_file("{scale}", "{variant}"),
        model=C.curve_file("{scale}", "{variant}", "model.pt"),
        train_json=C.curve_file("{scale}", "{variant}", "train.json"),
    params:
        device=config["device"],
        seed=config["train_seed"],
    log:
        "logs/{scale}/curves/curve/{variant}.log",
    benchmark:
        "logs/{scale}/curves/benchmarks/curve_{variant}.tsv"
    threads: config["threads"]["train"]
    resources:
        # budget x the training, plus the scoring: budget + 1 times the scale's training limit
        runtime=lambda wc: int(E.resources(config, wc.scale)["train_runtime"]
                               * (C.curves_spec(config, wc.scale)["scales"][wc.scale]["budget"] + 1)),
        mem_mb=resource("mem_mb"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " ride curve run --config {input.cfg} --data {input.data} --test-data {input.test} --out {output.curve}"
        " --device {params.device} --seed {params.seed} --no-progress > {log} 2>&1"


rule learning_curves:
    """One figure and CSV of every curve of a scale (results/<scale>/learning_curves.*)."""
    input:
        lambda wc: [C.curve_file(wc.scale, v) for v in C.curve_variants(config, wc.scale)],
    output:
        csv=E.result_file("{scale}", "learning_curves", ".csv"),
        png=E.result_file("{scale}", "learning_curves", ".png"),
        provenance=E.result_file("{scale}", "learning_curves", ".provenance.json"),
    log:
        "logs/{scale}/curves/learning_curves.log",
    conda:
        ENV
    shell:
        "ride curve plot {input} --out-csv {output.csv} --out-png {output.png}"
        " --provenance {output.provenance} > {log} 2>&1"
