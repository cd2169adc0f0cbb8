"""The fused SLSTM sweeps with the per-diagonal pointwise work in one Triton kernel (CUDA).

The same sweeps as ``fused_slstm._fused_forward_torch`` / ``_fused_backward_torch`` (which
spend 10-30 small torch ops per diagonal): forward, per diagonal, one GEMM and ONE kernel that
applies the gates, writes c and h, and scatters them into the next diagonal's GEMM inputs;
backward, per diagonal, ONE kernel (state gradients, dL/d pre-activations, edge zeroing of
the ping-pong buffers) and one GEMM. Triton is imported lazily; where it is missing the torch
sweeps run. ``TRITON_INTERPRET=1`` runs these kernels on CPU tensors (the tests' check of
their logic on machines without a GPU).
"""
from __future__ import annotations

import importlib.util
import os

import torch

_BLOCK = 256


def triton_available(device: torch.device) -> bool:
    """Whether the Triton sweeps can run on ``device`` (CUDA, or the CPU under TRITON_INTERPRET=1)."""
    if os.environ.get("RIDE_SLSTM_TRITON", "1") == "0" or importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def _grid(total: int) -> tuple[int]:
    return ((total + _BLOCK - 1) // _BLOCK,)


def forward_sweep(plan, inputs, size_in, weight, bias, gates, cells, hidden, h, extended):
    """``fused_slstm._fused_forward_torch`` with one Triton kernel per diagonal."""
    from .triton_kernels import fwd

    weight_t = weight.t()
    n_img, k_all = inputs.shape[1], inputs.shape[2]
    inputs[..., size_in:].zero_()
    if extended:
        crec, ccol = inputs, size_in + 2 * h  # c_left, c_up live in the GEMM inputs
    else:
        crec, ccol = gates.new_zeros(inputs.shape[0], n_img, 2 * h), 0
    crec_base = crec.view(-1)[ccol:] if ccol else crec
    spans = plan.spans
    for d, (off, lo, hi) in enumerate(spans):
        rows = hi - lo + 1
        z = gates[off : off + rows]
        torch.addmm(bias, inputs[off : off + rows].view(rows * n_img, k_all), weight_t, out=z.view(rows * n_img, 5 * h))
        noff, nlo, nhi = spans[d + 1] if d + 1 < len(spans) else (0, 1, 0)
        total = rows * n_img * h
        fwd[_grid(total)](
            z, cells[off : off + rows], hidden[off : off + rows], crec_base, inputs,
            total, n_img, h, lo, off,
            crec.stride(0), crec.stride(1), inputs.stride(0), inputs.stride(1), size_in,
            noff, nlo, nhi, BLOCK=_BLOCK,
        )


def backward_sweep(plan, gates, cells, hidden, grad_hidden, weight_rec, h, extended, flush, chunks):
    """``fused_slstm._fused_backward_torch`` with one Triton kernel per diagonal."""
    from .triton_kernels import bwd

    n_img = gates.shape[1]
    k_rec = weight_rec.shape[1]
    weight_rec = weight_rec.contiguous()
    # Ping-pong buffers by row (two spare rows): diagonal d reads what d + 1 wrote.
    d_recs = [gates.new_zeros(plan.height + 2, n_img, k_rec) for _ in range(2)]
    d_cells = [gates.new_zeros(plan.height + 2, n_img, 2 * h) for _ in range(2)]
    dbias = gates.new_zeros(5 * h)
    dzbuf = gates.new_empty(max(p1 - p0 for _, _, p0, p1 in chunks), n_img, 5 * h)
    for d_first, d_last, p0, p1 in chunks:
        for d in range(d_last, d_first - 1, -1):
            off, lo, hi, prev = plan.steps[d]
            rows = hi - lo + 1
            poff, plo, phi = prev if prev is not None else (0, 1, 0)
            d_in, d_out = d_recs[(d + 1) % 2], d_recs[d % 2]
            c_in, c_out = d_cells[(d + 1) % 2], d_cells[d % 2]
            z = dzbuf[off - p0 : off - p0 + rows]
            total = rows * n_img * h
            bwd[_grid(total)](
                gates, cells, hidden, grad_hidden, z, d_in, d_out, c_in, c_out,
                total, n_img, h, k_rec, lo, hi, off,
                poff, plo, phi, EXT=bool(extended), BLOCK=_BLOCK,
            )
            if d > 0:
                torch.mm(z.view(rows * n_img, 5 * h), weight_rec, out=d_out[lo : hi + 1].view(rows * n_img, k_rec))
        dz = dzbuf[: p1 - p0].view(-1, 5 * h)
        dbias += dz.sum(0)
        flush(p0, p1, dz)
    return dbias
