rule model_config:
    """The `ride train --config` file of a variant at a scale (model + training options)."""
    output:
        "runs/{scale}/{variant}/config.json",
    params:
        cfg=lambda wc: T.train_config(config, wc.scale, wc.variant),
    log:
        "logs/{scale}/model_config/{variant}.log",
    conda:
        ENV
    script:
        "../scripts/write_json.py"


rule train:
    """Train one model. checkpoint.pt is deliberately not an output: a failed or interrupted job
    keeps it, and `--resume` continues from it when the DAG is run again. `ride.tables resume`
    drops a checkpoint written for another config/data/seed before, and deletes the checkpoint
    after a successful run (so a deliberate re-run starts afresh)."""
    input:
        data=dataset("{scale}", "train"),
        checksum=dataset("{scale}", "train") + ".sha256",
        cfg="runs/{scale}/{variant}/config.json",
    output:
        model="runs/{scale}/{variant}/model.pt",
        log_json="runs/{scale}/{variant}/train.json",
    params:
        out_dir=lambda wc: run_dir(wc.scale, wc.variant),
        device=config["device"],
        seed=config["train_seed"],
    log:
        "logs/{scale}/train/{variant}.log",
    benchmark:
        "logs/{scale}/benchmarks/train_{variant}.tsv"
    threads: config["threads"]["train"]
    resources:
        runtime=runtime("train"),
        mem_mb=mem_mb,
    conda:
        ENV
    shell:
        "python -m ride.tables resume {params.out_dir} --train-config {input.cfg}"
        " --checksum {input.checksum} --seed {params.seed} >> {log} 2>&1"
        " && OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " ride train --config {input.cfg} --data {input.data} --out-dir {params.out_dir}"
        " --resume --device {params.device} --seed {params.seed} >> {log} 2>&1"
        " && python -m ride.tables resume {params.out_dir} --finish --train-config {input.cfg}"
        " --checksum {input.checksum} --seed {params.seed} >> {log} 2>&1"


rule evaluate:
    """Average log-likelihood rate on the test tiles (--ensemble for EoRIDE)."""
    input:
        model=model_input,
        data=dataset("{scale}", "test"),
        checksum=dataset("{scale}", "test") + ".sha256",
    output:
        "runs/{scale}/{variant}/eval.json",
    params:
        args=eval_args,
        device=config["device"],
    log:
        "logs/{scale}/evaluate/{variant}.log",
    benchmark:
        "logs/{scale}/benchmarks/evaluate_{variant}.tsv"
    threads: config["threads"]["evaluate"]
    resources:
        runtime=runtime("evaluate"),
        mem_mb=mem_mb,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " ride evaluate --model {input.model} --data {input.data} --out {output}"
        " {params.args} --device {params.device} > {log} 2>&1"
