"""Decoded 8-bit images to the values the models see: grayscale, dequantisation noise, seeds.

Grayscale is ITU-R BT.601 luma as Pillow's ``convert("L")`` computes it,
``L = round(0.299 R + 0.587 G + 0.114 B)`` in 16-bit fixed point
(``(19595 R + 38470 G + 7471 B + 32768) >> 16``), an integer 0..255. The paper only says
"turned to grayscale"; Uria et al.'s protocol, which it follows, starts from 8-bit grey values,
and an integer result keeps the dequantisation below exact: adding U[0, 1) to integer grey
levels and dividing by 256 gives a continuous density whose bits/px equal the discrete model's
code length (Theis, van den Oord & Bethge 2016).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def load_gray(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 grey levels (BT.601 luma for colour images)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an H x W x 3 uint8 array, bit-identical to Pillow's ``convert("L")``."""
    rgb = rgb.astype(np.uint32)
    return ((19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2] + 32768) >> 16).astype(np.uint8)


def image_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator of one image's noise: independent of how many other images a set holds."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


def dequantize(gray: np.ndarray, rng: np.random.Generator, levels: int = 256) -> np.ndarray:
    """``(gray + U[0, 1)) / levels`` as float32: values in [0, 1) for 8-bit input."""
    noise = rng.random(gray.shape, dtype=np.float64)
    out = ((gray.astype(np.float64) + noise) / levels).astype(np.float32)
    # float32 rounding may carry g + u (u near 1) up to g + 1: keep every value in its own bin.
    top = np.nextafter(((gray.astype(np.float64) + 1) / levels).astype(np.float32), np.float32(0))
    return np.minimum(out, top)


def orient(images: list[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Stack images of ``shape`` or its transpose into N x H x W; also say which were transposed.

    BSDS300 mixes 481x321 and 321x481 photographs; one HDF5 array holds them all, and the flags
    (saved as the ``transposed`` attribute) give each image back in its own orientation.
    """
    flags = np.zeros(len(images), dtype=np.uint8)
    out = np.empty((len(images), *shape), dtype=images[0].dtype if images else np.float32)
    for k, img in enumerate(images):
        if img.shape == tuple(shape):
            out[k] = img
        elif img.shape == tuple(shape)[::-1]:
            out[k], flags[k] = img.T, 1
        else:
            raise ValueError(f"image {k} has shape {img.shape}; expected {tuple(shape)} or its transpose")
    return out, flags


def unorient(images: np.ndarray, transposed: np.ndarray | None) -> list[np.ndarray]:
    """Undo :func:`orient`: each image in the orientation it was photographed in."""
    if transposed is None:
        return list(images)
    return [img.T if flag else img for img, flag in zip(images, transposed)]
