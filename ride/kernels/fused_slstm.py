"""The fused spatial-LSTM layer: one :class:`torch.autograd.Function` per layer on
diagonal-major tensors (layout and plan: ``ride.slstm``).

Every pixel's GEMM input ``y = [x, h_left, h_up(, c_left, c_up)]`` is kept. Forward, per
anti-diagonal: one GEMM ``z = b + y A^T`` (input and recurrent halves together) and one fused
pointwise kernel that applies the gates and writes the diagonal's states into the next
diagonal's rows of ``y``. Backward: the diagonals in reverse, computing only state gradients (one
fused pointwise kernel + one GEMM ``dz A_rec`` per diagonal); the weight gradients are one GEMM
``y^T dz`` per chunk of ~4k rows (plus the input gradient ``dz A_in``). On the CPU the pointwise
kernels are native (``slstm.cpp``, :mod:`ride.kernels.build`); where torch exports BLAS, one C
call runs a whole sweep (a chunk of diagonals in the backward), the per-diagonal GEMMs and the
weight gradient's included (per thread, on the rows it just wrote), and on several threads the
batch's image groups each on a thread of their own (``num_groups``); elsewhere (CUDA, no
compiler) the same sweeps run with torch ops. Without autograd a
lighter forward (:func:`fused_inference`) keeps only rolling buffers.

A ``plan`` argument is a ``ride.slstm`` diagonal plan: ``spans`` (per diagonal: offset, first
row, last row), ``steps`` (the same with the previous diagonal's span), ``height``, and
``left``/``up`` (the diagonal index of every pixel's neighbours).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from . import triton_slstm
from .build import c_kernels, gemm_args, use_c_kernels

# Image groups: the batch is split into G groups of equal size (zero images pad the last one),
# laid out one after another. Training with BLAS in the C kernels sweeps them in one call, each
# thread a whole group without a barrier per diagonal; by default G = the number of threads where
# the batch splits evenly into groups of at least MIN_GROUP_IMAGES (on 2 cores a training step of
# 50 images of 22x22 took 2-3 % less than with the threads splitting every diagonal,
# README.performance.md). Elsewhere (inference, no BLAS pointers, torch sweeps) groups run
# concurrently in a small thread pool, each single-threaded, and G = 1 unless forced. GROUPS (or
# RIDE_SLSTM_GROUPS) forces G.

GROUPS: int | None = None
MIN_GROUP_IMAGES = 8
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def num_groups(n_img: int, device: torch.device, use_c: bool, training: bool = False,
               dtype: torch.dtype = torch.float32) -> int:
    """Image groups for a batch of ``n_img`` (1 off the CPU or without the C kernels); ``training``:
    the sweeps run under autograd (FusedSLSTM), where the C kernels sweep the groups in one call."""
    if not use_c or device.type != "cpu":
        return 1
    forced = GROUPS if GROUPS is not None else int(os.environ.get("RIDE_SLSTM_GROUPS", "0") or 0)
    if forced:
        return max(1, min(forced, n_img))
    threads = torch.get_num_threads()
    if (training and threads > 1 and _c_sweeps("c", dtype) and n_img % threads == 0
            and n_img // threads >= MIN_GROUP_IMAGES):
        return threads
    return 1


def _c_sweeps(mode: str, dtype: torch.dtype) -> bool:
    """Whether the sweeps run as C calls with torch's BLAS inside (all image groups in one call)."""
    return mode == "c" and gemm_args(dtype)[0] is not None


def _worker_init() -> None:
    torch.set_num_threads(1)  # thread-local: each group runs on one core


def run_groups(fn: Callable[[int], None], groups: int) -> None:
    """``fn(g)`` for every group: inline for one group, else concurrently in the pool."""
    global _pool, _pool_size
    if groups == 1:
        fn(0)
        return
    with _pool_lock:
        if _pool is None or _pool_size < groups:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(groups, thread_name_prefix="ride-slstm", initializer=_worker_init)
            _pool_size = groups
        pool = _pool

    def call(g: int) -> None:
        with torch.no_grad():
            fn(g)

    futures = [pool.submit(call, g) for g in range(groups)]
    for future in futures:
        future.result()


