"""Learning curves: the test rate of one model recorded while it trains (``ride curve``).

A curve run trains one row of a table with its scale's training config, every stage's SGD
budget multiplied by ``budget`` (``budget: 4`` = four times the patches of each stage; where a
stage's patches run out, more epochs, each with a fresh grid offset, flips and order), and
scores the test tiles at a fixed schedule: at each ``fractions`` of a stage's SGD steps, at the
stage's end before the MCGSM's L-BFGS refinement (phase ``sgd``) and after it (phase
``refined``). The refinement trains on no SGD pixels, so both end points share an x value and
the jump between them is what the refinement adds. The last point is the written model, scored
exactly as ``ride evaluate`` scores it (the same tiles, :func:`ride.evaluate.evaluate`), in
Z-scored bit/px when the test file records its Z-scoring (``bits_per_pixel_z``).

x is SGD training pixels: scored pixels (targets of the loss) of every patch of every step so
far, counted from the steps actually taken (a stage restored after a divergence drops the points
it recorded after the restore point). ``train_seconds`` is the training wall time so far without
the scoring. Evaluation draws no random numbers, so the recorded run trains the same model as
the same config without recording.

The curve config (``ride curve run --config``) is a ``ride train`` config plus a ``curve`` section;
:func:`curve_config` builds it from the workflow config (``curves`` section of config/config.yaml).
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from . import experiments as E
from .errors import ConfigError, RideError

CURVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["budget", "fractions", "tile"],
    "properties": {
        "budget": {"type": "number", "exclusiveMinimum": 0},
        "fractions": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                      "uniqueItems": True},
        "tile": {"type": "integer", "minimum": 1},
        "max_tiles": {"type": ["integer", "null"], "minimum": 1},
        "name": {"type": "string"},
        "label": {"type": "string"},
        "scale": {"type": "string"},
        "table": {"type": "string"},
    },
}
CSV_COLUMNS = ("variant", "label", "point", "stage", "batch", "phase", "train_pixels", "train_patches",
               "train_seconds", "bits_per_px", "unit", "sem_images", "num_tiles", "budget", "base_train_pixels",
               "scale", "device")


# --------------------------------------------------------------------------------------------
# The workflow's side: which curves exist, and the config of one
# --------------------------------------------------------------------------------------------


def curves_spec(config: Mapping[str, Any], scale: str) -> dict[str, Any]:
    """The ``curves`` section with the entry of ``scale`` checked; :class:`ConfigError` naming the key."""
    spec = config.get("curves")
    if not spec:
        raise ConfigError("config has no `curves` section; add one (see config/config.yaml)")
    table = spec["table"]
    if table not in E.table_names(config):
        raise ConfigError(f"curves.table: unknown table {table!r}; known: {E.table_names(config)}")
    for name in spec["variants"]:
        var = E.variant_spec(config, table, name)
        if "model" not in var or int(var["model"].get("num_layers", 1)) < 1 or E.split_figure_name(name)[1]:
            raise ConfigError(f"curves.variants: {name!r} is not a RIDE row of {table} with a model of its own "
                              f"(MCGSM rows train by L-BFGS alone: they have no SGD curve)")
    if scale not in (spec.get("scales") or {}):
        raise ConfigError(f"curves.scales has no entry for scale {scale!r}; add one with budget and fractions")
    return spec


def validate_curves(config: Mapping[str, Any]) -> None:
    """Cross-check the ``curves`` section (if any) at every scale it names; :class:`ConfigError`."""
    for scale in ((config.get("curves") or {}).get("scales") or {}):
        curves_spec(config, scale)


def curve_config(config: Mapping[str, Any], scale: str, variant: str) -> dict[str, Any]:
    """The ``ride curve run --config`` document of ``variant`` at ``scale``."""
    spec = curves_spec(config, scale)
    if variant not in spec["variants"]:
        raise ConfigError(f"curves.variants: {variant!r} is not listed; listed: {spec['variants']}")
    table = spec["table"]
    doc = E.train_config(config, scale, table, variant)
    ev = E.eval_options(config, scale, table, variant)
    sc = spec["scales"][scale]
    doc["curve"] = {
        "budget": sc["budget"], "fractions": list(sc.get("fractions", [])), "tile": ev["tile"],
        # The scale's evaluation tiles unless the curve names a subset (the first max_tiles of them).
        "max_tiles": sc.get("max_tiles", ev["max_tiles"]),
        "name": variant, "label": E.variant_spec(config, table, variant)["label"], "scale": scale, "table": table,
    }
    return doc


def curve_file(scale: str, variant: str, name: str = "curve.json") -> str:
    """``runs/<scale>/curves/<variant>/<name>`` (curve.json, curve_config.json, model.pt, train.json)."""
    return f"runs/{scale}/curves/{variant}/{name}"


def curve_variants(config: Mapping[str, Any], scale: str) -> list[str]:
    """The variants with a curve at ``scale``: ``curves.variants`` without the pending ones."""
    spec = curves_spec(config, scale)
    pending = E.pending_variants(config, spec["table"])
    return [v for v in spec["variants"] if v not in pending]


def curve_data_file(config: Mapping[str, Any], scale: str, part: str) -> str:
    """The ``part`` (train, test) images of the curves' table at ``scale``."""
    return E.table_data_file(config, scale, curves_spec(config, scale)["table"], part)


