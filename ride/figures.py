"""Figure 2 of the paper: bits/px of the MCGSM and of RIDE against the neighbourhood width.

Paper (section 3.3, Figure 2): on dead leaves, a wider causal neighbourhood barely helps the
MCGSM (it saturates quickly), while RIDE is far above it at every width and slightly
deteriorates for wide neighbourhoods. Our points come from ``ride evaluate`` JSONs of models
that differ from a Table 3 row only in ``nb_size`` (see ``ride.tables.figure_variants``).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .tables import figure_variants, model_kwargs, scale_of, variant_spec

COLUMNS = ("model", "label", "nb_size", "num_inputs", "bits_per_px", "sem", "scale", "variant", "device", "num_tiles")


def num_inputs(nb_size: int) -> int:
    """Causal neighbourhood size for width ``n``: (n+1)//2 rows of n pixels minus the target and right."""
    rows = (nb_size + 1) // 2
    return (rows - 1) * nb_size + rows - 1


def figure2_rows(config: Mapping[str, Any], scale: str, evals: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, width) from eval JSONs keyed by the evaluated variant name."""
    rows = []
    for base, nb, name in figure_variants(config, scale):
        ev = evals.get(name)
        if ev is None:
            continue
        kind = "MCGSM" if model_kwargs(config, scale, name)["num_layers"] == 0 else "RIDE"
        rows.append(
            {
                "model": kind,
                "label": variant_spec(config, base)["label"],
                "nb_size": nb,
                "num_inputs": num_inputs(nb),
                "bits_per_px": ev.get("bits_per_pixel"),
                "sem": ev.get("sem"),
                "scale": scale,
                "variant": name,
                "device": (ev.get("provenance") or {}).get("device", ""),
                "num_tiles": ev.get("num_tiles"),
            }
        )
    rows.sort(key=lambda r: (r["model"], r["nb_size"]))
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["nb_size"] = int(r["nb_size"])
        for k in ("bits_per_px", "sem"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else math.nan
    return rows


def plot(rows: Sequence[Mapping[str, Any]], path: str | Path, scale: str) -> None:
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
    ax.set_ylabel("log-likelihood [bit/px]")
    ax.set_title(f"Figure 2, dead leaves ({scale} scale)")
    widths = sorted({r["nb_size"] for r in rows})
    if widths:
        ax.set_xticks(widths)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def render_figure2(
    config: Mapping[str, Any], scale: str, eval_paths: Mapping[str, str], out_csv: str | Path, out_png: str | Path
) -> list[dict[str, Any]]:
    if not scale_of(config, scale).get("figure2"):
        raise ValueError(f"scale {scale!r} has no figure2 entry in the config")
    evals = {k: json.loads(Path(p).read_text()) for k, p in eval_paths.items()}
    rows = figure2_rows(config, scale, evals)
    write_csv(rows, out_csv)
    plot(rows, out_png, scale)
    return rows
