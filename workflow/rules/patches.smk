# The patch rows of Tables 1 and 2 (`ride patch train|evaluate`, ride/patch_experiment.py): per-pixel
# MCGSMs and PatchRIDE on the prepared patch sets, the DC model (runs/<scale>/<table>/_dc) for the
# 64-dim rates. Which rows are patch rows, their configs and files: ride.experiments.
#
#   snakemake --cores all results/smoke/table1.csv --config scale=smoke

PATCH_TABLES = [t for t in TABLES if any(E.is_patch_variant(config, t, v) for v in E.table_variants(config, t))]
PATCH_VARIANTS = sorted({v for t in PATCH_TABLES for v in E.table_variants(config, t) if E.is_patch_variant(config, t, v)})
PATCH_WILDCARDS = {"table": "|".join(PATCH_TABLES) or "(?!)", "variant": "|".join(PATCH_VARIANTS) or "(?!)"}


ruleorder: patch_config > model_config
ruleorder: patch_train > train
ruleorder: patch_evaluate > evaluate


localrules:
    patch_config,
    patch_dc_config,


rule patch_config:
    """The `ride patch train --config` file of a patch row at a scale."""
    output:
        run_file("config.json"),
    wildcard_constraints:
        **PATCH_WILDCARDS,
    params:
        cfg=lambda wc: E.patch_train_config(config, wc.scale, wc.table, wc.variant),
    log:
        "logs/{scale}/{table}/model_config/{variant}.log",
    conda:
        ENV
    script:
        "../scripts/write_json.py"


rule patch_dc_config:
    output:
        f"{E.run_dir('{scale}', '{table}', '_dc')}/config.json",
    wildcard_constraints:
        table=PATCH_WILDCARDS["table"],
    params:
        cfg=lambda wc: E.dc_train_config(config, wc.scale, wc.table),
    log:
        "logs/{scale}/{table}/model_config/_dc.log",
    conda:
        ENV
    script:
        "../scripts/write_json.py"


rule patch_train:
    """Fit one patch model on the training patches (early stopping on the validation split), with
    the run's train_seed as `ride train` gets it. As for `train`, checkpoint.pt (PatchRIDE only) is
    not an output: an interrupted job keeps it and --resume continues it when the DAG is run again."""
    input:
        data=table_dataset("train", kind="patches"),
        checksum=table_dataset("train", ".sha256", kind="patches"),
        valid=lambda wc: E.patch_valid_file(config, wc.scale, wc.table) or [],
        cfg=run_file("config.json"),
    output:
        model=run_file("model.pt"),
        log_json=run_file("train.json"),
    wildcard_constraints:
        **PATCH_WILDCARDS,
    params:
        out_dir=lambda wc: E.run_dir(wc.scale, wc.table, wc.variant),
        valid=lambda wc: E.patch_train_args(config, wc.scale, wc.table),
        device=config["device"],
        seed=config["train_seed"],
    log:
        "logs/{scale}/{table}/train/{variant}.log",
    benchmark:
        benchmark_file("train")
    threads: config["threads"]["train"]
    resources:
        runtime=resource("train_runtime"),
        mem_mb=resource("mem_mb"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " ride patch train --config {input.cfg} --data {input.data} {params.valid} --out-dir {params.out_dir}"
        " --resume --device {params.device} --seed {params.seed} --no-progress >> {log} 2>&1"


use rule patch_train as patch_dc_train with:
    input:
        data=table_dataset("train", kind="patches"),
        checksum=table_dataset("train", ".sha256", kind="patches"),
        valid=lambda wc: E.patch_valid_file(config, wc.scale, wc.table) or [],
        cfg=f"{E.run_dir('{scale}', '{table}', '_dc')}/config.json",
    output:
        model=f"{E.run_dir('{scale}', '{table}', '_dc')}/model.pt",
        log_json=f"{E.run_dir('{scale}', '{table}', '_dc')}/train.json",
    wildcard_constraints:
        table=PATCH_WILDCARDS["table"],
    params:
        out_dir=lambda wc: E.run_dir(wc.scale, wc.table, "_dc"),
        valid=lambda wc: E.patch_train_args(config, wc.scale, wc.table),
        device=config["device"],
        seed=config["train_seed"],
    log:
        "logs/{scale}/{table}/train/_dc.log",
    benchmark:
        "logs/{scale}/{table}/benchmarks/train__dc.tsv"


rule patch_evaluate:
    """63-dim log-likelihood [nat] and the rate [bit/px] on the test patches (--ensemble: EoMCGSM, EoRIDE)."""
    input:
        model=model_input,
        data=table_dataset("test", kind="patches"),
        checksum=table_dataset("test", ".sha256", kind="patches"),
        dc=lambda wc: E.dc_model_file(config, wc.scale, wc.table) or [],
    output:
        run_file("eval.json"),
    wildcard_constraints:
        **PATCH_WILDCARDS,
    params:
        args=lambda wc: E.patch_eval_args(config, wc.scale, wc.table, wc.variant),
        device=config["device"],
    log:
        "logs/{scale}/{table}/evaluate/{variant}.log",
    benchmark:
        benchmark_file("evaluate")
    threads: config["threads"]["evaluate"]
    resources:
        runtime=resource("evaluate_runtime"),
        mem_mb=resource("mem_mb"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " ride patch evaluate --model {input.model} --data {input.data} --out {output}"
        " {params.args} --device {params.device} > {log} 2>&1"


rule patch_evaluate_maf:
    """A patch row's model on MAF's 63-dim BSDS300 test patches (the modern anchors' data; MAF's
    set has no DC, so its 64-dim rate uses the paper's l_DC). Not a table row: MAF's archive is
    downloaded, and Table 1 at the quick scale stays offline.
    snakemake --cores all runs/paper/table1/mcgsm128_63/eval_maf.json --config scale=paper"""
    input:
        model=run_file("model.pt"),
        data=E.dataset_file("{scale}", "maf", "test", "patches"),
        checksum=E.dataset_file("{scale}", "maf", "test", "patches") + ".sha256",
    output:
        run_file("eval_maf.json"),
    wildcard_constraints:
        **PATCH_WILDCARDS,
    params:
        device=config["device"],
    log:
        "logs/{scale}/{table}/evaluate/{variant}_maf.log",
    threads: config["threads"]["evaluate"]
    resources:
        runtime=resource("evaluate_runtime"),
        mem_mb=resource("mem_mb"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " ride patch evaluate --model {input.model} --data {input.data} --out {output}"
        " --device {params.device} > {log} 2>&1"