def validate_curve_config(doc: Any, source: str = "curve config") -> None:
    """A ``ride train`` config plus a ``curve`` section (:data:`CURVE_SCHEMA`); :class:`ConfigError` otherwise."""
    import jsonschema

    from .train_config import validate_config

    if not isinstance(doc, dict) or "curve" not in doc:
        raise ConfigError(f"{source}: no `curve` section; write it with `ride.curves.curve_config` (Snakemake rule curve_config)")
    validate_config({k: v for k, v in doc.items() if k != "curve"}, source)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(CURVE_SCHEMA).iter_errors(doc["curve"]))
    if error is not None:
        where = "curve" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise ConfigError(f"{source}: {where}: {' '.join(error.message.split())}; fix this value")


# --------------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------------


def stage_batches(num_patches: int, cap: int | None, epochs: int, batch_size: int) -> int:
    """SGD steps of a stage whose epoch has ``num_patches`` patches (the Trainer's arithmetic)."""
    return epochs * max(1, min(num_patches, cap or num_patches) // batch_size)


def scale_budget(train: Mapping[str, Any], epoch_patches: Sequence[int], budget: float) -> dict[str, Any]:
    """The ``train`` section with every stage's SGD steps multiplied by ``budget``.

    ``epoch_patches[k]``: patches one epoch of stage k has (before any cap). A stage that needs
    more patches than an epoch holds gets more epochs, and its own ``max_patches`` splits the
    steps evenly over them (the total is rounded up to whole steps per epoch).
    """
    from .train_config import TrainConfig

    cfg = TrainConfig.from_dict(dict(train))
    out = copy.deepcopy(dict(train))
    stages = []
    for spec, available in zip(cfg.stages, epoch_patches):
        epochs = int(spec.get("epochs", cfg.epochs))
        base = stage_batches(available, spec.get("max_patches", cfg.max_patches), epochs, cfg.batch_size)
        target = max(1, round(budget * base))
        per_epoch_max = max(1, available // cfg.batch_size)
        new_epochs = math.ceil(target / per_epoch_max)
        per_epoch = math.ceil(target / new_epochs)
        stages.append({**spec, "epochs": new_epochs, "max_patches": per_epoch * cfg.batch_size})
    out["stages"] = stages
    return out


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


class CurveRecorder:
    """Hooks of :class:`ride.train.Trainer` (``callback``, ``on_stage``) that score the test tiles."""

    def __init__(self, trainer: Any, images: torch.Tensor, fractions: Sequence[float], tile: int,
                 max_tiles: int | None, zscore: tuple[float, float] | None) -> None:
        self.trainer = trainer
        self.images = images
        self.fractions = sorted(fractions)
        self.tile, self.max_tiles, self.zscore = tile, max_tiles, zscore
        self.points: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.steps: dict[int, int] = {}  # SGD steps taken in each stage
        self.pixels_per_patch: dict[int, int] = {}
        self.schedule: set[int] = set()
        self.eval_seconds = 0.0
        self.start = time.perf_counter()
        trainer.callback, trainer.on_stage = self.on_batch, self.on_stage

    def pixels(self) -> tuple[int, int]:
        """(scored pixels, patches) of every SGD step so far."""
        bs = self.trainer.config.batch_size
        patches = sum(n * bs for n in self.steps.values())
        return sum(n * bs * self.pixels_per_patch[s] for s, n in self.steps.items()), patches

    def on_stage(self, event: str, info: dict[str, Any]) -> None:
        stage = info["stage"]
        if event == "start":
            batch = info["batch"]
            if any(s > stage or (s == stage and n > batch) for s, n in self.steps.items()):
                # A restore (divergence) went back: what was recorded after that point never happened.
                self.events.append({"event": "restored", "stage": stage + 1, "batch": batch})
                self.points = [p for p in self.points
                               if p["stage"] - 1 < stage or (p["stage"] - 1 == stage and p["batch"] <= batch
                                                             and p["phase"] == "sgd")]
            self.steps = {s: n for s, n in self.steps.items() if s < stage}
            self.steps[stage] = batch
            self.pixels_per_patch[stage] = info["pixels_per_patch"]
            n = info["num_batches"]
            self.schedule = {b for b in (round(f * n) for f in self.fractions) if 0 < b < n}
        elif event == "sgd_end":
            if not self.points or self.points[-1]["stage"] != stage + 1 or self.points[-1]["batch"] != self.steps[stage]:
                self.record(stage, "sgd")
        elif event == "refined":
            self.record(stage, "refined")

    def on_batch(self, state: dict[str, Any]) -> None:
        stage = state["stage"]
        self.steps[stage] = self.steps.get(stage, 0) + 1
        if self.steps[stage] in self.schedule:
            self.record(stage, "sgd")

    def record(self, stage: int, phase: str) -> dict[str, Any]:
        from .evaluate import evaluate

        t0 = time.perf_counter()
        model = self.trainer.model
        was_training = model.training
        model.eval()
        try:
            result = evaluate(model, self.images, tile=self.tile, max_tiles=self.max_tiles, zscore=self.zscore)
        finally:
            model.train(was_training)
        pixels, patches = self.pixels()
        point = {
            "stage": stage + 1, "batch": self.steps.get(stage, 0), "phase": phase, "train_pixels": pixels,
            "train_patches": patches, "train_seconds": round(t0 - self.start - self.eval_seconds, 3),
            "bits_per_pixel": result["bits_per_pixel"], "bits_per_pixel_z": result.get("bits_per_pixel_z"),
            "sem": result["sem"], "sem_images": result["sem_images"], "num_tiles": result["num_tiles"],
            "eval_seconds": result["wall_time_s"],
        }
        self.points.append(point)
        self.eval_seconds += time.perf_counter() - t0
        value = point["bits_per_pixel_z"] if point["bits_per_pixel_z"] is not None else point["bits_per_pixel"]
        print(f"ride curve: stage {stage + 1} step {point['batch']} ({phase}): {pixels:.4g} px, "
              f"{value:.4f} bit/px", file=sys.stderr)
        return point


def run_curve(doc: Mapping[str, Any], data: str | Path, test_data: str | Path, out_dir: str | Path,
              device: str = "auto", seed: int | None = None, progress: bool = False,
              source: str = "curve config") -> dict[str, Any]:
    """Train ``doc``'s model into ``out_dir`` (model.pt, train.json) while recording its curve.

    Always trains afresh (a checkpoint left by an interrupted run is discarded): the points of
    a run cannot be resumed. Returns the curve document (what ``curve.json`` holds).
    """
    from .data import load_attrs, load_images
    from .evaluate import zscore_of_data
    from .provenance import provenance, resolve_device
    from .train import Trainer
    from .train_config import TrainConfig

    validate_curve_config(doc, source)
    curve = doc["curve"]
    base = TrainConfig.from_dict(doc["train"], source)
    if seed is not None:
        base.seed = seed
    if int(doc["model"].get("num_layers", 1)) < 1 or not base.stages:
        raise ConfigError(f"{source}: a learning curve needs SGD stages and num_layers >= 1 (an MCGSM has no SGD curve)")
    dev = resolve_device(device)
    images = torch.from_numpy(load_images(data))
    test = torch.from_numpy(load_images(test_data))
    zscore = zscore_of_data(load_attrs(test_data), str(test_data), "auto")
    out_dir = Path(out_dir)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    probe = Trainer(doc["model"], base, images, out_dir, dev, progress=False, data_name=str(data))
    n, h, w = probe.train_images.shape
    sizes = [probe._stage_patch(int(s["patch"])) for s in base.stages]
    epoch_patches = [n * (h // p) * (w // p) for p in sizes]  # extract_patches' grid: the offset never costs a row
    per_patch = [math.prod(probe.model.neighborhood.grid_shape(p, p)) for p in sizes]
    base_pixels = sum(stage_batches(e, s.get("max_patches", base.max_patches), int(s.get("epochs", base.epochs)),
                                    base.batch_size) * base.batch_size * q
                      for e, s, q in zip(epoch_patches, base.stages, per_patch))
    train_section = scale_budget({**doc["train"], "seed": base.seed}, epoch_patches, curve["budget"])
    cfg = TrainConfig.from_dict(train_section, source)
    trainer = Trainer(doc["model"], cfg, images, out_dir, dev, progress=progress, data_name=str(data))
    recorder = CurveRecorder(trainer, test, curve["fractions"], curve["tile"], curve.get("max_tiles"), zscore)
    start = time.perf_counter()
    trainer.run()
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)  # finished: a re-run trains afresh
    return {
        "name": curve.get("name"), "label": curve.get("label"), "scale": curve.get("scale"), "table": curve.get("table"),
        "budget": curve["budget"], "fractions": list(curve["fractions"]),
        "base_train_pixels": base_pixels, "train_pixels": recorder.pixels()[0],
        "unit": "bits_per_pixel_z" if zscore is not None else "bits_per_pixel",
        "evaluate": {"tile": curve["tile"], "max_tiles": curve.get("max_tiles"), "data": str(test_data),
                     "zscore": None if zscore is None else {"mean": zscore[0], "std": zscore[1]}},
        "model_config": trainer.model.config, "train_config": train_section, "base_train_config": dict(doc["train"]),
        "data": str(data), "model": str(out_dir / "model.pt"),
        "points": recorder.points, "events": recorder.events, "eval_seconds": round(recorder.eval_seconds, 3),
        "provenance": provenance(dev, cfg.seed, time.perf_counter() - start),
    }


# --------------------------------------------------------------------------------------------
# Merging: CSV, figure, provenance
# --------------------------------------------------------------------------------------------


def curve_rows(curves: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One CSV row per recorded point of each curve, in curve then training order."""
    rows = []
    for c in curves:
        unit = c.get("unit", "bits_per_pixel")
        for i, p in enumerate(c["points"]):
            value = p.get(unit)
            if value is None:
                raise RideError(f"curve {c.get('name')!r}: point {i} has no {unit}; re-run `ride curve run`")
            rows.append({"variant": c.get("name"), "label": c.get("label"), "point": i, "stage": p["stage"],
                         "batch": p["batch"], "phase": p["phase"], "train_pixels": p["train_pixels"],
                         "train_patches": p["train_patches"], "train_seconds": p["train_seconds"],
                         "bits_per_px": value, "unit": unit, "sem_images": p.get("sem_images"),
                         "num_tiles": p.get("num_tiles"), "budget": c.get("budget"),
                         "base_train_pixels": c.get("base_train_pixels"), "scale": c.get("scale"),
                         "device": (c.get("provenance") or {}).get("device", "")})
    return rows


def stage_order(curves: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """At each stage end (after refinement): the variants from best to worst and whether that is
    the order of ``curves`` (the config lists them in the paper's order, worst first)."""
    ends: dict[int, dict[str, float]] = {}
    for c in curves:
        unit = c.get("unit", "bits_per_pixel")
        for p in c["points"]:
            if p["phase"] == "refined":
                ends.setdefault(p["stage"], {})[c.get("name")] = p[unit]
    names = [c.get("name") for c in curves]
    out = []
    for stage, rates in sorted(ends.items()):
        if len(rates) != len(names):
            continue
        ranked = sorted(rates, key=lambda k: -rates[k])
        pixels = next(p["train_pixels"] for p in curves[0]["points"] if p["stage"] == stage and p["phase"] == "refined")
        out.append({"stage": stage, "train_pixels": pixels, "best_first": ranked, "rates": rates,
                    "paper_order": ranked == names[::-1]})
    return out


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    from .data import write_csv_rows

    write_csv_rows(path, rows, CSV_COLUMNS)


def plot(curves: Sequence[Mapping[str, Any]], path: str | Path, scale: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4))
    for c in curves:
        unit = c.get("unit", "bits_per_pixel")
        pts = [p for p in c["points"] if p["train_pixels"] > 0]
        line, = ax.plot([p["train_pixels"] for p in pts], [p[unit] for p in pts], marker=".", label=c.get("label") or c.get("name"))
        ends = [p for p in pts if p["phase"] == "refined"]
        ax.plot([p["train_pixels"] for p in ends], [p[unit] for p in ends], "o", color=line.get_color(), mfc="none")
    base = {c.get("base_train_pixels") for c in curves} - {None}
    if len(base) == 1:
        ax.axvline(base.pop(), color="k", ls=":", lw=1, label="the scale's budget (1x)")
    ax.set_xscale("log")
    ax.set_xlabel("SGD training pixels (scored)")
    unit = curves[0].get("unit", "bits_per_pixel") if curves else "bits_per_pixel"
    ax.set_ylabel("test log-likelihood [bit/px" + (", Z-scored]" if unit.endswith("_z") else "]"))
    budgets = sorted({c.get("budget") for c in curves} - {None})
    ax.set_title(f"Learning curves ({scale or '?'} scale, budget {'/'.join(f'{b:g}x' for b in budgets)}); "
                 f"circles: after L-BFGS", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format=Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)


def render(curve_paths: Sequence[str | Path], out_csv: str | Path, out_png: str | Path,
           out_provenance: str | Path | None = None) -> list[dict[str, Any]]:
    """Merge curve JSONs (in the given order) into one CSV, one figure and a provenance JSON."""
    import hashlib

    from .data import atomic_write
    from .provenance import provenance

    if not curve_paths:
        raise RideError("no curve JSONs given; pass runs/<scale>/curves/<variant>/curve.json files")
    curves = []
    for path in curve_paths:
        try:
            curves.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise RideError(f"{path}: cannot read the curve ({err}); re-run `ride curve run`") from None
    scales = {c.get("scale") for c in curves}
    if len(scales) > 1:
        raise RideError(f"curves of different scales {sorted(map(str, scales))} cannot share one figure")
    rows = curve_rows(curves)
    write_csv(rows, out_csv)
    scale = scales.pop()
    plot(curves, out_png, scale)
    if out_provenance is not None:
        doc = {
            "csv": str(out_csv), "png": str(out_png), "scale": scale,
            "inputs": [{"path": str(p), "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest(),
                        "variant": c.get("name"), "budget": c.get("budget"), "train_pixels": c.get("train_pixels"),
                        "train_seconds": c["points"][-1]["train_seconds"] if c["points"] else None,
                        "eval_seconds": c.get("eval_seconds"), "provenance": c.get("provenance")}
                       for p, c in zip(curve_paths, curves)],
            "stage_order": stage_order(curves),
            "provenance": provenance("cpu", None, 0.0),
        }
        atomic_write(out_provenance, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n"))
    return rows


# --------------------------------------------------------------------------------------------
# ride curve {run,plot}
# --------------------------------------------------------------------------------------------


def cmd_curve(args: Any) -> int:
    from .data import atomic_write

    if args.curve_command == "plot":
        rows = render(args.curves, args.out_csv, args.out_png, args.provenance)
        print(f"wrote {len(rows)} points of {len(args.curves)} curves to {args.out_csv} and {args.out_png}")
        return 0
    from .cli import _read_config
    from .kernels import tune_malloc

    doc = _read_config(args.config)
    tune_malloc()
    out = Path(args.out)
    curve = run_curve(doc, args.data, args.test_data, args.out_dir or out.parent, device=args.device, seed=args.seed,
                      progress=not args.no_progress, source=args.config)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(curve, indent=2) + "\n"))
    last = curve["points"][-1]
    print(f"wrote {out}: {len(curve['points'])} points, last {last[curve['unit']]:.4f} bit/px at "
          f"{last['train_pixels']:.4g} training pixels")
    return 0


def add_command(sub: Any) -> None:
    """``ride curve run`` (one curve JSON) and ``ride curve plot`` (CSV + PNG of several)."""
    p = sub.add_parser("curve", help="learning curves: test bit/px against SGD training pixels (ride.curves)")
    cs = p.add_subparsers(dest="curve_command", required=True)
    q = cs.add_parser("run", help="train one model, scoring the test tiles on a schedule; write its curve JSON")
    q.add_argument("--config", required=True, help="a `ride train` config with a `curve` section (ride.curves.curve_config)")
    q.add_argument("--data", required=True, help="training images (HDF5)")
    q.add_argument("--test-data", required=True, help="test images (HDF5); Z-scored rates when it records zscore_*")
    q.add_argument("--out", required=True, help="the curve JSON to write")
    q.add_argument("--out-dir", default=None, help="where model.pt and train.json go (default: beside --out)")
    q.add_argument("--device", default="auto")
    q.add_argument("--seed", type=int, default=None, help="overrides train.seed")
    q.add_argument("--no-progress", action="store_true")
    q = cs.add_parser("plot", help="merge curve JSONs into a CSV and a PNG (and a provenance JSON)")
    q.add_argument("curves", nargs="+", help="curve JSONs, in legend order")
    q.add_argument("--out-csv", required=True)
    q.add_argument("--out-png", required=True)
    q.add_argument("--provenance", default=None, help="JSON with the inputs' checksums and the order at each stage end")
    p.set_defaults(func=cmd_curve)
