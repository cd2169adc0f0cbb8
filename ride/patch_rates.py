"""The 63-dim DC-removed patch coordinates and their conversion to a 64-dim rate in bit/px.

Preprocessing (paper section 3.2, ride/datasets/patches.py): an ``n x n`` patch X (N = n^2 pixels,
row-major) becomes ``x = (X - DC)[:N-1]`` and ``DC = mean(X)``; the dropped bottom-right pixel
is ``-sum(x)``. The map ``A: X -> (x, DC)`` is linear. Its inverse is ``X_i = x_i + DC`` (i < N-1),
``X_{N-1} = DC - sum(x)``, a matrix ``[[I, 1], [-1^T, 1]]`` whose determinant is
``1 + (N - 1) = N`` (Schur complement), so ``|det A| = 1/N`` and ``ln|det A| = -ln N``
(-ln 64 = -4.1589 for 8x8, the paper's value). Had the DC been defined as the sum of the pixels
(``c = 1`` below) the last row of A would be N times larger and ``ln|det A| = 0``; in general
``DC = c * sum(X)`` gives ``|det A| = c``. The paper's -4.1589 therefore means DC = mean.

With a model of the DC (:class:`ride.mogsm.MoGSM`, fitted to the patch means; the paper's
l_DC = 0.5020 nats) and average log-likelihoods ``l_63`` of x, the density of X is
``p(X) = p(x) p(DC) |det A|`` (DC modelled independently of x), so the rate is
``(l_63 + l_DC + ln|det A|) / N / ln 2`` bit/px.
"""
from __future__ import annotations

import math

import torch

PAPER_L_DC = 0.5020  # nats, paper section 3.2
PAPER_LOG_DET_A = -4.1589  # ln|det A| for 8x8 patches, paper section 3.2
DC_CONVENTIONS = {"mean": lambda n_pixels: 1.0 / n_pixels, "sum": lambda n_pixels: 1.0}


def patch_dim(size: int) -> int:
    """Coordinates of a DC-removed ``size x size`` patch (63 for 8x8)."""
    if size < 2:
        raise ValueError(f"patch size must be at least 2, got {size}")
    return size * size - 1


def check_patches63(patches: torch.Tensor, size: int) -> None:
    """Raise a ValueError unless ``patches`` is a finite float ``N x (size^2 - 1)`` tensor."""
    dim = patch_dim(size)
    if not isinstance(patches, torch.Tensor) or patches.dim() != 2 or patches.shape[1] != dim:
        shape = tuple(patches.shape) if isinstance(patches, torch.Tensor) else type(patches).__name__
        raise ValueError(f"expected DC-removed {size}x{size} patches of shape N x {dim} (bottom-right pixel "
                         f"dropped), got {shape}")
    if not torch.is_floating_point(patches) or not torch.isfinite(patches).all():
        raise ValueError("patches must be finite floating-point values")


def rebuild_patch(patches: torch.Tensor, size: int) -> torch.Tensor:
    """``N x size x size`` zero-sum patches from their first ``size^2 - 1`` coordinates."""
    check_patches63(patches, size)
    last = -patches.sum(-1, keepdim=True)
    return torch.cat([patches, last], -1).reshape(-1, size, size)


def drop_pixel(patches: torch.Tensor) -> torch.Tensor:
    """The first ``size^2 - 1`` coordinates (row-major) of ``N x size x size`` patches."""
    return patches.reshape(patches.shape[0], -1)[:, :-1]


def log_abs_det_preprocessing(size: int = 8, dc: str = "mean") -> float:
    """``ln|det A|`` of ``X -> (x, DC)`` (module docstring): ``ln c`` for ``DC = c * sum(X)``."""
    if dc not in DC_CONVENTIONS:
        raise ValueError(f"dc must be one of {sorted(DC_CONVENTIONS)}, got {dc!r}")
    return math.log(DC_CONVENTIONS[dc](size * size))


def bits_per_pixel_from_patch(l_patch: float, l_dc: float, size: int = 8, log_det: float | None = None) -> float:
    """The paper's ``(l_63 + l_DC + ln|det A|) / 64 / ln 2`` for ``size x size`` patches (bit/px).

    ``l_patch`` and ``l_dc`` are average log-likelihoods in nats; ``log_det`` defaults to the
    mean-DC convention, ``-ln(size^2)``.
    """
    if log_det is None:
        log_det = log_abs_det_preprocessing(size)
    return (l_patch + l_dc + log_det) / (size * size) / math.log(2.0)