class FusedSLSTM(torch.autograd.Function):
    """One SLSTM layer in diagonal-major layout: ``G x P x M x input`` -> ``G x P x M x hidden``
    (G image groups of M images, see ``ride.slstm.to_diagonal``)."""

    @staticmethod
    def forward(ctx, xd, weight_in, weight_rec, bias, plan, extended, mode):  # type: ignore[override]
        groups, num_pix, per, size_in = xd.shape
        h = weight_rec.shape[0] // 5
        # GEMM inputs y = [x, h_left, h_up(, c_left, c_up)] of every pixel, diagonal-major. Per
        # diagonal the forward computes all gates as one GEMM (bias + y @ [A_in, A_rec]^T) and the
        # pointwise kernel writes this diagonal's states into the next diagonal's rows of y; the
        # backward forms all weight gradients as one GEMM dz^T @ y over all pixels.
        inputs = xd.new_empty(groups, num_pix, per, size_in + weight_rec.shape[1])
        inputs[..., :size_in] = xd
        weight = torch.cat([weight_in, weight_rec], 1)
        gates = xd.new_empty(groups, num_pix, per, 5 * h)
        cells = xd.new_empty(groups, num_pix, per, h)
        hidden = xd.new_empty(groups, num_pix, per, h)
        if _c_sweeps(mode, xd.dtype):
            _fused_forward_c_sweep(plan, inputs, size_in, weight, bias, gates, cells, hidden, h, extended)
        else:
            sweep = _FORWARD[mode]

            def run(g: int) -> None:
                sweep(plan, inputs[g], size_in, weight, bias, gates[g], cells[g], hidden[g], h, extended)

            run_groups(run, groups)
        ctx.save_for_backward(weight_in, weight_rec, inputs, gates, cells, hidden)
        ctx.plan, ctx.extended, ctx.mode = plan, extended, mode
        return hidden

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hidden):  # type: ignore[override]
        weight_in, weight_rec, inputs, gates, cells, hidden = ctx.saved_tensors
        plan, extended = ctx.plan, ctx.extended
        groups, num_pix, per, h = hidden.shape
        size_in = weight_in.shape[1]
        grad_hidden = grad_hidden.contiguous()
        needs = ctx.needs_input_grad
        grad_x = inputs.new_empty(groups, num_pix, per, size_in) if needs[0] else None
        want_w, want_b = needs[1] or needs[2], needs[3]

        def flush(g: int, p0: int, p1: int, dz: torch.Tensor, grad_w: torch.Tensor | None) -> None:
            """Gradients of group g's pixels p0..p1 from their dL/d(pre-activations): large GEMMs."""
            rows = (p1 - p0) * per
            if grad_w is not None:
                grad_w.addmm_(inputs[g, p0:p1].view(rows, -1).t(), dz)
            if grad_x is not None:
                torch.mm(dz, weight_in, out=grad_x[g, p0:p1].view(rows, size_in))

        if _c_sweeps(ctx.mode, inputs.dtype):
            # One C call per chunk of diagonals for all groups; the weight gradient is formed inside
            # the kernels (transposed: inputs x gates).
            dbias, total_w = _fused_backward_c_sweep(plan, gates, cells, hidden, grad_hidden, weight_rec, h, extended,
                                                     lambda g, p0, p1, dz: flush(g, p0, p1, dz, None),
                                                     inputs if want_w else None, keep_dz=grad_x is not None)
            total_b = dbias if want_b else None
        else:
            # dL/d(pre-activations) lives in a buffer of about _CHUNK_ROWS rows (the saved gates
            # stay intact, so a graph kept with retain_graph=True can be differentiated again);
            # every finished chunk of diagonals is flushed into the weight and input gradients.
            # Transposed (inputs x gates): y^T dz is the faster GEMM layout for MKL here (both
            # operands row-major, long inner dimension), ~20 % over dz^T y.
            grad_w = [inputs.new_zeros(inputs.shape[3], 5 * h) for _ in range(groups)] if want_w else None
            grad_b = [inputs.new_empty(5 * h) for _ in range(groups)] if want_b else None
            sweep = _BACKWARD[ctx.mode]

            def run(g: int) -> None:
                gw = grad_w[g] if grad_w is not None else None
                dbias = sweep(plan, gates[g], cells[g], hidden[g], grad_hidden[g], weight_rec, h, extended,
                              lambda p0, p1, dz: flush(g, p0, p1, dz, gw))
                if grad_b is not None:
                    grad_b[g].copy_(dbias)

            run_groups(run, groups)
            total_w = (torch.stack(grad_w).sum(0) if groups > 1 else grad_w[0]) if grad_w is not None else None
            total_b = (torch.stack(grad_b).sum(0) if groups > 1 else grad_b[0]) if grad_b is not None else None
        grad_w_in = grad_w_rec = None
        if total_w is not None:
            total_w = total_w.t()
            grad_w_in, grad_w_rec = total_w[:, :size_in], total_w[:, size_in:]
        return grad_x, grad_w_in, grad_w_rec, total_b, None, None, None


