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


# protocol -> (data set name, the real set it stands in for, its splits)
PROTOCOLS = {
    "bsds300": ("photos", "BSDS300", SPLITS),
    "vanhateren": ("photos_log", "van Hateren", ("train", "test")),
}


def prepare(out_dir: str | os.PathLike, num_patches: dict[str, int], seed: int = 0,
            split: dict[str, list[str]] | None = None, crop: tuple[int, int] = CROP,
            patch_size: int = 8, protocol: str = "bsds300") -> dict[str, str]:
    """Write images_<split>.h5 and patches_<split>.h5 of the stand-in for ``protocol``'s data set.

    ``bsds300``: ``photos``, splits train / valid / test, (I + U) / 256, 63-dim DC-removed patches.
    ``vanhateren``: ``photos_log``, splits train / test, ln(1 + I + U), raw patches.
    """
    from .bsds300 import PROTOCOL
    from .download import digests
    from .vanhateren import TRANSFORM, log_intensity

    if protocol not in PROTOCOLS:
        raise ValueError(f"photos: unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    dataset, real, splits = PROTOCOLS[protocol]
    split = split or ({"train": SPLIT["train"] + SPLIT["valid"], "test": SPLIT["test"]}
                      if protocol == "vanhateren" else SPLIT)
    extra = sorted(set(split) - set(splits))
    if extra:
        raise ValueError(f"{dataset}: splits {extra} are not used by the {protocol} protocol (splits: {list(splits)})")
    written = {}
    for name in splits:
        names = split.get(name, [])
        if not names:
            raise ValueError(f"{dataset}: the {name} split names no photo")
        paths = [photo_path(n) for n in names]
        key = SPLITS.index(name)
        grays = [center_crop(load_gray(p), crop) for p in paths]
        if protocol == "vanhateren":
            images = [log_intensity(g, image_rng(seed, key, j)) for j, g in enumerate(grays)]
            preprocessing = f"van Hateren's transform on 8-bit BT.601 grey levels I: {TRANSFORM.split(', I ')[0]}"
        else:
            images = [dequantize(g, image_rng(seed, key, j)) for j, g in enumerate(grays)]
            preprocessing = PROTOCOL
        attrs = {"dataset": dataset, "stand_in": True,
                 "stand_in_for": f"{real.lower().replace(' ', '')} (photographs shipped inside installed packages, NOT {real})",
                 "source": ", ".join(f"{FILES[n][0]}:{FILES[n][1]}" for n in names),
                 "source_sha256": ", ".join(digests(p)[0] for p in paths), "source_verified": False,
                 "preprocessing": f"{preprocessing}; central crop {crop[0]}x{crop[1]}", "levels": 256}
        written.update(write_split(out_dir, name, images, names, tuple(crop), num_patches.get(name, 0),
                                   patch_size, protocol == "bsds300", seed, attrs))
    return written
