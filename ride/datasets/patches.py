"""Patch sets: random square patches of a set of images, the 63-dim DC-removed form, their file.

A patch-set file is HDF5 with a float32 dataset ``patches`` of shape N x D (each patch
flattened row-major), optionally ``dc`` (N, the per-patch mean that was removed), attributes
saying what they hold, and a ``.sha256`` sidecar like every data file of the project
(:mod:`ride.data`). The 8x8 BSDS300 sets store D = 63: the mean is subtracted and the
bottom-right pixel dropped (it is minus the sum of the other 63), as in the paper's Table 1 and
in MAF's ``BSDS300.hdf5``; ``restore_dc`` inverts that exactly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..data import DataError, verify_checksum, write_with_checksum

PATCHES = "patches"
DC = "dc"


def sample_patches(images: list[np.ndarray] | np.ndarray, num: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` size x size patches, every position of every image equally likely (with replacement).

    Positions are drawn first; then each image's patches are gathered at once from a strided
    view (no Python loop over patches).
    """
    images = list(images)
    shapes = np.array([img.shape for img in images], dtype=np.int64)
    if len(images) == 0 or (shapes < size).any():
        raise ValueError(f"need at least one image, each at least {size}x{size}; got shapes {shapes.tolist()}")
    rows, cols = shapes[:, 0] - size + 1, shapes[:, 1] - size + 1
    weight = (rows * cols).astype(np.float64)
    which = rng.choice(len(images), size=num, p=weight / weight.sum())
    r = (rng.random(num) * rows[which]).astype(np.int64)
    c = (rng.random(num) * cols[which]).astype(np.int64)
    out = np.empty((num, size, size), dtype=np.float32)
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(images) + 1))
    for k, img in enumerate(images):
        sel = order[bounds[k]:bounds[k + 1]]
        if len(sel):
            out[sel] = sliding_window_view(img, (size, size))[r[sel], c[sel]]
    return out


def remove_dc(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N x (D-1) patches without their mean and last pixel, N means) from N x h x w patches."""
    flat = patches.reshape(len(patches), -1)
    dc = flat.mean(axis=1, dtype=np.float64).astype(np.float32)
    return (flat[:, :-1] - dc[:, None]).astype(np.float32, copy=False), dc


def restore_dc(ac: np.ndarray, dc: np.ndarray) -> np.ndarray:
    """Invert :func:`remove_dc`: the full flattened patches (the last pixel is minus the sum)."""
    last = -ac.sum(axis=1, dtype=np.float64)
    return np.concatenate([ac, last[:, None].astype(ac.dtype)], axis=1) + dc[:, None]


def save_patches(path: str | os.PathLike, patches: np.ndarray, dc: np.ndarray | None = None,
                 attrs: dict[str, Any] | None = None) -> str:
    """Write a patch set (N x D float) atomically with its checksum sidecar; returns the sha256."""
    patches = np.asarray(patches)
    if patches.ndim != 2 or not np.issubdtype(patches.dtype, np.floating):
        raise DataError(f"{path}: patches must be a float array N x D, got {patches.dtype} {patches.shape}")
    if dc is not None and np.shape(dc) != (len(patches),):
        raise DataError(f"{path}: dc must have shape ({len(patches)},), got {np.shape(dc)}")

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset(PATCHES, data=patches)
            if dc is not None:
                fh.create_dataset(DC, data=np.asarray(dc, dtype=np.float32))
            for key, value in (attrs or {}).items():
                fh.attrs[key] = value

    return write_with_checksum(path, write)


def load_patches(path: str | os.PathLike, verify: bool = True) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(patches N x D float32, dc or None, attributes) after checking checksum, form and values."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if verify:
        verify_checksum(path)
    with h5py.File(path, "r") as fh:
        if PATCHES not in fh or fh[PATCHES].ndim != 2:
            raise DataError(
                f"{path}: no dataset '{PATCHES}' of shape N x D (found {sorted(fh.keys())}); "
                f"patch sets are written by `ride prepare`"
            )
        patches = np.asarray(fh[PATCHES], dtype=np.float32)
        dc = np.asarray(fh[DC], dtype=np.float32) if DC in fh else None
        attrs = dict(fh.attrs)
    if not np.isfinite(patches).all() or (dc is not None and not np.isfinite(dc).all()):
        raise DataError(f"{path}: the patch set contains NaN or Inf values")
    return patches, dc, attrs