# Below these many elements (rows x hidden units) per diagonal a kernel runs on one thread: an
# OpenMP fork costs more than it saves there, and much more on a machine shared with others.
_PARALLEL_MIN_FWD = 1 << 14
_PARALLEL_MIN_BWD = 1 << 16

# Rows (pixels x images) of dL/dz kept at once by the backward sweep before its gradient GEMMs.
_CHUNK_ROWS = 1 << 12


def _chunks(plan, n_img: int) -> list[tuple[int, int, int, int]]:
    """Groups of consecutive diagonals, last first: (first diagonal, last diagonal, p0, p1)."""
    groups, d_last = [], len(plan.spans) - 1
    for d in range(len(plan.spans) - 1, -1, -1):
        off = plan.spans[d][0]
        end_off, end_lo, end_hi = plan.spans[d_last]
        p1 = end_off + end_hi - end_lo + 1
        if (p1 - off) * n_img >= _CHUNK_ROWS or d == 0:
            groups.append((d, d_last, off, p1))
            d_last = d - 1
    return groups


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _spans(plan) -> torch.Tensor:
    """The plan's spans as a D x 3 int32 tensor (offset, first row, last row), for the C sweeps."""
    spans = getattr(plan, "_spans_c", None)
    if spans is None:
        spans = plan._spans_c = torch.tensor(plan.spans, dtype=torch.int32)
    return spans


def _fused_forward_c_sweep(plan, inputs, size_in, weight, bias, gates, cells, hidden, h, extended):
    """Every diagonal of every image group (``G x P x M x ...`` tensors) in one C call, BLAS GEMMs
    inside: with one group the threads split each diagonal's rows and meet at a barrier per
    diagonal; with several each thread sweeps whole groups on its own (``num_groups``)."""
    lib = c_kernels()
    gemm, set_threads = gemm_args(gates.dtype)
    groups, _, n_img, k_all = inputs.shape
    inputs[:, 0, :, size_in:].zero_()  # the first pixel has no neighbours; the kernel fills the rest
    # Rolling [c_left, c_up] by row (ping-pong: the kernel reads one and writes the other); entries
    # never written stay zero: the border of the grid. Extended layers read them from the inputs.
    cbuf = None if extended else gates.new_zeros(2, groups, plan.height + 1, n_img, 2 * h)
    sweep = lib.slstm_fwd_sweep_f32 if gates.dtype == torch.float32 else lib.slstm_fwd_sweep_f64
    cb0, cb1, cstride = (None, None, 0) if extended else (_ptr(cbuf[0]), _ptr(cbuf[1]), cbuf[0, 0].numel())
    sweep(groups, len(plan.spans), _ptr(_spans(plan)), n_img, h, int(extended), _ptr(gates), _ptr(cells),
          _ptr(hidden), _ptr(inputs), size_in, k_all, cb0, cb1, cstride, _ptr(weight), _ptr(bias.contiguous()),
          torch.get_num_threads(), gemm, set_threads)


