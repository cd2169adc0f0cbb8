"""A 1-D mixture of Gaussian scale mixtures (MoGSM): the first pixel of a patch, the DC component.

    p(y) = sum_{c,s} w_cs N(y; m + sigma mu_c, sigma^2 exp(-alpha_cs))

It is the factorized MCGSM (ride/mcgsm.py) read with the constant input 1: the gate's energy
is then a constant per component (absorbed into the priors) and the expert means a_c are the
component means, so the same normalised log-domain code serves. Values are standardised by
``m`` and ``sigma`` (fitted), whose log-Jacobian ``-log sigma`` is part of every log-density.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .mcgsm import MCGSM
from .refine import fit_mcgsm_lbfgs


class MoGSM(nn.Module):
    """Exact density of scalars: a mixture of ``num_components`` GSMs with ``num_scales`` scales each."""

    def __init__(self, num_components: int = 8, num_scales: int = 4) -> None:
        super().__init__()
        self.mcgsm = MCGSM(1, num_components, num_scales, 1)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    @property
    def config(self) -> dict[str, int]:
        return {"num_components": self.mcgsm.num_components, "num_scales": self.mcgsm.num_scales}

    def _ones(self, values: torch.Tensor) -> torch.Tensor:
        return values.new_ones(*values.shape, 1)

    def log_prob(self, values: torch.Tensor) -> torch.Tensor:
        """``log p(values)`` in nats, elementwise, for a tensor of any shape."""
        white = (values - self.mean) / self.std
        return self.mcgsm.log_prob(self._ones(white), white) - self.std.log()

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        ref = self.mcgsm.predictors
        white = self.mcgsm.sample(ref.new_ones(num, 1), generator=generator)
        return white * self.std + self.mean

    @torch.no_grad()
    def _initialise(self, values: torch.Tensor) -> None:
        """Standardise, and spread the component means over the data's quantiles (not all near 0)."""
        x = values.double()
        self.mean.copy_(x.mean())
        self.std.copy_(x.std().clamp_min(1e-12))
        k = self.mcgsm.num_components
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        quantiles = torch.quantile(((x - x.mean()) / x.std().clamp_min(1e-12))[:1_000_000], levels)
        self.mcgsm.predictors.copy_(quantiles.to(self.mcgsm.predictors)[None])

    def fit(
        self, values: torch.Tensor, valid_values: torch.Tensor | None = None, max_iterations: int = 500,
        check_every: int = 25, patience: int = 2,
    ) -> dict[str, Any]:
        """Maximum likelihood by float64 L-BFGS (ride.refine.fit_mcgsm_lbfgs), early stopping on ``valid_values``."""
        values = values.reshape(-1)
        if values.numel() < 2 or not torch.isfinite(values).all():
            raise ValueError(f"MoGSM.fit needs at least 2 finite values, got {values.numel()} (non-finite: "
                             f"{int((~torch.isfinite(values)).sum())})")
        self._initialise(values)

        def white(v: torch.Tensor) -> torch.Tensor:
            return ((v.reshape(-1).to(self.mean) - self.mean) / self.std)

        x = white(values)
        vx = white(valid_values) if valid_values is not None else None
        info = fit_mcgsm_lbfgs(self.mcgsm, self._ones(x), x, None if vx is None else self._ones(vx), vx,
                               max_iterations, check_every, patience)
        # The standardisation's log-Jacobian turns the whitened NLLs into NLLs of the values.
        for key in ("valid_nll_start", "valid_nll"):
            if key in info:
                info[key] = info[key] + math.log(float(self.std))
        return info
