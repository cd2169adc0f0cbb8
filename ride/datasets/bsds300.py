"""BSDS300 (Martin et al. 2001) with the protocol of Uria et al. that the paper follows (sec. 3.2).

Source: ``BSDS300-images.tgz`` (about 22 MB): ``BSDS300/images/{train,test}/<iid>.jpg``
(481x321 or 321x481 colour JPEGs) and the id lists ``iids_train.txt`` (200) and
``iids_test.txt`` (100), found by name because descriptions of the archive place them
differently. Protocol: BT.601 grayscale (:mod:`ride.datasets.pixels`), U[0, 1) noise on the
0..255 values, divided by 256. The first 180 ids of ``iids_train.txt`` train, its last 20
validate, the 100 of ``iids_test.txt`` test, each in the list's order.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .archive import ArchiveError, extract, find_file
from .pixels import dequantize, image_rng, load_gray
from .prepared import SPLITS, source_attrs, write_split

PROTOCOL = "BT.601 luma (Pillow convert('L')), + U[0,1) noise, / 256 (Uria et al. 2013)"


def read_ids(path: Path) -> list[str]:
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ArchiveError(f"{path}: empty id list")
    return ids


def split_ids(root: str | os.PathLike, num_valid: int) -> dict[str, list[tuple[str, Path]]]:
    """{split: [(iid, jpeg path), ...]} in the id lists' order, from an extracted archive."""
    root = Path(root)
    train_ids = read_ids(find_file(root, "iids_train.txt"))
    test_ids = read_ids(find_file(root, "iids_test.txt"))
    if not 0 <= num_valid < len(train_ids):
        raise ValueError(f"valid_images={num_valid} must be below the {len(train_ids)} training ids")
    jpegs: dict[tuple[str, str], Path] = {}
    for path in root.rglob("*.jpg"):
        jpegs[(path.parent.name, path.stem)] = path

    def paths(folder: str, ids: list[str]) -> list[tuple[str, Path]]:
        missing = [i for i in ids if (folder, i) not in jpegs]
        if missing:
            raise ArchiveError(f"{root}: no images/{folder}/<iid>.jpg for ids {missing[:5]} ({len(missing)} missing)")
        return [(i, jpegs[(folder, i)]) for i in ids]

    cut = len(train_ids) - num_valid
    return {"train": paths("train", train_ids[:cut]), "valid": paths("train", train_ids[cut:]),
            "test": paths("test", test_ids)}


def prepare(source: str | os.PathLike, out_dir: str | os.PathLike, num_patches: dict[str, int], seed: int = 0,
            num_valid: int = 20, patch_size: int = 8) -> dict[str, str]:
    """Write images_{train,valid,test}.h5 and patches_{...}.h5 from the archive or its folder."""
    source, out_dir = Path(source), Path(out_dir)
    attrs = {"dataset": "bsds300", **source_attrs(source), "preprocessing": PROTOCOL, "levels": 256,
             "num_valid_images": num_valid}
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".extract.") as tmp:
        root = extract(source, Path(tmp) / "bsds300") if source.is_file() else source
        written = {}
        for split, items in split_ids(root, num_valid).items():
            key = SPLITS.index(split)
            images = [dequantize(load_gray(path), image_rng(seed, key, j)) for j, (_, path) in enumerate(items)]
            written.update(write_split(out_dir, split, images, [iid for iid, _ in items], _shape(images),
                                       num_patches.get(split, 0), patch_size, True, seed, attrs))
    return written


def _shape(images: list[np.ndarray]) -> tuple[int, int]:
    """The landscape shape all images share (BSDS300: 321x481); small test archives differ."""
    h, w = images[0].shape
    return (min(h, w), max(h, w))
