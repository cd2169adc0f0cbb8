"""The experiment layer: which runs exist at which scale, with which options, at which paths.

One parsed ``config/config.yaml`` describes every experiment of the workflow:

* ``scales``: how a scale shrinks the protocol. The model of a row at a scale is the row's
  ``model`` with the scale's ``model`` entries applied on top and ``num_hidden`` divided by the
  scale's ``hidden_divisor`` (the smoke scale: hidden units / 8, 8 features, 2 scales); its
  training options are the scale's ``train`` (RIDE) or ``baseline_train`` (MCGSM, ``num_layers``
  0, L-BFGS only); evaluation uses the scale's ``evaluate`` tiles; the data set is the
  ``datasets`` entry with the scale's ``data.<dataset>`` overrides.
* ``tables.<table>``: a table of the paper: its data set, rows (``variants``), how rows are
  judged (``verdict``) and what each scale is expected to show (``expectations``).
* ``figures.<figure>``: a neighbourhood-width sweep over some rows of a table, per scale.

Everything here is plain Python on the parsed config, so that the Snakemake rules
(``workflow/rules/``), ``ride.tables``, ``ride.figures`` and the tests all ask the same
functions. A figure point ``<row>_nb<n>`` is row ``<row>`` with neighbourhood width ``n``.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

SCALES = ("smoke", "quick", "paper")
DEFAULT_COLUMNS = {"rate": {"label": "bit/px", "value": "bits_per_pixel", "sem": "sem"}}
MODEL_KEYS = ("nb_size", "num_hidden", "num_layers", "extended", "num_components", "num_scales", "num_features")
#: ``pending: [all]``: every row we would build is pending (a paper-scale table without any data).
PENDING_ALL = "all"
FIGURE_SUFFIX = re.compile(r"^(?P<base>[a-z][a-z0-9_]*?)_nb(?P<nb>[0-9]+)$")
ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path("config") / "config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"

Config = Mapping[str, Any]


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path = CONFIG, validate: bool = True) -> dict[str, Any]:
    """Parse a workflow config; with ``validate`` check it against the schema and cross-check it."""
    try:
        with open(path) as fh:
            config = yaml.safe_load(fh)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror}); pass --config config/config.yaml") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if validate:
        try:
            validate_schema(config)
            validate_config(config)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return config


def validate_schema(config: Any, schema: str | Path = SCHEMA) -> None:
    """Check ``config`` against ``workflow/schemas/config.schema.yaml``; name the first offending key."""
    import jsonschema

    if not Path(schema).exists():
        raise ConfigError(f"schema {schema} not found; run from a checkout of the repository")
    validator = jsonschema.Draft202012Validator(yaml.safe_load(Path(schema).read_text()))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"{err.message} (at {where})")


def validate_config(config: Config) -> None:
    """Cross-reference checks the JSON schema cannot express; raise :class:`ConfigError`."""
    for table in table_names(config):
        _validate_table(config, table)
    known = {v for t in table_names(config) for v in table_variants(config, t)}
    if PENDING_ALL in known:
        raise ConfigError(f"tables: a variant may not be named {PENDING_ALL!r} (the `pending` keyword); rename it")
    for name in config.get("pending", []):
        if name != PENDING_ALL and name not in known:
            raise ConfigError(f"pending: unknown variant {name!r}; known: {PENDING_ALL!r} or {sorted(known)}")
    for figure, spec in (config.get("figures") or {}).items():
        if spec["table"] not in config["tables"]:
            raise ConfigError(f"figures.{figure}.table: unknown table {spec['table']!r}; known: {table_names(config)}")
        variants = table_variants(config, spec["table"])
        for scale, sweep in (spec.get("scales") or {}).items():
            for name in sweep["models"]:
                where = f"figures.{figure}.scales.{scale}.models"
                if name not in variants:
                    raise ConfigError(f"{where}: unknown variant {name!r}; known: {variants}")
                if "model" not in variant_spec(config, spec["table"], name):
                    raise ConfigError(f"{where}: {name!r} has no model of its own")


def _validate_table(config: Config, table: str) -> None:
    spec = table_spec(config, table)
    here = f"tables.{table}"
    names = set(table_variants(config, table))

    def need(name: str, where: str) -> None:
        if name not in names:
            raise ConfigError(f"{here}.{where}: unknown variant {name!r}; known: {sorted(names)}")

    for scale in SCALES:
        dataset = table_dataset(config, table, scale)
        if dataset not in config["datasets"] and "data_sources" in config and dataset not in config["data_sources"]:
            raise ConfigError(f"{here}.dataset: unknown data set {dataset!r} at scale {scale}; known: "
                              f"{sorted(config['datasets'])} and the data sources of config/datasets.yaml")
    verdict = spec["verdict"]
    need(verdict["reference"], "verdict.reference")
    columns = table_columns(config, table)
    for name, var in spec["variants"].items():
        if var.get("column", next(iter(columns))) not in columns:
            raise ConfigError(f"{here}.variants.{name}.column: unknown column {var['column']!r}; known: {list(columns)}")
    for col, cspec in columns.items():
        ref = cspec.get("reference", verdict["reference"] if col == column_of(config, table, verdict["reference"]) else None)
        if ref is None:
            continue
        need(ref, f"columns.{col}.reference")
        if is_cited(config, table, ref):
            raise ConfigError(f"{here}: reference row {ref!r} is a cited row, not ours")
        if column_of(config, table, ref) != col:
            raise ConfigError(f"{here}.columns.{col}.reference: {ref!r} is a row of column {column_of(config, table, ref)!r}")
    ordered = [n for chain in order_chains(config, table) for n in chain]
    for name in ordered:
        need(name, "verdict.order")
    for chain in order_chains(config, table):
        if len({column_of(config, table, n) for n in chain}) > 1:
            raise ConfigError(f"{here}.verdict.order: {chain} mixes columns; order rows of one column per chain")
    for name, var in spec["variants"].items():
        for key in ("model_of", "baseline_for_gain", "eval_of"):
            if key in var:
                need(var[key], f"variants.{name}.{key}")
        if "model_of" in var and not ({"model", "patch_model"} & set(spec["variants"][var["model_of"]])):
            raise ConfigError(f"{here}.variants.{name}.model_of: {var['model_of']!r} has no model of its own")
        if "eval_of" in var and ({"cited", "eval_of"} & {k for k, v in spec["variants"][var["eval_of"]].items() if v}):
            raise ConfigError(f"{here}.variants.{name}.eval_of: {var['eval_of']!r} is not evaluated itself")
        if "baseline_for_gain" in var and var["baseline_for_gain"] != reference_of(config, table, name):
            raise ConfigError(
                f"{here}.variants.{name}.baseline_for_gain: {var['baseline_for_gain']!r} differs from "
                f"the reference of its column {reference_of(config, table, name)!r}; gains are measured from one row"
            )
        if var.get("cited") and name in ordered:
            raise ConfigError(f"{here}.verdict.order: {name!r} is a cited row and cannot be ordered")
    _validate_patch_rows(config, table)
    _validate_budget(config, table)
    for scale in SCALES:
        where = f"{here}.expectations.{scale}"
        exp = spec["expectations"][scale]
        if exp:
            if scale == "paper":
                raise ConfigError(f"{where} must be null: the paper scale is judged against the paper")
            for name, (lo, hi) in (exp.get("gain_range") or {}).items():
                need(name, f"expectations.{scale}.gain_range")
                if lo > hi:
                    raise ConfigError(f"{where}.gain_range.{name}: {lo} > {hi}")
            for name in exp.get("order_seed_sd") or {}:
                need(name, f"expectations.{scale}.order_seed_sd")
                if name not in ordered:
                    raise ConfigError(f"{where}.order_seed_sd.{name}: not a row of verdict.order")
        elif scale != "paper":
            raise ConfigError(
                f"{where}: a non-paper scale needs an expectation; only the paper scale is judged "
                f"against the paper's tolerances"
            )
        sc = scale_of(config, scale)
        if table_dataset(config, table, scale) not in config["datasets"]:
            continue  # a real data set (config/datasets.yaml): its sizes are checked when it is prepared
        try:
            size = dataset_params(config, scale, table_dataset(config, table, scale))["size"]
        except ConfigError as err:
            raise ConfigError(f"scales.{scale}: {err}") from None
        for stage in sc["train"].get("stages", []):
            if stage["patch"] > size:
                raise ConfigError(f"scales.{scale}.train.stages: patch {stage['patch']} exceeds the image size of {table}")
        if sc["evaluate"]["tile"] > size:
            raise ConfigError(f"scales.{scale}.evaluate.tile: {sc['evaluate']['tile']} exceeds the image size of {table}")


def _validate_budget(config: Config, table: str) -> None:
    """The scale's ``train`` / ``baseline_train`` with the table's ``budget`` on top must be valid
    `ride train` sections (patch kinds are checked with the patch rows)."""
    from .train_config import validate_train_section

    for scale, budget in (table_spec(config, table).get("budget") or {}).items():
        for key in ("train", "baseline_train"):
            if key in (budget or {}):
                merged = {**scale_of(config, scale)[key], **budget[key]}
                validate_train_section(merged, f"tables.{table}.budget.{scale}.{key} (over scales.{scale}.{key})")


def _validate_patch_rows(config: Config, table: str) -> None:
    """Every patch row's `ride patch train` document at every scale, and the DC model they need."""
    from .patch_experiment import validate_patch_config

    here = f"tables.{table}"
    rows = [n for n, v in table_spec(config, table)["variants"].items() if "patch_model" in v]
    if not rows:
        return
    for scale in SCALES:
        if table_dataset(config, table, scale) in config["datasets"]:
            raise ConfigError(f"{here}.dataset: patch rows {rows} need a prepared data set with patches at scale "
                              f"{scale}, not the generated {table_dataset(config, table, scale)!r}")
        for name in rows:
            validate_patch_config(patch_train_config(config, scale, table, name),
                                  f"{here}.variants.{name}.patch_model with scales.{scale}.patch")
        if table_spec(config, table).get("dc_model") is not None:  # DC-removed patches (Table 1's 64 dim)
            validate_patch_config(dc_train_config(config, scale, table), f"{here}.dc_model with scales.{scale}.patch")


