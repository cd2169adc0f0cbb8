"""The ``ride`` command: deadleaves, train, evaluate, sample, table, bench."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .errors import ConfigError, EvaluationError, RideError


def _read_config(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    try:
        config = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot parse the config ({err}); fix its syntax") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping with 'model' and 'train' sections")
    return config


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count or a size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def cmd_deadleaves(args: argparse.Namespace) -> int:
    from .data import save_images
    from .deadleaves import DEFAULTS, generate, zscore_attrs

    params = dict(DEFAULTS)
    for item in args.param:
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"ride deadleaves: unknown parameter {key!r}; known: {sorted(DEFAULTS)}")
        params[key] = _parse_value(value)
    if not 0 < args.num_test < args.num_images:
        raise SystemExit("ride deadleaves: need 0 < --num-test < --num-images")
    images = generate(args.num_images, args.size, args.seed, workers=args.workers, **params)
    split = args.num_images - args.num_test
    # Both files carry the training set's statistics: the test set is Z-scored with them too.
    attrs = {"generator": "dead leaves", "seed": args.seed, "params": json.dumps(params),
             **zscore_attrs(images[:split])}
    save_images(args.out_train, images[:split], {**attrs, "split": "train"})
    save_images(args.out_test, images[split:], {**attrs, "split": "test"})
    print(f"wrote {split} training images to {args.out_train} and {args.num_test} test images to {args.out_test}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .kernels import tune_malloc
    from .train import train

    config = _read_config(args.config)
    tune_malloc()  # a long job reuses the same large buffers every step (ride.kernels.tune_malloc)
    train(config, args.data, args.out_dir, resume=args.resume, device=args.device, seed=args.seed,
          progress=not args.no_progress, restart=args.restart, source=args.config)
    print(f"wrote {Path(args.out_dir) / 'model.pt'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import atomic_write, load_attrs, load_images, sha256sum
    from .evaluate import evaluate, zscore_of_data
    from .kernels import tune_malloc
    from .provenance import provenance, resolve_device
    from .train import load_model

    start = time.perf_counter()
    tune_malloc()
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    images = torch.from_numpy(load_images(args.data))
    zscore = zscore_of_data(load_attrs(args.data), args.data, args.zscore)
    try:
        result = evaluate(model, images, tile=args.tile, ensemble=args.ensemble, max_tiles=args.max_tiles,
                          batch_size=args.batch_size, zscore=zscore)
    except EvaluationError as err:
        raise EvaluationError(f"{args.model} on {args.data}: {err}") from None
    result.update({"model": str(args.model), "data": str(args.data), "data_sha256": sha256sum(args.data),
                   "model_config": model.config,
                   "provenance": provenance(device, model.train_summary.get("provenance", {}).get("seed"),
                                             time.perf_counter() - start)})
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    # The per-tile lists go to --out only; the terminal gets the summary.
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .data import save_images
    from .provenance import resolve_device
    from .train import load_model

    model = load_model(args.model, resolve_device(args.device))
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    images = model.sample(args.num, args.size[0], args.size[1], generator=gen).cpu().numpy().astype(np.float32)
    save_images(args.out, images, {"model": str(args.model), "seed": args.seed})
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(images), figsize=(2 * len(images), 2), squeeze=False)
        for ax, img in zip(axes[0], images):
            ax.imshow(img, cmap="gray")
            ax.axis("off")
        fig.savefig(args.png, bbox_inches="tight", dpi=150)
    print(f"wrote {args.num} samples to {args.out}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """``ride table check|render|spread``: judge rendered tables; render one from kept run folders;
    seed spread of smoke tables."""
    from . import experiments, tables
    from .tablefiles import write_text

    if args.table_command == "render":
        config = experiments.load_config(args.config)
        out_dir = args.out_dir or f"results/{args.scale}"
        command = f"ride table render {args.table} --scale {args.scale} --runs {args.runs} --out-dir {out_dir}"
        rows = tables.render_from_runs(config, args.table, args.scale, args.runs, out_dir,
                                       {"rendered_by": command, "config": str(args.config)})
        for msg in tables.failures(rows):
            print(msg)
        print(f"wrote {out_dir}/{args.table}.csv ({len(rows)} rows): {tables.check_line(rows)}")
        return 0
    if args.table_command == "check":
        config = experiments.load_config(args.config) if args.config else None
        ok = True
        for path in args.tables:
            passed, report = tables.check_summary(path, config)
            print(report, file=sys.stdout if passed else sys.stderr)
            ok = ok and passed
        return 0 if ok else 1
    doc = tables.seed_spread([tables.read_csv(t) for t in args.tables], factor=args.factor)
    doc["tables"] = list(args.tables)
    write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"max per-row SD {doc['max_sd']:.4f} bit/px over {doc['num_seeds']} seeds -> tolerance {doc['tolerance']:.4f}")
    for name, o in doc["order"].items():
        print(f"  {name} - {o['prev']}: d = {' '.join(f'{d:+.4f}' for d in o['diffs'])}; mean {o['mean']:+.4f}, "
              f"seed SD {o['sd']:.4f}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``ride calibrate``: fit the dead-leaves noise width against one paper number (ride.calibration)."""
    from . import experiments
    from .calibration import calibrate
    from .data import atomic_write
    from .provenance import provenance, resolve_device

    config = experiments.load_config(args.config)
    device = resolve_device(args.device)
    start = time.perf_counter()
    def write(doc: dict[str, Any]) -> None:
        doc["provenance"] = provenance(device, config.get("train_seed", 0), time.perf_counter() - start)
        text = json.dumps(doc, indent=2) + "\n"
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))

    doc = calibrate(config, args.work_dir, device=str(device), workers=args.workers, runs=args.runs, scale=args.scale,
                    after_run=write)
    write(doc)
    print(f"noise width {doc['width']:g} grey levels (target {doc['target']} bit/px); wrote {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ride", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("deadleaves", help="generate the dead-leaves data set (train and test HDF5 files)")
    p.add_argument("--out-train", required=True)
    p.add_argument("--out-test", required=True)
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="generator parameter")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes generating images (the images do not depend on it)")
    p.set_defaults(func=cmd_deadleaves)

    p = sub.add_parser("calibrate", help="fit the dead-leaves noise width against one paper number")
    p.add_argument("--config", default=str(Path("config") / "config.yaml"))
    p.add_argument("--out", required=True, help="JSON file with every run, the fitted width and provenance")
    p.add_argument("--work-dir", required=True, help="data and models of the runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=positive_int, default=1, help="processes generating the images")
    p.add_argument("--runs", type=positive_int, default=None, help="overrides calibration.runs")
    p.add_argument("--scale", choices=["smoke", "quick", "paper"], default=None, help="overrides calibration.scale")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("train", help="train RIDE or an MCGSM baseline (num_layers 0)")
    p.add_argument("--config", required=True, help="YAML/JSON file with 'model' and 'train' sections")
    p.add_argument("--data", required=True, help="HDF5 file with dataset 'images' (N x H x W)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt if present")
    p.add_argument("--restart", action="store_true", help="discard OUT_DIR/checkpoint.pt and train afresh")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=None, help="overrides train.seed")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="log-likelihood rate on tiles (bit/px), optionally the 8-transform ensemble")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--tile", type=positive_int, default=64)
    p.add_argument("--ensemble", action="store_true")
    p.add_argument("--max-tiles", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--zscore", dest="zscore", action="store_const", const="require", default="auto",
                   help="also report rates on Z-scored intensities (bits_per_pixel_z) and fail if the data file "
                        "lacks zscore_mean/zscore_std; by default they are reported when the file has them")
    p.add_argument("--no-zscore", dest="zscore", action="store_const", const="off",
                   help="report only the rate on the intensities as stored")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="ancestral samples of a trained model")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=positive_int, default=4)
    p.add_argument("--size", type=positive_int, nargs=2, default=(64, 64), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("table", help="judge rendered result tables (results/<scale>/<table>.csv)")
    table_sub = p.add_subparsers(dest="table_command", required=True)
    q = table_sub.add_parser("check", help="exit 1 naming every row whose verdict is a MISS, or saying "
                                             "'nothing to judge' for a table without a judged row")
    q.add_argument("tables", nargs="+", help="results/<scale>/<table>.csv")
    q.add_argument("--config", help="recompute the verdicts with this config first (config/config.yaml)")
    q = table_sub.add_parser("render", help="render results/<scale>/<table>.* from run folders kept outside the "
                                              "workflow (<runs>/<variant>/{eval,train}.json, model.pt); missing rows are pending")
    q.add_argument("table", help="table3, ...")
    q.add_argument("--scale", required=True)
    q.add_argument("--runs", required=True, help="folder of run folders, e.g. results/paper/runs")
    q.add_argument("--out-dir", default=None, help="default results/<scale>")
    q.add_argument("--config", default="config/config.yaml")
    q = table_sub.add_parser("spread", help="seed-to-seed spread of several tables: the smoke test's tolerance, the paired order differences' SD")
    q.add_argument("tables", nargs="+", help="the same table from runs with different training seeds")
    q.add_argument("--out", required=True, help="JSON file to write")
    q.add_argument("--factor", type=float, default=3.0, help="tolerance = factor x the largest per-row SD")
    p.set_defaults(func=cmd_table)

    from . import bench

    p = sub.add_parser("bench", help="training/evaluation throughput benchmark", description=bench.DESCRIPTION)
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)
    from .datasets.commands import add_commands as add_dataset_commands

    add_dataset_commands(sub)  # ride download, ride prepare <source>
    from .inpaint import add_command as add_inpaint_command

    add_inpaint_command(sub)  # ride inpaint
    from .textures import add_command as add_texture_command

    add_texture_command(sub)  # ride texture {standin,train,figure3,figure4}
    __import__("ride.patch_experiment").patch_experiment.add_command(sub)  # ride patch {train,evaluate}
    from .curves import add_command as add_curve_command

    add_curve_command(sub)  # ride curve {run,plot}
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RideError, ValueError, OSError) as err:
        # One line that names the file or option and the fix (ride.errors); no traceback.
        print(f"ride {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
