"""Figures 3 and 4 of the paper: texture synthesis and inpainting (section 3.4).

Per texture an MCGSM and a RIDE are trained on the same 15 regions (``ride texture train``, the
configs of ``config/textures.yaml`` under ``textures.<scale>``), both are scored on the held-out
test region (``ride evaluate``) and sampled (``ride sample``); the RIDE fills a square hole in the
test region (``ride inpaint``). This module turns those files into the figures:

* Figure 3 (``ride texture figure3``): per texture a crop of the texture (the 4x4 region grid put
  back together, cropped to the sample size), the MCGSM sample and the RIDE sample, and a CSV of
  both models' test-region rates (bit/px, higher is better) with their standard errors.
* Figure 4 (``ride texture figure4``): original, masked and inpainted test region per texture,
  and a JSON with each chain's last acceptance rate and log-likelihood.

Figures built from ``textures_standin`` say so in their title and files (``stand_in``).
:func:`texture_statistics` (marginal histogram, autocorrelation at lags 1-8) compares samples
with their texture (tests/test_textures.py).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import yaml

from .data import atomic_write, load_images
from .errors import ConfigError

KINDS = ("mcgsm", "ride")
REGION = {"brodatz": 160, "textures_standin": 128}  # side of a prepared region (640 / 4, 512 / 4)
CSV_COLUMNS = ("texture", "source", "stand_in", "mcgsm_bits_per_px", "mcgsm_sem", "ride_bits_per_px", "ride_sem",
               "ride_gain", "test_pixels", "mcgsm_config", "ride_config")


def scale_config(path: str | Path, scale: str) -> dict[str, Any]:
    """``textures.<scale>`` of ``config/textures.yaml`` (the workflow validates the whole file first)."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    scales = (doc.get("textures") or {}) if isinstance(doc, dict) else {}
    if scale not in scales:
        raise ConfigError(f"{path}: no section textures.{scale}; known scales: {sorted(scales)}")
    return scales[scale]


def check(textures: Mapping[str, Any], source: str = "config/textures.yaml") -> None:
    """Cross-checks of ``textures`` after its schema: each model a valid ``ride train`` config of
    the right kind, texture names of the source, a hole and tiles that fit the test region."""
    from .datasets.texture_standin import TEXTURES
    from .train_config import validate_config

    for scale, section in textures.items():
        where = f"{source}: textures.{scale}"
        for kind in KINDS:
            validate_config(section[kind], f"{where}.{kind}")
            layers = section[kind]["model"].get("num_layers", 1)
            if (kind == "mcgsm") != (layers == 0):
                raise ConfigError(f"{where}.{kind}.model.num_layers is {layers}: the mcgsm has 0 layers, the ride at least 1")
        names, src = section["textures"], section["source"]
        wrong = [n for n in names if (n in TEXTURES) != (src == "textures_standin")]
        if wrong:
            raise ConfigError(f"{where}.textures: {wrong} are not textures of the source {src!r}")
        region, nb = REGION[src], section["ride"]["model"].get("nb_size", 5)
        if section["inpaint"]["hole"] > region - nb:
            raise ConfigError(f"{where}.inpaint.hole {section['inpaint']['hole']} leaves no context in the "
                              f"{region}x{region} test region; use at most {region - nb}")
        if section["evaluate"]["tile"] > region:
            raise ConfigError(f"{where}.evaluate.tile {section['evaluate']['tile']} exceeds the {region}x{region} "
                              f"test region")


def train_config(path: str | Path, scale: str, kind: str) -> dict[str, Any]:
    """The ``ride train`` config (``model`` and ``train``) of one model kind at one scale."""
    section = scale_config(path, scale)
    if kind not in KINDS or kind not in section:
        raise ConfigError(f"{path}: textures.{scale} has no model {kind!r}; give one of {list(KINDS)}")
    return {"model": section[kind]["model"], "train": section[kind]["train"]}


def figure_targets(textures: Mapping[str, Any], scale: str) -> list[str]:
    """The files of Figures 3 and 4 at ``scale`` when ``textures.<scale>.in_all`` (rule ``all``), else none."""
    if not (textures.get(scale) or {}).get("in_all", False):
        return []
    return [f"results/{scale}/{name}" for name in ("figure3.png", "figure3.csv", "figure4.png", "figure4.json")]


def data_path(textures: Mapping[str, Any], scale: str, name: str, split: str) -> str:
    """Where the workflow prepares ``<name>_<split>.h5`` of the scale's texture source."""
    return f"datasets/{textures[scale]['source']}/{scale}/{name}_{split}.h5"


def run_files(textures: Mapping[str, Any], scale: str, filename: str, kind: str = "ride") -> list[str]:
    """One ``runs/<scale>/textures/<texture>/<kind>/<filename>`` per texture of the scale, in config order."""
    return [f"runs/{scale}/textures/{t}/{kind}/{filename}" for t in textures[scale]["textures"]]


