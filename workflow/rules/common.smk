# Helpers: which jobs exist at which scale. The logic lives in ride.tables (tested there).

from ride import tables as T

try:
    T.validate_config(config)
except T.ConfigError as err:
    raise ValueError(f"config.yaml: {err}") from None

SCALE = config["scale"]
ENV = "../envs/ride.yaml"


wildcard_constraints:
    scale="|".join(T.SCALES),
    variant="[a-z][a-z0-9_]*",


def run_dir(scale, variant):
    return f"runs/{scale}/{variant}"


def dataset(scale, part):
    return f"datasets/deadleaves/{scale}/{part}.h5"


def eval_json(scale, variant):
    return f"{run_dir(scale, variant)}/eval.json"


def table_evals(wildcards):
    return {v: eval_json(wildcards.scale, v) for v in T.evaluated_variants(config, wildcards.scale)}


def table_trains(wildcards):
    return {v: f"{run_dir(wildcards.scale, v)}/train.json" for v in T.trained_variants(config, wildcards.scale)}


def figure_evals(wildcards):
    return {name: eval_json(wildcards.scale, name) for _, _, name in T.figure_variants(config, wildcards.scale)}


def has_figure(scale):
    return bool(T.scale_of(config, scale).get("figure2"))


def scale_targets(scale):
    out = [
        f"results/{scale}/table3.csv",
        f"results/{scale}/table3.md",
        f"results/{scale}/table3.html",
        f"results/{scale}/provenance.json",
    ]
    if has_figure(scale):
        out += [f"results/{scale}/figure2.csv", f"results/{scale}/figure2.png"]
    return out


def all_targets():
    out = scale_targets(SCALE) + ["results/table3.csv", "results/table3.md"]
    if has_figure(SCALE):
        out += ["results/figure2.csv", "results/figure2.png"]
    return out


def runtime(kind):
    def get(wildcards):
        res = T.scale_of(config, wildcards.scale).get("resources") or {}
        return int(res.get(f"{kind}_runtime", 60))

    return get


def mem_mb(wildcards):
    res = T.scale_of(config, wildcards.scale).get("resources") or {}
    return int(res.get("mem_mb", 4000))


def generator_args(wildcards):
    gen = T.dataset_params(config, wildcards.scale)["generator"]
    return " ".join(f"--param {k}={v}" for k, v in gen.items())


def model_input(wildcards):
    src = T.model_source(config, wildcards.variant)
    return f"{run_dir(wildcards.scale, src)}/model.pt"


def eval_args(wildcards):
    opts = T.eval_options(config, wildcards.scale, wildcards.variant)
    args = f"--tile {opts['tile']}"
    if opts.get("max_tiles"):
        args += f" --max-tiles {opts['max_tiles']}"
    if opts["ensemble"]:
        args += " --ensemble"
    return args
