"""``textures_standin``: an offline STAND-IN for the Brodatz textures, never Brodatz itself.

Texture photographs that scikit-image ships inside its wheel (``skimage/data/brick.png``,
``grass.png``, ``gravel.png``, 512 x 512 grey; read from disk, nothing is fetched), prepared with
the Brodatz protocol of :mod:`ride.datasets.brodatz`: grey levels + U[0, 1), / 256, cut into a
4 x 4 grid of regions (128 x 128 here), one region drawn with the seed as the test set, the other
15 for training. Every file written says ``stand_in: true``; a figure built from it must say so.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..data import save_images
from .brodatz import GRID, TEST_KEY, regions
from .photos import FILES, photo_path
from .pixels import dequantize, image_rng, load_gray

TEXTURES = ("brick", "grass", "gravel")
KEY = 20_000  # seed key of the stand-in's noise, apart from the Brodatz numbers


def prepare(name: str, out_dir: str | os.PathLike, seed: int = 0, grid: int = GRID) -> dict[str, str]:
    """Write <name>_train.h5 (15 regions) and <name>_test.h5 (1 region) for one stand-in texture."""
    from .download import digests

    if name not in TEXTURES:
        raise ValueError(f"unknown stand-in texture {name!r}; known: {list(TEXTURES)}")
    out_dir, path = Path(out_dir), photo_path(name)
    key = KEY + TEXTURES.index(name)
    parts = regions(dequantize(load_gray(path), image_rng(seed, key)), grid)
    test = int(image_rng(seed, TEST_KEY, key).integers(len(parts)))
    train = [k for k in range(len(parts)) if k != test]
    attrs = {"dataset": "textures_standin", "texture": name, "stand_in": True,
             "stand_in_for": "brodatz (texture photographs shipped inside scikit-image, NOT Brodatz)",
             "source": f"{FILES[name][0]}:{FILES[name][1]}", "source_sha256": digests(path)[0],
             "source_verified": False, "preprocessing": "+ U[0,1), / 256", "levels": 256, "seed": seed,
             "grid": grid, "regions": f"row-major index in the grid of the {parts.shape[1] * grid}-pixel texture"}
    return {
        f"{name}_train.h5": save_images(out_dir / f"{name}_train.h5", parts[train],
                                        {**attrs, "split": "train", "region_index": json.dumps(train)}),
        f"{name}_test.h5": save_images(out_dir / f"{name}_test.h5", parts[[test]],
                                       {**attrs, "split": "test", "region_index": json.dumps([test])}),
    }

