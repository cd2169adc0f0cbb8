"""Spatial LSTM (paper eq. 6).

    (g, o, i, f_c, f_r) = (tanh, σ, σ, σ, σ)(A [x_ij; h_{i,j-1}; h_{i-1,j}] + b)
    c_ij = g*i + c_{i,j-1}*f_c + c_{i-1,j}*f_r
    h_ij = tanh(c_ij * o)

The extended variant also feeds ``c_{i,j-1}`` and ``c_{i-1,j}`` into the affine map. States
outside the grid are zero. Cell (i, j) depends only on cells of the previous anti-diagonal
(i + j - 1), so :meth:`SpatialLSTM.forward` updates a whole anti-diagonal at once: an ``H x W``
grid costs ``H + W - 1`` sequential steps. :meth:`SpatialLSTM.forward_reference` is the plain
per-pixel raster schedule kept for tests.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

IMPLEMENTATIONS = ("wavefront", "reference")


@functools.lru_cache(maxsize=64)
def _diagonal_order(height: int, width: int) -> tuple[list[tuple[int, int, int]], torch.Tensor, torch.Tensor]:
    """Per diagonal (start offset, first row, last row); raster->diagonal gather and inverse."""
    spans, order, offset = [], [], 0
    for d in range(height + width - 1):
        lo, hi = max(0, d - width + 1), min(d, height - 1)
        spans.append((offset, lo, hi))
        order.extend(r * width + (d - r) for r in range(lo, hi + 1))
        offset += hi - lo + 1
    order_t = torch.tensor(order)
    inverse = torch.empty_like(order_t)
    inverse[order_t] = torch.arange(len(order))
    return spans, order_t, inverse


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

    def forward(self, x: torch.Tensor, impl: str = "wavefront") -> torch.Tensor:
        if impl == "reference":
            return self.forward_reference(x)
        if impl != "wavefront":
            raise ValueError(f"unknown SLSTM implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
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

    def forward(self, x: torch.Tensor, impl: str = "wavefront") -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, impl=impl)
        return x
