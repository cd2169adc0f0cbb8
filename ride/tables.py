"""Result tables: build any table of the config from eval JSONs, judge it, render it, check it.

A table is a section ``tables.<table>`` of ``config/config.yaml`` (which rows, which data set,
how rows are judged; see ``ride.experiments``). :func:`render_table` turns the ``ride evaluate``
JSONs of its rows into ``results/<scale>/<table>.{csv,md,html}`` and
``<table>.provenance.json``; ``ride table check`` re-judges a rendered CSV with the config and
exits 1 naming every row that misses.

Verdicts
--------
Absolute bits/px are shown beside the paper's; a row is judged by its *gain* over the table's
reference row (``verdict.reference``) against the paper's gain over the paper's reference row:

* paper scale: ``|our gain - paper gain| <= tolerance`` -> ``within tolerance``, else ``MISS``;
* other scales: the table's ``expectations.<scale>`` (finite values, gain ranges) ->
  ``expected-at-<scale>: ok`` or ``expected-at-<scale>: MISS`` -- never the paper's tolerance;
* the rows listed in ``verdict.order`` must come out in that order: a row more than the slack
  below its predecessor is a ``MISS`` (order);
* cited rows read ``cited, not ours``; rows not built read ``pending``.
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import experiments as E
from .data import sha256sum
from .tablefiles import COLUMNS, failures, finite, number, read_csv, to_html, to_markdown, write_csv, write_text

__all__ = ["COLUMNS", "CITED", "PENDING", "REFERENCE", "build_rows", "check_table", "compare_to_reference", "failures",
           "judge", "read_csv", "rejudge", "render_table", "seed_spread", "write_csv"]

PENDING = "pending (needs GPU)"
CITED = "cited, not ours"
REFERENCE = "reference row (gains are measured from it)"


# --------------------------------------------------------------------------------------------
# Building and judging
# --------------------------------------------------------------------------------------------


def _device(*docs: Mapping[str, Any] | None) -> str:
    seen = []
    for doc in docs:
        if not doc:
            continue
        dev = (doc.get("provenance") or {}).get("device") or doc.get("device")
        if dev and str(dev) not in seen:
            seen.append(str(dev))
    return " / ".join(seen)


def _wall(doc: Mapping[str, Any] | None) -> float | None:
    if not doc:
        return None
    for key in ("wall_time_s", "wall_time", "elapsed_s"):
        if finite(doc.get(key)):
            return float(doc[key])
    prov = doc.get("provenance") or {}
    if finite(prov.get("wall_time_s")):
        return float(prov["wall_time_s"])
    return None


def read_benchmark(path: str | Path) -> float | None:
    """Seconds from a Snakemake ``benchmark:`` TSV (column ``s``), or None."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    vals = [float(r["s"]) for r in rows if finite(r.get("s"))]
    return sum(vals) / len(vals) if vals else None


