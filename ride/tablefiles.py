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


def failures(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per row whose verdict is a MISS."""
    return [f"row {r['row']} ({r['model']}): {r['verdict']}" for r in rows if "MISS" in str(r.get("verdict", ""))]


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
    ("verdict", "Verdict"),
    ("device", "Device"),
    ("wall_time_s", "Wall time"),
)


def to_markdown(rows: Sequence[Mapping[str, Any]], title: str, scale: str, caption: str = "", description: str = "") -> str:
    """The table as Markdown: title, caption, the scale's description, rows, cited sources, check."""
    lines = [f"# {title} — scale `{scale}`", ""]
    if caption:
        lines += [" ".join(caption.split()), ""]
    if description:
        lines += [f"Scale `{scale}`: {' '.join(description.split())}", ""]
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
            cells.append(_md(v, c))
        lines.append("| " + " | ".join(cells) + " |")
    cited = [r for r in rows if r.get("status") == "cited"]
    if cited:
        lines.append("")
        lines += [f"*(cited)* {r['model']}: {r.get('source') or ''}" for r in cited]
    fails = failures(rows)
    lines += ["", "**Check:** " + ("all rows pass." if not fails else f"{len(fails)} row(s) MISS.")]
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
