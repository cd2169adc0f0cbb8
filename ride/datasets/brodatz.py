"""Brodatz textures (paper section 3.4, figures 3 and 4).

Source: ``D<n>.gif`` (640 x 640, 8-bit grey) from Trygve Randen's Brodatz pages,
ux.uis.no/~tranden/brodatz/, each checked against the SHA1 that jaberg/skdata lists for it.
The paper names D104, D34, D110 (periodic or bimodal, where RIDE helps most) and D106, D110
(samples nearly indistinguishable from the texture) among those of figure 3.
Protocol: grey levels + U[0, 1), / 256 (the project's 8-bit convention), cut into a 4 x 4 grid
of 160 x 160 regions; one region, drawn with the seed, is the test set, the other 15 train.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data import save_images
from .pixels import dequantize, image_rng, load_gray
from .prepared import source_attrs

GRID = 4
TEST_KEY = 3000  # seed key of the test region's draw


def regions(image: np.ndarray, grid: int = GRID) -> np.ndarray:
    """The grid x grid non-overlapping regions of ``image``, row-major, as N x h x w."""
    h, w = image.shape[0] // grid, image.shape[1] // grid
    if image.shape != (h * grid, w * grid):
        raise ValueError(f"image of shape {image.shape} does not split into a {grid}x{grid} grid")
    return image.reshape(grid, h, grid, w).swapaxes(1, 2).reshape(grid * grid, h, w)


def prepare(gif: str | os.PathLike, out_dir: str | os.PathLike, name: str, seed: int = 0, grid: int = GRID,
            size: int = 640) -> dict[str, str]:
    """Write <name>_train.h5 (15 regions) and <name>_test.h5 (1 region) for one texture."""
    gif, out_dir = Path(gif), Path(out_dir)
    gray = load_gray(gif)
    if gray.shape != (size, size):
        raise ValueError(f"{gif}: {gray.shape[1]}x{gray.shape[0]} pixels, expected {size}x{size} for a Brodatz texture")
    key = int(name.lstrip("Dd")) if name.lstrip("Dd").isdigit() else 0
    parts = regions(dequantize(gray, image_rng(seed, key)), grid)
    test = int(image_rng(seed, TEST_KEY, key).integers(len(parts)))
    train = [k for k in range(len(parts)) if k != test]
    attrs = {"dataset": "brodatz", "texture": name, **source_attrs(gif), "preprocessing": "+ U[0,1), / 256",
             "levels": 256, "seed": seed, "grid": grid,
             "regions": "row-major index in the grid of the 640x640 texture"}
    return {
        f"{name}_train.h5": save_images(out_dir / f"{name}_train.h5", parts[train],
                                        {**attrs, "split": "train", "region_index": json.dumps(train)}),
        f"{name}_test.h5": save_images(out_dir / f"{name}_test.h5", parts[[test]],
                                       {**attrs, "split": "test", "region_index": json.dumps([test])}),
    }
