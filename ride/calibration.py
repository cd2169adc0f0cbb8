"""ONE documented fit of an unknown parameter of the paper against ONE paper number.

The dead-leaves generator's dequantisation noise width (``datasets.deadleaves.generator.noise``)
is unpublished, and it sets the absolute rates: most dead-leaves pixels equal a neighbour, so
they are predictable up to the noise, and the rate falls by nearly one bit per doubling of the
width. ``ride calibrate`` fits the width so that one row (``calibration.row`` of
``calibration.table``, the MCGSM with 32 components) trained and evaluated at
``calibration.scale`` lands on the paper's value of that row (Z-scored, bit/px):

1. run at ``start`` -> r1;
2. step by the prior slope (bit/px per doubling of the width, written down before the fit):
   ``log2 w2 = log2 w1 + (r1 - target) / prior_slope`` -> r2;
3. secant in log2(width) through both runs -> w3, the width frozen in the config; a third run
   at w3 (``runs: 3``) reports the residual. It is never iterated further, and no other row
   is tuned: every other row is then judged.

Each run regenerates the data set with the same seed: disks, grey levels and the uniform draws
do not depend on the width (``ride.deadleaves.generate_one`` scales one U[0,1) draw by it), so
the runs differ only in the width (common random numbers).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import experiments as E
from .errors import ConfigError
from .provenance import provenance

#: Widths are kept inside this range (grey levels): below it the images are nearly discrete,
#: above it the noise hides the leaves' edges.
WIDTH_RANGE = (0.25, 64.0)


def _clamp(log2_width: float) -> float:
    lo, hi = (math.log2(w) for w in WIDTH_RANGE)
    return min(max(log2_width, lo), hi)


def secant_fit(rate: Callable[[float], float], target: float, start: float, prior_slope: float,
               runs: int = 3) -> dict[str, Any]:
    """Fit the width whose ``rate(width)`` is ``target`` (rates falling with the width).

    Returns ``width`` (rounded to 0.01 grey levels) and ``runs`` (width, rate) in order; with
    ``runs >= 3`` the last run is at ``width`` and its rate the fit's ``residual`` source.
    """
    if prior_slope <= 0 or start <= 0 or runs < 1:
        raise ValueError(f"need prior_slope > 0, start > 0 and runs >= 1, got {prior_slope}, {start}, {runs}")
    history: list[dict[str, float]] = []

    def run(width: float) -> float:
        value = float(rate(width))
        if not math.isfinite(value):
            raise ConfigError(f"calibration run at noise width {width:g} gave a non-finite rate ({value})")
        history.append({"width": width, "rate": value})
        return value

    w1 = round(start, 2)
    r1 = run(w1)
    if runs == 1:
        chosen = 2 ** _clamp(math.log2(w1) + (r1 - target) / prior_slope)
        return {"width": round(chosen, 2), "runs": history, "slope": prior_slope, "slope_source": "prior"}
    w2 = round(2 ** _clamp(math.log2(w1) + (r1 - target) / prior_slope), 2)
    if w2 == w1:  # already on target: a second point half an octave away gives the slope
        w2 = round(w1 * 2 ** 0.5, 2)
    r2 = run(w2)
    slope = -(r2 - r1) / (math.log2(w2) - math.log2(w1))
    source = "secant"
    if not slope > 0:  # noise so small or runs so noisy that the rate did not fall: keep the prior
        slope, source = prior_slope, "prior (secant slope not positive)"
    chosen = round(2 ** _clamp(math.log2(w2) + (r2 - target) / slope), 2)
    out: dict[str, Any] = {"width": chosen, "runs": history, "slope": slope, "slope_source": source}
    if runs >= 3:
        out["check_rate"] = run(chosen)
        out["residual"] = out["check_rate"] - target
    return out


def deadleaves_rate(config: dict[str, Any], spec: dict[str, Any], work_dir: Path, device: str,
                    workers: int, log: Callable[[str], None] = print,
                    after_run: Callable[[list[dict[str, Any]]], None] | None = None) -> Callable[[float], float]:
    """``rate(width)``: generate the data at ``width``, train and evaluate the calibration row.

    Each run leaves ``<work_dir>/noise_<width>/`` with ``model.pt``, ``train.json`` and
    ``eval.json`` (as ``ride evaluate`` writes it); ``after_run`` gets every run's summary so far.
    """
    from .data import save_images
    from .deadleaves import generate, zscore_attrs
    from .evaluate import evaluate
    from .train import train

    table, row, scale = spec["table"], spec["row"], spec["scale"]
    params = E.dataset_params(config, scale, "deadleaves")
    cfg = E.train_config(config, scale, table, row)
    opts = E.eval_options(config, scale, table, row)
    details: list[dict[str, Any]] = []

    def rate(width: float) -> float:
        t0 = time.perf_counter()
        gen = {**params["generator"], "noise": width}
        images = generate(params["num_images"], params["size"], params["seed"], workers=workers, **gen)
        split = params["num_images"] - params["num_test"]
        z = zscore_attrs(images[:split])
        run_dir = work_dir / f"noise_{width:g}"
        save_images(run_dir / "train.h5", images[:split], {"generator": "dead leaves", "params": str(gen), **z})
        t1 = time.perf_counter()
        model = train(cfg, run_dir / "train.h5", run_dir, device=device, seed=config.get("train_seed", 0),
                      progress=False, restart=True, source=f"calibration {row}@{scale}")
        t2 = time.perf_counter()
        result = evaluate(model, torch.from_numpy(images[split:]), tile=opts["tile"], max_tiles=opts["max_tiles"],
                          zscore=(z["zscore_mean"], z["zscore_std"]))
        t3 = time.perf_counter()
        result.update({"model": str(run_dir / "model.pt"), "data": f"dead leaves, noise {width:g} (test split)",
                       "model_config": model.config,
                       "provenance": provenance(next(model.parameters()).device, config.get("train_seed", 0), t3 - t2)})
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
        details.append({"width": width, "bits_per_pixel_z": result["bits_per_pixel_z"],
                        "bits_per_pixel": result["bits_per_pixel"], "sem_images": result["sem_images"],
                        "zscore_std": z["zscore_std"], "num_tiles": result["num_tiles"],
                        "data_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1), "eval_s": round(t3 - t2, 1)})
        log(f"calibration: noise {width:g} -> {result['bits_per_pixel_z']:.4f} bit/px (Z-scored; raw "
            f"{result['bits_per_pixel']:.4f}), data {t1 - t0:.0f} s, train {t2 - t1:.0f} s, eval {t3 - t2:.0f} s")
        if after_run is not None:
            after_run(details)
        return result["bits_per_pixel_z"]

    rate.details = details  # type: ignore[attr-defined]
    return rate


def calibration_spec(config: dict[str, Any]) -> dict[str, Any]:
    spec = config["datasets"]["deadleaves"].get("calibration")
    if spec is None:
        raise ConfigError("config has no datasets.deadleaves.calibration section; nothing to calibrate")
    return spec


def calibrate(config: dict[str, Any], work_dir: str | Path, device: str = "auto", workers: int = 1,
              runs: int | None = None, scale: str | None = None,
              after_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the calibration of ``datasets.deadleaves.calibration`` (``scale``/``runs`` override it).

    ``after_run`` gets a partial document (``"partial": true``) after every run, so a run cut
    short by a time limit keeps what it measured.
    """
    spec = dict(calibration_spec(config))
    if scale is not None:
        spec["scale"] = scale
    target = float(E.variant_spec(config, spec["table"], spec["row"])["paper"])
    head = {"parameter": "datasets.deadleaves.generator.noise", "target": target, **spec}

    def partial(details: list[dict[str, Any]]) -> None:
        if after_run is not None:
            after_run({**head, "partial": True, "run_details": list(details)})

    rate = deadleaves_rate(config, spec, Path(work_dir), device, workers, after_run=partial)
    t0 = time.perf_counter()
    fit = secant_fit(rate, target, float(spec["start"]), float(spec["prior_slope"]), int(runs or spec["runs"]))
    return {**head, **fit, "run_details": rate.details, "wall_time_s": round(time.perf_counter() - t0, 1)}


__all__ = ["WIDTH_RANGE", "calibrate", "calibration_spec", "deadleaves_rate", "secant_fit"]
