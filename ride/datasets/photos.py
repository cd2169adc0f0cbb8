"""``photos``: an offline STAND-IN for BSDS300, never BSDS300 itself.

Photographs that installed packages ship inside their wheels (scikit-image's ``skimage/data``
and matplotlib's ``sample_data``; none is fetched at run time), prepared with the BSDS300
protocol (:mod:`ride.datasets.bsds300`): BT.601 grayscale, U[0, 1) noise, / 256, each cropped
to its central 300x384 pixels (the largest landscape window every one of them holds), split
into train / valid / test by name. Every file written says ``stand_in: true`` in its attributes;
a table built from it must say so too.

Chosen: the natural photographs (people, animal, objects, scenes, the moon, texture photos);
left out: drawings and scans (``page``, ``text``, ``logo``, ``color``), microscopy (``cell``,
``ihc``, ``retina``), astronomy (``hubble_deep_field``), synthetic or blurred images, and
``motorcycle_right`` (the stereo partner of ``motorcycle_left``: the same scene in two splits).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from .pixels import dequantize, image_rng, load_gray
from .prepared import SPLITS, write_split

FILES = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "camera": ("skimage", "data/camera.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "brick": ("skimage", "data/brick.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "coins": ("skimage", "data/coins.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "moon": ("skimage", "data/moon.png"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
SPLIT = {
    "train": ["astronaut", "camera", "coffee", "rocket", "motorcycle_left", "brick", "grass", "grace_hopper"],
    "valid": ["coins"],
    "test": ["chelsea", "gravel", "moon"],
}
CROP = (300, 384)


def photo_path(name: str) -> Path:
    """The file of photograph ``name`` inside its installed package."""
    if name not in FILES:
        raise ValueError(f"unknown photo {name!r}; known: {sorted(FILES)}")
    package, rel = FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"photo {name!r} ships with the package {package!r}, which is not installed: "
                                f"pip install {'scikit-image' if package == 'skimage' else package}")
    path = Path(spec.submodule_search_locations[0]) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: photo {name!r} is missing from the installed {package!r}")
    return path


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if image.shape[0] < h or image.shape[1] < w:
        raise ValueError(f"image of shape {image.shape} is smaller than the crop {shape}")
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[top:top + h, left:left + w]


def prepare(out_dir: str | os.PathLike, num_patches: dict[str, int], seed: int = 0,
            split: dict[str, list[str]] | None = None, crop: tuple[int, int] = CROP,
            patch_size: int = 8) -> dict[str, str]:
    """Write images_{train,valid,test}.h5 and patches_{...}.h5 of the stand-in."""
    from .bsds300 import PROTOCOL
    from .download import digests

    split = split or SPLIT
    written = {}
    for name in SPLITS:
        names = split.get(name, [])
        if not names:
            raise ValueError(f"photos: the {name} split names no photo")
        paths = [photo_path(n) for n in names]
        key = SPLITS.index(name)
        images = [dequantize(center_crop(load_gray(p), crop), image_rng(seed, key, j)) for j, p in enumerate(paths)]
        attrs = {"dataset": "photos", "stand_in": True,
                 "stand_in_for": "bsds300 (photographs shipped inside installed packages, NOT BSDS300)",
                 "source": ", ".join(f"{FILES[n][0]}:{FILES[n][1]}" for n in names),
                 "source_sha256": ", ".join(digests(p)[0] for p in paths), "source_verified": False,
                 "preprocessing": f"{PROTOCOL}; central crop {crop[0]}x{crop[1]}", "levels": 256}
        written.update(write_split(out_dir, name, images, names, tuple(crop), num_patches.get(name, 0),
                                   patch_size, True, seed, attrs))
    return written
