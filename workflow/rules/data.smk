rule deadleaves:
    """The dead-leaves data set of a scale (ride.deadleaves); the last num_test images are the test set."""
    output:
        train=dataset("{scale}", "train"),
        train_sum=dataset("{scale}", "train") + ".sha256",
        test=dataset("{scale}", "test"),
        test_sum=dataset("{scale}", "test") + ".sha256",
    params:
        num_images=lambda wc: T.dataset_params(config, wc.scale)["num_images"],
        num_test=lambda wc: T.dataset_params(config, wc.scale)["num_test"],
        size=lambda wc: T.dataset_params(config, wc.scale)["size"],
        seed=lambda wc: T.dataset_params(config, wc.scale)["seed"],
        generator=generator_args,
    log:
        "logs/{scale}/deadleaves.log",
    conda:
        ENV
    shell:
        "ride deadleaves --out-train {output.train} --out-test {output.test}"
        " --num-images {params.num_images} --num-test {params.num_test} --size {params.size}"
        " --seed {params.seed} {params.generator} > {log} 2>&1"
