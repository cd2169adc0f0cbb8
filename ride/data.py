"""The project's one data format: HDF5 with a float dataset ``images`` of shape N x H x W.

Every file written here gets a ``<file>.sha256`` sidecar; :func:`load_images` verifies it, so
a truncated or corrupted dataset is caught before any training starts.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import DataError

DATASET = "images"


def sha256sum(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.sha256")


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file 0600; give it the mode any new file gets (0666 less umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_images(path: str | os.PathLike, images: np.ndarray, attrs: dict[str, Any] | None = None) -> str:
    """Write ``images`` (N x H x W) atomically with a checksum sidecar; returns the sha256."""
    images = np.asarray(images)
    if images.ndim != 3 or not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"images must be a float array of shape N x H x W, got {images.dtype} {images.shape}")

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset(DATASET, data=images)
            for key, value in (attrs or {}).items():
                fh.attrs[key] = value

    return write_with_checksum(path, write)


def write_with_checksum(path: str | os.PathLike, write: Any) -> str:
    """:func:`atomic_write` of ``path``, then its ``<file>.sha256`` sidecar; returns the sha256."""
    atomic_write(path, write)
    digest = sha256sum(path)
    atomic_write(checksum_path(path), lambda tmp: Path(tmp).write_text(f"{digest}  {Path(path).name}\n"))
    return digest


def verify_checksum(path: str | os.PathLike) -> None:
    """Compare ``path`` with its sidecar; raise :class:`DataError` naming the file on mismatch."""
    sidecar = checksum_path(path)
    if not sidecar.exists():
        return
    words = sidecar.read_text().split()
    if not words:
        raise DataError(f"{sidecar} is empty; delete it and rebuild {path} (e.g. re-run snakemake)")
    expected = words[0]
    actual = sha256sum(path)
    if actual != expected:
        raise DataError(
            f"{path}: sha256 {actual} does not match {sidecar} ({expected}); the file is corrupt or "
            f"truncated. Delete it and its .sha256 file and rebuild it (e.g. re-run snakemake)."
        )


def load_images(path: str | os.PathLike, verify: bool = True, index: slice | None = None) -> np.ndarray:
    """Read the ``images`` dataset as float32 after checking checksum, form and finiteness."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if verify:
        verify_checksum(path)
    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err}); rebuild or re-download it") from err
    with fh:
        if DATASET not in fh:
            raise DataError(
                f"{path}: no dataset '{DATASET}' (found {sorted(fh.keys())}); the project's format is "
                f"HDF5 with a float dataset '{DATASET}' of shape N x H x W"
            )
        dset = fh[DATASET]
        if not isinstance(dset, h5py.Dataset):
            raise DataError(
                f"{path}: '{DATASET}' is an HDF5 {type(dset).__name__}, not a dataset; the project's format "
                f"is HDF5 with a float dataset '{DATASET}' of shape N x H x W (write it with ride.data.save_images)"
            )
        if dset.ndim != 3:
            raise DataError(f"{path}: dataset '{DATASET}' must have shape N x H x W, got {dset.shape}")
        if not np.issubdtype(dset.dtype, np.floating):
            raise DataError(
                f"{path}: dataset '{DATASET}' holds {dset.dtype} values, but the format is float (grey levels "
                f"dequantised to [0, 1), e.g. (uint8 + uniform noise) / 256); convert the images to float32 "
                f"and write them with ride.data.save_images"
            )
        images = np.asarray(dset[index] if index is not None else dset[()], dtype=np.float32)
    if not np.isfinite(images).all():
        raise DataError(f"{path}: dataset '{DATASET}' contains NaN or Inf values")
    return images


def load_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The file's HDF5 attributes (what :func:`save_images` wrote beside the images)."""
    try:
        with h5py.File(path, "r") as fh:
            return {key: value.item() if isinstance(value, np.generic) else value for key, value in fh.attrs.items()}
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err}); rebuild or re-download it") from err


def write_csv_rows(path: str | os.PathLike, rows: Any, columns: Any) -> None:
    """Write ``rows`` (mappings) as a CSV with ``columns`` (missing keys empty), atomically."""
    import csv

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns))
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k) for k in columns})

    atomic_write(path, write)