# --------------------------------------------------------------------------------------------
# Scales, tables, variants
# --------------------------------------------------------------------------------------------


def scale_of(config: Config, scale: str | None = None) -> dict[str, Any]:
    """The ``scales`` entry of ``scale`` (default: the configured scale)."""
    scale = scale or config["scale"]
    if scale not in config["scales"]:
        raise ConfigError(f"unknown scale {scale!r}; known: {sorted(config['scales'])}")
    return config["scales"][scale]


def table_names(config: Config) -> list[str]:
    return list(config["tables"])


def table_spec(config: Config, table: str) -> dict[str, Any]:
    try:
        return config["tables"][table]
    except KeyError:
        raise ConfigError(f"unknown table {table!r}; known: {table_names(config)}") from None


def table_variants(config: Config, table: str) -> list[str]:
    """Every row of ``table``, in config (= paper) order."""
    return list(table_spec(config, table)["variants"])


def default_tables(config: Config, scale: str | None = None) -> list[str]:
    """Tables that ``snakemake --cores all`` builds at ``scale`` (default: the configured one):
    ``in_all`` true, or true for that scale; others only on request."""
    scale = scale or config["scale"]

    def included(table: str) -> bool:
        flag = table_spec(config, table).get("in_all", True)
        return bool(flag[scale] if isinstance(flag, dict) else flag)

    return [t for t in table_names(config) if included(t)]


