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
* the rows listed in ``verdict.order`` must come out in that order. Two rows scored on the same
  tiles are compared by their PAIRED difference d = this - previous (per-tile rates, SEM s
  clustered by test image, ``ride.statistics``): a row MISSes order when d + z s < -slack, i.e.
  when it is significantly more than the slack below its predecessor (one-sided, ``z`` is
  ``verdict.order_z``). The pair is stored in the row (``order_prev``, ``order_diff``,
  ``order_diff_sem``), so ``ride table check`` rejudges from the CSV alone. Where the scale's
  expectation gives ``order_seed_sd`` for the row (the SD of d over training seeds, measured once),
  s is sqrt(SEM^2 + SD^2): one seed's table is judged for what the protocol gives, not for what
  that seed gave. Without per-tile rates
  (older eval JSONs, patch rows) the unpaired rule applies and the verdict says ``unpaired``: a row
  more than the slack below its predecessor is a MISS;
* a column's value is the eval key ``columns.<c>.value`` (Table 3: ``bits_per_pixel_z``, rates on
  Z-scored intensities); an eval that lacks it gives ``columns.<c>.fallback`` instead and the row
  says so (``value_key``, ``column``, ``judged_by``). Gains and order are differences of rows on the
  same test data, which the constant Z-score shift leaves unchanged; a column mixing both units
  judges only the rows in its declared unit (the others read ``not judged``);
* cited rows read ``cited, not ours``; rows not built read ``pending``.
"""
from __future__ import annotations

import csv
import datetime
import itertools
import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import experiments as E
from .data import sha256sum
from .provenance import git_commit
from .statistics import paired_difference_of_results
from .tablefiles import (
    COLUMNS,
    REFERENCE,
    SEM_KINDS,
    check_line,
    failures,
    finite,
    is_judged,
    number,
    read_csv,
    to_html,
    to_markdown,
    write_csv,
    write_text,
)

__all__ = [
    "CITED",
    "COLUMNS",
    "PENDING",
    "REFERENCE",
    "build_rows",
    "check_line",
    "check_table",
    "compare_to_reference",
    "failures",
    "header_notes",
    "judge",
    "order_pairs",
    "read_csv",
    "rejudge",
    "render_from_runs",
    "render_inputs",
    "render_table",
    "seed_spread",
    "write_csv",
]

PENDING = "pending (not run)"
CITED = "cited, not ours"


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
            value_key = column["value"]
            if value_key not in ev and column.get("fallback") in ev:
                # An older eval (e.g. no Z-scored rate): its value in the fallback unit, said in the row.
                value_key = column["fallback"]
                row["column"] = f"{column['label']}; this row {value_key} (eval lacks {column['value']})"
            sem_key = column["sem"] if column["sem"] in ev else None
            row.update(
                status="ours",
                ours_bits_px=number(ev.get(value_key)),
                value_key=value_key,
                log2_jacobian=number((ev.get("zscore") or {}).get("log2_jacobian")),
                sem=number(ev.get(sem_key)) if sem_key else None,
                sem_key=sem_key,
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
    _pair_order(rows, config, table, evals)
    return judge(rows, config, table, scale)


#: Eval keys whose per-tile values are ``tile_rates`` (up to a constant shift): paired order applies.
PAIRED_VALUES = ("bits_per_pixel", "bits_per_pixel_z")


def _pair_order(rows: list[dict[str, Any]], config: Mapping[str, Any], table: str,
                evals: Mapping[str, Mapping[str, Any]]) -> None:
    """Store each ordered row's paired difference to its predecessor(s) in ``order_*`` (strings;
    a row in two chains has two predecessors, joined by ";"). Pairs without per-tile rates on the
    same tiles get an empty difference: the order rule falls back to the unpaired one for them."""
    by = {r["row"]: r for r in rows}
    pairs: dict[str, list[tuple[str, float | None, float | None]]] = {}
    for order in E.order_chains(config, table):
        chain = [n for n in order if n in by and by[n]["status"] == "ours" and finite(by[n]["ours_bits_px"])]
        for prev, cur in itertools.pairwise(chain):
            diff = sem = None
            if by[cur].get("value_key") in PAIRED_VALUES and by[prev].get("value_key") in PAIRED_VALUES:
                try:
                    paired = paired_difference_of_results(evals[cur], evals[prev])
                    diff, sem = paired.mean, paired.sem
                except ValueError:
                    pass  # no per-tile rates, or other tiles: unpaired
            pairs.setdefault(cur, []).append((prev, diff, sem))
    def fmt(v: float | None) -> str:
        return "" if v is None or not math.isfinite(v) else f"{v:.6g}"

    for name, entries in pairs.items():
        by[name]["order_prev"] = ";".join(p for p, _, _ in entries)
        by[name]["order_diff"] = ";".join(fmt(d) for _, d, _ in entries)
        by[name]["order_diff_sem"] = ";".join(fmt(e) for _, _, e in entries)


def order_pairs(row: Mapping[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """A row's stored paired differences: predecessor -> (mean difference, SEM), None where unpaired."""
    prevs = [p for p in str(row.get("order_prev") or "").split(";")]
    diffs = str(row.get("order_diff") or "").split(";")
    sems = str(row.get("order_diff_sem") or "").split(";")
    out = {}
    for i, prev in enumerate(prevs):
        if prev:
            out[prev] = (number(diffs[i]) if i < len(diffs) else None, number(sems[i]) if i < len(sems) else None)
    return out


