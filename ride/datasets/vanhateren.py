"""van Hateren & van der Schaaf (1998) natural images, for Table 2.

Source: one ``imkNNNNN.iml`` file per image: 1536 x 1024 pixels, uint16 big-endian, row-major
(1024 rows of 1536), linear in luminance. Our choices (the paper's supplementary section 3,
which gives its own, is not available), all in ``config/datasets.yaml``:

* transform ``y = ln(1 + I + U)``, U ~ U[0, 1): log intensities as the paper says RIDE was
  trained on; the noise dequantises the integer counts (as the 8-bit sets' U[0, 1)), the 1 keeps
  a zero count finite. No rescaling, so rates are in the units of natural-log intensity.
* crop ``[top, left, height, width]``, default the whole 1024 x 1536 frame: exactly 16 x 24
  tiles of 64 x 64 for the "inf dim" rate, nothing lost.
* 16 x 16 patch sets (Table 2's "256 dim."), raw (no DC removed), every position equally likely.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .pixels import image_rng
from .prepared import SPLITS, source_attrs, write_split

SHAPE = (1024, 1536)
TRANSFORM = "ln(1 + I + U), U ~ U[0,1), I the uint16 count"


def read_iml(path: str | os.PathLike, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """One .iml file as a uint16 array of ``shape`` (rows, columns)."""
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != shape[0] * shape[1]:
        raise ValueError(
            f"{path}: {raw.size * 2} bytes, expected {shape[0] * shape[1] * 2} for a {shape[1]}x{shape[0]} "
            f".iml image (uint16 big-endian); the file is truncated or not an .iml: delete it and download it again"
        )
    return raw.reshape(shape).astype(np.uint16)


def log_intensity(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.random(counts.shape, dtype=np.float64)
    return np.log1p(counts.astype(np.float64) + noise).astype(np.float32)


def prepare(files: dict[str, list[str | os.PathLike]], out_dir: str | os.PathLike, num_patches: dict[str, int],
            seed: int = 0, crop: tuple[int, int, int, int] | None = None, patch_size: int = 16,
            shape: tuple[int, int] = SHAPE) -> dict[str, str]:
    """Write images_<split>.h5 and patches_<split>.h5 for each split named in ``files``."""
    top, left, height, width = crop or (0, 0, *shape)
    if top < 0 or left < 0 or top + height > shape[0] or left + width > shape[1]:
        raise ValueError(f"crop {crop} does not fit the {shape[0]}x{shape[1]} frame")
    written = {}
    for split, paths in files.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
        key = SPLITS.index(split)
        images = [log_intensity(read_iml(p, shape)[top:top + height, left:left + width], image_rng(seed, key, j))
                  for j, p in enumerate(paths)]
        attrs = {"dataset": "vanhateren", **source_attrs(*paths), "preprocessing": TRANSFORM,
                 "crop_top_left_height_width": np.array([top, left, height, width])}
        written.update(write_split(out_dir, split, images, [Path(p).stem for p in paths], (height, width),
                                   num_patches.get(split, 0), patch_size, False, seed, attrs))
    return written
