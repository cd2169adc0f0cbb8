"""The factorized MCGSM's likelihood with its ``M x K x S`` mixture part fused into C kernels
(``mcgsm.cpp``, CPU); ``ride.mcgsm.MCGSM.log_prob`` delegates here on the CPU: to
:class:`BlockedMCGSM` where torch exports BLAS, else (or ``RIDE_MCGSM_IMPL=unblocked``) to
:class:`FusedMCGSM`.
:func:`mcgsm_nll_grad` is the value and parameter gradient of the mean NLL on fixed inputs in
one C pass (the L-BFGS refinement's closure, ride/refine.py)."""
from __future__ import annotations

import math
import os
from typing import Callable

import torch
from torch import nn

from .build import c_kernels, gemm_args, use_c_kernels

# Pixels per row block of mcgsm_nll_grad: its scratch (~(2(F+K) + F + 2K) x block values) stays in
# the L2 cache while the block's GEMMs stay large enough for BLAS.
NLL_GRAD_BLOCK = 128


class FusedMCGSM(torch.autograd.Function):
    """``log p(y | h)`` of the factorized MCGSM for ``M x D`` inputs; GEMMs in torch, the
    ``M x K x S`` mixture part in one C pass per direction (nothing of that size is stored)."""

    @staticmethod
    def forward(ctx, h, y, priors, scales, weights, features, predictors):  # type: ignore[override]
        lib = c_kernels()
        k, s = scales.shape
        m, n_feat = h.shape[0], features.shape[1]
        both = torch.cat([features, predictors], 1)  # one GEMM for features and expert means
        fm = h @ both
        f = fm[:, :n_feat]
        w2 = weights.square()
        f2 = f * f
        e = f2 @ w2.t()  # M x K
        diff = torch.sub(y[:, None], fm[:, n_feat:])  # M x K: y - a_c^T h
        r = diff * diff
        nh = (-0.5 * scales.exp()).contiguous()
        cst = (0.5 * scales - 0.5 * math.log(2 * math.pi)).contiguous()
        eta = priors.contiguous()
        lp, lse_j, lse_g = (h.new_empty(m) for _ in range(3))
        fn = lib.mcgsm_fwd_f32 if h.dtype == torch.float32 else lib.mcgsm_fwd_f64
        fn(m, k, s, e.data_ptr(), r.data_ptr(), eta.data_ptr(), nh.data_ptr(), cst.data_ptr(),
           lp.data_ptr(), lse_j.data_ptr(), lse_g.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(h, f, f2, e, r, diff, lse_j, lse_g, eta, nh, cst, w2, weights, both)
        return lp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        h, f, f2, e, r, diff, lse_j, lse_g, eta, nh, cst, w2, weights, both = ctx.saved_tensors
        lib = c_kernels()
        k, s = nh.shape
        m, n_feat = h.shape[0], f.shape[1]
        grad = grad.contiguous()
        nthreads = torch.get_num_threads()
        de, dr = torch.empty_like(e), torch.empty_like(r)
        d_eta = h.new_zeros(nthreads, k * s)
        d_alpha = h.new_zeros(nthreads, k * s)
        fn = lib.mcgsm_bwd_f32 if h.dtype == torch.float32 else lib.mcgsm_bwd_f64
        fn(m, k, s, e.data_ptr(), r.data_ptr(), grad.data_ptr(), eta.data_ptr(), nh.data_ptr(), cst.data_ptr(),
           lse_j.data_ptr(), lse_g.data_ptr(), de.data_ptr(), dr.data_ptr(), d_eta.data_ptr(), d_alpha.data_ptr(),
           nthreads)
        # dL/d(h @ [features, predictors]): [2 f (de @ beta^2), -2 dr (y - mu)]
        dfm = torch.empty(m, both.shape[1], dtype=h.dtype, device=h.device)
        torch.mul(torch.mm(de, w2), f, out=dfm[:, :n_feat]).mul_(2.0)
        torch.mul(dr, diff, out=dfm[:, n_feat:]).mul_(-2.0)
        grads = [None] * 7
        if ctx.needs_input_grad[0]:
            grads[0] = dfm @ both.t()
        if ctx.needs_input_grad[1]:
            grads[1] = -dfm[:, n_feat:].sum(1)
        grads[2] = d_eta.sum(0).view(k, s)
        grads[3] = d_alpha.sum(0).view(k, s)
        grads[4] = 2.0 * weights * (de.t() @ f2)
        d_both = h.t() @ dfm
        grads[5], grads[6] = d_both[:, :n_feat], d_both[:, n_feat:]
        return tuple(grads)


class BlockedMCGSM(torch.autograd.Function):
    """``log p(y | h)`` as :class:`FusedMCGSM`, in the blocked pass of :func:`mcgsm_nll_grad`
    (``mcgsm_train_*``, where torch exports BLAS; every 128-row block stays in cache).

    When a gradient will be needed, the forward also forms the gradients of ``sum_m log p_m``
    (the exps are the expensive part, and both need them). The backward then only scales them
    where the incoming gradient is one constant (a mean or sum loss: training); per-pixel weights
    scale ``dh``/``dy`` row by row, and the parameter gradients are recomputed with the weights."""

    @staticmethod
    def forward(ctx, h, y, priors, scales, weights, features, predictors):  # type: ignore[override]
        lp = h.new_empty(h.shape[0])
        needs = ctx.needs_input_grad
        args = (h, y, priors, scales, weights, features, predictors)
        ctx.save_for_backward(*args)
        ctx.unit = None
        ctx.fresh = True  # the buffers in ctx.unit are as the forward left them
        if any(needs):
            dh = torch.empty_like(h) if needs[0] else None
            dy = torch.empty_like(y) if needs[1] else None
            grads = _train_pass(*args, lp=lp, grad=True, dh=dh, dy=dy)[1]
            ctx.unit = (dh, dy, [g.to(h.dtype) for g in grads])
        else:
            _train_pass(*args, lp=lp)
        return lp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        dh, dy, params = ctx.unit
        grad = grad.contiguous()
        if not ctx.fresh:  # a retained graph's second backward: the first scaled dh, dy in place
            h, y = ctx.saved_tensors[:2]
            dh = None if dh is None else torch.empty_like(h)
            dy = None if dy is None else torch.empty_like(y)
            params = _train_pass(*ctx.saved_tensors, gw=grad, grad=True, dh=dh, dy=dy)[1]
            return (dh, dy, *[g.to(grad.dtype) for g in params])
        constant = grad.numel() > 0 and bool((grad == grad[0]).all())
        if constant:
            # In place (the same products as by grad[:, None], without a new M x D tensor: 1 % of
            # a training step); a later backward of a retained graph recomputes them (above).
            c = grad[0]
            ctx.fresh = False
            params = [p * c for p in params]
            dh = None if dh is None else dh.mul_(c)
            dy = None if dy is None else dy.mul_(c)
        else:
            params = [g.to(grad.dtype) for g in _train_pass(*ctx.saved_tensors, gw=grad, grad=True)[1]]
            dh = None if dh is None else dh * grad[:, None]
            dy = None if dy is None else dy * grad
        return (dh, dy, *params)


def _train_pass(h: torch.Tensor, y: torch.Tensor, priors: torch.Tensor, alpha: torch.Tensor, weights: torch.Tensor,
                features: torch.Tensor, predictors: torch.Tensor, lp: torch.Tensor | None = None,
                grad: bool = False, gw: torch.Tensor | None = None, dh: torch.Tensor | None = None,
                dy: torch.Tensor | None = None, block: int = NLL_GRAD_BLOCK) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One ``mcgsm_train_*`` pass over the inputs' rows: per-row log p into ``lp``; returns
    ``sum_m gw_m log p_m`` (``gw`` None: 1) and, with ``grad``, its gradients with respect to
    (priors, alpha, weights, features, predictors) in that order, all float64 (summed across
    blocks in float64); with ``grad`` also the rows' input gradients into ``dh`` / ``dy`` when
    given. ``alpha`` is the (clamped) log-precision."""
    lib = c_kernels()
    gemm, set_threads = gemm_args(h.dtype)
    (k, s), (d, f), m = priors.shape, features.shape, h.shape[0]
    if h.shape != (m, d) or y.shape != (m,) or any(t is not None and t.shape[0] != m for t in (lp, gw, dh, dy)):
        raise ValueError(f"MCGSM pass: inputs {tuple(h.shape)} must be M x {d} with M outputs, got {tuple(y.shape)}")
    ks, n = k * s, f + k
    both = torch.cat([features, predictors], 1).contiguous()
    w2 = weights.square().contiguous()
    eta = priors.t().contiguous()  # scale-major (S x K): the kernel's loops run over components
    nh = (-0.5 * alpha.exp()).t().contiguous()
    cst = (0.5 * alpha - 0.5 * math.log(2 * math.pi)).t().contiguous()
    groups = lib.mcgsm_nll_grad_groups(m, block)  # runs of blocks, one accumulator row each
    nthreads = max(1, min(torch.get_num_threads(), groups))
    acc = torch.zeros(groups, 1 + 2 * ks + k * f + d * n, dtype=torch.float64)  # the kernel's row layout
    work = torch.empty(nthreads * lib.mcgsm_nll_grad_work(block, d, k, s, f), dtype=h.dtype)
    fn = lib.mcgsm_train_f32 if h.dtype == torch.float32 else lib.mcgsm_train_f64

    def ptr(t: torch.Tensor | None) -> int | None:
        return None if t is None else t.data_ptr()

    fn(m, d, k, s, f, h.data_ptr(), y.data_ptr(), both.data_ptr(), w2.data_ptr(), eta.data_ptr(), nh.data_ptr(),
       cst.data_ptr(), acc.data_ptr(), work.data_ptr(), block, nthreads, gemm, set_threads, ptr(gw), ptr(lp),
       int(grad), ptr(dh), ptr(dy))
    total = acc.sum(0)
    if not grad:
        return total[0], []
    d_eta, d_alpha, d_w, d_both = total[1:].split([ks, ks, k * f, d * n])
    return total[0], [
        d_eta.view(s, k).t(),
        d_alpha.view(s, k).t(),
        2.0 * weights.double() * d_w.view(k, f),
        d_both.view(d, n)[:, :f],
        d_both.view(d, n)[:, f:],
    ]


def mcgsm_log_prob(mcgsm: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor,
                   fallback: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Same as ``mcgsm.log_prob(inputs, outputs)`` (ride.mcgsm.MCGSM), fused on the CPU.

    Where the C kernels are unavailable, on other devices and dtypes it returns
    ``fallback(inputs, outputs)`` (default ``mcgsm.log_prob``; pass the original method when
    ``MCGSM.log_prob`` itself delegates here). Equal to ``MCGSM.log_prob`` within float rounding
    (tests/test_slstm_fast.py).
    """
    # Outputs that only broadcast against the inputs (or do not fit them at all) go to the
    # fallback too: the kernels read exactly one output per input row.
    if (inputs.shape[-1] != mcgsm.dim_in or outputs.shape != inputs.shape[:-1] or not use_c_kernels(inputs)
            or outputs.dtype != inputs.dtype):
        return (fallback or mcgsm.log_prob)(inputs, outputs)
    shape = outputs.shape
    h = inputs.reshape(-1, inputs.shape[-1]).contiguous()
    y = outputs.reshape(-1).contiguous()
    blocked = gemm_args(h.dtype)[0] is not None and os.environ.get("RIDE_MCGSM_IMPL", "auto") != "unblocked"
    fused = BlockedMCGSM if blocked else FusedMCGSM
    out = fused.apply(h, y, mcgsm.priors, mcgsm.log_precisions(), mcgsm.weights, mcgsm.features, mcgsm.predictors)
    return out.view(shape)



@torch.no_grad()
def mcgsm_nll_grad(mcgsm: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor,
                   block: int = NLL_GRAD_BLOCK) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """Mean negative log-likelihood of ``outputs`` (M) given fixed ``inputs`` (M x D) and its
    gradient with respect to ``mcgsm.parameters()`` (priors, scales, weights, features,
    predictors), in one fused C pass (``mcgsm_train_*`` in mcgsm.cpp, BLAS for the products).

    Returns ``(float64 scalar, [gradients in the parameters' dtype])``, equal to autograd of
    ``-reference_log_prob(inputs, outputs).mean()`` within rounding (tests/test_slstm_fast.py);
    sums over pixels are kept in float64 across row blocks. Returns None where it does not apply
    (not the CPU, dtypes other than float32/float64 or mixed, no C kernels or no BLAS pointers,
    ``RIDE_MCGSM_IMPL=torch``): callers then use autograd.
    """
    params = [mcgsm.priors, mcgsm.scales, mcgsm.weights, mcgsm.features, mcgsm.predictors]  # MCGSM.parameters()
    dtype = inputs.dtype
    if (os.environ.get("RIDE_MCGSM_IMPL", "auto") == "torch" or inputs.dim() != 2 or outputs.dim() != 1
            or inputs.shape[1] != mcgsm.features.shape[0] or outputs.shape[0] != inputs.shape[0] or inputs.shape[0] == 0
            or not use_c_kernels(inputs) or outputs.dtype != dtype or outputs.device.type != "cpu"
            or any(p.dtype != dtype or p.device.type != "cpu" for p in params)):
        return None
    if gemm_args(dtype)[0] is None:
        return None
    with torch.enable_grad():
        alpha_graph = mcgsm.log_precisions()
    m = inputs.shape[0]
    detached = [p.detach() for p in params]
    total, grads = _train_pass(inputs.contiguous(), outputs.contiguous(), detached[0], alpha_graph.detach(),
                               *detached[2:], grad=True, block=block)
    grads = [g * (-1.0 / m) for g in grads]  # d(mean NLL) = -d(sum log p) / M
    if alpha_graph.requires_grad:  # through log_precisions (its clamp), as autograd would
        grads[1] = torch.autograd.grad(alpha_graph, mcgsm.scales, grads[1].to(dtype))[0]
    return total * (-1.0 / m), [g.to(dtype).contiguous() for g in grads]