def table_dataset(config: Config, table: str, scale: str) -> str:
    """The data set ``table`` uses at ``scale``: ``dataset``, or its entry for ``scale`` when per scale."""
    dataset = table_spec(config, table)["dataset"]
    return dataset if isinstance(dataset, str) else dataset[scale]


def table_columns(config: Config, table: str) -> dict[str, dict[str, Any]]:
    """The value columns of ``table`` (id -> label, unit, eval-JSON keys ``value`` and ``sem``), in order."""
    return dict(table_spec(config, table).get("columns") or DEFAULT_COLUMNS)


def column_of(config: Config, table: str, name: str) -> str:
    """The column of row ``name`` (its ``column``, default the table's first)."""
    return variant_spec(config, table, name).get("column") or next(iter(table_columns(config, table)))


def reference_of(config: Config, table: str, name: str) -> str | None:
    """The row gains of ``name`` are measured from: its column's ``reference``, else ``verdict.reference``
    when that row is in the same column; None when the column has no reference."""
    spec = table_spec(config, table)
    col = column_of(config, table, name)
    ref = table_columns(config, table)[col].get("reference")
    if ref is None and column_of(config, table, spec["verdict"]["reference"]) == col:
        ref = spec["verdict"]["reference"]
    return ref


def order_chains(config: Config, table: str) -> list[list[str]]:
    """``verdict.order`` as a list of chains (a flat list is one chain)."""
    order = table_spec(config, table)["verdict"]["order"]
    return [list(c) for c in order] if order and isinstance(order[0], list) else [list(order)]


def is_patch_variant(config: Config, table: str, name: str) -> bool:
    """Whether ``name`` evaluates a patch model (``ride patch``), directly or through model_of/eval_of."""
    return "patch_model" in variant_spec(config, table, model_source(config, table, name))


def expectation(config: Config, table: str, scale: str) -> dict[str, Any] | None:
    """What ``table`` must show at ``scale``; None = judged against the paper."""
    return table_spec(config, table)["expectations"].get(scale)


def split_figure_name(name: str) -> tuple[str, int | None]:
    """``"ride64_l1_nb7"`` -> ``("ride64_l1", 7)``; a table variant -> ``(name, None)``."""
    m = FIGURE_SUFFIX.match(name)
    if m:
        return m.group("base"), int(m.group("nb"))
    return name, None


def variant_spec(config: Config, table: str, name: str) -> dict[str, Any]:
    base, _ = split_figure_name(name)
    try:
        return table_spec(config, table)["variants"][base]
    except KeyError:
        raise ConfigError(f"unknown variant {name!r} of {table}; known: {table_variants(config, table)}") from None


def is_cited(config: Config, table: str, name: str) -> bool:
    return bool(variant_spec(config, table, name).get("cited", False))


def model_source(config: Config, table: str, name: str) -> str:
    """The variant whose ``model.pt`` this variant evaluates (itself unless ``model_of``)."""
    spec = variant_spec(config, table, name)
    base, nb = split_figure_name(name)
    if "eval_of" in spec:
        return model_source(config, table, spec["eval_of"])
    src = spec.get("model_of", base)
    return src if nb is None else f"{src}_nb{nb}"


def eval_source(config: Config, table: str, name: str) -> str:
    """The variant whose ``eval.json`` row ``name`` reads (itself unless ``eval_of``: another column of it)."""
    return variant_spec(config, table, name).get("eval_of", name)


def pending_variants(config: Config, table: str) -> set[str]:
    """``config.pending`` (of this table) plus every row that evaluates a pending row's model;
    with ``pending: [all]`` every row that is not cited."""
    names = table_variants(config, table)
    if PENDING_ALL in config.get("pending", []):
        return {v for v in names if not is_cited(config, table, v)}
    pending = {v for v in config.get("pending", []) if v in names}
    for name in names:
        if model_source(config, table, name) in pending:
            pending.add(name)
    return pending


def evaluated_variants(config: Config, table: str) -> list[str]:
    """Rows of ``table`` we evaluate (not cited, not pending)."""
    pending = pending_variants(config, table)
    return [v for v in table_variants(config, table) if not is_cited(config, table, v) and v not in pending]


def table_needs_data(config: Config, table: str) -> bool:
    """Whether rendering ``table`` reads anything: False when every row is pending or cited (then
    it declares no data-set checksum and no DC model, so an all-pending table needs no download)."""
    return bool(evaluated_variants(config, table))


def trained_variants(config: Config, table: str) -> list[str]:
    """Rows of ``table`` that own a trained model."""
    return [v for v in evaluated_variants(config, table) if model_source(config, table, v) == v
            and eval_source(config, table, v) == v]


def figure_names(config: Config, scale: str | None = None) -> list[str]:
    """Figures of the config; with ``scale`` only those drawn at that scale."""
    figs = config.get("figures") or {}
    return [f for f, spec in figs.items() if scale is None or (spec.get("scales") or {}).get(scale)]


