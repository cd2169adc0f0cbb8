"""Dead-leaves images after Lee, Mumford & Huang (2001), for the paper's Table 3.

The RIDE paper (section 3.3) trains and tests on 1000 dead-leaves images of 256 x 256 pixels
(the last 100 for testing) but does not publish the generator's parameters. This module is a
documented stand-in; every parameter and its source is listed here, in ``config/config.yaml`` and in
the README.

Model
-----
* **Leaves**: opaque disks (Matheron 1968; Lee, Mumford & Huang 2001, "Occlusion models for
  natural images: a statistical study of a scale-invariant dead leaves model", IJCV 41:35-59).
* **Radii**: density ``f(r) ∝ r**-3`` on ``[r_min, r_max]``. The exponent 3 is the one Lee,
  Mumford & Huang derive for a scale-invariant 2-D dead-leaves model (every octave of radii
  covers the same expected area). Defaults: ``r_min = 1`` pixel (the sampling scale: smaller
  disks are not resolved by the pixel grid, they would only act as noise) and ``r_max = 256``
  pixels (the image size of the paper's data set, the upper end of the scaling range). The
  authors' cut-offs are unpublished; these are our choices within Lee et al.'s model.
* **Positions**: uniform in the plane. Only disks that can touch the image matter, so a disk of
  radius ``r`` gets its centre uniform in the square ``[-r, size + r]^2`` (the image enlarged by
  ``r`` on every side), and its radius is drawn from ``f(r) (size + 2r)^2`` (normalised), the
  radius law of disks whose centre falls in such an enlarged square. This is the same point
  process as uniform positions over an infinite plane, restricted to the disks that can reach
  the image; no leaf is wasted far from the image and no border is left uncovered.
  (:func:`sample_disks`; the test suite checks that centres inside the image carry the pure
  ``r**-3`` law.)
* **Grey levels**: uniform integers ``0 .. grey_levels - 1`` (default 256, i.e. 8 bits),
  drawn for each leaf independently of its size and position (the independence assumption of
  the dead-leaves model; the uniform law is the one the project's brief names, and the one the
  examples of the ``deadleaves`` Python package use).
* **Occlusion**: the *sequential* (Matheron) model simulated front to back: the first disk
  placed is in front, each later disk only fills pixels that are still uncovered, and
  generation stops as soon as every pixel is covered. Kendall & Thönnes (1999, "Perfect
  simulation in stochastic geometry", Pattern Recognition 32:1569-1586) show that this
  front-to-back scheme yields an exact sample of the stationary dead-leaves image and stops
  after finitely many leaves. Disks are rasterised without anti-aliasing: pixel ``(i, j)``
  (centre at ``(i + 0.5, j + 0.5)``) belongs to a disk when its centre lies inside it.
* **Dequantisation noise**: each pixel gets independent ``U[0, noise)`` noise on the grey-level
  scale (default ``noise = 1``, one grey level), so that the image has a finite density;
  the result is divided by ``grey_levels``, so values lie in ``[0, 1)``.

Value scale
-----------
``(grey level + U[0, 1)) / 256`` is the project's convention for 8-bit images (REFERENCE.md,
the BSDS300 protocol: "add U[0,1) noise to 0..255 values, divide by 256"), so bits/px on dead
leaves are in the same units as Tables 1-2. Absolute values are *not* comparable with the
paper's Table 3 (1.2-1.5 bit/px): flat regions of an 8-bit image with one grey level of noise
are almost perfectly predictable (up to 8 bit/px), and the authors' scale, grey-level law and
noise are unpublished. The workflow therefore does not use the default width: ``config/config.yaml``
freezes the width fitted ONCE by ``ride calibrate`` (:mod:`ride.calibration`: MCGSM-32 at the
paper protocol on the paper's 1.294 bit/px, Z-scored), and every other row is judged against it.

Rates on intensities scaled by ``a`` shift by ``-log2(a)`` bit/px; the diffusion paper whose
dead-leaves numbers the paper cites reports rates on Z-scored data. ``ride deadleaves`` therefore
records the training set's pixel mean and std (:func:`zscore_attrs`, ``zscore_mean`` and
``zscore_std`` in both files' HDF5 attributes), and ``ride evaluate`` reports the rate on
``(x - mean) / std`` beside the raw one: ``bits_per_pixel_z = bits_per_pixel + log2(std)``
(std ~ 0.283 with the defaults: -1.82 bit/px).

Reproducibility
---------------
Image ``k`` of ``generate(n, size, seed)`` is drawn from its own stream
``numpy.random.SeedSequence(seed, spawn_key=(k,))`` (what ``SeedSequence(seed).spawn(n)[k]``
gives), so it does not depend on ``n``: the first images of a larger set equal a smaller set.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Generator parameters and their defaults (sources in the module docstring).
DEFAULTS: dict[str, float | int] = {
    "r_min": 1.0,  # pixels; lower cut-off of the r^-3 law (pixel scale)
    "r_max": 256.0,  # pixels; upper cut-off (the paper's image size)
    "grey_levels": 256,  # grey levels are uniform integers 0 .. grey_levels - 1 (8 bit)
    "noise": 1.0,  # width of the uniform dequantisation noise, in grey levels
}

#: Disks drawn per vectorised batch. Part of the definition of the random stream: changing it
#: changes the images drawn for a seed (but not their distribution).
CHUNK = 2048
#: Safety stop: an image that is not covered after this many disks is a parameter error.
MAX_DISKS = 5_000_000
_UNSET = np.iinfo(np.int64).max


def check_params(params: dict[str, Any]) -> dict[str, float | int]:
    """Merge ``params`` into :data:`DEFAULTS`; raise ``ValueError`` naming a wrong key or value."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown dead-leaves parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    out: dict[str, float | int] = dict(DEFAULTS)
    for key, value in params.items():
        try:
            out[key] = int(value) if key == "grey_levels" else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"dead-leaves parameter {key}={value!r} is not a number") from None
        if key == "grey_levels" and float(value) != out[key]:
            raise ValueError(f"dead-leaves parameter grey_levels={value!r} must be an integer")
    if not (0 < out["r_min"] < out["r_max"]) or not math.isfinite(out["r_max"]):
        raise ValueError(f"dead-leaves radii need 0 < r_min < r_max < inf, got {out['r_min']}, {out['r_max']}")
    if out["r_min"] < 0.5:
        raise ValueError(f"dead-leaves parameter r_min={out['r_min']} must be >= 0.5 pixel")
    if out["grey_levels"] < 2:
        raise ValueError(f"dead-leaves parameter grey_levels={out['grey_levels']} must be >= 2")
    if not 0 <= out["noise"] <= 1e6:
        raise ValueError(f"dead-leaves parameter noise={out['noise']} must be >= 0")
    return out


