"""Synthetic data with an analytically known entropy rate, for tests and sanity checks.

A causal (quarter-plane) Gaussian autoregressive field
``x_ij = a x_{i,j-1} + b x_{i-1,j} + c x_{i-1,j-1} + sigma e_ij`` with i.i.d. standard normal
``e``. Every pixel of the raster past depends only on innovations of the raster past, so
``p(x_ij | x_<ij) = N(a x_{i,j-1} + b x_{i-1,j} + c x_{i-1,j-1}, sigma^2)`` exactly, and the
log-likelihood rate of the true model is ``-0.5 log2(2 pi e sigma^2)`` bit/px.
"""
from __future__ import annotations

import math

import numpy as np


def gaussian_ar_field(
    num: int, size: int, coeffs: tuple[float, float, float] = (0.6, 0.5, -0.3), sigma: float = 0.1,
    burn_in: int = 32, seed: int = 0,
) -> np.ndarray:
    """``num x size x size`` float32 images of the field (top/left burn-in cropped away)."""
    a, b, c = coeffs
    rng = np.random.default_rng(seed)
    total = size + burn_in
    noise = sigma * rng.standard_normal((num, total, total))
    x = np.zeros((num, total + 1, total + 1))
    # Row by row: within a row the left-neighbour recursion is a first-order filter.
    for i in range(1, total + 1):
        drive = b * x[:, i - 1, 1:] + c * x[:, i - 1, :-1] + noise[:, i - 1]
        row = x[:, i]
        for j in range(1, total + 1):
            row[:, j] = a * row[:, j - 1] + drive[:, j - 1]
    return x[:, 1 + burn_in :, 1 + burn_in :].astype(np.float32)


def gaussian_ar_rate(sigma: float = 0.1) -> float:
    """Log-likelihood rate (bit/px) of the true conditional, the negative entropy rate."""
    return -0.5 * math.log2(2 * math.pi * math.e * sigma**2)
