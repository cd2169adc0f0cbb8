rule model_config:
    """The `ride train --config` file of a variant at a scale (model + training options)."""
    output:
        run_file("config.json"),
    params:
        cfg=lambda wc: E.train_config(config, wc.scale, wc.table, wc.variant),
    log:
        "logs/{scale}/{table}/model_config/{variant}.log",
    conda:
        ENV
    script:
        "../scripts/write_json.py"


rule train:
    """Train one model. checkpoint.pt is deliberately not an output: a failed or interrupted job
    keeps it, and `ride train --resume` continues from it when the DAG is run again. The same
    command discards a checkpoint written for another config, model or data (naming the field
    that differs) and removes the checkpoint after success, so a deliberate re-run starts afresh."""
    input:
        data=table_dataset("train"),
        checksum=table_dataset("train", ".sha256"),
        cfg=run_file("config.json"),
    output:
        model=run_file("model.pt"),
        log_json=run_file("train.json"),
    params:
        out_dir=lambda wc: E.run_dir(wc.scale, wc.table, wc.variant),
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
        " ride train --config {input.cfg} --data {input.data} --out-dir {params.out_dir}"
        " --resume --device {params.device} --seed {params.seed} >> {log} 2>&1"


rule evaluate:
    """Average log-likelihood rate on the test tiles (--ensemble for EoRIDE)."""
    input:
        model=model_input,
        data=table_dataset("test"),
        checksum=table_dataset("test", ".sha256"),
    output:
        run_file("eval.json"),
    params:
        args=eval_args,
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
        " ride evaluate --model {input.model} --data {input.data} --out {output}"
        " {params.args} --device {params.device} > {log} 2>&1"