def build_rows(
    config: Mapping[str, Any],
    table: str,
    scale: str,
    evals: Mapping[str, Mapping[str, Any]],
    trains: Mapping[str, Mapping[str, Any] | None] | None = None,
    train_wall: Mapping[str, float | None] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``table`` at ``scale`` from eval JSONs (``ride evaluate --out``) keyed by variant.

    ``trains`` holds the ``train.json`` of each trained variant (for its device and wall time);
    ``train_wall`` gives training seconds where ``train.json`` has none (Snakemake benchmarks).
    """
    trains = trains or {}
    train_wall = train_wall or {}
    pending = E.pending_variants(config, table)
    columns = E.table_columns(config, table)
    rows = []
    for name in E.table_variants(config, table):
        spec = E.variant_spec(config, table, name)
        column = columns[E.column_of(config, table, name)]
        row: dict[str, Any] = {c: None for c in COLUMNS}
        row.update(row=name, model=spec["label"], scale=scale, paper_bits_px=float(spec["paper"]),
                   column=column["label"])
        row["tolerance"] = spec.get("tolerance")
        if spec.get("cited"):
            row.update(status="cited", source=spec.get("source", ""), ensemble=False)
        elif name in pending or name not in evals:
            row.update(status="pending", ensemble=bool(spec.get("ensemble", False)))
        else:
            ev = evals[name]
            src = E.model_source(config, table, name)
            tr = trains.get(src)
            t_train = _wall(tr)
            if t_train is None:
                t_train = train_wall.get(src)
            t_eval = _wall(ev)
            total = None if t_eval is None and t_train is None else (t_train or 0.0) + (t_eval or 0.0)
            row.update(
                status="ours",
                ours_bits_px=number(ev.get(column["value"])),
                sem=number(ev.get(column["sem"])),
                device=_device(tr, ev),
                train_wall_s=t_train,
                eval_wall_s=t_eval,
                wall_time_s=total,
                num_tiles=ev.get("num_tiles"),
                ensemble=bool(ev.get("ensemble", spec.get("ensemble", False))),
                source=f"trained here ({src})" if src == name else f"model of {src}, evaluated here",
            )
            if row["ours_bits_px"] is not None:
                row["difference"] = row["ours_bits_px"] - row["paper_bits_px"]
        rows.append(row)
    return judge(rows, config, table, scale)


def _gains(rows: list[dict[str, Any]], config: Mapping[str, Any], table: str) -> None:
    """Each row's gain over the reference row of its column (none where the column has none)."""
    spec = E.table_spec(config, table)
    by = {r["row"]: r for r in rows}
    for r in rows:
        r["paper_gain"] = r["ours_gain"] = r["gain_difference"] = None
        ref = E.reference_of(config, table, r["row"])
        if r["status"] == "cited" or ref is None or r["row"] == ref:
            continue
        paper_ref = float(spec["variants"][ref]["paper"])
        ours_ref = number(by[ref]["ours_bits_px"]) if ref in by else None
        r["paper_gain"] = float(r["paper_bits_px"]) - paper_ref
        ours = number(r["ours_bits_px"])
        if ours is not None and ours_ref is not None and math.isfinite(ours) and math.isfinite(ours_ref):
            r["ours_gain"] = ours - ours_ref
            r["gain_difference"] = r["ours_gain"] - r["paper_gain"]


def judge(rows: list[dict[str, Any]], config: Mapping[str, Any], table: str, scale: str) -> list[dict[str, Any]]:
    """Fill gains, ``verdict`` and ``judged_by`` of ``rows`` of ``table`` (in place; returned)."""
    spec = E.table_spec(config, table)
    _gains(rows, config, table)
    expectation = E.expectation(config, table, scale)
    paper = expectation is None
    slack = float(spec["verdict"]["order_slack"] if paper else expectation.get("order_slack", spec["verdict"]["order_slack"]))
    problems: dict[str, list[str]] = {r["row"]: [] for r in rows}
    notes: dict[str, str] = {}
    by = {r["row"]: r for r in rows}

    for r in rows:
        name = r["row"]
        if r["status"] in ("cited", "pending"):
            continue
        ref = E.reference_of(config, table, name)
        ref_pending = ref is None or ref not in by or by[ref]["status"] == "pending"
        ours = number(r["ours_bits_px"])
        if ours is None or not math.isfinite(ours):
            if paper or expectation.get("finite", True):
                problems[name].append(f"bits/px is not finite ({r['ours_bits_px']})")
            continue
        if name == ref:
            continue
        gain = number(r["ours_gain"])
        if ref_pending:
            notes[name] = f"reference row {ref} pending" if ref else "no reference row in its column"
            continue
        if paper:
            tol = number(r["tolerance"])
            if tol is None:
                notes[name] = "no tolerance in config"
                continue
            if gain is None:
                problems[name].append(f"no gain: reference row {ref} is missing")
            elif abs(gain - r["paper_gain"]) > tol + 1e-12:
                problems[name].append(
                    f"gain {gain:+.3f} vs paper {r['paper_gain']:+.3f}: off by {abs(gain - r['paper_gain']):.3f} > {tol:g}"
                )
        else:
            rng = (expectation.get("gain_range") or {}).get(name)
            if rng is not None:
                lo, hi = rng
                if gain is None:
                    problems[name].append(f"no gain: reference row {ref} is missing")
                elif not lo <= gain <= hi:
                    problems[name].append(f"gain {gain:+.3f} outside expected [{lo:+g}, {hi:+g}]")

    # Order: each ordered row with a value must not fall more than `slack` below its predecessor.
    check_order = paper or bool(expectation.get("order", True))
    columns = E.table_columns(config, table)
    for order in E.order_chains(config, table) if check_order else []:
        chain = [n for n in order if n in by and by[n]["status"] == "ours" and finite(by[n]["ours_bits_px"])]
        # A chain holds rows of one column; its slack is in that column's unit.
        chain_slack = slack * float(columns[E.column_of(config, table, order[0])].get("slack_scale", 1.0))
        for prev, cur in zip(chain, chain[1:]):
            a, b = float(by[prev]["ours_bits_px"]), float(by[cur]["ours_bits_px"])
            if b < a - chain_slack - 1e-12:
                problems[cur].append(f"order: {b - a:+.3f} below {prev} (slack {chain_slack:g})")

    if paper:
        judged_by = f"paper: |gain - paper gain| <= tolerance; order (slack {slack:g})"
    else:
        parts = ["finite"] if expectation.get("finite", True) else []
        if expectation.get("gain_range"):
            parts.append("gain range")
        if check_order:
            parts.append(f"order (slack {slack:g})")
        judged_by = f"{scale} expectation: " + (", ".join(parts) or "nothing")
    for r in rows:
        name = r["row"]
        if r["status"] == "cited":
            r["verdict"], r["judged_by"] = CITED, "not judged"
            continue
        if r["status"] == "pending":
            r["verdict"], r["judged_by"] = PENDING, "not judged"
            continue
        issues = problems[name]
        ref = E.reference_of(config, table, name)
        if paper:
            if issues:
                verdict = "MISS: " + "; ".join(issues)
            elif name == ref:
                verdict = REFERENCE
            elif name in notes:
                verdict = f"not judged ({notes[name]})"
            else:
                verdict = "within tolerance"
        else:
            prefix = f"expected-at-{scale}"
            if issues:
                verdict = f"{prefix}: MISS: " + "; ".join(issues)
            elif name == ref:
                verdict = f"{prefix}: ok; {REFERENCE}"
            elif name in notes:
                verdict = f"{prefix}: not judged ({notes[name]})"
            else:
                verdict = f"{prefix}: ok"
        r["verdict"], r["judged_by"] = verdict, judged_by
    return rows




# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def provenance(
    config: Mapping[str, Any],
    table: str,
    scale: str,
    evals: Mapping[str, Mapping[str, Any]],
    trains: Mapping[str, Mapping[str, Any] | None],
    datasets: Mapping[str, str | None] | None = None,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``results/<scale>/<table>.provenance.json``: what produced every row."""
    spec = E.table_spec(config, table)
    commits = sorted({str((d.get("provenance") or {}).get("git_commit")) for d in evals.values() if d})
    return {
        "table": spec["title"],
        "scale": scale,
        "scale_config": E.scale_of(config, scale),
        "dataset": (E.dataset_params(config, scale, E.table_dataset(config, table, scale))
                    if E.table_dataset(config, table, scale) in config["datasets"] else E.table_dataset(config, table, scale)),
        "dataset_sha256": dict(datasets or {}),
        "variants": spec["variants"],
        "verdict": spec["verdict"],
        "pending": sorted(E.pending_variants(config, table)),
        "git_commits": commits,
        "models": dict(models or {}),
        "rows": {
            name: {
                "eval": (evals[name] or {}).get("provenance"),
                "eval_command": ((evals[name] or {}).get("provenance") or {}).get("command"),
                "train": (trains.get(E.model_source(config, table, name)) or {}).get("provenance"),
            }
            for name in evals
        },
        "rendered": {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "host": platform.node(),
            **dict(extra or {}),
        },
    }


def render_table(
    config: Mapping[str, Any],
    table: str,
    scale: str,
    eval_paths: Mapping[str, str],
    train_paths: Mapping[str, str],
    out_csv: str | Path,
    out_md: str | Path | None = None,
    out_html: str | Path | None = None,
    out_provenance: str | Path | None = None,
    benchmark_paths: Mapping[str, str] | None = None,
    dataset_checksums: Mapping[str, str] | None = None,
    model_paths: Mapping[str, str] | None = None,
    extra_provenance: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Read the eval/train JSONs, write the CSV (+ Markdown, HTML, provenance); return the rows.

    ``model_paths`` (variant -> ``model.pt``) are the models the rows cite; their sha256 goes
    into the provenance, so a table names exactly the files it was computed from.
    """
    evals = {k: json.loads(Path(p).read_text()) for k, p in eval_paths.items()}
    trains = {k: (json.loads(Path(p).read_text()) if Path(p).exists() else None) for k, p in train_paths.items()}
    bench = {k: read_benchmark(p) for k, p in (benchmark_paths or {}).items()}
    rows = build_rows(config, table, scale, evals, trains, bench)
    spec = E.table_spec(config, table)
    write_csv(rows, out_csv)
    if out_md:
        description = E.scale_of(config, scale).get("description", "")
        write_text(out_md, to_markdown(rows, spec["title"], scale, spec.get("caption", ""), description))
    if out_html:
        write_text(out_html, to_html(rows, spec["title"], scale))
    if out_provenance:
        sums = {k: (Path(p).read_text().split()[0] if Path(p).exists() else None)
                for k, p in (dataset_checksums or {}).items()}
        models = {k: {"path": str(p), "sha256": sha256sum(p)} for k, p in (model_paths or {}).items()}
        doc = provenance(config, table, scale, evals, trains, sums, models, extra_provenance)
        write_text(out_provenance, json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    return rows


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def table_of(path: str | Path) -> str:
    """The table a CSV holds: its file name (``results/quick/table3.csv`` -> ``table3``)."""
    return Path(path).stem


def rejudge(rows: list[dict[str, Any]], config: Mapping[str, Any], table: str) -> list[dict[str, Any]]:
    """Recompute gains and verdicts of rows read from a CSV with the given config."""
    scales = {r["scale"] for r in rows}
    if len(scales) != 1:
        raise ValueError(f"a table must hold one scale, found {sorted(scales)}")
    rows = [dict(r) for r in rows]
    have = {r["row"] for r in rows}
    missing = [v for v in E.table_variants(config, table) if v not in have]
    if missing:
        raise ValueError(f"table lacks rows {missing} of the config's {table}")
    for r in rows:
        spec = E.variant_spec(config, table, r["row"])
        r["paper_bits_px"] = float(spec["paper"])
        r["tolerance"] = spec.get("tolerance")
    return judge(rows, config, table, scales.pop())


def check_table(path: str | Path, config: Mapping[str, Any] | None = None) -> tuple[bool, list[str]]:
    """(ok, messages) for a rendered table; with ``config`` the verdicts are recomputed first."""
    rows = read_csv(path)
    if not rows:
        return False, [f"{path}: empty table"]
    if config is not None:
        rows = rejudge(rows, config, table_of(path))
    msgs = failures(rows)
    return not msgs, msgs


def check_summary(path: str | Path, config: Mapping[str, Any] | None = None) -> tuple[bool, str]:
    """(ok, report) of ``ride table check`` for one CSV: a line, then one line per MISS."""
    ok, msgs = check_table(path, config)
    rows = read_csv(path)
    scale = rows[0]["scale"] if rows else "?"
    judged = sum(1 for r in rows if r.get("status") == "ours")
    pending = f"; pending: {', '.join(r['row'] for r in rows if r.get('status') == 'pending')}" if any(
        r.get("status") == "pending" for r in rows) else ""
    if ok and not judged:
        return False, f"{path}: scale {scale}: nothing to judge (no row of ours){pending}"
    if ok:
        return True, f"{path}: scale {scale}: {judged} row(s) judged, all pass{pending}"
    return False, "\n".join([f"{path}: scale {scale}: {len(msgs)} row(s) outside tolerance/expectation:"]
                            + [f"  {m}" for m in msgs])


def seed_spread(tables: Sequence[Sequence[Mapping[str, Any]]], factor: float = 3.0, floor: float = 0.005) -> dict[str, Any]:
    """Per-row standard deviation of ``ours_bits_px`` across tables of different seeds.

    Returns the spreads and ``tolerance = max(factor * largest row SD, floor)``: the tolerance
    the smoke test allows between a fresh smoke run and the committed smoke references.
    """
    if len(tables) < 2:
        raise ValueError("need tables from at least two seeds")
    values: dict[str, list[float]] = {}
    for rows in tables:
        for r in rows:
            v = number(r.get("ours_bits_px"))
            if r.get("status") == "ours" and v is not None and math.isfinite(v):
                values.setdefault(r["row"], []).append(v)
    sd = {k: statistics.stdev(v) for k, v in values.items() if len(v) >= 2}
    largest = max(sd.values()) if sd else 0.0
    return {
        "num_seeds": len(tables),
        "values": values,
        "sd": sd,
        "max_sd": largest,
        "factor": factor,
        "floor": floor,
        "tolerance": max(factor * largest, floor),
        "rule": f"tolerance = max({factor:g} x largest per-row SD across seeds, {floor:g}) bit/px",
    }


def compare_to_reference(
    rows: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], tolerance: float
) -> list[str]:
    """Rows whose bits/px differ from the reference table by more than ``tolerance``."""
    ref = {r["row"]: r for r in reference}
    out = []
    for r in rows:
        if r.get("status") != "ours":
            continue
        if r["row"] not in ref or ref[r["row"]].get("status") != "ours":
            out.append(f"row {r['row']}: no reference value")
            continue
        a, b = number(r.get("ours_bits_px")), number(ref[r["row"]].get("ours_bits_px"))
        if a is None or b is None or not math.isfinite(a) or abs(a - b) > tolerance:
            out.append(f"row {r['row']}: {a} vs reference {b} (tolerance {tolerance:g})")
    return out