def hole_args(source: str, size: int) -> str:
    """``X Y SIZE`` of ``ride inpaint --hole``: a ``size x size`` hole in the centre of a test region."""
    if source not in REGION:
        raise ConfigError(f"unknown texture source {source!r}; known: {sorted(REGION)}")
    corner = (REGION[source] - size) // 2
    return f"{corner} {corner} {size}"


def texture_grid(train_path: str | Path, test_path: str | Path) -> np.ndarray:
    """The whole texture put back together from its train and test regions (``region_index`` attrs)."""
    parts, where = [], []
    for path in (train_path, test_path):
        parts.append(load_images(path))
        with h5py.File(path, "r") as fh:
            where += json.loads(fh.attrs["region_index"])
            grid = int(fh.attrs["grid"])
    regions = np.concatenate(parts)
    if sorted(where) != list(range(grid * grid)):
        raise ConfigError(f"{train_path}, {test_path}: regions {sorted(where)} do not tile a {grid}x{grid} grid; "
                          f"prepare both files from the same texture and seed")
    h, w = regions.shape[1:]
    image = np.empty((grid * h, grid * w), dtype=regions.dtype)
    for k, region in zip(where, regions):
        r, c = divmod(k, grid)
        image[r * h : (r + 1) * h, c * w : (c + 1) * w] = region
    return image


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size x size`` window (the whole image along a side shorter than ``size``)."""
    top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    return image[top : top + size, left : left + size]


def scored_part(sample: np.ndarray, nb_size: int) -> np.ndarray:
    """The pixels a sample drew from the model: without the top rows and side columns, which
    are drawn i.i.d. from the whitening's marginal Gaussian (:meth:`ride.model.RIDE.sample`)."""
    m = (nb_size - 1) // 2
    return sample[m:, m : sample.shape[1] - m]


def _attr(path: str | Path, key: str, default: Any = None) -> Any:
    with h5py.File(path, "r") as fh:
        value = fh.attrs.get(key, default)
    return value.item() if isinstance(value, np.generic) else value


