# The real data sets (config/datasets.yaml, key data_sources): download, then prepare per scale.
#
#   snakemake --cores all all_datasets --config scale=paper      # every data set at one scale
#   snakemake --cores all datasets/bsds300/paper/patches_train.h5  # one file (and what it needs)
#
# Paths, download arguments and cross-checks: ride.datasets.sources (tested there).

from ride.datasets import sources as DS

validate(config["data_sources"], "../schemas/datasets.schema.yaml")
try:
    DS.check(config["data_sources"])
except DS.SourceConfigError as err:
    raise ValueError(f"config/datasets.yaml: {err}") from None

SRC = config["data_sources"]
DATA_ENV = "../envs/ride.yaml"
SPLITS3 = ("train", "valid", "test")


wildcard_constraints:
    texture="D[0-9]+",
    image="imk[0-9]{5}",


rule all_datasets:
    """Every real data set (and the photos stand-in) at the configured scale."""
    input:
        [f for files in DS.prepared_files(SRC, config["scale"]).values() for f in files],


rule download_bsds300:
    output:
        DS.download_path(SRC, "bsds300"),
    params:
        args=DS.download_args(SRC, "bsds300"),
    log:
        "logs/datasets/download_bsds300.log",
    conda:
        DATA_ENV
    shell:
        "ride download {params.args} --out {output} > {log} 2>&1"


rule download_maf:
    output:
        DS.download_path(SRC, "maf"),
    params:
        args=DS.download_args(SRC, "maf"),
    log:
        "logs/datasets/download_maf.log",
    conda:
        DATA_ENV
    shell:
        "ride download {params.args} --out {output} > {log} 2>&1"


rule download_vanhateren:
    output:
        DS.download_path(SRC, "vanhateren", "{image}"),
    params:
        args=lambda wc: DS.download_args(SRC, "vanhateren", wc.image),
    log:
        "logs/datasets/download_vanhateren_{image}.log",
    conda:
        DATA_ENV
    shell:
        "ride download {params.args} --out {output} > {log} 2>&1"


rule download_brodatz:
    output:
        DS.download_path(SRC, "brodatz", "{texture}"),
    params:
        args=lambda wc: DS.download_args(SRC, "brodatz", wc.texture),
    log:
        "logs/datasets/download_brodatz_{texture}.log",
    conda:
        DATA_ENV
    shell:
        "ride download {params.args} --out {output} > {log} 2>&1"


rule prepare_bsds300:
    """BSDS300: whole images and 8x8 patch sets (DC removed, 63 dims) per split."""
    input:
        DS.bsds300_source(SRC),
    output:
        DS.split_outputs("bsds300", ("images", "patches"), SPLITS3),
    params:
        patches=lambda wc: DS.counts_arg(SRC["bsds300"]["patches"][wc.scale]),
        b=SRC["bsds300"],
    log:
        "logs/{scale}/datasets/bsds300.log",
    conda:
        DATA_ENV
    shell:
        "ride prepare bsds300 --source {input} --out-dir datasets/bsds300/{wildcards.scale}"
        " --patches {params.patches} --seed {params.b[seed]} --valid-images {params.b[valid_images]}"
        " --patch-size {params.b[patch_size]} > {log} 2>&1"


rule prepare_photos:
    """The offline stand-in for BSDS300: photographs shipped inside installed packages."""
    output:
        DS.split_outputs("photos", ("images", "patches"), SPLITS3),
    params:
        patches=lambda wc: DS.counts_arg(SRC["photos"]["patches"][wc.scale]),
        p=SRC["photos"],
        names=" ".join(f"--{s} {' '.join(SRC['photos'][s])}" for s in SPLITS3),
    log:
        "logs/{scale}/datasets/photos.log",
    conda:
        DATA_ENV
    shell:
        "ride prepare photos --out-dir datasets/photos/{wildcards.scale} {params.names}"
        " --crop {params.p[crop][0]} {params.p[crop][1]} --patch-size {params.p[patch_size]}"
        " --patches {params.patches} --seed {params.p[seed]} > {log} 2>&1"


