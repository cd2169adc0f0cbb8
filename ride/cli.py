"""The ``ride`` command: deadleaves, train, evaluate, sample, bench."""
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


def _read_config(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    try:
        config = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SystemExit(f"ride: cannot parse config {path}: {err}") from err
    if not isinstance(config, dict):
        raise SystemExit(f"ride: config {path} must be a mapping with 'model' and 'train' sections")
    return config


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def cmd_deadleaves(args: argparse.Namespace) -> int:
    from .data import save_images
    from .deadleaves import DEFAULTS, generate

    params = dict(DEFAULTS)
    for item in args.param:
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"ride deadleaves: unknown parameter {key!r}; known: {sorted(DEFAULTS)}")
        params[key] = _parse_value(value)
    if not 0 < args.num_test < args.num_images:
        raise SystemExit("ride deadleaves: need 0 < --num-test < --num-images")
    images = generate(args.num_images, args.size, args.seed, **params)
    attrs = {"generator": "dead leaves", "seed": args.seed, "params": json.dumps(params)}
    split = args.num_images - args.num_test
    save_images(args.out_train, images[:split], {**attrs, "split": "train"})
    save_images(args.out_test, images[split:], {**attrs, "split": "test"})
    print(f"wrote {split} training images to {args.out_train} and {args.num_test} test images to {args.out_test}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .slstm import tune_malloc
    from .train import TrainingError, train

    config = _read_config(args.config)
    tune_malloc()  # a long job reuses the same large buffers every step (ride.slstm.tune_malloc)
    try:
        train(config, args.data, args.out_dir, resume=args.resume, device=args.device, seed=args.seed,
              progress=not args.no_progress)
    except TrainingError as err:
        print(f"ride train: {err}", file=sys.stderr)
        return 3
    print(f"wrote {Path(args.out_dir) / 'model.pt'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import atomic_write, load_images
    from .evaluate import evaluate
    from .provenance import provenance, resolve_device
    from .slstm import tune_malloc
    from .train import load_model

    start = time.perf_counter()
    tune_malloc()
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    images = torch.from_numpy(load_images(args.data))
    result = evaluate(model, images, tile=args.tile, ensemble=args.ensemble, max_tiles=args.max_tiles,
                      batch_size=args.batch_size)
    result.update({"model": str(args.model), "data": str(args.data), "model_config": model.config,
                   "provenance": provenance(device, model.train_summary.get("provenance", {}).get("seed"),
                                             time.perf_counter() - start)})
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    print(text)
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


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_args)


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
    p.set_defaults(func=cmd_deadleaves)

    p = sub.add_parser("train", help="train RIDE or an MCGSM baseline (num_layers 0)")
    p.add_argument("--config", required=True, help="YAML/JSON file with 'model' and 'train' sections")
    p.add_argument("--data", required=True, help="HDF5 file with dataset 'images' (N x H x W)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt if present")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=None, help="overrides train.seed")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="log-likelihood rate on tiles (bit/px), optionally the 8-transform ensemble")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--ensemble", action="store_true")
    p.add_argument("--max-tiles", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="ancestral samples of a trained model")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=4)
    p.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("bench", help="training/evaluation throughput benchmark (see ride bench --help)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # argparse's REMAINDER does not take options that lead (`ride bench --quick`): hand the
        # rest to the benchmark's own parser.
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        print(f"ride {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