def sample_radii(rng: np.random.Generator, n: int, r_min: float, r_max: float, power: float = 3.0) -> np.ndarray:
    """``n`` radii with density ``∝ r**-power`` on ``[r_min, r_max]`` (inverse CDF)."""
    u = rng.random(n)
    if power == 1.0:
        return r_min * (r_max / r_min) ** u
    e = 1.0 - power  # F(r) = (r^e - a^e) / (b^e - a^e)
    a, b = r_min**e, r_max**e
    return (a + u * (b - a)) ** (1.0 / e)


def sample_disks(
    rng: np.random.Generator, n: int, size: int, r_min: float, r_max: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` disks (centre x, centre y, radius) of a uniform r^-3 disk process that can reach the image.

    The radius is drawn from ``r**-3 (size + 2r)**2`` = ``size² r^-3 + 4 size r^-2 + 4 r^-1``
    (a mixture of three truncated power laws), the centre uniformly in ``[-r, size + r]^2``.
    Image coordinates run over ``[0, size]``; pixel ``(i, j)`` has its centre at
    ``(x, y) = (j + 0.5, i + 0.5)``.
    """
    s = float(size)
    weights = np.array(
        [
            s * s * (r_min**-2 - r_max**-2) / 2.0,
            4.0 * s * (1.0 / r_min - 1.0 / r_max),
            4.0 * math.log(r_max / r_min),
        ]
    )
    component = rng.choice(3, size=n, p=weights / weights.sum())
    radii = np.empty(n)
    for k, power in enumerate((3.0, 2.0, 1.0)):
        idx = np.flatnonzero(component == k)
        radii[idx] = sample_radii(rng, idx.size, r_min, r_max, power)
    extent = s + 2.0 * radii
    cx = rng.random(n) * extent - radii
    cy = rng.random(n) * extent - radii
    return cx, cy, radii


def _bucket(sides: np.ndarray) -> np.ndarray:
    """Round box sides up to 1, 2, 3, 4, 6, 8, 12, 16, ... so few distinct grids are built."""
    sides = np.maximum(sides, 1)
    p = 2 ** np.floor(np.log2(sides)).astype(np.int64)
    return np.where(sides <= p, p, np.where(sides <= p + p // 2, p + p // 2, 2 * p))


def rasterise(
    cx: np.ndarray, cy: np.ndarray, radii: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """All (flat pixel index, disk index) pairs with the pixel centre inside the disk."""
    x0 = np.clip(np.ceil(cx - radii - 0.5), 0, size).astype(np.int64)
    x1 = np.clip(np.floor(cx + radii - 0.5), -1, size - 1).astype(np.int64)
    y0 = np.clip(np.ceil(cy - radii - 0.5), 0, size).astype(np.int64)
    y1 = np.clip(np.floor(cy + radii - 0.5), -1, size - 1).astype(np.int64)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    live = np.flatnonzero((w > 0) & (h > 0))
    if live.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    side = _bucket(np.maximum(w[live], h[live]))
    pixels, disks = [], []
    for s in np.unique(side):
        sel = live[side == s]
        off = np.arange(s)
        xs = x0[sel, None, None] + off[None, None, :]  # n x 1 x s
        ys = y0[sel, None, None] + off[None, :, None]  # n x s x 1
        dx = xs + 0.5 - cx[sel, None, None]
        dy = ys + 0.5 - cy[sel, None, None]
        inside = (dx * dx + dy * dy <= (radii[sel] ** 2)[:, None, None]) & (xs < size) & (ys < size)
        k, a, b = np.nonzero(inside)
        pixels.append(ys[k, a, 0] * size + xs[k, 0, b])
        disks.append(sel[k])
    return np.concatenate(pixels), np.concatenate(disks)


def render(cx: np.ndarray, cy: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
    """Label image (size x size, int64): index of the *first* listed disk covering each pixel.

    Pixels no disk covers get -1. This is the occlusion rule of :func:`generate` (earlier disks
    are in front), exposed for tests.
    """
    labels = np.full(size * size, _UNSET, dtype=np.int64)
    pix, disk = rasterise(np.asarray(cx, float), np.asarray(cy, float), np.asarray(radii, float), size)
    np.minimum.at(labels, pix, disk)
    labels[labels == _UNSET] = -1
    return labels.reshape(size, size)


def generate_one(rng: np.random.Generator, size: int, params: dict[str, float | int]) -> tuple[np.ndarray, int]:
    """One image (float64, size x size) and the number of disks drawn until it was covered."""
    r_min, r_max = float(params["r_min"]), float(params["r_max"])
    labels = np.full(size * size, _UNSET, dtype=np.int64)
    greys: list[np.ndarray] = []
    drawn = 0
    uncovered = size * size
    while uncovered:
        if drawn >= MAX_DISKS:
            raise RuntimeError(f"dead-leaves image not covered after {drawn} disks; check r_min/r_max")
        cx, cy, radii = sample_disks(rng, CHUNK, size, r_min, r_max)
        greys.append(rng.integers(0, int(params["grey_levels"]), CHUNK))
        pix, disk = rasterise(cx, cy, radii, size)
        # Earlier disks have smaller indices, so the minimum keeps the front-most leaf.
        np.minimum.at(labels, pix, disk + drawn)
        drawn += CHUNK
        uncovered = int(np.count_nonzero(labels == _UNSET))
    grey = np.concatenate(greys)[labels].astype(np.float64)
    image = (grey + float(params["noise"]) * rng.random(size * size)) / float(params["grey_levels"])
    return image.reshape(size, size), drawn


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of a set generated with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def _generate_range(seed: int, first: int, stop: int, size: int, params: dict[str, float | int]) -> np.ndarray:
    return np.stack([generate_one(image_rng(seed, k), size, params)[0].astype(np.float32) for k in range(first, stop)])


def generate(num_images: int, size: int, seed: int, workers: int = 1, **params: Any) -> np.ndarray:
    """``num_images`` dead-leaves images, float32, ``num_images x size x size``, values in [0, 1).

    ``params`` override :data:`DEFAULTS` (``r_min``, ``r_max``, ``grey_levels``, ``noise``); an
    unknown key raises ``ValueError``. Image ``k`` depends only on ``(seed, k, size, params)``,
    so ``workers`` processes (each a contiguous range of images) give the same array as one.
    """
    if int(num_images) < 0 or int(size) < 1 or int(workers) < 1:
        raise ValueError(f"need num_images >= 0, size >= 1 and workers >= 1, got {num_images}, {size}, {workers}")
    full = check_params(params)
    n, size = int(num_images), int(size)
    out = np.empty((n, size, size), dtype=np.float32)
    workers = min(int(workers), max(n, 1))
    if workers == 1:
        for k in range(n):
            out[k] = generate_one(image_rng(seed, k), size, full)[0]
        return out
    from concurrent.futures import ProcessPoolExecutor

    bounds = np.linspace(0, n, 4 * workers + 1).astype(int)
    with ProcessPoolExecutor(workers) as pool:
        parts = [pool.submit(_generate_range, seed, a, b, size, full) for a, b in zip(bounds, bounds[1:]) if b > a]
        start = 0
        for part in parts:
            block = part.result()
            out[start : start + len(block)] = block
            start += len(block)
    return out


def zscore_attrs(train_images: np.ndarray) -> dict[str, float]:
    """The training set's pixel mean and std (float64), recorded to report Z-scored rates."""
    pixels = np.asarray(train_images, dtype=np.float64)
    if pixels.size < 2:
        raise ValueError("need at least two training pixels for their mean and std")
    return {"zscore_mean": float(pixels.mean()), "zscore_std": float(pixels.std())}


__all__ = [
    "DEFAULTS", "check_params", "generate", "generate_one", "image_rng", "render", "rasterise", "sample_disks",
    "sample_radii", "zscore_attrs",
]