def _unit(row: Mapping[str, Any]) -> str:
    """The eval key a row's value came from ("" for tables written before ``value_key``)."""
    return str(row.get("value_key") or "")


def _mixed_units(rows: list[dict[str, Any]], config: Mapping[str, Any], table: str) -> dict[str, str]:
    """Rows not in their column's declared unit while other rows of the column are: name -> note."""
    columns = E.table_columns(config, table)
    out: dict[str, str] = {}
    ours = [r for r in rows if r["status"] == "ours"]
    for col, cspec in columns.items():
        members = [r for r in ours if E.column_of(config, table, r["row"]) == col]
        if len({_unit(r) for r in members}) > 1:
            for r in members:
                if _unit(r) != cspec["value"]:
                    out[r["row"]] = (f"value is {_unit(r) or 'of an unrecorded unit'}, other rows {cspec['value']}: "
                                     f"units are not mixed; re-run `ride evaluate`")
    return out


def _gains(rows: list[dict[str, Any]], config: Mapping[str, Any], table: str, skip: Sequence[str] = ()) -> None:
    """Each row's gain over the reference row of its column (none where the column has none, and
    our gain none for the rows in ``skip`` or measured from one of them: other units)."""
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
        if r["row"] in skip or ref in skip:
            continue
        if ours is not None and ours_ref is not None and math.isfinite(ours) and math.isfinite(ours_ref):
            r["ours_gain"] = ours - ours_ref
            r["gain_difference"] = r["ours_gain"] - r["paper_gain"]


