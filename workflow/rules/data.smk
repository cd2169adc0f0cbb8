rule deadleaves:
    """The dead-leaves data set of a scale (ride.deadleaves); the last num_test images are the test set."""
    output:
        train=E.dataset_file("{scale}", "deadleaves", "train"),
        train_sum=f"{E.dataset_file('{scale}', 'deadleaves', 'train')}.sha256",
        test=E.dataset_file("{scale}", "deadleaves", "test"),
        test_sum=f"{E.dataset_file('{scale}', 'deadleaves', 'test')}.sha256",
    params:
        num_images=lambda wc: E.dataset_params(config, wc.scale, "deadleaves")["num_images"],
        num_test=lambda wc: E.dataset_params(config, wc.scale, "deadleaves")["num_test"],
        size=lambda wc: E.dataset_params(config, wc.scale, "deadleaves")["size"],
        seed=lambda wc: E.dataset_params(config, wc.scale, "deadleaves")["seed"],
        generator=lambda wc: " ".join(
            f"--param {k}={v}" for k, v in E.dataset_params(config, wc.scale, "deadleaves")["generator"].items()
        ),
    log:
        "logs/{scale}/deadleaves.log",
    conda:
        ENV
    shell:
        "ride deadleaves --out-train {output.train} --out-test {output.test}"
        " --num-images {params.num_images} --num-test {params.num_test} --size {params.size}"
        " --seed {params.seed} {params.generator} > {log} 2>&1"
