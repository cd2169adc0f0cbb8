"""The ``ride download`` and ``ride prepare <source>`` commands (wired into :mod:`ride.cli`)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def _counts(items: list[str]) -> dict[str, int]:
    """``["train=1600000", "test=1000000"]`` -> {"train": 1600000, "test": 1000000}."""
    from .prepared import SPLITS

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in SPLITS or not value.isdigit():
            raise ValueError(f"--patches takes SPLIT=COUNT with SPLIT one of {SPLITS}, got {item!r}")
        out[key] = int(value)
    return out


def _report(written: dict[str, str], start: float) -> int:
    print(json.dumps({"written": written, "seconds": round(time.perf_counter() - start, 2)}, indent=2))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import DownloadError, fetch

    try:
        done = fetch(args.url, args.out, sha256=args.sha256, sha1=args.sha1, published_sha256=args.published_sha256,
                     local=args.local, retries=args.retries, backoff=args.backoff, timeout=args.timeout,
                     progress=not args.no_progress)
    except DownloadError as err:
        print(f"ride download: {err}", file=sys.stderr)
        return 4
    print(f"{done.path}: {done.bytes} bytes from {done.source}, sha256 {done.sha256}"
          + ("" if done.verified else " (no checksum configured: recorded, not verified)"))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    counts = _counts(args.patches) if hasattr(args, "patches") else {}
    if args.source_name == "bench":
        from .bench import run

        print(json.dumps(run(args.num_patches), indent=2))
        return 0
    if args.source_name == "bsds300":
        from .bsds300 import prepare

        written = prepare(args.source, args.out_dir, counts, args.seed, args.valid_images, args.patch_size)
    elif args.source_name == "photos":
        from .photos import prepare

        split = {k: v for k, v in (("train", args.train), ("valid", args.valid), ("test", args.test)) if v}
        written = prepare(args.out_dir, counts, args.seed, split or None, tuple(args.crop), args.patch_size,
                          args.protocol)
    elif args.source_name == "vanhateren":
        from .vanhateren import prepare

        files = {"train": args.train, "test": args.test}
        written = prepare(files, args.out_dir, counts, args.seed, tuple(args.crop) if args.crop else None,
                          args.patch_size)
    elif args.source_name == "brodatz":
        from .brodatz import prepare

        written = prepare(args.source, args.out_dir, args.name, args.seed)
    else:
        from .maf import prepare

        written = prepare(args.source, args.out_dir, args.max_rows)
    return _report(written, start)


def add_commands(sub: Any) -> None:
    """Add ``download`` and ``prepare`` to the ``ride`` command's subparsers."""
    from .photos import CROP

    p = sub.add_parser("download", help="download a file: mirrors in order, resumed, retried, checksummed")
    p.add_argument("--url", action="append", default=[], help="a mirror (repeat; tried in order)")
    p.add_argument("--out", required=True, help="the file to write (and OUT.json, where it came from)")
    p.add_argument("--sha256", default=None, help="expected sha256 (a mismatch is an error)")
    p.add_argument("--sha1", default=None, help="expected SHA1 (a mismatch is an error)")
    p.add_argument("--published-sha256", default=None, help="an unverified published sha256: recorded whether it matched")
    p.add_argument("--local", default=None, help="use this local copy instead of the network")
    p.add_argument("--retries", type=int, default=5, help="attempts per mirror")
    p.add_argument("--backoff", type=float, default=2.0, help="seconds before the 2nd attempt, doubled after each")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before an attempt fails")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", help="preprocess a downloaded data set into HDF5 image and patch sets")
    srcs = p.add_subparsers(dest="source_name", required=True)

    def common(q: argparse.ArgumentParser, patches: bool = True, seed: bool = True) -> None:
        q.add_argument("--out-dir", required=True)
        if seed:
            q.add_argument("--seed", type=int, default=0)
        if patches:
            q.add_argument("--patches", nargs="*", default=[], metavar="SPLIT=COUNT", help="patches per split")

    q = srcs.add_parser("bsds300", help="BSDS300: 180/20/100 images and 8x8 patch sets (DC removed, 63 dims)")
    q.add_argument("--source", required=True, help="BSDS300-images.tgz or its extracted folder")
    q.add_argument("--valid-images", type=int, default=20, help="the last ids of iids_train.txt that validate")
    q.add_argument("--patch-size", type=int, default=8)
    common(q)
    q = srcs.add_parser("photos", help="the offline stand-in: photographs shipped in installed packages")
    q.add_argument("--train", nargs="*", default=None)
    q.add_argument("--valid", nargs="*", default=None)
    q.add_argument("--test", nargs="*", default=None)
    q.add_argument("--crop", type=int, nargs=2, default=CROP, metavar=("H", "W"))
    q.add_argument("--patch-size", type=int, default=8)
    q.add_argument("--protocol", choices=("bsds300", "vanhateren"), default="bsds300",
                   help="bsds300: the BSDS300 stand-in `photos`; vanhateren: `photos_log`, van Hateren's "
                        "ln(1 + I + U), raw patches, splits train and test")
    common(q)
    q = srcs.add_parser("vanhateren", help="van Hateren .iml images: log intensities and 16x16 patch sets")
    q.add_argument("--train", nargs="+", required=True, help=".iml files of the training set, in order")
    q.add_argument("--test", nargs="+", required=True, help=".iml files of the test set, in order")
    q.add_argument("--crop", type=int, nargs=4, default=None, metavar=("TOP", "LEFT", "H", "W"))
    q.add_argument("--patch-size", type=int, default=16)
    common(q)
    q = srcs.add_parser("brodatz", help="one Brodatz texture: 15 training and 1 test region of 160x160")
    q.add_argument("--source", required=True, help="D<n>.gif")
    q.add_argument("--name", required=True, help="the texture's name, e.g. D104")
    common(q, patches=False)
    q = srcs.add_parser("maf", help="MAF's BSDS300.hdf5 (63-dim patches) from data.tar.gz or the .hdf5 itself")
    q.add_argument("--source", required=True)
    q.add_argument("--max-rows", type=int, default=None, help="keep the first rows of each split (smoke runs)")
    common(q, patches=False, seed=False)
    q = srcs.add_parser("bench", help="time each preparation phase on the stand-in (no download)")
    q.add_argument("--num-patches", type=int, default=1_600_000)
    p.set_defaults(func=cmd_prepare)
