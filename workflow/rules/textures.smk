# Figures 3 and 4 (config/textures.yaml, key textures): texture synthesis and inpainting.
#
#   snakemake --cores all results/quick/figure3.png results/quick/figure4.png   # stand-in textures
#   snakemake --cores all all_textures --config scale=paper                     # real Brodatz
#
# Per texture: `ride texture train` (MCGSM and RIDE on the same 15 regions), `ride evaluate` on
# the test region, `ride sample`, `ride inpaint` (RIDE); `ride texture figure3|figure4` draw them.

from ride import textures as TX

validate(config["textures"], "../schemas/textures.schema.yaml")
try:
    TX.check(config["textures"])
except TX.ConfigError as err:
    raise ValueError(str(err)) from None

TEXTURES = config["textures"]
TEXTURES_CONFIG = "config/textures.yaml"
TEXTURE_RUNS = "runs/{scale}/textures/{tex}/{kind}"
TEXTURE_ENV = "../envs/ride.yaml"


rule all_textures:
    """Figures 3 and 4 at the configured scale."""
    input:
        expand("results/{scale}/{name}", scale=config["scale"],
               name=["figure3.png", "figure3.csv", "figure4.png", "figure4.json"]),


rule texture_train:
    input:
        cfg=TEXTURES_CONFIG,
        data=lambda wc: TX.data_path(TEXTURES, wc.scale, wc.tex, "train"),
    output:
        model=f"{TEXTURE_RUNS}/model.pt",
        log_json=f"{TEXTURE_RUNS}/train.json",
    wildcard_constraints:
        kind="mcgsm|ride",
    params:
        out_dir=TEXTURE_RUNS,
        device=config.get("device", "auto"),
    log:
        "logs/{scale}/textures/{tex}/train_{kind}.log",
    threads: 1
    conda:
        TEXTURE_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
        " ride texture train --config {input.cfg} --scale {wildcards.scale} --kind {wildcards.kind}"
        " --data {input.data} --out-dir {params.out_dir} --resume --device {params.device} --no-progress > {log} 2>&1"


rule texture_evaluate:
    input:
        model=f"{TEXTURE_RUNS}/model.pt",
        data=lambda wc: TX.data_path(TEXTURES, wc.scale, wc.tex, "test"),
    output:
        f"{TEXTURE_RUNS}/eval.json",
    params:
        tile=lambda wc: TEXTURES[wc.scale]["evaluate"]["tile"],
    log:
        "logs/{scale}/textures/{tex}/evaluate_{kind}.log",
    threads: 1
    conda:
        TEXTURE_ENV
    shell:
        "OMP_NUM_THREADS={threads} ride evaluate --model {input.model} --data {input.data} --out {output}"
        " --tile {params.tile} --device cpu > {log} 2>&1"


rule texture_sample:
    input:
        f"{TEXTURE_RUNS}/model.pt",
    output:
        samples=f"{TEXTURE_RUNS}/samples.h5",
        checksum=f"{TEXTURE_RUNS}/samples.h5.sha256",
    params:
        s=lambda wc: TEXTURES[wc.scale]["sample"],
    log:
        "logs/{scale}/textures/{tex}/sample_{kind}.log",
    threads: 1
    conda:
        TEXTURE_ENV
    shell:
        "OMP_NUM_THREADS={threads} ride sample --model {input} --out {output.samples} --num {params.s[num]}"
        " --size {params.s[size]} {params.s[size]} --seed {params.s[seed]} --device cpu > {log} 2>&1"


rule texture_inpaint:
    input:
        model="runs/{scale}/textures/{tex}/ride/model.pt",
        data=lambda wc: TX.data_path(TEXTURES, wc.scale, wc.tex, "test"),
    output:
        image="runs/{scale}/textures/{tex}/ride/inpainted.h5",
        record="runs/{scale}/textures/{tex}/ride/inpaint.json",
    params:
        hole=lambda wc: TX.hole_args(TEXTURES[wc.scale]["source"], TEXTURES[wc.scale]["inpaint"]["hole"]),
        p=lambda wc: TEXTURES[wc.scale]["inpaint"],
    log:
        "logs/{scale}/textures/{tex}/inpaint.log",
    threads: 1
    conda:
        TEXTURE_ENV
    shell:
        "OMP_NUM_THREADS={threads} ride inpaint --model {input.model} --image {input.data} --index 0"
        " --hole {params.hole} --sweeps {params.p[sweeps]} --seed {params.p[seed]} --out {output.image}"
        " --json {output.record} --resume --device cpu --no-progress > {log} 2>&1"


rule figure3:
    """Texture | MCGSM sample | RIDE sample per texture; test-region rates of both in the CSV."""
    input:
        train=lambda wc: [TX.data_path(TEXTURES, wc.scale, t, "train") for t in TEXTURES[wc.scale]["textures"]],
        test=lambda wc: [TX.data_path(TEXTURES, wc.scale, t, "test") for t in TEXTURES[wc.scale]["textures"]],
        mcgsm_eval=lambda wc: TX.run_files(TEXTURES, wc.scale, "eval.json", "mcgsm"),
        ride_eval=lambda wc: TX.run_files(TEXTURES, wc.scale, "eval.json", "ride"),
        mcgsm_sample=lambda wc: TX.run_files(TEXTURES, wc.scale, "samples.h5", "mcgsm"),
        ride_sample=lambda wc: TX.run_files(TEXTURES, wc.scale, "samples.h5", "ride"),
    output:
        png="results/{scale}/figure3.png",
        csv="results/{scale}/figure3.csv",
        provenance="results/{scale}/figure3.provenance.json",
    params:
        names=lambda wc: " ".join(TEXTURES[wc.scale]["textures"]),
        size=lambda wc: TEXTURES[wc.scale]["sample"]["size"],
    log:
        "logs/{scale}/textures/figure3.log",
    conda:
        TEXTURE_ENV
    shell:
        "ride texture figure3 --names {params.names} --train {input.train} --test {input.test}"
        " --mcgsm-eval {input.mcgsm_eval} --ride-eval {input.ride_eval} --mcgsm-sample {input.mcgsm_sample}"
        " --ride-sample {input.ride_sample} --size {params.size} --out-png {output.png} --out-csv {output.csv}"
        " > {log} 2>&1"


rule figure4:
    """Original | masked | inpainted test region per texture; the chains' summary in the JSON."""
    input:
        test=lambda wc: [TX.data_path(TEXTURES, wc.scale, t, "test") for t in TEXTURES[wc.scale]["textures"]],
        inpainted=lambda wc: TX.run_files(TEXTURES, wc.scale, "inpainted.h5"),
        record=lambda wc: TX.run_files(TEXTURES, wc.scale, "inpaint.json"),
    output:
        png="results/{scale}/figure4.png",
        json="results/{scale}/figure4.json",
    params:
        names=lambda wc: " ".join(TEXTURES[wc.scale]["textures"]),
    log:
        "logs/{scale}/textures/figure4.log",
    conda:
        TEXTURE_ENV
    shell:
        "ride texture figure4 --names {params.names} --test {input.test} --inpainted {input.inpainted}"
        " --record {input.record} --out-png {output.png} --out-json {output.json} > {log} 2>&1"
