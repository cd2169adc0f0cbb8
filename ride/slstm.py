"""Spatial LSTM (paper eq. 6).

    (g, o, i, f_c, f_r) = (tanh, σ, σ, σ, σ)(A [x_ij; h_{i,j-1}; h_{i-1,j}] + b)
    c_ij = g*i + c_{i,j-1}*f_c + c_{i-1,j}*f_r
    h_ij = tanh(c_ij * o)

The extended variant also feeds ``c_{i,j-1}`` and ``c_{i-1,j}`` into the affine map. States
outside the grid are zero. Cell (i, j) depends only on cells of the previous anti-diagonal
(i + j - 1), so a whole anti-diagonal can be updated at once: an ``H x W`` grid costs
``H + W - 1`` sequential steps.

Implementations (``impl=`` of :meth:`SpatialLSTM.forward` and :meth:`SLSTMStack.forward`):

``"fused"``
    A custom :class:`torch.autograd.Function` per layer (:mod:`ride.kernels.fused_slstm`) in a
    diagonal-major layout (this module's plan: pixels ordered diagonal by diagonal, rows
    ascending inside a diagonal, images innermost, so one diagonal is one contiguous
    ``(len * N) x F`` matrix; a stack changes layout once). On the CPU its pointwise work runs
    in C kernels (:mod:`ride.kernels.build`); without a compiler, and on other devices (CUDA),
    the same sweeps run with torch ops.
``"fused_torch"``
    The same autograd Function with torch ops forced (testable on the CPU).
``"fused_triton"``
    The same sweeps with each diagonal's pointwise work in one Triton kernel
    (:mod:`ride.kernels.triton_slstm`): what ``"fused"`` runs on CUDA where Triton is installed
    (``RIDE_SLSTM_TRITON=0`` turns it off); on the CPU only under ``TRITON_INTERPRET=1`` (tests).
``"wavefront"``
    Diagonal schedule with plain autograd (every pointwise op recorded).
``"reference"``
    Plain per-pixel raster schedule, batched over images only (kept for tests and benchmarks).
``"auto"`` (default)
    ``"fused"`` for float32/float64 inputs, ``"wavefront"`` otherwise. ``RIDE_SLSTM_IMPL`` in the
    environment overrides what ``"auto"`` resolves to; ``impl=`` names force a path.

Measurements: README's performance section, README.performance.md and ``ride bench``.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import FusedSLSTM, c_kernels, fused_inference, num_groups, use_c_kernels
from .kernels.fused_slstm import sweep_mode

IMPLEMENTATIONS = ("auto", "fused", "fused_torch", "fused_triton", "wavefront", "reference")


@functools.lru_cache(maxsize=64)
def _diagonal_order(height: int, width: int) -> tuple[list[tuple[int, int, int]], torch.Tensor, torch.Tensor]:
    """Per diagonal (start offset, first row, last row); raster->diagonal gather and inverse."""
    spans, order, offset = [], [], 0
    for d in range(height + width - 1):
        lo, hi = max(0, d - width + 1), min(d, height - 1)
        spans.append((offset, lo, hi))
        order.extend(r * width + (d - r) for r in range(lo, hi + 1))
        offset += hi - lo + 1
    order_t = torch.tensor(order, dtype=torch.long)
    inverse = torch.empty_like(order_t)
    inverse[order_t] = torch.arange(len(order))
    return spans, order_t, inverse


class _Plan:
    """Index maps of one ``H x W`` grid in diagonal-major order, on one device."""

    def __init__(self, height: int, width: int, device: torch.device) -> None:
        spans, order, inverse = _diagonal_order(height, width)
        self.height, self.width = height, width
        self.spans = spans
        self.num_pixels = height * width
        self.order = order.to(device)
        self.inverse = inverse.to(device)
        # Diagonal index of the left / upper neighbour of every pixel (diagonal order), or
        # num_pixels (a zero row appended to the states) where the neighbour is outside the grid.
        raster_to_diag = inverse.view(height, width)
        pad = torch.full((height, 1), self.num_pixels, dtype=torch.long)
        left = torch.cat([pad, raster_to_diag[:, :-1]], 1).flatten()[order]
        pad = torch.full((1, width), self.num_pixels, dtype=torch.long)
        up = torch.cat([pad, raster_to_diag[:-1]], 0).flatten()[order]
        self.left = left.to(device)
        self.up = up.to(device)
        # Per diagonal: (offset, lo, hi, previous diagonal's (offset, lo, hi) or None).
        self.steps = []
        for d, (off, lo, hi) in enumerate(spans):
            self.steps.append((off, lo, hi, spans[d - 1] if d > 0 else None))


_PLANS: dict[tuple[int, int, str], _Plan] = {}


_FUSED = ("fused", "fused_torch", "fused_triton")


def _plan(height: int, width: int, device: torch.device) -> _Plan:
    key = (height, width, str(device))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 64:
            _PLANS.clear()
        plan = _PLANS[key] = _Plan(height, width, device)
    return plan


def to_diagonal(x: torch.Tensor, plan: _Plan, groups: int = 1) -> torch.Tensor:
    """``N x H x W x F`` -> diagonal-major ``G x P x ceil(N/G) x F`` (contiguous; the batch is
    split into ``groups`` groups of images, zero images pad the last one)."""
    n_img, height, width, feat = x.shape
    per = -(-n_img // groups)
    if per * groups != n_img:
        x = torch.cat([x, x.new_zeros(per * groups - n_img, height, width, feat)])
    xd = x.reshape(groups, per, height * width, feat).transpose(1, 2)
    return xd.index_select(1, plan.order)


def from_diagonal(xd: torch.Tensor, plan: _Plan, n_img: int | None = None) -> torch.Tensor:
    """Diagonal-major ``G x P x M x F`` -> ``N x H x W x F`` (contiguous), first ``n_img`` images."""
    groups, _, per, feat = xd.shape
    # One gather straight into the raster layout.
    out = xd.transpose(1, 2).index_select(2, plan.inverse).view(groups * per, plan.height, plan.width, feat)
    if n_img is not None and n_img != groups * per:
        out = out[:n_img]
    return out


def fused_available(device: torch.device | str = "cpu") -> bool:
    """Whether ``impl="fused"`` uses the compiled C kernels on ``device`` (else torch pointwise ops)."""
    return torch.device(device).type == "cpu" and c_kernels() is not None


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """The implementation ``impl`` stands for on ``x``'s device and dtype."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown SLSTM implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    if impl != "auto":
        return impl
    forced = os.environ.get("RIDE_SLSTM_IMPL")
    if forced:
        if forced not in IMPLEMENTATIONS or forced == "auto":
            raise ValueError(f"RIDE_SLSTM_IMPL={forced!r} is not one of {IMPLEMENTATIONS[1:]}")
        return forced
    if x.dtype in (torch.float32, torch.float64):
        return "fused"
    return "wavefront"


