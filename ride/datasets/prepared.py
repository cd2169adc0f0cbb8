"""A prepared data set on disk: per split, whole images and a patch set, with their provenance.

``images_<split>.h5`` is the project's image format (:mod:`ride.data`, dataset ``images``);
``patches_<split>.h5`` a patch set (:mod:`ride.datasets.patches`). Both carry the attributes
that say what they hold: ``source``, ``source_sha256`` (and whether it was verified against a
configured value), the preprocessing parameters, the ``seed``, and for image sets the image
``ids`` in order and the ``transposed`` flags of :func:`ride.datasets.pixels.orient`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..data import save_images
from .download import digests, read_provenance
from .patches import remove_dc, sample_patches, save_patches
from .pixels import image_rng, orient, unorient

SPLITS = ("train", "valid", "test")
PATCH_KEY = 1000  # seed key offset of a split's patch positions (image noise uses the split index)


def tree_sha256(root: str | os.PathLike) -> str:
    """One sha256 for a folder: over the sorted relative paths and sha256s of its files."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{digests(path)[0]}\n".encode())
    return digest.hexdigest()


def source_attrs(*paths: str | os.PathLike) -> dict[str, Any]:
    """Where the inputs came from: URL or local path, sha256, whether that sha256 was verified.

    A downloaded file has a ``<file>.json`` (:mod:`ride.datasets.download`); a local folder is
    summarised by :func:`tree_sha256`. Several inputs (one file per image) are listed in order.
    """
    records = []
    for path in paths:
        prov = read_provenance(path)
        if prov is not None:
            records.append({"source": prov["source"], "sha256": prov["sha256"], "verified": prov["verified"],
                            "matches_published": prov.get("matches_published")})
        elif Path(path).is_dir():
            records.append({"source": f"local:{path}", "sha256": tree_sha256(path), "verified": False})
        else:
            records.append({"source": f"local:{path}", "sha256": digests(path)[0], "verified": False})
    if len(records) == 1:
        rec = records[0]
        out = {"source": rec["source"], "source_sha256": rec["sha256"], "source_verified": rec["verified"]}
        if rec.get("matches_published") is not None:
            out["source_matches_published_sha256"] = rec["matches_published"]
        return out
    return {"source": json.dumps([r["source"] for r in records]),
            "source_sha256": json.dumps([r["sha256"] for r in records]),
            "source_verified": all(r["verified"] for r in records)}


def write_split(
    out_dir: str | os.PathLike,
    split: str,
    images: list[np.ndarray],
    ids: list[str],
    shape: tuple[int, int],
    num_patches: int,
    patch_size: int,
    remove_mean: bool,
    seed: int,
    attrs: dict[str, Any],
) -> dict[str, str]:
    """Write ``images_<split>.h5`` (and ``patches_<split>.h5`` when ``num_patches`` > 0).

    ``images`` are already preprocessed float arrays of ``shape`` or its transpose.
    Returns {file name: sha256}.
    """
    out_dir = Path(out_dir)
    stacked, transposed = orient(images, shape)
    common = {**attrs, "seed": seed, "split": split}
    written = {}
    name = f"images_{split}.h5"
    written[name] = save_images(out_dir / name, stacked,
                                {**common, "ids": json.dumps(ids), "transposed": transposed})
    if num_patches > 0:
        rng = image_rng(seed, PATCH_KEY + SPLITS.index(split))
        patches = sample_patches(images, num_patches, patch_size, rng)
        extra: dict[str, Any] = {"patch_size": patch_size, "num_patches": num_patches,
                                 "sampling": "uniform over all positions of all images, with replacement"}
        if remove_mean:
            flat, dc = remove_dc(patches)
            extra["layout"] = "row-major, patch mean (dataset dc) subtracted, bottom-right pixel dropped"
        else:
            flat, dc = patches.reshape(num_patches, -1), None
            extra["layout"] = "row-major"
        name = f"patches_{split}.h5"
        written[name] = save_patches(out_dir / name, flat, dc, {**common, **extra})
    return written


def load_oriented(path: str | os.PathLike) -> list[np.ndarray]:
    """The images of an ``images_<split>.h5`` file, each in its photographed orientation."""
    from ..data import load_images

    images = load_images(path)
    with h5py.File(path, "r") as fh:
        flags = fh.attrs.get("transposed")
    return unorient(images, None if flags is None else np.asarray(flags))