rule prepare_photos_log:
    """The offline stand-in for van Hateren: the same photographs in van Hateren's log protocol."""
    output:
        DS.split_outputs("photos_log", ("images", "patches"), ("train", "test")),
    params:
        patches=lambda wc: DS.counts_arg(SRC["photos_log"]["patches"][wc.scale]),
        p=SRC["photos_log"],
        names=" ".join(f"--{s} {' '.join(SRC['photos_log'][s])}" for s in ("train", "test")),
    log:
        "logs/{scale}/datasets/photos_log.log",
    conda:
        DATA_ENV
    shell:
        "ride prepare photos --protocol vanhateren --out-dir datasets/photos_log/{wildcards.scale} {params.names}"
        " --crop {params.p[crop][0]} {params.p[crop][1]} --patch-size {params.p[patch_size]}"
        " --patches {params.patches} --seed {params.p[seed]} > {log} 2>&1"


rule prepare_vanhateren:
    """van Hateren: log intensities, whole images and 16x16 patch sets."""
    input:
        train=lambda wc: [DS.download_path(SRC, "vanhateren", f"imk{n:05d}")
                          for n in DS.vanhateren_numbers(SRC, wc.scale)["train"]],
        test=lambda wc: [DS.download_path(SRC, "vanhateren", f"imk{n:05d}")
                         for n in DS.vanhateren_numbers(SRC, wc.scale)["test"]],
    output:
        DS.split_outputs("vanhateren", ("images", "patches"), ("train", "test")),
    params:
        patches=lambda wc: DS.counts_arg(SRC["vanhateren"]["patches"][wc.scale]),
        crop=f"--crop {' '.join(map(str, SRC['vanhateren']['crop']))}" if SRC["vanhateren"]["crop"] else "",
        v=SRC["vanhateren"],
    log:
        "logs/{scale}/datasets/vanhateren.log",
    conda:
        DATA_ENV
    shell:
        "ride prepare vanhateren --train {input.train} --test {input.test} --out-dir datasets/vanhateren/{wildcards.scale}"
        " {params.crop} --patch-size {params.v[patch_size]} --patches {params.patches} --seed {params.v[seed]} > {log} 2>&1"


rule prepare_brodatz:
    """One Brodatz texture: 15 training regions and 1 test region of 160x160."""
    input:
        DS.download_path(SRC, "brodatz", "{texture}"),
    output:
        train="datasets/brodatz/{scale}/{texture}_train.h5",
        train_sum="datasets/brodatz/{scale}/{texture}_train.h5.sha256",
        test="datasets/brodatz/{scale}/{texture}_test.h5",
        test_sum="datasets/brodatz/{scale}/{texture}_test.h5.sha256",
    params:
        seed=SRC["brodatz"]["seed"],
    log:
        "logs/{scale}/datasets/brodatz_{texture}.log",
    conda:
        DATA_ENV
    shell:
        "ride prepare brodatz --source {input} --name {wildcards.texture} --out-dir datasets/brodatz/{wildcards.scale}"
        " --seed {params.seed} > {log} 2>&1"


rule prepare_textures_standin:
    """The offline stand-in for Brodatz: a texture photograph shipped inside scikit-image, as 15 + 1 regions."""
    output:
        train="datasets/textures_standin/{scale}/{standin}_train.h5",
        train_sum="datasets/textures_standin/{scale}/{standin}_train.h5.sha256",
        test="datasets/textures_standin/{scale}/{standin}_test.h5",
        test_sum="datasets/textures_standin/{scale}/{standin}_test.h5.sha256",
    wildcard_constraints:
        standin="brick|grass|gravel",
    params:
        seed=SRC.get("textures_standin", {}).get("seed", 0),
    log:
        "logs/{scale}/datasets/textures_standin_{standin}.log",
    conda:
        DATA_ENV
    shell:
        "ride texture standin --name {wildcards.standin} --out-dir datasets/textures_standin/{wildcards.scale}"
        " --seed {params.seed} > {log} 2>&1"


rule prepare_maf:
    """MAF's BSDS300.hdf5 as 63-dim patch sets in the project's format."""
    input:
        DS.download_path(SRC, "maf"),
    output:
        DS.split_outputs("maf", ("patches",), SPLITS3),
    params:
        max_rows=lambda wc: f"--max-rows {SRC['maf']['max_rows'][wc.scale]}" if SRC["maf"]["max_rows"][wc.scale] else "",
    log:
        "logs/{scale}/datasets/maf.log",
    conda:
        DATA_ENV
    shell:
        "ride prepare maf --source {input} --out-dir datasets/maf/{wildcards.scale} {params.max_rows} > {log} 2>&1"