def _fused_forward_c(plan, inputs, size_in, weight, bias, gates, cells, hidden, h, extended):
    """The sweep of one image group with a torch GEMM and a C kernel call per diagonal (no BLAS
    pointers in torch's library)."""
    lib = c_kernels()
    weight_t = weight.t()
    bias = bias.contiguous()
    n_img, k_all = inputs.shape[1], inputs.shape[2]
    inputs[0, :, size_in:].zero_()  # the first pixel has no neighbours; the kernel fills the rest
    if extended:
        cbuf = None  # c_left and c_up are read from the GEMM inputs
    else:
        # Rolling [c_left, c_up] by row (ping-pong: the kernel reads one and writes the other);
        # entries never written stay zero: the border of the grid.
        cbuf = [gates.new_zeros(plan.height + 1, n_img, 2 * h) for _ in range(2)]
    nthreads = torch.get_num_threads()
    # Without BLAS pointers: one torch GEMM and one kernel call per diagonal.
    fn = lib.slstm_fwd_f32 if gates.dtype == torch.float32 else lib.slstm_fwd_f64
    isz = gates.element_size()
    g_row, s_row, y_row, c_row = n_img * 5 * h * isz, n_img * h * isz, n_img * k_all * isz, n_img * 2 * h * isz
    g0, c0, h0 = _ptr(gates), _ptr(cells), _ptr(hidden)
    yall = _ptr(inputs)
    y0 = yall + size_in * isz  # recurrent part of the GEMM inputs
    spans = plan.spans
    last = len(spans) - 1
    for d, (off, lo, hi) in enumerate(spans):
        rows = hi - lo + 1
        # gates = bias + [x, h_left, h_up, ...] @ weight^T
        torch.addmm(bias, inputs[off : off + rows].view(rows * n_img, k_all), weight_t,
                    out=gates[off : off + rows].view(rows * n_img, 5 * h))
        threads = nthreads if rows * n_img * h >= _PARALLEL_MIN_FWD else 1
        if extended:
            cin, kc, cl, cu, cout = y0 + off * y_row, k_all, 2 * h, 3 * h, None
        else:
            cin, kc, cl, cu = _ptr(cbuf[d % 2]) + lo * c_row, 2 * h, 0, h
            cout = _ptr(cbuf[(d + 1) % 2]) + lo * c_row
        if d < last:
            noff, nlo, nhi = spans[d + 1]
            nxt = y0 + noff * y_row
        else:
            nxt, nlo, nhi = None, 1, 0
        fn(rows, n_img, h, lo, g0 + off * g_row, c0 + off * s_row, h0 + off * s_row,
           cin, kc, cl, cu, cout, nxt, k_all, nlo, nhi, int(extended), threads)


