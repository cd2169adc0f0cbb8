"""MAF's preprocessed BSDS300 (Papamakarios et al. 2017): the 63-dim patches flow papers report on.

Source: zenodo record 1161203, ``data.tar.gz`` (MAF's data sets, large), whose member
``.../BSDS300/BSDS300.hdf5`` holds datasets ``train`` / ``validation`` / ``test`` of 63-dim
rows (1,000,000 / 50,000 / 250,000): 8x8 patches, DC removed, bottom-right pixel dropped, the
layout of our own 63-dim sets (:mod:`ride.datasets.patches`). Only that member is read out of
the archive. A local ``BSDS300.hdf5`` or ``data.tar.gz`` works as well.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import h5py
import numpy as np

from .archive import ArchiveError, check_members
from .patches import save_patches
from .prepared import source_attrs

MEMBER = "BSDS300.hdf5"
SPLITS = {"train": "train", "validation": "valid", "test": "test"}
DIM = 63


def _member_file(archive: Path, tmp: Path) -> Path:
    """Copy the archive's one ``BSDS300/BSDS300.hdf5`` member to ``tmp`` (after the safety checks)."""
    names = [n for n in check_members(archive) if Path(n).name == MEMBER]
    if len(names) != 1:
        raise ArchiveError(f"{archive}: expected one member named {MEMBER}, found {names or 'none'}")
    out = tmp / MEMBER
    try:
        with tarfile.open(archive, "r:*") as tf, tf.extractfile(names[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ArchiveError(f"{archive}: cannot read {names[0]} ({err}); delete the archive and download it again") from err
    return out


def prepare(source: str | os.PathLike, out_dir: str | os.PathLike, max_rows: int | None = None) -> dict[str, str]:
    """Write patches_{train,valid,test}.h5 (the first ``max_rows`` rows of each split, if given)."""
    source, out_dir = Path(source), Path(out_dir)
    attrs = {"dataset": "maf_bsds300", **source_attrs(source),
             "layout": "MAF BSDS300.hdf5: 8x8 patches, DC removed, bottom-right pixel dropped (63 dims)",
             "patch_size": 8}
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".extract.") as tmp:
        hdf5 = source if h5py.is_hdf5(source) else _member_file(source, Path(tmp))
        written = {}
        with h5py.File(hdf5, "r") as fh:
            for theirs, ours in SPLITS.items():
                if theirs not in fh or fh[theirs].ndim != 2 or fh[theirs].shape[1] != DIM:
                    found = {k: fh[k].shape for k in fh}
                    raise ValueError(f"{source}: expected a dataset {theirs!r} of N x {DIM} rows, found {found}")
                rows = np.asarray(fh[theirs][:max_rows], dtype=np.float32)
                name = f"patches_{ours}.h5"
                written[name] = save_patches(out_dir / name, rows, None,
                                             {**attrs, "split": ours, "maf_split": theirs,
                                              "rows_in_source": fh[theirs].shape[0]})
    return written
