"""Factorized mixture of conditional Gaussian scale mixtures (paper eqs. 3-5).

    p(y|h) = sum_{c,s} p(c,s|h) N(y; a_c^T h, exp(-alpha_cs))
    p(c,s|h) ∝ exp(eta_cs - 0.5 exp(alpha_cs) sum_n beta_cn^2 (b_n^T h)^2)

Everything is computed in the log domain (one logsumexp over all (c, s)), so the density
is exactly normalised in y for every h.
"""
from __future__ import annotations

import math
import os

import torch
from torch import nn

from .kernels import mcgsm_log_prob


# Bound on |alpha| (log-precision) used in every computation. e^30 is a standard deviation of
# 3e-7 in whitened units, far below any pixel's resolution, and keeps e^alpha * energy finite in
# float32: unbounded, momentum SGD at the paper's learning rate 1 pushed alpha past 88, where
# e^alpha overflows and inf * 0 turned the loss into NaN (quick scale, extended RIDE).
LOG_PRECISION_BOUND = 30.0


class MCGSM(nn.Module):
    """Factorized MCGSM for a scalar output conditioned on a ``dim_in`` vector."""

    def __init__(self, dim_in: int, num_components: int = 32, num_scales: int = 4, num_features: int = 32) -> None:
        super().__init__()
        if min(dim_in, num_components, num_scales, num_features) < 1:
            raise ValueError("MCGSM sizes must be positive")
        self.dim_in = dim_in
        self.num_components = num_components
        self.num_scales = num_scales
        self.num_features = num_features
        k, s, f = num_components, num_scales, num_features
        self.priors = nn.Parameter(torch.empty(k, s))  # eta
        self.scales = nn.Parameter(torch.empty(k, s))  # alpha
        self.weights = nn.Parameter(torch.empty(k, f))  # beta
        self.features = nn.Parameter(torch.empty(dim_in, f))  # b
        self.predictors = nn.Parameter(torch.empty(dim_in, k))  # a
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The original initialisation (REFERENCE.md)."""
        self.priors.zero_()
        self.scales.uniform_(-1.0, 1.0)
        self.weights.copy_(torch.rand_like(self.weights).mul_(2).sub_(1).abs_().div_(100).add_(0.01))
        self.features.normal_().div_(100)
        self.predictors.normal_().div_(10)

    def log_precisions(self) -> torch.Tensor:
        """``alpha`` as used by the density: the parameter clamped to +-LOG_PRECISION_BOUND."""
        return self.scales.clamp(-LOG_PRECISION_BOUND, LOG_PRECISION_BOUND)

    def _joint_logits(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised log gate ``... x K x S`` and expert means ``... x K``."""
        energy = (inputs @ self.features).square() @ self.weights.square().T  # ... x K
        gate = self.priors - 0.5 * self.log_precisions().exp() * energy.unsqueeze(-1)
        means = inputs @ self.predictors
        return gate, means

    def log_prob(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """``log p(outputs | inputs)`` in nats; inputs ``... x dim_in``, outputs ``...``.

        On the CPU (float32/float64, where the C kernels compiled) it runs fused
        (``ride.kernels.mcgsm_log_prob``: same values and gradients, tests/test_slstm_fast.py);
        elsewhere, or with ``RIDE_MCGSM_IMPL=torch``, it is :meth:`reference_log_prob` (which
        also checks the input width: the fused path hands mismatched inputs to it).
        """
        if inputs.device.type == "cpu" and os.environ.get("RIDE_MCGSM_IMPL", "auto") != "torch":
            return mcgsm_log_prob(self, inputs, outputs, fallback=self.reference_log_prob)
        return self.reference_log_prob(inputs, outputs)

    def reference_log_prob(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob` in plain torch ops (every device)."""
        if inputs.shape[-1] != self.dim_in:
            raise ValueError(f"MCGSM expects inputs with last dimension {self.dim_in}, got {tuple(inputs.shape)}")
        gate, means = self._joint_logits(inputs)
        resid = (outputs.unsqueeze(-1) - means).square().unsqueeze(-1)  # ... x K x 1
        alpha = self.log_precisions()
        log_expert = 0.5 * alpha - 0.5 * math.log(2 * math.pi) - 0.5 * alpha.exp() * resid
        flat = gate.flatten(-2)
        return torch.logsumexp(flat + log_expert.flatten(-2), -1) - torch.logsumexp(flat, -1)

    @torch.no_grad()
    def sample(self, inputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one output per input vector."""
        gate, means = self._joint_logits(inputs)
        flat = gate.flatten(-2)
        probs = torch.softmax(flat.reshape(-1, flat.shape[-1]), -1)
        idx = torch.multinomial(probs, 1, generator=generator).squeeze(-1).reshape(flat.shape[:-1])
        comp = idx // self.num_scales
        alpha = self.log_precisions().flatten()[idx]
        mean = means.gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + noise * (-0.5 * alpha).exp()
