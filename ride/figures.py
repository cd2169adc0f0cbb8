"""Neighbourhood-width figures (the paper's Figure 2): bits/px of each model against the width.

Paper (section 3.3, Figure 2): on dead leaves, a wider causal neighbourhood barely helps the
MCGSM (it saturates quickly), while RIDE is far above it at every width and slightly
deteriorates for wide neighbourhoods. Our points come from ``ride evaluate`` JSONs of models
that differ from a table's row only in ``nb_size``; ``ride.experiments.figure_variants`` says
which exist at which scale. Files are written atomically (``ride.data.atomic_write``).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import experiments as E
from .data import atomic_write
from .neighborhood import Neighborhood

COLUMNS = ("model", "label", "nb_size", "num_inputs", "bits_per_px", "sem", "value_key", "scale", "variant", "device",
           "num_tiles")


def figure_rows(
    config: Mapping[str, Any], figure: str, scale: str, evals: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per (model, width) from eval JSONs keyed by the evaluated variant name."""
    table = E.figure_spec(config, figure)["table"]
    rows = []
    for base, nb, name in E.figure_variants(config, figure, scale):
        ev = evals.get(name)
        if ev is None:
            continue
        kind = "MCGSM" if E.model_kwargs(config, scale, table, name)["num_layers"] == 0 else "RIDE"
        rows.append(
            {
                "model": kind,
                "label": E.variant_spec(config, table, base)["label"],
                "nb_size": nb,
                "num_inputs": Neighborhood(nb).dim,
                # As Table 3: Z-scored rates where the data carry their std, SEM over test images.
                "bits_per_px": ev.get("bits_per_pixel_z", ev.get("bits_per_pixel")),
                "sem": ev.get("sem_images", ev.get("sem")),
                "value_key": "bits_per_pixel_z" if "bits_per_pixel_z" in ev else "bits_per_pixel",
                "scale": scale,
                "variant": name,
                "device": (ev.get("provenance") or {}).get("device", ""),
                "num_tiles": ev.get("num_tiles"),
            }
        )
    rows.sort(key=lambda r: (r["model"], r["nb_size"]))
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    from .data import write_csv_rows

    write_csv_rows(path, rows, COLUMNS)


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["nb_size"] = int(r["nb_size"])
        for k in ("bits_per_px", "sem"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else math.nan
    return rows


def plot(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str, scale: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    styles = {"MCGSM": dict(color="tab:gray", marker="s"), "RIDE": dict(color="tab:red", marker="o")}
    for kind in ("MCGSM", "RIDE"):
        pts = sorted((r for r in rows if r["model"] == kind), key=lambda r: r["nb_size"])
        if not pts:
            continue
        x = [r["nb_size"] for r in pts]
        y = [float(r["bits_per_px"]) for r in pts]
        e = [float(r["sem"]) if r.get("sem") not in (None, "") else 0.0 for r in pts]
        ax.errorbar(x, y, yerr=e, label=f"{kind} ({pts[0]['label']})", capsize=3, **styles[kind])
    ax.set_xlabel("neighbourhood width n")
    zscored = bool(rows) and all(r.get("value_key") == "bits_per_pixel_z" for r in rows)
    ax.set_ylabel("log-likelihood [bit/px" + (", Z-scored]" if zscored else "]"))
    ax.set_title(f"{title} ({scale} scale)")
    widths = sorted({r["nb_size"] for r in rows})
    if widths:
        ax.set_xticks(widths)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format=Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)


def render_figure(
    config: Mapping[str, Any], figure: str, scale: str, eval_paths: Mapping[str, str], out_csv: str | Path,
    out_png: str | Path,
) -> list[dict[str, Any]]:
    """Write ``figure``'s points at ``scale`` as CSV and PNG from the eval JSONs of its variants."""
    if not E.figure_variants(config, figure, scale):
        raise ValueError(f"{figure} has no entry for scale {scale!r} in the config (figures.{figure}.scales)")
    evals = {k: json.loads(Path(p).read_text()) for k, p in eval_paths.items()}
    rows = figure_rows(config, figure, scale, evals)
    write_csv(rows, out_csv)
    plot(rows, out_png, E.figure_spec(config, figure)["title"], scale)
    return rows
