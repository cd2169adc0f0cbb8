"""The files of a result table: the CSV columns, and the CSV, Markdown and HTML renderings.

Every file is written atomically (``ride.data.atomic_write``): an interrupted render leaves the
previous file, never half of one.
"""
from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .data import atomic_write

#: Columns of results/<scale>/<table>.csv, in order.
COLUMNS = (
    "row",
    "model",
    "scale",
    "status",
    "paper_bits_px",
    "ours_bits_px",
    "sem",
    "difference",
    "paper_gain",
    "ours_gain",
    "gain_difference",
    "tolerance",
    "verdict",
    "judged_by",
    "device",
    "wall_time_s",
    "train_wall_s",
    "eval_wall_s",
    "num_tiles",
    "ensemble",
    "source",
    "column",  # the value column (tables.<t>.columns): paper_bits_px/ours_bits_px/sem are in its unit
    "value_key",  # the eval.json key ours_bits_px came from (e.g. bits_per_pixel_z); empty in older tables
    "log2_jacobian",  # the exact Z-score shift of that eval (bits_per_pixel_z - bits_per_pixel), if any
    "sem_key",  # the eval.json key of `sem` (sem_images, sem_clustered, ...); empty where the eval lacks it
    # Order on the same tiles: predecessor(s) in verdict.order, paired mean difference (this - prev)
    # and its image-clustered SEM; several predecessors (a row in two chains) are joined by ";".
    "order_prev",
    "order_diff",
    "order_diff_sem",
)
NUMERIC = {
    "paper_bits_px",
    "ours_bits_px",
    "sem",
    "difference",
    "paper_gain",
    "ours_gain",
    "gain_difference",
    "tolerance",
    "wall_time_s",
    "train_wall_s",
    "eval_wall_s",
    "num_tiles",
    "log2_jacobian",
}
REQUIRED = ("row", "model", "scale", "status", "ours_bits_px", "verdict")


def number(x: Any) -> float | None:
    """``x`` as a float, or None when empty or not a number."""
    if x is None or x == "":
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def finite(x: Any) -> bool:
    v = number(x)
    return v is not None and math.isfinite(v)


#: What each standard error of eval.json is (tables name theirs in ``columns.<c>.sem``).
SEM_KINDS = {
    "sem": "over tiles as if independent (understates: tiles of one image are correlated)",
    "sem_images": "over test images (SEM of the images' mean rates)",
    "sem_clustered": "of the tile mean, clustered by test image (CR1 sandwich)",
    "sem_bits_per_pixel": "over test patches",
}