def texture_statistics(images: np.ndarray, max_lag: int = 8, bins: int = 32,
                       value_range: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Marginal histogram (a density over ``bins`` bins) and autocorrelation at lags 1..max_lag.

    ``images``: ``N x H x W`` (or ``H x W``). The autocorrelation is normalised by the variance,
    pooled over images, separately along rows (horizontal) and columns (vertical).
    """
    x = np.asarray(images, dtype=np.float64)
    x = x[None] if x.ndim == 2 else x
    lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
    hist, edges = np.histogram(np.clip(x, lo, hi), bins=bins, range=(lo, hi))
    centred = x - x.mean()
    var = float((centred**2).mean())
    lags = np.arange(1, max_lag + 1)
    horizontal = np.array([(centred[:, :, k:] * centred[:, :, :-k]).mean() / var for k in lags])
    vertical = np.array([(centred[:, k:, :] * centred[:, :-k, :]).mean() / var for k in lags])
    return {"histogram": hist / hist.sum(), "edges": edges, "lags": lags, "horizontal": horizontal,
            "vertical": vertical, "mean": np.float64(x.mean()), "std": np.float64(np.sqrt(var))}


def figure3_rows(names: Sequence[str], tests: Sequence[str], evals: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """One CSV row per texture from the test files and the ``ride evaluate`` JSONs of both models."""
    rows = []
    for k, name in enumerate(names):
        ev = {kind: json.loads(Path(evals[kind][k]).read_text()) for kind in KINDS}
        rates = {kind: ev[kind]["bits_per_pixel"] for kind in KINDS}
        rows.append({
            "texture": name, "source": _attr(tests[k], "dataset", ""), "stand_in": bool(_attr(tests[k], "stand_in", False)),
            "mcgsm_bits_per_px": rates["mcgsm"], "mcgsm_sem": ev["mcgsm"]["sem"],
            "ride_bits_per_px": rates["ride"], "ride_sem": ev["ride"]["sem"], "ride_gain": rates["ride"] - rates["mcgsm"],
            "test_pixels": ev["ride"]["num_pixels"],
            "mcgsm_config": json.dumps(ev["mcgsm"].get("model_config"), sort_keys=True),
            "ride_config": json.dumps(ev["ride"].get("model_config"), sort_keys=True),
        })
    return rows


def _write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    from .tablefiles import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows([f"{r[k]:.4f}" if isinstance(r[k], float) else r[k] for k in CSV_COLUMNS] for r in rows)
    write_text(path, buffer.getvalue())


def _save_figure(fig: Any, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120,
                                              bbox_inches="tight"))
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stand_in_note(stand_in: bool) -> str:
    return " (STAND-IN textures from scikit-image, not Brodatz)" if stand_in else ""


def figure3(names: Sequence[str], trains: Sequence[str], tests: Sequence[str], evals: Mapping[str, Sequence[str]],
            samples: Mapping[str, Sequence[str]], out_png: str | Path, out_csv: str | Path, size: int = 256,
            start: float | None = None) -> list[dict[str, Any]]:
    """Write Figure 3 (texture | MCGSM sample | RIDE sample per row), the CSV of test-region rates
    and ``<csv stem>.provenance.json``."""
    rows = figure3_rows(names, tests, evals)
    plt = _pyplot()
    fig, axes = plt.subplots(len(names), 3, figsize=(9, 3.1 * len(names)), squeeze=False)
    for k, row in enumerate(rows):
        texture = center_crop(texture_grid(trains[k], tests[k]), size)
        panels = [(texture, f"{row['texture']} ({texture.shape[0]}x{texture.shape[1]})")]
        for kind in KINDS:
            sample = scored_part(load_images(samples[kind][k])[0], json.loads(row[f"{kind}_config"])["nb_size"])
            panels.append((sample, f"{kind.upper()} sample, test {row[f'{kind}_bits_per_px']:.3f} bit/px"))
        lo, hi = np.percentile(texture, [0.5, 99.5])
        for ax, (image, title) in zip(axes[k], panels):
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle("Figure 3: texture synthesis" + _stand_in_note(any(r["stand_in"] for r in rows)), fontsize=11)
    _save_figure(fig, out_png)
    _write_csv(rows, out_csv)
    _write_provenance(Path(out_csv).with_suffix(".provenance.json"), {
        "figure": "figure3", "csv": str(out_csv), "png": str(out_png),
        "evaluations": {kind: [{"file": str(f), "provenance": json.loads(Path(f).read_text()).get("provenance")}
                               for f in evals[kind]] for kind in KINDS},
        "samples": {kind: [str(f) for f in samples[kind]] for kind in KINDS},
    }, start)
    return rows


def _write_provenance(path: str | Path, doc: dict[str, Any], start: float | None) -> None:
    from .provenance import provenance
    from .tablefiles import write_text

    doc = {**doc, "provenance": provenance("cpu", None, None if start is None else time.perf_counter() - start)}
    write_text(path, json.dumps(doc, indent=2) + "\n")


def figure4(names: Sequence[str], tests: Sequence[str], inpainted: Sequence[str], records: Sequence[str],
            out_png: str | Path, out_json: str | Path, start: float | None = None) -> dict[str, Any]:
    """Write Figure 4 (original | masked | inpainted per row) and its JSON (hole, chain summary)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(names), 3, figsize=(9, 3.1 * len(names)), squeeze=False)
    doc: dict[str, Any] = {"textures": []}
    stand_in = False
    for k, name in enumerate(names):
        original, filled = load_images(tests[k])[0], load_images(inpainted[k])[0]
        record = json.loads(Path(records[k]).read_text())
        hole = record["hole"]
        if "size" not in hole:
            raise ConfigError(f"{records[k]}: figure 4 needs a square hole (ride inpaint --hole X Y SIZE)")
        top, left, side = hole["top"], hole["left"], hole["size"]
        if original.shape != filled.shape:
            raise ConfigError(f"{inpainted[k]}: shape {filled.shape} differs from the test region's {original.shape} "
                              f"in {tests[k]}; re-run ride inpaint on that file")
        masked = original.copy()
        masked[top : top + side, left : left + side] = np.nan
        outside = np.ones(original.shape, bool)
        outside[top : top + side, left : left + side] = False
        if not np.array_equal(original[outside], filled[outside]):
            raise ConfigError(f"{inpainted[k]} differs from {tests[k]} outside the hole: not an inpainting of it")
        lo, hi = np.percentile(original, [0.5, 99.5])
        last = record["sweeps"][-1] if record["sweeps"] else {}
        cmap = plt.get_cmap("gray").copy()
        cmap.set_bad("tab:red")  # the hole
        for ax, image, title in zip(axes[k], (original, masked, filled),
                                    (name, f"masked ({side}x{side})", f"inpainted ({len(record['sweeps'])} sweeps)")):
            ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        stand_in = stand_in or bool(_attr(tests[k], "stand_in", False))
        doc["textures"].append({
            "texture": name, "test": str(tests[k]), "inpainted": str(inpainted[k]), "hole": hole,
            "sweeps": len(record["sweeps"]), "seed": record.get("seed"), "config": record.get("config"),
            "last_acceptance_rate": last.get("acceptance_rate"), "last_bits_per_pixel": last.get("bits_per_pixel"),
            "mean_acceptance_rate": float(np.mean([s["acceptance_rate"] for s in record["sweeps"]])) if record["sweeps"] else None,
            "hole_abs_error": float(np.abs(filled - original)[~outside].mean()),
            "model": record.get("model"), "inpaint_provenance": record.get("provenance"),
        })
    doc["stand_in"] = stand_in
    fig.suptitle("Figure 4: inpainting" + _stand_in_note(stand_in), fontsize=11)
    _save_figure(fig, out_png)
    _write_provenance(out_json, doc, start)
    return doc


