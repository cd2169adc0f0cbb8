"""The recurrent image density estimator (RIDE): whitening -> spatial LSTM stack -> MCGSM.

With ``num_layers=0`` the MCGSM reads the whitened neighbourhood directly: the MCGSM baseline
of the paper's tables.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .mcgsm import MCGSM
from .neighborhood import Neighborhood, check_images
from .slstm import SLSTMStack, from_diagonal, to_diagonal
from .whitening import ConditionalWhitening


class RIDE(nn.Module):
    """Exact autoregressive density over grayscale images, ``p(x) = prod_ij p(x_ij | h_ij)``.

    ``log_prob`` scores the pixels whose full causal neighbourhood lies inside the image; the
    other pixels (top rows, side columns) are conditioned on.
    """

    def __init__(
        self,
        nb_size: int = 5,
        num_hidden: int = 64,
        num_layers: int = 1,
        extended: bool = False,
        num_components: int = 32,
        num_scales: int = 4,
        num_features: int = 32,
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.neighborhood = Neighborhood(nb_size)
        dim = self.neighborhood.dim
        self.whitening = ConditionalWhitening(dim)
        self.slstm = SLSTMStack(dim, num_hidden, num_layers, extended)
        self.mcgsm = MCGSM(self.slstm.output_size, num_components, num_scales, num_features)
        self.impl = "auto"

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (for checkpoints)."""
        return {
            "nb_size": self.neighborhood.n,
            "num_hidden": self.slstm.hidden_size,
            "num_layers": self.slstm.num_layers,
            "extended": self.slstm.extended,
            "num_components": self.mcgsm.num_components,
            "num_scales": self.mcgsm.num_scales,
            "num_features": self.mcgsm.num_features,
        }

    def add_layer(self) -> None:
        """Stack a freshly initialised SLSTM layer under the MCGSM (training grows depth this way)."""
        if self.slstm.num_layers == 0:
            raise ValueError("an MCGSM baseline (num_layers=0) cannot grow SLSTM layers")
        self.slstm.add_layer()

    @torch.no_grad()
    def fit_whitening(
        self, images: torch.Tensor, max_samples: int = 500_000, generator: torch.Generator | None = None,
        chunk: int = 16,
    ) -> None:
        """Fit the conditional whitening on at most ``max_samples`` random scored pixels.

        Neighbourhoods are extracted ``chunk`` images at a time and subsampled per chunk, so
        memory stays bounded however large the data set (all neighbourhoods of 900 images of
        256x256 at width 9 would take 10 GB).
        """
        check_images(images)
        gh, gw = self.neighborhood.grid_shape(*images.shape[1:])
        total = images.shape[0] * gh * gw
        inputs, targets = [], []
        for start in range(0, images.shape[0], chunk):
            x, y = self.neighborhood.extract(images[start : start + chunk])
            x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1)
            if total > max_samples:
                keep = max(1, round(max_samples * x.shape[0] / total))
                idx = torch.randperm(x.shape[0], generator=generator)[:keep].to(x.device)
                x, y = x[idx], y[idx]
            inputs.append(x)
            targets.append(y)
        self.whitening.fit(torch.cat(inputs), torch.cat(targets))

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-layer hidden states ``N x H' x W' x D`` and whitened targets ``N x H' x W'``."""
        inputs, targets = self.neighborhood.extract(images)
        white_in, white_out = self.whitening(inputs, targets)
        return self.slstm(white_in, impl=self.impl), white_out

    def log_prob(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel conditional log-likelihoods in nats, shape ``N x H' x W'``."""
        inputs, targets = self.neighborhood.extract(images)
        white_in, white_out = self.whitening(inputs, targets)
        diagonal = self.slstm.diagonal_states(white_in, impl=self.impl)
        if diagonal is None:
            log_p = self.mcgsm.log_prob(self.slstm(white_in, impl=self.impl), white_out)
        else:
            # The MCGSM is per pixel: it scores the fused sweeps' layout, and only the targets and
            # the log-densities (one value per pixel, not one hidden vector) change layout.
            hd, plan, groups = diagonal
            yd = to_diagonal(white_out.unsqueeze(-1), plan, groups).squeeze(-1)
            log_p = from_diagonal(self.mcgsm.log_prob(hd, yd).unsqueeze(-1), plan, images.shape[0]).squeeze(-1)
        return log_p + self.whitening.log_jacobian

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per scored pixel (nats)."""
        return -self.log_prob(images).mean()

    def bits_per_pixel(self, images: torch.Tensor) -> torch.Tensor:
        """Average log-likelihood per scored pixel in bits (the paper's tables; higher is better)."""
        return self.log_prob(images).mean() / math.log(2.0)

    def sample(
        self,
        num: int,
        height: int,
        width: int,
        init: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        mask: torch.Tensor | None = None,
        return_log_prob: bool = False,
        progress: bool = False,
        schedule: str = "wavefront",
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Ancestral sampling of ``num`` images of ``height x width`` pixels (ride/sampling.py).

        Pixels outside the scored grid (top rows, side columns) are taken from ``init`` when
        given, else drawn i.i.d. from the marginal Gaussian of the whitening statistics. Pixels
        of ``init`` inside the grid are overwritten (only those of ``mask`` when given);
        ``return_log_prob`` adds every scored pixel's conditional log-density.
        """
        from .sampling import sample

        return sample(self, num, height, width, init=init, generator=generator, mask=mask,
                      return_log_prob=return_log_prob, progress=progress, schedule=schedule)

    def inpaint(self, image: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> Any:
        """Sample the ``mask`` pixels of ``image`` (``H x W``) from the posterior by MCMC.

        Paper section 3.4; keyword arguments and the returned ``InpaintResult``: ride/inpaint.py.
        """
        from .inpaint import inpaint

        return inpaint(self, image, mask, **kwargs)


def mcgsm_baseline(nb_size: int = 5, num_components: int = 32, num_scales: int = 4, num_features: int = 32) -> RIDE:
    """The MCGSM on whitened causal neighbourhoods (no SLSTM)."""
    return RIDE(nb_size, 0, 0, False, num_components, num_scales, num_features)