def fused_inference(xd: torch.Tensor, weight_in: torch.Tensor, weight_rec: torch.Tensor, bias: torch.Tensor,
                    plan, extended: bool) -> torch.Tensor:
    """Forward only (C kernels) of ``G x P x M x input`` inputs, the groups concurrently."""
    groups, num_pix, per, _ = xd.shape
    hidden = xd.new_empty(groups, num_pix, per, weight_rec.shape[0] // 5)

    def run(g: int) -> None:
        _fused_inference_c(xd[g], weight_in, weight_rec, bias, plan, extended, hidden[g])

    run_groups(run, groups)
    return hidden


def _fused_inference_c(xd, weight_in, weight_rec, bias, plan, extended, hidden):
    """Forward only, without the per-pixel history the backward needs: per diagonal two GEMMs
    (input and recurrent part) into a scratch buffer, the same pointwise kernel, and rolling
    buffers for the neighbours. Memory: the output plus O(longest diagonal)."""
    lib = c_kernels()
    fn = lib.slstm_fwd_f32 if xd.dtype == torch.float32 else lib.slstm_fwd_f64
    num_pix, n_img, _ = xd.shape
    h = weight_rec.shape[0] // 5
    k_rec = weight_rec.shape[1]
    longest = max(hi - lo + 1 for _, lo, hi in plan.spans)
    z = xd.new_empty(longest * n_img, 5 * h)
    cells = xd.new_empty(longest * n_img, h)
    # Ping-pong recurrent inputs of the current / next diagonal (rows from the diagonal's first).
    recs = [xd.new_zeros(longest * n_img, k_rec) for _ in range(2)]
    cbuf = None if extended else [xd.new_zeros(plan.height + 1, n_img, 2 * h) for _ in range(2)]
    w_in_t, w_rec_t = weight_in.t(), weight_rec.t()
    nthreads = torch.get_num_threads()
    isz = xd.element_size()
    s_row, c_row = n_img * h * isz, n_img * 2 * h * isz
    h0, z0, cc0 = _ptr(hidden), _ptr(z), _ptr(cells)
    spans = plan.spans
    last = len(spans) - 1
    for d, (off, lo, hi) in enumerate(spans):
        rows = hi - lo + 1
        zd = z[: rows * n_img]
        torch.addmm(bias, xd[off : off + rows].view(rows * n_img, -1), w_in_t, out=zd)
        cur = recs[d % 2]
        if d > 0:
            zd.addmm_(cur[: rows * n_img], w_rec_t)
        if extended:
            cin, kc, cl, cu, cout = _ptr(cur), k_rec, 2 * h, 3 * h, None
        else:
            cin, kc, cl, cu = _ptr(cbuf[d % 2]) + lo * c_row, 2 * h, 0, h
            cout = _ptr(cbuf[(d + 1) % 2]) + lo * c_row
        if d < last:
            _, nlo, nhi = spans[d + 1]
            nxt = _ptr(recs[(d + 1) % 2])
        else:
            nxt, nlo, nhi = None, 1, 0
        fn(rows, n_img, h, lo, z0, cc0, h0 + off * s_row, cin, kc, cl, cu, cout, nxt, k_rec, nlo, nhi,
           int(extended), nthreads if rows * n_img * h >= _PARALLEL_MIN_FWD else 1)
    return hidden


def _fused_backward_c_sweep(plan, gates, cells, hidden, grad_hidden, weight_rec, h, extended, flush, inputs=None,
                            keep_dz=True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reverse sweep of every image group (``G x P x M x ...`` tensors), one C call per chunk of
    diagonals with BLAS inside, then ``flush(g, p0, p1, dz)`` per group. With ``inputs`` (the GEMM
    inputs) the kernels also form the weight gradient ``inputs^T dz`` (``k_all x 5h``, in blocks:
    one per thread with one group, one per group with several), so ``flush`` need not; with
    ``keep_dz`` False as well (no input gradient), ``flush`` is not called and each diagonal's
    dL/dz reuses one buffer. Returns the bias gradient and the weight gradient (or None)."""
    lib = c_kernels()
    gemm, set_threads = gemm_args(gates.dtype)
    weight_rec = weight_rec.contiguous()
    n_groups, _, n_img, _ = gates.shape
    k_rec = weight_rec.shape[1]
    # Without flushes, dL/dz is dead once its diagonal's GEMMs ran: one sweep over every diagonal,
    # each writing the same (cache-resident) rows; the arithmetic is the same as by chunks.
    fixed = inputs is not None and not keep_dz
    if fixed:
        chunks = [(0, len(plan.spans) - 1, 0, None)]  # no flush, so no chunk end
        dz_rows = max(hi - lo + 1 for _, lo, hi in plan.spans)
    else:
        chunks = _chunks(plan, n_img)
        dz_rows = max(p1 - p0 for _, _, p0, p1 in chunks)
    dzbuf = gates.new_empty(n_groups, dz_rows * n_img, 5 * h)
    # dL/d(recurrent inputs) by row, ping-pong: diagonal d reads what d + 1 wrote (rows outside
    # d + 1's are never read, so neither buffer needs clearing) and writes its own rows.
    d_recs = gates.new_zeros(2, n_groups, plan.height + 1, n_img, k_rec)
    dcbuf = gates.new_zeros(2, n_groups, plan.height + 1, n_img, 2 * h)
    nthreads = torch.get_num_threads()
    blocks = n_groups if n_groups > 1 else nthreads  # the kernels' partial sums: per group, else per thread
    dbias = gates.new_zeros(blocks, 5 * h)
    acc = None if inputs is None else gates.new_zeros(blocks, inputs.shape[3], 5 * h)
    k_all, gw, y_all = (0, None, None) if inputs is None else (inputs.shape[3], _ptr(acc), _ptr(inputs))
    sweep = lib.slstm_bwd_sweep_f32 if gates.dtype == torch.float32 else lib.slstm_bwd_sweep_f64
    spans = _spans(plan)
    for d_first, d_last, p0, p1 in chunks:
        sweep(n_groups, len(plan.spans), _ptr(spans), d_first, d_last, p0, n_img, h, int(extended), _ptr(gates),
              _ptr(dzbuf), dzbuf[0].numel(), _ptr(cells), _ptr(hidden), _ptr(grad_hidden), _ptr(d_recs[0]),
              _ptr(d_recs[1]), d_recs[0, 0].numel(), k_rec, _ptr(dcbuf[0]), _ptr(dcbuf[1]), dcbuf[0, 0].numel(),
              _ptr(dbias), nthreads, gemm, set_threads, _ptr(weight_rec), y_all, k_all, gw, int(fixed))
        if not fixed:
            for g in range(n_groups):
                flush(g, p0, p1, dzbuf[g, : (p1 - p0) * n_img])
    return dbias.sum(0), None if acc is None else acc.sum(0)


def _fused_backward_c(plan, gates, cells, hidden, grad_hidden, weight_rec, h, extended, flush):
    """The reverse sweep of one image group with a C kernel call and a torch GEMM per diagonal
    (no BLAS pointers in torch's library)."""
    lib = c_kernels()
    fn = lib.slstm_bwd_f32 if gates.dtype == torch.float32 else lib.slstm_bwd_f64
    weight_rec = weight_rec.contiguous()
    n_img = gates.shape[1]
    k_rec = weight_rec.shape[1]
    height = plan.height
    groups = _chunks(plan, n_img)
    dzbuf = gates.new_empty(max(p1 - p0 for _, _, p0, p1 in groups) * n_img, 5 * h)
    # dL/d(recurrent inputs) by row, ping-pong: diagonal d reads what d + 1 wrote (rows outside
    # d + 1's are never read, so neither buffer needs clearing) and writes its own rows.
    d_recs = [gates.new_zeros(height + 1, n_img, k_rec) for _ in range(2)]
    dcbuf = [gates.new_zeros(height + 1, n_img, 2 * h) for _ in range(2)]
    nthreads = torch.get_num_threads()
    dbias = gates.new_zeros(nthreads, 5 * h)  # per-thread sums of dz: the bias gradient
    isz = gates.element_size()
    g_row, s_row = n_img * 5 * h * isz, n_img * h * isz
    z0, dz0, c0, h0, go0 = _ptr(gates), _ptr(dzbuf), _ptr(cells), _ptr(hidden), _ptr(grad_hidden)
    ecl, ecu = (2 * h, 3 * h) if extended else (0, 0)
    # Without BLAS pointers: one kernel call and one torch GEMM per diagonal.
    nlo, nhi = 1, 0  # rows of the next diagonal (none yet)
    steps = plan.steps
    for d_first, d_last, p0, p1 in groups:
        for d in range(d_last, d_first - 1, -1):
            off, lo, hi, prev = steps[d]
            rows = hi - lo + 1
            if prev is None:
                cprev, plo, phi = None, 1, 0
            else:
                cprev, plo, phi = c0 + prev[0] * s_row, prev[1], prev[2]
            dcin, dcout = dcbuf[d % 2], dcbuf[(d + 1) % 2]
            d_in, d_out = d_recs[(d + 1) % 2], d_recs[d % 2]
            local = off - p0
            threads = nthreads if rows * n_img * h >= _PARALLEL_MIN_BWD else 1
            fn(rows, n_img, h, lo, z0 + off * g_row, dz0 + local * g_row, c0 + off * s_row, h0 + off * s_row,
               go0 + off * s_row, cprev, plo, phi, _ptr(d_in), k_rec, 0, h, int(extended), ecl, ecu, nlo, nhi,
               _ptr(dcin), _ptr(dcout), _ptr(dbias), threads)
            if d > 0:
                torch.mm(dzbuf[local * n_img : (local + rows) * n_img], weight_rec,
                         out=d_out[lo : hi + 1].view(rows * n_img, k_rec))
            nlo, nhi = lo, hi
        flush(p0, p1, dzbuf[: (p1 - p0) * n_img])
    return dbias.sum(0)


def _fused_forward_torch(plan, inputs, size_in, weight, bias, gates, cells, hidden, h, extended):
    """Same sweep as the C kernel with torch ops (any device)."""
    weight_t = weight.t()
    n_img, k_all = inputs.shape[1], inputs.shape[2]
    rec = inputs[..., size_in:]
    rec.zero_()
    crec = rec[..., 2 * h :] if extended else gates.new_zeros(inputs.shape[0], n_img, 2 * h)
    spans = plan.spans
    for d, (off, lo, hi) in enumerate(spans):
        rows = hi - lo + 1
        z = gates[off : off + rows]
        torch.addmm(bias, inputs[off : off + rows].view(rows * n_img, k_all), weight_t, out=z.view(rows * n_img, 5 * h))
        z[..., :h].tanh_()
        z[..., h:].sigmoid_()
        g, o, i, f_c, f_r = z.split(h, -1)
        c = torch.mul(g, i, out=cells[off : off + rows])
        c.addcmul_(crec[off : off + rows, :, :h], f_c).addcmul_(crec[off : off + rows, :, h:], f_r)
        hh = torch.mul(c, o, out=hidden[off : off + rows]).tanh_()
        if d + 1 < len(spans):
            noff, nlo, nhi = spans[d + 1]
            # The next diagonal's row r reads h_left = this row r, h_up = this row r - 1.
            a, b = nlo, min(hi, nhi)
            rec[noff + a - nlo : noff + b - nlo + 1, :, :h] = hh[a - lo : b - lo + 1]
            crec[noff + a - nlo : noff + b - nlo + 1, :, :h] = c[a - lo : b - lo + 1]
            a, b = max(lo + 1, nlo), min(hi + 1, nhi)
            rec[noff + a - nlo : noff + b - nlo + 1, :, h : 2 * h] = hh[a - 1 - lo : b - lo]
            crec[noff + a - nlo : noff + b - nlo + 1, :, h:] = c[a - 1 - lo : b - lo]


def _fused_backward_torch(plan, gates, cells, hidden, grad_hidden, weight_rec, h, extended, flush):
    """Same reverse sweep as the C kernel with torch ops (any device)."""
    n_img = gates.shape[1]
    k_rec = weight_rec.shape[1]
    # Gradients w.r.t. the recurrent inputs / cell contributions of the next diagonal, by row.
    # Two spare rows; rows the next diagonal does not cover are kept zero.
    d_rec = gates.new_zeros(plan.height + 2, n_img, k_rec)
    d_cell = gates.new_zeros(plan.height + 2, n_img, 2 * h)
    c_pad = torch.cat([cells, cells.new_zeros(1, n_img, h)])
    dbias = gates.new_zeros(5 * h)
    groups = _chunks(plan, n_img)
    dzbuf = gates.new_empty(max(p1 - p0 for _, _, p0, p1 in groups), n_img, 5 * h)
    for d_first, d_last, p0, p1 in groups:
        for d in range(d_last, d_first - 1, -1):
            off, lo, hi, _ = plan.steps[d]
            rows = hi - lo + 1
            sl = slice(off, off + rows)
            z = dzbuf[off - p0 : off - p0 + rows]
            g, o, i, f_c, f_r = gates[sl].split(h, -1)
            t, c = hidden[sl], cells[sl]
            dh = grad_hidden[sl] + d_rec[lo : hi + 1, :, :h] + d_rec[lo + 1 : hi + 2, :, h : 2 * h]
            dc = d_cell[lo : hi + 1, :, :h] + d_cell[lo + 1 : hi + 2, :, h:]
            if extended:
                dc += d_rec[lo : hi + 1, :, 2 * h : 3 * h] + d_rec[lo + 1 : hi + 2, :, 3 * h :]
            dm = dh * (1 - t * t)
            dc.addcmul_(dm, o)
            c_left = c_pad.index_select(0, plan.left[sl])
            c_up = c_pad.index_select(0, plan.up[sl])
            d_cell[lo : hi + 1, :, :h] = dc * f_c
            d_cell[lo : hi + 1, :, h:] = dc * f_r
            d_cell[hi + 1].zero_()
            if lo > 0:
                d_cell[lo - 1].zero_()
            torch.cat(
                [
                    dc * i * (1 - g * g),
                    dm * c * o * (1 - o),
                    dc * g * i * (1 - i),
                    dc * c_left * f_c * (1 - f_c),
                    dc * c_up * f_r * (1 - f_r),
                ],
                -1,
                out=z,
            )
            torch.mm(z.view(rows * n_img, 5 * h), weight_rec, out=d_rec[lo : hi + 1].view(rows * n_img, k_rec))
            d_rec[hi + 1].zero_()
            if lo > 0:
                d_rec[lo - 1].zero_()
        dz = dzbuf[: p1 - p0].view(-1, 5 * h)
        dbias += dz.sum(0)
        flush(p0, p1, dz)
    return dbias




def _triton_backward(plan, gates, cells, hidden, grad_hidden, weight_rec, h, extended, flush):
    return triton_slstm.backward_sweep(plan, gates, cells, hidden, grad_hidden, weight_rec, h, extended, flush,
                                       _chunks(plan, gates.shape[1]))


# Sweep modes: "c" (CPU kernels), "triton" (one Triton kernel per diagonal, CUDA), "torch" (any device).
_FORWARD = {"c": _fused_forward_c, "torch": _fused_forward_torch, "triton": triton_slstm.forward_sweep}
_BACKWARD = {"c": _fused_backward_c, "torch": _fused_backward_torch, "triton": _triton_backward}


def sweep_mode(x: torch.Tensor, impl: str) -> str:
    """The sweep of ``impl`` ("fused", "fused_torch", "fused_triton") for tensors like ``x``."""
    if impl == "fused_torch":
        return "torch"
    if impl == "fused_triton":
        if not triton_slstm.triton_available(x.device):
            raise RuntimeError(
                f"impl='fused_triton' needs Triton and a CUDA tensor (or TRITON_INTERPRET=1 on the CPU); got {x.device}"
            )
        return "triton"
    if use_c_kernels(x):
        return "c"
    return "triton" if x.device.type == "cuda" and triton_slstm.triton_available(x.device) else "torch"
