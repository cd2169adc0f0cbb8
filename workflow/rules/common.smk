# Which jobs exist at which scale, and their paths: all of it is ride.experiments (tested there).

import re

from ride import experiments as E

try:
    E.validate_config(config)
except E.ConfigError as err:
    raise ValueError(f"config/config.yaml: {err}") from None

SCALE = config["scale"]
TABLES = E.table_names(config)
ENV = "../envs/ride.yaml"


wildcard_constraints:
    scale="|".join(E.SCALES),
    table="|".join(TABLES),
    figure="|".join(E.figure_names(config)) or "(?!)",
    variant="[a-z][a-z0-9_]*",


def run_file(name):
    """A file of a run directory, as a pattern of the wildcards scale, table and variant."""
    return f"{E.run_dir('{scale}', '{table}', '{variant}')}/{name}"


def table_dataset(part, suffix="", kind="images"):
    """Input function: the train or test file (+ suffix) of the wildcard table's data set."""
    return lambda wc: f"{E.table_data_file(config, wc.scale, wc.table, part, kind)}{suffix}"


def benchmark_file(kind):
    """A job's benchmark TSV, as a pattern of the wildcards scale, table and variant."""
    return E.benchmark_file("{scale}", "{table}", kind, "{variant}")


def table_files(scale, table):
    """Everything a table reads (ride.experiments.table_input_files): nothing from the data set
    when every row is pending or cited, so `pending=[all]` renders a table without a download."""
    return E.table_input_files(config, scale, table)


def figure_files(scale, figure):
    """The eval JSONs (and cited models) of a figure's points."""
    table = E.figure_spec(config, figure)["table"]
    inputs = {}
    for _, _, name in E.figure_variants(config, figure, scale):
        inputs[f"eval_{name}"] = f"{E.run_dir(scale, table, name)}/eval.json"
        inputs[f"model_{name}"] = f"{E.run_dir(scale, table, E.model_source(config, table, name))}/model.pt"
    return inputs


def table_inputs(wildcards):
    return table_files(wildcards.scale, wildcards.table)


def figure_inputs(wildcards):
    return figure_files(wildcards.scale, wildcards.figure)


def scale_targets(scale):
    out = []
    for table in E.default_tables(config, scale):
        out += [E.result_file(scale, table, s) for s in (".csv", ".md", ".html", ".provenance.json")]
    for figure in E.figure_names(config, scale):
        out += [E.result_file(scale, figure, s) for s in (".csv", ".png")]
    return out


def copies(scale):
    """(configured scale's file, untracked convenience copy at results/) pairs."""
    pairs = [(E.result_file(scale, t, s), f"results/{t}{s}") for t in E.default_tables(config, scale) for s in (".csv", ".md")]
    pairs += [(E.result_file(scale, f, s), f"results/{f}{s}") for f in E.figure_names(config, scale) for s in (".csv", ".png")]
    return pairs


def copy_source(name):
    """The configured scale's file behind the untracked copy results/<name>."""
    return dict((dst, src) for src, dst in copies(SCALE))[f"results/{name}"]


def copy_pattern():
    """Wildcard constraint of results/<name>: exactly the configured scale's copies."""
    return "|".join(re.escape(dst[len("results/"):]) for _, dst in copies(SCALE)) or "(?!)"


def cited_run_files(scale):
    """The run files (model.pt, train.json, eval.json) behind every table and figure of a scale.

    The entry points `all` and `check_table3` declare them. Snakemake re-runs a job for a missing
    output only when a job downstream must run anyway, so a model.pt deleted (or left missing by
    an interrupted --forcerun) behind an up-to-date table would otherwise never be rebuilt.
    """
    files = []
    for table in E.default_tables(config, scale):
        files += [v for k, v in table_files(scale, table).items() if k.startswith(("eval_", "model_", "train_"))]
    for figure in E.figure_names(config, scale):
        files += list(figure_files(scale, figure).values())
    return sorted(set(files))


def all_targets():
    return scale_targets(SCALE) + [dst for _, dst in copies(SCALE)] + cited_run_files(SCALE)


def resource(name):
    return lambda wc: E.resources(config, wc.scale)[name]


def model_input(wildcards):
    src = E.model_source(config, wildcards.table, wildcards.variant)
    return f"{E.run_dir(wildcards.scale, wildcards.table, src)}/model.pt"


def eval_args(wildcards):
    opts = E.eval_options(config, wildcards.scale, wildcards.table, wildcards.variant)
    args = f"--tile {opts['tile']}"
    if opts.get("max_tiles"):
        args += f" --max-tiles {opts['max_tiles']}"
    if opts["ensemble"]:
        args += " --ensemble"
    return args
