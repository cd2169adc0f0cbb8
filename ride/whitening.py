"""Conditional whitening (paper eq. 7).

``x' = C_xx^{-1/2} (x - m_x)`` (symmetric inverse square root),
``y' = W (y - m_y - P x')`` with ``P = C_yx C_xx^{-1/2}`` and ``W = (C_yy - P P^T)^{-1/2}``.
The map ``y -> y'`` for fixed ``x`` has Jacobian ``W``, so ``log p(y|x) = log p'(y'|x') + log W``.
"""
from __future__ import annotations

import torch
from torch import nn


def _inv_sqrtm(cov: torch.Tensor, eps: float) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(eps * evals.max().clamp_min(1e-300))
    return (evecs * evals.rsqrt()) @ evecs.T


class ConditionalWhitening(nn.Module):
    """Affine whitening of neighbourhoods and of the target pixel given its neighbourhood."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean_x", torch.zeros(dim))
        self.register_buffer("whiten_x", torch.eye(dim))
        self.register_buffer("mean_y", torch.zeros(()))
        self.register_buffer("predictor", torch.zeros(dim))
        self.register_buffer("scale_y", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, inputs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-10) -> "ConditionalWhitening":
        """Estimate the transform from ``M x dim`` neighbourhoods and ``M`` targets (float64 internally)."""
        if inputs.dim() != 2 or inputs.shape[1] != self.dim or targets.shape != inputs.shape[:1]:
            raise ValueError(
                f"fit expects inputs M x {self.dim} and targets M, got {tuple(inputs.shape)} and "
                f"{tuple(targets.shape)}"
            )
        if inputs.shape[0] <= self.dim + 1:
            raise ValueError(f"need more than {self.dim + 1} samples to fit the whitening, got {inputs.shape[0]}")
        x = inputs.double()
        y = targets.double()
        mx, my = x.mean(0), y.mean()
        xc, yc = x - mx, y - my
        n = x.shape[0]
        cxx = xc.T @ xc / n
        cyx = yc @ xc / n
        cyy = yc @ yc / n
        wx = _inv_sqrtm(cxx, eps)
        pred = wx @ cyx  # P^T, as C_xx^{-1/2} is symmetric
        resid = (cyy - pred @ pred).clamp_min(eps * cyy.clamp_min(1e-300))
        dtype = self.mean_x.dtype
        self.mean_x.copy_(mx.to(dtype))
        self.whiten_x.copy_(wx.to(dtype))
        self.mean_y.copy_(my.to(dtype))
        self.predictor.copy_(pred.to(dtype))
        self.scale_y.copy_(resid.rsqrt().to(dtype))
        self.fitted.fill_(True)
        return self

    def whiten_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs - self.mean_x) @ self.whiten_x

    def whiten_targets(self, white_inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.scale_y * (targets - self.mean_y - white_inputs @ self.predictor)

    def unwhiten_targets(self, white_inputs: torch.Tensor, white_targets: torch.Tensor) -> torch.Tensor:
        return white_targets / self.scale_y + self.mean_y + white_inputs @ self.predictor

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xw = self.whiten_inputs(inputs)
        return xw, self.whiten_targets(xw, targets)

    @property
    def log_jacobian(self) -> torch.Tensor:
        """``log |dy'/dy|``, added to every scored pixel's log-likelihood."""
        return self.scale_y.abs().log()