def _needs_grad(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` applied to ``x`` builds an autograd graph."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


class SpatialLSTM(nn.Module):
    """One spatial LSTM layer mapping ``N x H x W x input_size`` to ``N x H x W x hidden_size``."""

    def __init__(self, input_size: int, hidden_size: int, extended: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.extended = extended
        num_rec = (4 if extended else 2) * hidden_size
        self.weight_in = nn.Parameter(torch.empty(5 * hidden_size, input_size))
        self.weight_rec = nn.Parameter(torch.empty(5 * hidden_size, num_rec))
        self.bias = nn.Parameter(torch.empty(5 * hidden_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The original initialisation: weights U(-0.08, 0.08), biases 0."""
        self.weight_in.uniform_(-0.08, 0.08)
        self.weight_rec.uniform_(-0.08, 0.08)
        self.bias.zero_()

    def _cell(
        self, pre: torch.Tensor, h_left: torch.Tensor, c_left: torch.Tensor, h_up: torch.Tensor, c_up: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rec = [h_left, h_up, c_left, c_up] if self.extended else [h_left, h_up]
        z = pre + torch.cat(rec, -1) @ self.weight_rec.T
        n = self.hidden_size
        g = torch.tanh(z[..., :n])
        o, i, f_c, f_r = torch.sigmoid(z[..., n:]).split(n, -1)
        c = g * i + c_left * f_c + c_up * f_r
        return torch.tanh(c * o), c

    def step(
        self, x: torch.Tensor, h_left: torch.Tensor, c_left: torch.Tensor, h_up: torch.Tensor, c_up: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One cell: inputs ``N x input_size`` and neighbouring states; returns ``(h, c)``."""
        return self._cell(F.linear(x, self.weight_in, self.bias), h_left, c_left, h_up, c_up)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[-1] != self.input_size:
            raise ValueError(f"SpatialLSTM expects N x H x W x {self.input_size} inputs, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        impl = resolve_impl(impl, x)
        if impl == "reference":
            return self.forward_reference(x)
        if impl == "wavefront":
            return self.forward_wavefront(x)
        self._check(x)
        if x.numel() == 0:
            return x.new_zeros(*x.shape[:-1], self.hidden_size)
        plan = _plan(x.shape[1], x.shape[2], x.device)
        groups = num_groups(x.shape[0], x.device, use_c_kernels(x, force_torch=impl != "fused"),
                            _needs_grad(self, x), x.dtype)
        xd = to_diagonal(x, plan, groups)
        return from_diagonal(self.forward_diagonal(xd, plan, impl), plan, x.shape[0])

    def forward_diagonal(self, xd: torch.Tensor, plan: _Plan, impl: str = "fused") -> torch.Tensor:
        """The fused layer on diagonal-major inputs ``G x P x M x input_size`` (:func:`to_diagonal`)."""
        mode = sweep_mode(xd, impl)
        xd = xd.contiguous()
        if mode == "c" and not _needs_grad(self, xd):
            return fused_inference(xd, self.weight_in, self.weight_rec, self.bias, plan, self.extended)
        return FusedSLSTM.apply(xd, self.weight_in, self.weight_rec, self.bias, plan, self.extended, mode)

    def forward_wavefront(self, x: torch.Tensor) -> torch.Tensor:
        """Diagonal schedule with plain autograd."""
        self._check(x)
        n_img, height, width, _ = x.shape
        spans, order, inverse = _diagonal_order(height, width)
        # The input half of every gate is one large GEMM over all pixels, in diagonal order.
        pre = F.linear(x.reshape(n_img, height * width, -1)[:, order.to(x.device)], self.weight_in, self.bias)
        zeros = x.new_zeros(n_img, height + 1, self.hidden_size)
        prev_h, prev_c = zeros, zeros
        outputs = []
        for offset, lo, hi in spans:
            # Buffers are indexed by row + 1; index 0 is the zero state above the grid, and rows the
            # previous diagonal did not reach stay zero (the border of the grid).
            h, c = self._cell(
                pre[:, offset : offset + hi - lo + 1],
                prev_h[:, lo + 1 : hi + 2],
                prev_c[:, lo + 1 : hi + 2],
                prev_h[:, lo : hi + 1],
                prev_c[:, lo : hi + 1],
            )
            outputs.append(h)
            pad = (0, 0, lo + 1, height - 1 - hi)
            prev_h, prev_c = F.pad(h, pad), F.pad(c, pad)
        out = torch.cat(outputs, 1)[:, inverse.to(x.device)]
        return out.reshape(n_img, height, width, self.hidden_size)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain per-pixel raster schedule, batched over images only."""
        self._check(x)
        n_img, height, width, _ = x.shape
        zero = x.new_zeros(n_img, self.hidden_size)
        hs = [[zero] * width for _ in range(height)]
        cs = [[zero] * width for _ in range(height)]
        for i in range(height):
            for j in range(width):
                h_left, c_left = (hs[i][j - 1], cs[i][j - 1]) if j > 0 else (zero, zero)
                h_up, c_up = (hs[i - 1][j], cs[i - 1][j]) if i > 0 else (zero, zero)
                hs[i][j], cs[i][j] = self.step(x[:, i, j], h_left, c_left, h_up, c_up)
        return torch.stack([torch.stack(row, 1) for row in hs], 1)


class SLSTMStack(nn.Module):
    """Stacked spatial LSTMs; layer l > 1 reads the hidden states of layer l - 1."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, extended: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.extended = extended
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            self.add_layer()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def output_size(self) -> int:
        return self.hidden_size if self.layers else self.input_size

    def add_layer(self) -> SpatialLSTM:
        size_in = self.hidden_size if self.layers else self.input_size
        layer = SpatialLSTM(size_in, self.hidden_size, self.extended)
        if self.layers:
            layer.to(self.layers[-1].weight_in)
        self.layers.append(layer)
        return layer

    def forward(self, x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        diagonal = self.diagonal_states(x, impl)
        if diagonal is not None:
            xd, plan, _ = diagonal
            return from_diagonal(xd, plan, x.shape[0])
        if resolve_impl(impl, x) in _FUSED and self.layers:  # no pixels
            return x.new_zeros(*x.shape[:-1], self.hidden_size)
        for layer in self.layers:
            x = layer(x, impl=impl)
        return x

    def diagonal_states(self, x: torch.Tensor, impl: str = "auto") -> tuple[torch.Tensor, _Plan, int] | None:
        """The top layer's states of ``N x H x W x F`` inputs in the fused sweeps' diagonal-major
        layout (``G x P x M x hidden``, see :func:`to_diagonal`), with the plan and the number of
        image groups G; None where ``impl`` is not a fused sweep, without layers or pixels. A
        per-pixel consumer (the MCGSM) reads this layout directly and so skips the permutation of
        every pixel's hidden vector that :meth:`forward` ends with."""
        impl = resolve_impl(impl, x)
        if impl not in _FUSED or not self.layers:
            return None
        self.layers[0]._check(x)
        if x.numel() == 0:
            return None
        # One layout change for the whole stack: every layer works on diagonal-major tensors.
        plan = _plan(x.shape[1], x.shape[2], x.device)
        groups = num_groups(x.shape[0], x.device, use_c_kernels(x, force_torch=impl != "fused"),
                            _needs_grad(self, x), x.dtype)
        xd = to_diagonal(x, plan, groups)
        for layer in self.layers:
            xd = layer.forward_diagonal(xd, plan, impl)
        return xd, plan, groups