def failures(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per row whose verdict is a MISS."""
    return [f"row {r['row']} ({r['model']}): {r['verdict']}" for r in rows if "MISS" in str(r.get("verdict", ""))]


# The paper-scale verdict of a reference row: gains are measured from it, it is not judged itself
# (in Table 3 it is also the calibration row).
REFERENCE = "reference row (gains are measured from it)"


def is_judged(row: Mapping[str, Any]) -> bool:
    """Whether a row's verdict judged something: a row of ours that is not ``not judged`` and not
    only the paper-scale reference of its gains."""
    verdict = str(row.get("verdict", ""))
    return row.get("status") == "ours" and "not judged" not in verdict and verdict != REFERENCE


def check_line(rows: Sequence[Mapping[str, Any]]) -> str:
    """The check of a table in words. A table with no judged row says "nothing to judge": that
    is not a pass (an all-pending table proves nothing)."""
    fails = failures(rows)
    if fails:
        return f"{len(fails)} row(s) MISS"
    judged = sum(1 for r in rows if is_judged(r))
    ours = [r for r in rows if r.get("status") != "cited"]
    if judged:
        return f"all {judged} judged row(s) pass"
    pending = sum(1 for r in ours if r.get("status") == "pending")
    if pending == len(ours):
        return f"nothing to judge: all {len(ours)} rows pending"
    return f"nothing to judge: none of {len(ours)} rows judged ({pending} pending, {len(ours) - pending} not judged)"


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (parent directories created)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _fmt(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if column in NUMERIC and isinstance(value, (int, float)):
        if column == "num_tiles":
            return str(int(value))
        if column.endswith("_s"):
            return f"{value:.1f}"
        if column == "log2_jacobian":
            return f"{value:.10g}"  # the exact shift: raw = Z-scored - log2_jacobian
        return f"{value:.6g}" if column == "tolerance" else f"{value:.4f}"
    return str(value)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([_fmt(r.get(c), c) for c in COLUMNS])
    return out.getvalue()


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(to_csv(rows), newline=""))


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a table CSV with numbers as floats (None where empty) and ``ensemble`` as bool."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in REQUIRED if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: not a result table CSV (missing columns {missing})")
    out = []
    for r in rows:
        d: dict[str, Any] = {}
        for c, v in r.items():
            if c in NUMERIC:
                d[c] = number(v)
            elif c == "ensemble":
                d[c] = v == "true"
            else:
                d[c] = v
        out.append(d)
    return out


def _md(value: Any, column: str) -> str:
    if value is None or value == "":
        return "—"
    if column in ("paper_bits_px", "ours_bits_px", "sem"):
        return f"{value:.3f}"
    if column in ("difference", "paper_gain", "ours_gain", "gain_difference"):
        return f"{value:+.3f}"
    if column == "order_diff":
        return str(value).replace("|", "/")
    if column == "tolerance":
        return f"±{value:g}"
    if column == "wall_time_s":
        return f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"
    return str(value).replace("|", "/")


MARKDOWN_COLUMNS = (
    ("model", "Model"),
    ("paper_bits_px", "Paper [bit/px]"),
    ("ours_bits_px", "Ours [bit/px]"),
    ("sem", "SEM"),
    ("difference", "Ours − paper"),
    ("paper_gain", "Paper gain"),
    ("ours_gain", "Our gain"),
    ("gain_difference", "Gain diff."),
    ("tolerance", "Tol. (paper scale)"),
    ("order_diff", "Order: Δ vs prev. ± SEM (paired)"),
    ("verdict", "Verdict"),
    ("device", "Device"),
    ("wall_time_s", "Wall time"),
)


def order_cell(row: Mapping[str, Any]) -> str:
    """``+0.012 ± 0.004 (prev)`` per paired predecessor of a row; empty without paired data."""
    prevs = [p for p in str(row.get("order_prev") or "").split(";") if p]
    diffs = str(row.get("order_diff") or "").split(";")
    sems = str(row.get("order_diff_sem") or "").split(";")
    cells = []
    for i, prev in enumerate(prevs):
        d = number(diffs[i]) if i < len(diffs) else None
        e = number(sems[i]) if i < len(sems) else None
        if d is not None and e is not None:
            cells.append(f"{d:+.3f} ± {e:.3f} ({prev})")
        else:
            cells.append(f"unpaired ({prev})")
    return "; ".join(cells)


def to_markdown(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    scale: str,
    caption: str = "",
    description: str = "",
    notes: Sequence[str] = (),
) -> str:
    """The table as Markdown: title, caption, the scale's description, notes (units, standard
    errors), rows, cited sources, check."""
    lines = [f"# {title} — scale `{scale}`", ""]
    if caption:
        lines += [" ".join(caption.split()), ""]
    if description:
        lines += [f"Scale `{scale}`: {' '.join(description.split())}", ""]
    for note in notes:
        lines += [" ".join(note.split()), ""]
    shown = MARKDOWN_COLUMNS
    if len({r.get("column") or "bit/px" for r in rows}) > 1:
        # Several value columns (Table 1: nat per patch and bit/px): each row names its unit.
        shown = ((("model", "Model"), ("column", "Column"), ("paper_bits_px", "Paper"), ("ours_bits_px", "Ours"))
                 + MARKDOWN_COLUMNS[3:])
    lines.append("| " + " | ".join(h for _, h in shown) + " |")
    lines.append("|" + "|".join("---" for _ in shown) + "|")
    for r in rows:
        cells = []
        for c, _ in shown:
            v = r.get(c)
            if c == "model" and r.get("status") == "cited":
                v = f"{v} *(cited)*"
            if c == "order_diff":
                v = order_cell(r)
            cells.append(_md(v, c))
        lines.append("| " + " | ".join(cells) + " |")
    cited = [r for r in rows if r.get("status") == "cited"]
    if cited:
        lines.append("")
        lines += [f"*(cited)* {r['model']}: {r.get('source') or ''}" for r in cited]
    lines += ["", f"**Check:** {check_line(rows)}."]
    return "\n".join(lines) + "\n"


def to_html(rows: Sequence[Mapping[str, Any]], title: str, scale: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c), c))}</td>" for c in COLUMNS) + "</tr>" for r in rows
    )
    return (
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)} ({scale})</title></head><body>"
        f"<h1>{html.escape(title)}, scale {html.escape(scale)}</h1>"
        f"<table border='1'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )
