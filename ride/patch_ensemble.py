"""Ensembles over the 8 symmetries of the square for DC-removed patches (EoMCGSM, EoPatchRIDE).

A patch is stored as its first ``D = n^2 - 1`` coordinates x (row-major); the bottom-right pixel
is ``-sum(x)`` (ride/patch_rates.py). A symmetry T of the square (ride.evaluate.TRANSFORMS) acts
on the full zero-sum patch, and the transformed patch is stored the same way, so member k sees

    M_k x = drop(T_k(rebuild(x))),

a linear bijection of R^D. If T_k keeps the bottom-right corner in place, M_k permutes the
coordinates. Otherwise the transformed patch's retained coordinates hold the old corner value
``-sum(x)`` and miss the pixel s that moves into the corner: M_k = Q E, where E is the identity
with row s replaced by ``-1^T`` (``det E = -1``: expand along the unit rows) and Q a permutation.
Either way ``det M_k = +-1`` (:func:`jacobian_det` computes the sign exactly), so

    log q(x) = logsumexp_k(log p(M_k x) + log|det M_k|) - log 8

is a normalised density on R^D (each term is the density of ``M_k^{-1} y``, y ~ p): the log of
the mean of the members' probabilities, never the mean of their log-probabilities.
"""
from __future__ import annotations

import math
import torch
from torch import nn

from .evaluate import TRANSFORMS
from .patch_rates import drop_pixel, patch_dim, rebuild_patch


def source_indices(size: int) -> list[torch.Tensor]:
    """Per transform, the row-major source index of every pixel of the transformed patch."""
    index = torch.arange(size * size).reshape(1, size, size)
    return [transform(index).reshape(-1) for _, transform in TRANSFORMS]


def coordinate_map(x: torch.Tensor, size: int, k: int) -> torch.Tensor:
    """``M_k x``: the stored coordinates of the k-th transform of the patches ``x`` (N x D)."""
    _, transform = TRANSFORMS[k]
    return drop_pixel(transform(rebuild_patch(x, size)))


def jacobian_det(size: int, k: int) -> int:
    """``det M_k`` exactly (+1 or -1): the sign of the permutation Q, times -1 if the corner moves."""
    source = source_indices(size)[k].tolist()
    corner = size * size - 1
    moved = source[corner] != corner
    # Q sends retained position i to the coordinate it reads; the old corner stands in for s.
    perm = [source[corner] if s == corner else s for s in source[:corner]]
    sign, seen = 1, [False] * corner
    for start in range(corner):
        length, j = 0, start
        while not seen[j]:
            seen[j], j, length = True, perm[j], length + 1
        if length and length % 2 == 0:
            sign = -sign
    return -sign if moved else sign


class PatchEnsemble(nn.Module):
    """``q(x) = 1/8 sum_k p(M_k x) |det M_k|`` for a density ``p`` on DC-removed ``size x size`` patches.

    ``model`` is any module with ``log_prob(N x D) -> N`` (PatchMCGSM, PatchRIDE).
    """

    def __init__(self, model: nn.Module, size: int = 8) -> None:
        super().__init__()
        patch_dim(size)
        self.model = model
        self.size = size
        self.log_abs_dets = [math.log(abs(jacobian_det(size, k))) for k in range(len(TRANSFORMS))]

    def member_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``8 x N``: ``log p(M_k x) + log|det M_k|`` for every transform k."""
        return torch.stack([self.model.log_prob(coordinate_map(x, self.size, k)) + log_det
                            for k, log_det in enumerate(self.log_abs_dets)])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q(x)`` in nats per patch, shape ``N``."""
        return torch.logsumexp(self.member_log_probs(x), 0) - math.log(len(TRANSFORMS))