# the `ride texture` command ---------------------------------------------------------------------
def cmd_texture(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.texture_command == "standin":
        from .datasets.texture_standin import prepare

        print(json.dumps(prepare(args.name, args.out_dir, args.seed), indent=2))
    elif args.texture_command == "train":
        from .kernels import tune_malloc
        from .train import train

        config = train_config(args.config, args.scale, args.kind)
        tune_malloc()
        train(config, args.data, args.out_dir, resume=args.resume, device=args.device, progress=not args.no_progress,
              source=f"{args.config} (textures.{args.scale}.{args.kind})")
        print(f"wrote {Path(args.out_dir) / 'model.pt'}")
    elif args.texture_command == "figure3":
        lists = {"--train": args.train, "--test": args.test, "--mcgsm-eval": args.mcgsm_eval,
                 "--ride-eval": args.ride_eval, "--mcgsm-sample": args.mcgsm_sample, "--ride-sample": args.ride_sample}
        _same_length(args.names, lists)
        rows = figure3(args.names, args.train, args.test, {"mcgsm": args.mcgsm_eval, "ride": args.ride_eval},
                       {"mcgsm": args.mcgsm_sample, "ride": args.ride_sample}, args.out_png, args.out_csv, args.size,
                       start)
        for row in rows:
            print(f"{row['texture']}: MCGSM {row['mcgsm_bits_per_px']:.3f}, RIDE {row['ride_bits_per_px']:.3f} bit/px")
    else:
        _same_length(args.names, {"--test": args.test, "--inpainted": args.inpainted, "--record": args.record})
        figure4(args.names, args.test, args.inpainted, args.record, args.out_png, args.out_json, start)
        print(f"wrote {args.out_png} and {args.out_json}")
    return 0


def _same_length(names: Sequence[str], lists: Mapping[str, Sequence[str]]) -> None:
    for option, values in lists.items():
        if len(values) != len(names):
            raise ConfigError(f"{option}: {len(values)} files for {len(names)} --names; give one per texture, in order")


def add_command(subparsers: Any) -> None:
    """Register ``ride texture {standin,train,figure3,figure4}`` with the ``ride`` command."""
    from .cli import positive_int

    p = subparsers.add_parser("texture", help="figures 3 and 4: texture synthesis and inpainting (section 3.4)")
    sub = p.add_subparsers(dest="texture_command", required=True)
    q = sub.add_parser("standin", help="prepare one offline stand-in texture (scikit-image's brick/grass/gravel)")
    q.add_argument("--name", required=True, choices=("brick", "grass", "gravel"))
    q.add_argument("--out-dir", required=True)
    q.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("train", help="train the MCGSM or RIDE of config/textures.yaml on one texture")
    q.add_argument("--config", required=True, help="config/textures.yaml")
    q.add_argument("--scale", required=True, help="a section under textures: (smoke, quick, paper)")
    q.add_argument("--kind", required=True, choices=KINDS)
    q.add_argument("--data", required=True, help="<texture>_train.h5 (15 regions)")
    q.add_argument("--out-dir", required=True)
    q.add_argument("--resume", action="store_true")
    q.add_argument("--device", default="auto")
    q.add_argument("--no-progress", action="store_true")
    q = sub.add_parser("figure3", help="texture | MCGSM sample | RIDE sample per texture, and the CSV of rates")
    q.add_argument("--names", nargs="+", required=True)
    for option in ("train", "test", "mcgsm-eval", "ride-eval", "mcgsm-sample", "ride-sample"):
        q.add_argument(f"--{option}", nargs="+", required=True, help="one file per texture, in --names order")
    q.add_argument("--size", type=positive_int, default=256, help="side of the texture crop")
    q.add_argument("--out-png", required=True)
    q.add_argument("--out-csv", required=True)
    q = sub.add_parser("figure4", help="original | masked | inpainted per texture, and the JSON of the chains")
    q.add_argument("--names", nargs="+", required=True)
    for option in ("test", "inpainted", "record"):
        q.add_argument(f"--{option}", nargs="+", required=True, help="one file per texture, in --names order")
    q.add_argument("--out-png", required=True)
    q.add_argument("--out-json", required=True)
    p.set_defaults(func=cmd_texture)