def judge(rows: list[dict[str, Any]], config: Mapping[str, Any], table: str, scale: str) -> list[dict[str, Any]]:
    """Fill gains, ``verdict`` and ``judged_by`` of ``rows`` of ``table`` (in place; returned)."""
    spec = E.table_spec(config, table)
    mixed = _mixed_units(rows, config, table)
    _gains(rows, config, table, skip=list(mixed))
    expectation = E.expectation(config, table, scale)
    paper = expectation is None
    # Values of data calibrated to the paper (Table 3's noise width) are judged directly.
    by_value = paper and spec["verdict"].get("paper_judges", "gain") == "value"
    slack = float(spec["verdict"]["order_slack"] if paper else expectation.get("order_slack", spec["verdict"]["order_slack"]))
    problems: dict[str, list[str]] = {r["row"]: [] for r in rows}
    notes: dict[str, str] = {}
    by = {r["row"]: r for r in rows}

    notes.update(mixed)
    for r in rows:
        name = r["row"]
        if r["status"] in ("cited", "pending") or name in mixed:
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
        if ref_pending and not by_value:
            notes[name] = f"reference row {ref} pending" if ref else "no reference row in its column"
            continue
        if ref in mixed and not by_value:
            notes[name] = f"reference row {ref} is in another unit"
            continue
        if paper:
            tol = number(r["tolerance"])
            if tol is None:
                notes[name] = "no tolerance in config"
                continue
            if by_value:
                diff = number(r["difference"])
                if diff is not None and abs(diff) > tol + 1e-12:
                    problems[name].append(f"{ours:.3f} vs paper {r['paper_bits_px']:.3f}: off by {abs(diff):.3f} > {tol:g}")
            elif gain is None:
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

    # Order: each ordered row must not fall significantly more than `slack` below its predecessor
    # (paired, one-sided z); without a paired difference, not more than `slack` (unpaired).
    check_order = paper or bool(expectation.get("order", True))
    columns = E.table_columns(config, table)
    z = number(spec["verdict"].get("order_z"))
    seed_sd = {} if paper else dict(expectation.get("order_seed_sd") or {})
    for order in E.order_chains(config, table) if check_order else []:
        chain = [n for n in order if n in by and by[n]["status"] == "ours" and finite(by[n]["ours_bits_px"])
                 and n not in mixed]
        # A chain holds rows of one column; its slack is in that column's unit.
        chain_slack = slack * float(columns[E.column_of(config, table, order[0])].get("slack_scale", 1.0))
        for prev, cur in zip(chain, chain[1:]):
            a, b = float(by[prev]["ours_bits_px"]), float(by[cur]["ours_bits_px"])
            diff, sem = order_pairs(by[cur]).get(prev, (None, None))
            if z is not None and diff is not None and sem is not None and math.isfinite(diff) and sem >= 0:
                sd = float(seed_sd.get(cur, 0.0))
                err = math.hypot(sem, sd)
                if diff + z * err < -chain_slack - 1e-12:
                    with_sd = f", seed SD {sd:.3f}" if sd else ""
                    problems[cur].append(f"order: {diff:+.3f} ± {sem:.3f}{with_sd} below {prev} "
                                         f"(paired; {diff:+.3f} + {z:g} x {err:.3f} < -{chain_slack:g})")
            elif b < a - chain_slack - 1e-12:
                problems[cur].append(f"order: {b - a:+.3f} below {prev} (unpaired; slack {chain_slack:g})")

    err = "sqrt(SEM^2 + seed SD^2)" if seed_sd else "SEM"
    order_rule = f"order (paired: d + {z:g} {err} >= -{slack:g}; else unpaired, slack {slack:g})" if z is not None \
        else f"order (unpaired, slack {slack:g})"
    if paper:
        judged_by = f"paper: |ours - paper| <= tolerance; {order_rule}" if by_value else \
            f"paper: |gain - paper gain| <= tolerance; {order_rule}"
    else:
        parts = ["finite"] if expectation.get("finite", True) else []
        if expectation.get("gain_range"):
            parts.append("gain range")
        if check_order:
            parts.append(order_rule)
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
        column = columns[E.column_of(config, table, name)]
        unit = _unit(r)
        # A row in another unit than its column declares says so (older evals: no Z-scored rate).
        suffix = f"; unit {unit} (eval lacks {column['value']})" if unit and unit != column["value"] else ""
        r["verdict"], r["judged_by"] = verdict, judged_by + suffix
    return rows




# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def header_notes(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any], table: str,
                 evals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines above a rendered table: the unit of each column (the exact Z-score shift where its
    values are Z-scored) and which standard error ``SEM`` is."""
    columns = E.table_columns(config, table)
    used = {E.column_of(config, table, r["row"]) for r in rows}
    notes = []
    for col, cspec in columns.items():
        if col not in used:
            continue
        label = f"Column {cspec['label']}: " if len(used) > 1 else ""
        if cspec["value"].endswith("_z"):
            members = [r["row"] for r in rows if E.column_of(config, table, r["row"]) == col and r["status"] == "ours"]
            zs = {(round(float(z["std"]), 6), round(float(z["log2_jacobian"]), 6))
                  for n in members for z in [(evals.get(n) or {}).get("zscore")] if z}
            shift = "; ".join(f"std {sd:.4f}: log2 Jacobian {lj:+.4f} bit/px" for sd, lj in sorted(zs)) or \
                "its value from each eval.json's `zscore`; no row evaluated yet"
            fallback = [n for n in members if by_unit(rows, n) not in ("", cspec["value"])]
            notes.append(
                f"{label or 'Values: '}rates on Z-scored intensities z = (x - mean) / std (mean and std of the training set): "
                f"`{cspec['value']}` = `bits_per_pixel` + log2(std) bit/px, the log2 Jacobian per pixel, added "
                f"exactly ({shift}). Gains and order are unchanged by this constant shift."
                + (f" Rows {', '.join(fallback)}: their evals lack `{cspec['value']}`, shown as "
                   f"`{cspec.get('fallback')}` (see Column and judged_by)." if fallback else ""))
        notes.append(f"{label or 'Standard errors: '}SEM {SEM_KINDS.get(cspec['sem'], cspec['sem'])} "
                     f"(`{cspec['sem']}` of eval.json).")
    return notes


def by_unit(rows: Sequence[Mapping[str, Any]], name: str) -> str:
    """The ``value_key`` of row ``name`` ("" when unrecorded)."""
    return next((_unit(r) for r in rows if r["row"] == name), "")


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
    # every commit behind a row: its evaluation's and its training's (rows may come from other runs)
    commits = sorted({str(c) for d in [*evals.values(), *trains.values()]
                      if d and (c := (d.get("provenance") or {}).get("git_commit"))})
    return {
        "table": spec["title"],
        "scale": scale,
        "scale_config": E.scale_of(config, scale),
        # this table's changes to scale_config's training options (tables.<table>.budget.<scale>)
        "table_budget": (spec.get("budget") or {}).get(scale) or {},
        "dataset": (E.dataset_params(config, scale, E.table_dataset(config, table, scale))
                    if E.table_dataset(config, table, scale) in config["datasets"] else E.table_dataset(config, table, scale)),
        "dataset_sha256": dict(datasets or {}),
        # A table of pending and cited rows only reads no data set: say so rather than leave it blank.
        **({} if datasets or evals else {"data_read": "none: every row is pending or cited"}),
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
            "git_commit": git_commit(),  # the code that rendered (each row's run names its own)
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
        budget = (spec.get("budget") or {}).get(scale)
        if budget:  # the table's own budget replaces part of what the scale's description says
            description += (f" This table's budget at this scale (tables.{table}.budget.{scale}) replaces those options: "
                            + "; ".join(f"{key} {json.dumps(val)}" for key, val in budget.items()) + ".")
        notes = header_notes(rows, config, table, evals)
        write_text(out_md, to_markdown(rows, spec["title"], scale, spec.get("caption", ""), description, notes))
    if out_html:
        write_text(out_html, to_html(rows, spec["title"], scale))
    if out_provenance:
        sums = {k: (Path(p).read_text().split()[0] if Path(p).exists() else None)
                for k, p in (dataset_checksums or {}).items()}
        models = {k: {"path": str(p), "sha256": sha256sum(p)} for k, p in (model_paths or {}).items()}
        doc = provenance(config, table, scale, evals, trains, sums, models, extra_provenance)
        write_text(out_provenance, json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    return rows


def render_from_runs(
    config: Mapping[str, Any], table: str, scale: str, runs: str | Path, out_dir: str | Path,
    extra_provenance: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Render ``out_dir/<table>.{csv,md,html,provenance.json}`` from run folders kept outside the
    workflow (``runs/<variant>/{eval,train}.json, model.pt``, e.g. rows trained on different
    machines). The files are those ``rule table`` reads, with ``runs/<scale>/<table>/`` replaced
    by ``runs``; a row without its eval.json is pending. Data checksums and Snakemake benchmarks
    are read where they exist (paths relative to the working directory)."""
    cfg = E.table_config(config, scale, table)
    prefix = E.run_dir(scale, table, "")
    files = {k: str(Path(runs) / v[len(prefix):]) if v.startswith(prefix) else v
             for k, v in E.table_input_files(cfg, scale, table).items()}
    found = {k: v for k, v in files.items() if Path(v).exists()}
    for key in found:
        if key.startswith("eval_") and f"model_{key[5:]}" not in found:
            raise FileNotFoundError(f"{found[key]} has no model beside it: {files['model_' + key[5:]]} is missing "
                                    "(copy the run's model.pt with its eval.json)")
    out = Path(out_dir)
    return render_inputs(cfg, table, scale, found, out / f"{table}.csv", out / f"{table}.md", out / f"{table}.html",
                         out / f"{table}.provenance.json", extra_provenance)