def figure_spec(config: Config, figure: str) -> dict[str, Any]:
    try:
        return (config.get("figures") or {})[figure]
    except KeyError:
        raise ConfigError(f"unknown figure {figure!r}; known: {figure_names(config)}") from None


def figure_variants(config: Config, figure: str, scale: str) -> list[tuple[str, int, str]]:
    """Points ``(base row, nb_size, variant to evaluate)`` of ``figure`` at ``scale``.

    The point at a base row's own neighbourhood width reuses the table's run.
    """
    spec = figure_spec(config, figure)
    sweep = (spec.get("scales") or {}).get(scale)
    if not sweep:
        return []
    table = spec["table"]
    pending = pending_variants(config, table)
    out = []
    for base in sweep["models"]:
        if base in pending:
            continue
        own = variant_spec(config, table, base)["model"]["nb_size"]
        for nb in sweep["nb_sizes"]:
            out.append((base, int(nb), base if nb == own else f"{base}_nb{nb}"))
    return out


# --------------------------------------------------------------------------------------------
# Per-scale options of one run
# --------------------------------------------------------------------------------------------


def model_kwargs(config: Config, scale: str, table: str, name: str) -> dict[str, Any]:
    """``ride.model.RIDE`` keyword arguments of ``name`` at ``scale``.

    The row's ``model``, then the scale's ``model`` entries on top; ``num_hidden`` divided by
    the scale's ``hidden_divisor`` (at least 1 unit; 0 for an MCGSM); a figure point's width.
    """
    src = model_source(config, table, name)
    base, nb = split_figure_name(src)
    spec = variant_spec(config, table, base)
    if "model" not in spec:
        raise ConfigError(f"variant {base!r} of {table} has no RIDE/MCGSM model (a patch model is built by patch_train_config)")
    sc = scale_of(config, scale)
    model = {k: spec["model"][k] for k in MODEL_KEYS}
    model.update(sc.get("model") or {})
    divisor = int(sc.get("hidden_divisor", 1))
    model["num_hidden"] = max(1, int(spec["model"]["num_hidden"]) // divisor) if model["num_layers"] > 0 else 0
    if nb is not None:
        model["nb_size"] = nb
    return model


def train_config(config: Config, scale: str, table: str, name: str) -> dict[str, Any]:
    """The ``ride train --config`` document of ``name`` at ``scale``."""
    model = model_kwargs(config, scale, table, name)
    sc = scale_of(config, scale)
    baseline = model["num_layers"] == 0
    train = copy.deepcopy(sc["baseline_train"] if baseline else sc["train"])
    train.update(copy.deepcopy(table_budget(config, scale, table, "baseline_train" if baseline else "train")))
    if baseline:
        train["stages"] = []
    return {"model": model, "train": train}


def table_budget(config: Config, scale: str, table: str, key: str) -> dict[str, Any]:
    """``tables.<table>.budget.<scale>.<key>``: this table's changes to the scale's training options
    (``train``, ``baseline_train`` or a patch kind: ``patch_mcgsm``, ``patch_ride``, ``mogsm``)."""
    return ((table_spec(config, table).get("budget") or {}).get(scale) or {}).get(key) or {}


def patch_train_config(config: Config, scale: str, table: str, name: str) -> dict[str, Any]:
    """The ``ride patch train --config`` document of patch row ``name`` at ``scale``.

    The row's ``patch_model`` with the scale's ``patch.model`` entries on top (those its kind
    takes); ``num_hidden`` divided by ``hidden_divisor``; training options ``patch.train.<kind>``.
    """
    src = model_source(config, table, name)
    spec = variant_spec(config, table, src)
    if "patch_model" not in spec:
        raise ConfigError(f"variant {src!r} of {table} has no patch_model")
    return _patch_document(config, scale, table, dict(spec["patch_model"]))


def dc_train_config(config: Config, scale: str, table: str) -> dict[str, Any]:
    """The ``ride patch train --config`` document of ``table``'s DC model (a MoGSM on the patch means)."""
    dc = table_spec(config, table).get("dc_model")
    if dc is None:
        raise ConfigError(f"tables.{table} has no dc_model")
    return _patch_document(config, scale, table, {"kind": "mogsm", **dc})


def _patch_document(config: Config, scale: str, table: str, model: dict[str, Any]) -> dict[str, Any]:
    from .patch_experiment import SCHEMAS

    patch = scale_of(config, scale).get("patch") or {}
    allowed = SCHEMAS[model["kind"]][0]["properties"]
    model.update({k: v for k, v in (patch.get("model") or {}).items() if k in allowed})
    if model.get("num_layers", 0) > 0 and "num_hidden" in model:
        model["num_hidden"] = max(1, int(model["num_hidden"]) // int(scale_of(config, scale).get("hidden_divisor", 1)))
    train = copy.deepcopy((patch.get("train") or {}).get(model["kind"], {}))
    train.update(copy.deepcopy(table_budget(config, scale, table, model["kind"])))
    return {"model": model, "train": train}


def patch_valid_file(config: Config, scale: str, table: str) -> str | None:
    """The validation patch set of ``table`` at ``scale`` when its data source has one (BSDS300,
    photos; config/datasets.yaml), else None (early stopping then holds out training patches)."""
    dataset = table_dataset(config, table, scale)
    if "valid" in config["data_sources"][dataset]["patches"][scale]:
        return table_data_file(config, scale, table, "valid", "patches")
    return None


def patch_train_args(config: Config, scale: str, table: str) -> str:
    """``ride patch train`` options beyond config/data/out-dir: ``--valid FILE`` where there is one."""
    valid = patch_valid_file(config, scale, table)
    return f"--valid {valid}" if valid else ""


def dc_model_file(config: Config, scale: str, table: str) -> str | None:
    """``runs/<scale>/<table>/_dc/model.pt``, the DC model of ``table``'s 64-dim rates; None without one."""
    return None if table_spec(config, table).get("dc_model") is None else f"{run_dir(scale, table, '_dc')}/model.pt"


def patch_eval_args(config: Config, scale: str, table: str, name: str) -> str:
    """``ride patch evaluate`` options of patch row ``name``: --ensemble, --dc-model."""
    args = ["--ensemble"] if eval_options(config, scale, table, name)["ensemble"] else []
    dc = dc_model_file(config, scale, table)
    return " ".join(args + ([f"--dc-model {dc}"] if dc else []))


def dataset_params(config: Config, scale: str, dataset: str) -> dict[str, Any]:
    """Data set ``dataset`` at ``scale``: its ``datasets`` entry with the scale's overrides."""
    if dataset not in config["datasets"]:
        raise ConfigError(f"unknown data set {dataset!r}; known: {sorted(config['datasets'])}")
    params = copy.deepcopy(config["datasets"][dataset])
    params.update((scale_of(config, scale).get("data") or {}).get(dataset) or {})
    if "num_test" in params and params["num_test"] >= params["num_images"]:
        raise ConfigError(
            f"datasets.{dataset}: num_test ({params['num_test']}) must be below num_images ({params['num_images']})"
        )
    return params


def eval_options(config: Config, scale: str, table: str, name: str) -> dict[str, Any]:
    """``ride evaluate`` options of ``name`` at ``scale``: tile, max_tiles, ensemble."""
    opts = dict(scale_of(config, scale)["evaluate"])
    opts.setdefault("max_tiles", None)
    opts["ensemble"] = bool(variant_spec(config, table, name).get("ensemble", False))
    return opts


def resources(config: Config, scale: str) -> dict[str, int]:
    """Cluster resources of a scale's jobs: ``train_runtime``/``evaluate_runtime`` (min), ``mem_mb``."""
    res = scale_of(config, scale).get("resources") or {}
    return {"train_runtime": int(res.get("train_runtime", 60)), "evaluate_runtime": int(res.get("evaluate_runtime", 60)),
            "mem_mb": int(res.get("mem_mb", 4000))}


def table_config(config: Config, scale: str, table: str) -> dict[str, Any]:
    """The part of the config a scale's table (and the figures on its runs) depend on.

    A config in its own right for the functions of this module: Snakemake passes it as a
    rule's ``params``, so a change elsewhere in the config does not re-render the table.
    """
    spec = table_spec(config, table)
    figures = {f: s for f, s in (config.get("figures") or {}).items() if s["table"] == table}
    dataset = table_dataset(config, table, scale)
    return {
        "scale": scale,
        "pending": [v for v in config.get("pending", []) if v in spec["variants"] or v == PENDING_ALL],
        "datasets": {dataset: config["datasets"][dataset]} if dataset in config["datasets"] else {},
        "scales": {scale: scale_of(config, scale)},
        "tables": {table: spec},
        "figures": figures,
    }


# --------------------------------------------------------------------------------------------
# Paths (relative to the working directory; scales never share a path)
# --------------------------------------------------------------------------------------------


def dataset_file(scale: str, dataset: str, part: str, kind: str | None = None) -> str:
    """``datasets/<dataset>/<scale>/<part>.h5`` (``part``: train or test) of a generated data set;
    with ``kind`` (images, patches) ``<kind>_<part>.h5`` of a prepared real one (ride.datasets)."""
    return f"datasets/{dataset}/{scale}/{part if kind is None else f'{kind}_{part}'}.h5"


def table_data_file(config: Config, scale: str, table: str, part: str, kind: str = "images") -> str:
    """The ``part`` file ``table`` trains or tests on at ``scale``: images, or ``kind`` patches."""
    dataset = table_dataset(config, table, scale)
    if dataset in config["datasets"]:
        if kind != "images":
            raise ConfigError(f"tables.{table}: data set {dataset!r} has no {kind}; patch rows need a prepared one")
        return dataset_file(scale, dataset, part)
    return dataset_file(scale, dataset, part, kind)


def run_dir(scale: str, table: str, variant: str) -> str:
    """``runs/<scale>/<table>/<variant>``: config.json, model.pt, train.json, eval.json."""
    return f"runs/{scale}/{table}/{variant}"


def benchmark_file(scale: str, table: str, kind: str, variant: str) -> str:
    """``logs/<scale>/<table>/benchmarks/<kind>_<variant>.tsv``: Snakemake's benchmark of a job."""
    return f"logs/{scale}/{table}/benchmarks/{kind}_{variant}.tsv"


def table_input_files(config: Config, scale: str, table: str) -> dict[str, str]:
    """Everything ``rule table`` reads for ``table`` at ``scale``, keyed as workflow/scripts/table.py
    picks them: ``eval_``/``model_`` per evaluated row, ``train_``/``bench_`` per trained row,
    ``checksum_*`` of the data set (and patch sets) and the DC model where a row needs them.
    With every row pending or cited nothing is read: no data set, no download."""
    inputs: dict[str, str] = {}
    evaluated = evaluated_variants(config, table)
    for v in evaluated:
        # A row showing another column of a row's evaluation (eval_of) reads that row's eval.json.
        inputs[f"eval_{v}"] = f"{run_dir(scale, table, eval_source(config, table, v))}/eval.json"
        # The model each row cites: a missing or replaced model.pt re-runs train -> evaluate -> table.
        inputs[f"model_{v}"] = f"{run_dir(scale, table, model_source(config, table, v))}/model.pt"
    for v in trained_variants(config, table):
        inputs[f"train_{v}"] = f"{run_dir(scale, table, v)}/train.json"
        inputs[f"bench_{v}"] = benchmark_file(scale, table, "train", v)
    if not table_needs_data(config, table):
        return inputs
    for part in ("train", "test"):
        inputs[f"checksum_{part}"] = f"{table_data_file(config, scale, table, part)}.sha256"
    if any(is_patch_variant(config, table, v) for v in evaluated):
        for part in ("train", "test"):
            inputs[f"checksum_patches_{part}"] = f"{table_data_file(config, scale, table, part, 'patches')}.sha256"
        dc = dc_model_file(config, scale, table)
        if dc is not None:  # the DC model of the 64-dim rates
            inputs["model__dc"] = dc
            inputs["train__dc"] = f"{run_dir(scale, table, '_dc')}/train.json"
    return inputs


def result_file(scale: str, name: str, suffix: str) -> str:
    """``results/<scale>/<name><suffix>``, e.g. ``results/quick/table3.csv``."""
    return f"results/{scale}/{name}{suffix}"
