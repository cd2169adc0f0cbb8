"""The per-pixel MCGSM of the paper's 63-dim column (section 3.2).

    p(x) = p(x_0) prod_{k=1}^{D-1} p(x_k | x_0 .. x_{k-1})

over the D = 63 coordinates of a DC-removed 8x8 patch in row-major order (ride/patch_rates.py).
Pixel 0 is a mixture of GSMs (ride/mogsm.py); pixel k >= 1 is a factorized MCGSM
(ride/mcgsm.py) reading all k earlier pixels, conditionally whitened as in paper eq. 7
(ride/whitening.py; its log-Jacobian is part of the conditional). Every conditional is a
normalised density in its pixel, so ``log_prob`` is an exact log-density on R^D. The D
conditionals share no parameter and are trained independently, each by float64 L-BFGS with
early stopping (ride.refine.fit_mcgsm_lbfgs).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .mcgsm import MCGSM
from .mogsm import MoGSM
from .refine import fit_mcgsm_lbfgs
from .whitening import ConditionalWhitening


class PatchMCGSM(nn.Module):
    """One MCGSM per coordinate of a ``dim``-dimensional vector, each conditioned on all earlier ones."""

    def __init__(self, dim: int = 63, num_components: int = 32, num_scales: int = 4, num_features: int = 32) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"PatchMCGSM needs at least 2 coordinates, got {dim}")
        self.dim = dim
        self.first = MoGSM(num_components, num_scales)
        self.whitenings = nn.ModuleList(ConditionalWhitening(k) for k in range(1, dim))
        self.mcgsms = nn.ModuleList(MCGSM(k, num_components, num_scales, num_features) for k in range(1, dim))

    @property
    def config(self) -> dict[str, Any]:
        m = self.mcgsms[0]
        return {"dim": self.dim, "num_components": m.num_components, "num_scales": m.num_scales,
                "num_features": m.num_features}

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"PatchMCGSM expects N x {self.dim} patches, got {tuple(x.shape)}")

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        """``N x dim``: ``log p(x_k | x_<k)`` in nats for every coordinate k."""
        self._check(x)
        x = x.to(self.mcgsms[0].predictors)
        columns = [self.first.log_prob(x[:, 0])]
        for k, (white, mcgsm) in enumerate(zip(self.whitenings, self.mcgsms), start=1):
            inputs, target = white(x[:, :k], x[:, k])
            columns.append(mcgsm.log_prob(inputs, target) + white.log_jacobian)
        return torch.stack(columns, -1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats per patch, shape ``N``."""
        return self.conditionals(x).sum(-1)

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral samples, ``num x dim``."""
        x = self.mcgsms[0].predictors.new_zeros(num, self.dim)
        x[:, 0] = self.first.sample(num, generator)
        for k, (white, mcgsm) in enumerate(zip(self.whitenings, self.mcgsms), start=1):
            inputs = white.whiten_inputs(x[:, :k])
            x[:, k] = white.unwhiten_targets(inputs, mcgsm.sample(inputs, generator=generator))
        return x

    def fit(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        max_iterations: int = 500,
        check_every: int = 25,
        patience: int = 2,
        progress: bool = False,
    ) -> list[dict[str, Any]]:
        """Fit every conditional (whitening, then L-BFGS) on ``x``; early stopping on ``valid``.

        Returns one record per coordinate (iterations, held-out NLL in whitened units before and
        after, and the whitening's log-Jacobian).
        """
        self._check(x)
        if valid is not None:
            self._check(valid)
        ref = self.mcgsms[0].predictors
        x = x.to(ref)
        valid = valid.to(ref) if valid is not None else None
        info = [{"pixel": 0, **self.first.fit(x[:, 0], None if valid is None else valid[:, 0], max_iterations,
                                              check_every, patience)}]
        pairs = list(zip(self.whitenings, self.mcgsms))
        for k, (white, mcgsm) in enumerate(tqdm(pairs, desc="per-pixel MCGSMs", disable=not progress), start=1):
            white.fit(x[:, :k], x[:, k])
            with torch.no_grad():
                train = white(x[:, :k], x[:, k])
                held = white(valid[:, :k], valid[:, k]) if valid is not None else (None, None)
            record = fit_mcgsm_lbfgs(mcgsm, *train, *held, max_iterations, check_every, patience)
            info.append({"pixel": k, "log_jacobian": float(white.log_jacobian), **record})
        return info