def render_inputs(
    config: Mapping[str, Any], table: str, scale: str, inputs: Mapping[str, str], out_csv: str | Path,
    out_md: str | Path, out_html: str | Path, out_provenance: str | Path, extra_provenance: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """:func:`render_table` on files keyed as ``E.table_input_files`` keys them (``eval_<row>``,
    ``train_<row>``, ``bench_<row>``, ``checksum_<part>``, ``model_<row>``): rule ``table``'s inputs."""
    def pick(kind: str) -> dict[str, str]:
        return {k[len(kind):]: str(v) for k, v in inputs.items() if k.startswith(kind)}

    return render_table(config, table, scale, pick("eval_"), pick("train_"), out_csv, out_md, out_html, out_provenance,
                        benchmark_paths=pick("bench_"), dataset_checksums=pick("checksum_"), model_paths=pick("model_"),
                        extra_provenance=extra_provenance)


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
    if not msgs and not any(is_judged(r) for r in rows):
        return False, [check_line(rows)]  # nothing to judge is not a pass
    return not msgs, msgs


def check_summary(path: str | Path, config: Mapping[str, Any] | None = None) -> tuple[bool, str]:
    """(ok, report) of ``ride table check`` for one CSV: a line, then one line per MISS. A table
    with no judged row (e.g. all pending) does not pass: its line says "nothing to judge"."""
    ok, msgs = check_table(path, config)
    rows = read_csv(path)
    if config is not None and rows:
        rows = rejudge(rows, config, table_of(path))
    scale = rows[0]["scale"] if rows else "?"
    judged = sum(1 for r in rows if is_judged(r))
    pending = f"; pending: {', '.join(r['row'] for r in rows if r.get('status') == 'pending')}" if any(
        r.get("status") == "pending" for r in rows) else ""
    if ok:
        return True, f"{path}: scale {scale}: {judged} row(s) judged, all pass{pending}"
    if not rows or not any("MISS" in str(r.get("verdict")) for r in rows):
        return False, f"{path}: scale {scale}: {msgs[0]}{pending}"
    return False, "\n".join([f"{path}: scale {scale}: {len(msgs)} row(s) outside tolerance/expectation:"]
                            + [f"  {m}" for m in msgs])


def seed_spread(tables: Sequence[Sequence[Mapping[str, Any]]], factor: float = 3.0, floor: float = 0.005) -> dict[str, Any]:
    """Per-row standard deviation of ``ours_bits_px`` across tables of different seeds.

    Returns the spreads and ``tolerance = max(factor * largest row SD, floor)``: the tolerance
    the smoke test allows between a fresh smoke run and the committed smoke references; and
    ``order``: per ordered row with a paired difference d to its predecessor in every table, the
    seeds' d, their SEMs, mean and SD (sample SD, n - 1): an expectation's ``order_seed_sd``.
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
    # Paired order differences d (this row - its predecessor, same tiles), where every table has one.
    order: dict[str, dict[str, Any]] = {}
    first = {r["row"]: r for r in tables[0]}
    for name, row in first.items():
        for prev in order_pairs(row):
            pairs = [order_pairs(next((r for r in rows if r["row"] == name), {})).get(prev, (None, None))
                     for rows in tables]
            if all(d is not None and e is not None and math.isfinite(d) for d, e in pairs):
                diffs = [d for d, _ in pairs]
                order[name] = {"prev": prev, "diffs": diffs, "sems": [e for _, e in pairs],
                               "mean": statistics.fmean(diffs), "sd": statistics.stdev(diffs)}
    return {
        "num_seeds": len(tables),
        "values": values,
        "sd": sd,
        "order": order,
        "max_sd": largest,
        "factor": factor,
        "floor": floor,
        "tolerance": max(factor * largest, floor),
        "rule": f"tolerance = max({factor:g} x largest per-row SD across seeds, {floor:g}) bit/px",
    }


def _raw_value(row: Mapping[str, Any]) -> float | None:
    """``ours_bits_px`` in raw bit/px (the Z-score shift taken off where the value is Z-scored)."""
    value, shift = number(row.get("ours_bits_px")), number(row.get("log2_jacobian"))
    if value is not None and _unit(row).endswith("_z"):
        return value - shift if shift is not None else None
    return value


def compare_to_reference(
    rows: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], tolerance: float
) -> list[str]:
    """Rows whose bits/px differ from the reference table by more than ``tolerance``.

    Values are compared in raw bit/px: a Z-scored value (``value_key`` ``*_z``) less its exact
    ``log2_jacobian``, so a table from Z-scored evals compares with references from older ones."""
    ref = {r["row"]: r for r in reference}
    out = []
    for r in rows:
        if r.get("status") != "ours":
            continue
        if r["row"] not in ref or ref[r["row"]].get("status") != "ours":
            out.append(f"row {r['row']}: no reference value")
            continue
        a, b = _raw_value(r), _raw_value(ref[r["row"]])
        if a is None or b is None or not math.isfinite(a) or abs(a - b) > tolerance:
            out.append(f"row {r['row']}: {a} vs reference {b} (tolerance {tolerance:g})")
    return out


if __name__ == "__main__":
    # ``python -m ride.tables check|spread ...`` is ``ride table check|spread ...`` (it used to run
    # nothing and exit 0, a check that could not fail).
    import sys

    from .cli import main

    raise SystemExit(main(["table", *sys.argv[1:]]))
