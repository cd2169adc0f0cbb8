"""``ride prepare bench``: how long preparation takes, measured on the offline stand-in.

BSDS300 itself is not reachable from the project's machines, so each phase is timed on data of
the real sizes made in-process: the ``photos`` training images for the patch sets (at the
paper's 1.6e6 training patches), synthetic 481x321 JPEGs for decoding, synthetic 1536x1024 .iml
files for van Hateren. The vectorised patch sampler is compared with an in-process baseline,
a Python loop that cuts one patch at a time.
"""
from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .patches import remove_dc, sample_patches, save_patches
from .pixels import dequantize, image_rng, load_gray


def _seconds(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _loop_patches(images: list[np.ndarray], num: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The baseline: one random position and one copy per patch."""
    out = np.empty((num, size, size), dtype=np.float32)
    for k in range(num):
        img = images[rng.integers(len(images))]
        r, c = rng.integers(img.shape[0] - size + 1), rng.integers(img.shape[1] - size + 1)
        out[k] = img[r:r + size, c:c + size]
    return out


def run(num_patches: int = 1_600_000, baseline_patches: int = 20_000, jpegs: int = 30, imls: int = 3) -> dict[str, Any]:
    from .photos import CROP, SPLIT, center_crop, photo_path
    from .vanhateren import log_intensity, read_iml

    rng = np.random.default_rng(0)
    images = [dequantize(center_crop(load_gray(photo_path(n)), CROP), image_rng(0, 0, j))
              for j, n in enumerate(SPLIT["train"])]
    t_loop, _ = _seconds(lambda: _loop_patches(images, baseline_patches, 8, rng))
    t_sample, patches = _seconds(lambda: sample_patches(images, num_patches, 8, rng))
    t_dc, (ac, dc) = _seconds(lambda: remove_dc(patches))
    with tempfile.TemporaryDirectory() as tmp:
        t_write, _ = _seconds(lambda: save_patches(Path(tmp) / "p.h5", ac, dc, {"bench": True}))
        y, x = np.mgrid[:321, :481]
        files = []
        for k in range(jpegs):
            rgb = np.stack([128 + 60 * np.sin(x / (5.0 + k) + c) * np.cos(y / 7.0) + 30 * rng.random((321, 481))
                            for c in range(3)], axis=-1).clip(0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
            files.append(Path(tmp) / f"{k}.jpg")
            files[-1].write_bytes(buf.getvalue())
        t_jpeg, _ = _seconds(lambda: [dequantize(load_gray(f), image_rng(0, 0, j)) for j, f in enumerate(files)])
        for k in range(imls):
            rng.integers(0, 4096, size=(1024, 1536)).astype(">u2").tofile(Path(tmp) / f"imk{k:05d}.iml")
        t_iml, _ = _seconds(lambda: [log_intensity(read_iml(Path(tmp) / f"imk{k:05d}.iml"), image_rng(0, 0, k))
                                     for k in range(imls)])
    per_patch_loop = t_loop / baseline_patches
    per_patch = (t_sample + t_dc + t_write) / num_patches
    return {
        "patches": num_patches,
        "sample_s": round(t_sample, 3), "remove_dc_s": round(t_dc, 3), "write_s": round(t_write, 3),
        "patch_set_s": round(t_sample + t_dc + t_write, 3),
        "baseline_loop_s_per_patch": per_patch_loop,
        "speedup_vs_loop": round(per_patch_loop / per_patch, 1),
        "decode_jpeg_481x321_s_each": round(t_jpeg / jpegs, 4),
        "iml_read_log_s_each": round(t_iml / imls, 4),
        "extrapolated_bsds300_paper_s": round(300 * t_jpeg / jpegs + per_patch * 2_780_000, 1),
        "extrapolated_vanhateren_paper_s": round(99 * t_iml / imls + per_patch * 4 * 1_200_000, 1),
    }
