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
    A custom :class:`torch.autograd.Function` per layer in a diagonal-major layout (pixels
    ordered diagonal by diagonal, rows ascending inside a diagonal, images innermost, so one
    diagonal is one contiguous ``(len * N) x F`` matrix; a stack changes layout once). Every
    pixel's GEMM input ``y = [x, h_left, h_up(, c_left, c_up)]`` is kept: forward, per diagonal,
    one GEMM ``z = b + y A^T`` (input and recurrent halves together) and one fused pointwise
    kernel that applies the gates and writes the diagonal's states into the next diagonal's rows
    of ``y``. Backward sweeps the diagonals in reverse computing only state gradients (one fused
    pointwise kernel + one GEMM ``dz A_rec`` per diagonal) and forms the weight gradients as one
    large GEMM ``dz^T y`` per chunk of ~32k rows (plus the input gradient ``dz A_in``).
    On the CPU the pointwise kernels are a small C library compiled on first use with the
    system ``gcc`` (cached in ``~/.cache/ride`` or ``$RIDE_CACHE_DIR``) and loaded with ctypes;
    where torch's MKL exports ``sgemm_`` the kernels also run the per-diagonal GEMMs, each
    OpenMP thread on its own rows. Without a compiler, and on other devices (CUDA), the same
    sweeps run with torch ops. Without autograd (evaluation) a lighter forward keeps only
    rolling buffers.
``"fused_torch"``
    The same autograd Function with torch ops forced (the CUDA path; testable on the CPU).
``"wavefront"``
    Diagonal schedule with plain autograd (every pointwise op recorded).
``"reference"``
    Plain per-pixel raster schedule, batched over images only (kept for tests and benchmarks).
``"auto"`` (default)
    ``"fused"`` for float32/float64 inputs, ``"wavefront"`` otherwise. ``RIDE_SLSTM_IMPL`` in the
    environment overrides what ``"auto"`` resolves to; ``impl=`` names force a path.

:func:`mcgsm_log_prob` is the MCGSM likelihood with the mixture part fused into C kernels (same
values and gradients as ``ride.mcgsm.MCGSM.log_prob``); it is not wired into ride/mcgsm.py.
Measurements: README.performance.md and ``ride bench``.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMPLEMENTATIONS = ("auto", "fused", "fused_torch", "wavefront", "reference")


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


# ----------------------------------------------------------------------------------------------
# Image groups (opt-in): the batch is split into G groups whose sweeps run concurrently in a
# small thread pool, each single-threaded (torch ops and the C kernels release the GIL), instead
# of every GEMM and kernel forking OpenMP threads. Measured on the 2-core development machine
# (shared with other jobs; 22x22 patches, batch 50, 1 layer, 64 hidden, training step), G = 2
# was no faster than G = 1 with 2 OpenMP threads (93.4 vs 94.4 ms median), so the default is one
# group; GROUPS (or RIDE_SLSTM_GROUPS) forces G, e.g. for machines with many cores.
# ----------------------------------------------------------------------------------------------

GROUPS: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def num_groups(n_img: int, device: torch.device, use_c: bool) -> int:
    """Image groups for a batch of ``n_img`` (1 off the CPU or without the C kernels)."""
    if not use_c or device.type != "cpu":
        return 1
    forced = GROUPS if GROUPS is not None else int(os.environ.get("RIDE_SLSTM_GROUPS", "1") or 1)
    return max(1, min(forced, n_img))


def _worker_init() -> None:
    torch.set_num_threads(1)  # thread-local: each group runs on one core


def _run_groups(fn, groups: int) -> None:
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


# ----------------------------------------------------------------------------------------------
# Pointwise kernels in C (CPU). Compiled with the system C compiler on first use and loaded with
# ctypes; everything else (GEMMs, memory) stays in torch. Rows of a diagonal are laid out as
# (row, image) pairs, q = r * N + n, each holding `h` contiguous units.
# ----------------------------------------------------------------------------------------------

_C_SOURCE = r"""
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* float32: Cephes-style exp (rel. error ~1e-7) written so that gcc vectorises the loops. */
static inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float fx = floorf(x * 1.44269504088896341f + 0.5f);
    x = x - fx * 0.693359375f - fx * -2.12194440e-4f;
    float z = x * x;
    float y = ((((( 1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x
                + 4.1665795894e-2f) * x + 1.6666665459e-1f) * x + 5.0000001201e-1f) * z + x + 1.0f;
    union { int32_t i; float f; } u;
    u.i = ((int32_t)fx + 127) << 23;
    return y * u.f;
}
static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }
static inline float tanh_f(float x) {
    float a = fabsf(x);
    float z = x * x;
    /* Cephes tanhf polynomial for |x| < 0.625, else 1 - 2 / (exp(2|x|) + 1). */
    float p = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
               + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float t = 1.0f - 2.0f / (exp_f(2.0f * a) + 1.0f);
    t = x < 0.0f ? -t : t;
    return a < 0.625f ? p : t;
}
static inline double exp_d(double x) { return exp(x); }
static inline double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double tanh_d(double x) { return tanh(x); }

/*
 * Forward of one diagonal of L rows (lo..lo+L-1) x N images.
 *   z   : (L*N, 5h) pre-activations (input + recurrent GEMMs); overwritten with the gates
 *         (g, o, i, f_c, f_r) after their nonlinearities.
 *   c,hh: (L*N, h) cell and hidden states of this diagonal (written).
 *   cin : c_left at column cl and c_up at column cu of this diagonal's rows (row stride N*kc).
 *   cout: when not NULL, c is written there for the next diagonal (same layout as cin, rows
 *         from lo, c at column cl of the same row and cu of the next row; may not alias cin).
 *   nxt : the next diagonal's recurrent GEMM input [h_left, h_up(, c_left, c_up)], rows nlo..nhi
 *         (row stride N*kb), or NULL. Every entry of it is written (zeros on the grid border).
 */
#define DEFINE_FWD(NAME, T, SIG, TANH, GEMM)                                                     \
void NAME(int L, int N, int h, int lo, T *z, T *c, T *hh, const T *cin, int kc, int cl, int cu, \
          T *cout, T *nxt, int kb, int nlo, int nhi, int ext, int nthreads,                       \
          GEMM gemm, set_threads_t set_threads, const T *y, const T *w, int kall, const T *bias) { \
    const int64_t h5 = 5 * (int64_t)h, total = (int64_t)L * N;                                   \
    _Pragma("omp parallel num_threads(nthreads)")                                                 \
    {                                                                                              \
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();                                \
    const int64_t q0 = total * t / nt, q1 = total * (t + 1) / nt;                                  \
    if (gemm && q1 > q0) {                                                                         \
        /* z[q0:q1] = y[q0:q1] @ w^T on this thread's rows (column-major BLAS: z^T = w y^T) */     \
        int m = (int)(q1 - q0), n5 = 5 * h, prev = set_threads ? set_threads(1) : 0;              \
        T one = 1, zero = 0;                                                                       \
        gemm("T", "N", &n5, &m, &kall, &one, w, &kall, y + q0 * kall, &kall, &zero, z + q0 * h5, &n5); \
        if (set_threads) set_threads(prev);                                                        \
    }                                                                                              \
    for (int64_t q = q0; q < q1; q++) {                                                           \
        const int r = lo + (int)(q / N), n = (int)(q % N);                                        \
        T *zq = z + q * h5;                                                                        \
        if (bias) {                                                                                \
            _Pragma("omp simd")                                                                    \
            for (int k = 0; k < 5 * h; k++) zq[k] += bias[k];                                      \
        }                                                                                          \
        const T *cl_ = cin + q * kc + cl, *cu_ = cin + q * kc + cu;                                \
        T *cq = c + q * h, *hq = hh + q * h;                                                       \
        _Pragma("omp simd")                                                                        \
        for (int k = 0; k < h; k++) {                                                              \
            T g = TANH(zq[k]);                                                                     \
            T o = SIG(zq[h + k]);                                                                  \
            T i = SIG(zq[2 * h + k]);                                                              \
            T fc = SIG(zq[3 * h + k]);                                                             \
            T fr = SIG(zq[4 * h + k]);                                                             \
            zq[k] = g; zq[h + k] = o; zq[2 * h + k] = i; zq[3 * h + k] = fc; zq[4 * h + k] = fr;   \
            T cv = g * i + cl_[k] * fc + cu_[k] * fr;                                              \
            cq[k] = cv;                                                                            \
            hq[k] = TANH(cv * o);                                                                  \
        }                                                                                          \
        if (cout) {                                                                                \
            T *cown = cout + q * kc + cl, *cbelow = cout + (q + N) * kc + cu;                      \
            for (int k = 0; k < h; k++) { cown[k] = cq[k]; cbelow[k] = cq[k]; }                    \
        }                                                                                          \
        if (nxt) {                                                                                 \
            if (r >= nlo && r <= nhi) {                                                            \
                T *dst = nxt + ((int64_t)(r - nlo) * N + n) * kb;                                  \
                for (int k = 0; k < h; k++) dst[k] = hq[k];                                        \
                if (ext) for (int k = 0; k < h; k++) dst[2 * h + k] = cq[k];                       \
            }                                                                                      \
            if (r + 1 >= nlo && r + 1 <= nhi) {                                                    \
                T *dst = nxt + ((int64_t)(r + 1 - nlo) * N + n) * kb;                              \
                for (int k = 0; k < h; k++) dst[h + k] = hq[k];                                    \
                if (ext) for (int k = 0; k < h; k++) dst[3 * h + k] = cq[k];                       \
            }                                                                                      \
            /* Border: the next diagonal's cell in column 0 has no left, the one in row 0 no up. */ \
            if (r == lo + L - 1 && r + 1 == nhi) {                                                 \
                T *dst = nxt + ((int64_t)(nhi - nlo) * N + n) * kb;                                \
                for (int k = 0; k < h; k++) dst[k] = 0;                                            \
                if (ext) for (int k = 0; k < h; k++) dst[2 * h + k] = 0;                           \
            }                                                                                      \
            if (r == lo && nlo == 0) {                                                             \
                T *dst = nxt + (int64_t)n * kb;                                                    \
                for (int k = 0; k < h; k++) dst[h + k] = 0;                                        \
                if (ext) for (int k = 0; k < h; k++) dst[3 * h + k] = 0;                           \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    }                                                                                              \
}

/*
 * Backward of one diagonal (rows lo..lo+L-1) given the gradients flowing back from the next
 * diagonal (rows nlo..nhi; nlo > nhi when there is none).
 *   z    : (L*N, 5h) gates from the forward;  dz: (L*N, 5h) dL/d(pre-activations) (written).
 *   c, hh: (L*N, h) this diagonal's states;  gout: (L*N, h) gradient of the layer's output.
 *   cprev: previous diagonal's cell states (rows plo..phi), compact (row stride N*h); NULL if none.
 *   db   : (H+1, N, kb) full buffer: dL/d(recurrent inputs) of the next diagonal at its rows;
 *          dh_left at column hl, dh_up at hu, and when ext dc_left at ecl, dc_up at ecu.
 *   dcin : (H+1, N, 2h) full buffer, next diagonal's dc*f_c (columns 0..h) and dc*f_r (h..2h).
 *   dcout: same layout, written for this diagonal's rows (may not alias dcin).
 */
#define DEFINE_BWD(NAME, T, GEMM)                                                                \
void NAME(int L, int N, int h, int lo, const T *z, T *dz, const T *c, const T *hh, const T *gout, \
          const T *cprev, int plo, int phi, const T *db, int kb, int hl, int hu, int ext,        \
          int ecl, int ecu, int nlo, int nhi, const T *dcin, T *dcout, T *dbias, int nthreads,    \
          GEMM gemm, set_threads_t set_threads, const T *wrec, T *drec) {                         \
    const int64_t h5 = 5 * (int64_t)h, total = (int64_t)L * N;                                   \
    _Pragma("omp parallel num_threads(nthreads)")                                                 \
    {                                                                                              \
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();                                \
    const int64_t q0 = total * t / nt, q1 = total * (t + 1) / nt;                                  \
    T *acc = dbias + (int64_t)t * h5;                                                              \
    for (int64_t q = q0; q < q1; q++) {                                                           \
        const int r = lo + (int)(q / N), n = (int)(q % N);                                        \
        const int same = (r >= nlo && r <= nhi), below = (r + 1 >= nlo && r + 1 <= nhi);          \
        const int has_left = cprev && r >= plo && r <= phi;                                        \
        const int has_up = cprev && r - 1 >= plo && r - 1 <= phi;                                  \
        const T *dbs = db + ((int64_t)r * N + n) * kb, *dbb = db + ((int64_t)(r + 1) * N + n) * kb; \
        const T *dcs = dcin + ((int64_t)r * N + n) * 2 * h;                                       \
        const T *dcb = dcin + ((int64_t)(r + 1) * N + n) * 2 * h;                                 \
        const T *cl_ = has_left ? cprev + ((int64_t)(r - plo) * N + n) * h : c;                    \
        const T *cu_ = has_up ? cprev + ((int64_t)(r - 1 - plo) * N + n) * h : c;                  \
        const T ml = has_left ? 1 : 0, mu = has_up ? 1 : 0;                                        \
        const T ms = same ? 1 : 0, mb = below ? 1 : 0, me = ext ? 1 : 0;                           \
        const int ecl_ = ext ? ecl : 0, ecu_ = ext ? ecu : 0;                                      \
        const T *zq = z + q * h5;                                                                  \
        T *dzq = dz + q * h5;                                                                      \
        const T *cq = c + q * h, *hq = hh + q * h, *gq = gout + q * h;                             \
        T *dco = dcout + ((int64_t)r * N + n) * 2 * h;                                            \
        _Pragma("omp simd")                                                                        \
        for (int k = 0; k < h; k++) {                                                              \
            T dh = gq[k] + ms * dbs[hl + k] + mb * dbb[hu + k];                                    \
            T dc = ms * dcs[k] + mb * dcb[h + k] + me * (ms * dbs[ecl_ + k] + mb * dbb[ecu_ + k]); \
            T g = zq[k], o = zq[h + k], i = zq[2 * h + k], fc = zq[3 * h + k], fr = zq[4 * h + k]; \
            T t = hq[k], cv = cq[k];                                                               \
            T dm = dh * (1 - t * t);                                                               \
            dc += dm * o;                                                                          \
            T clv = ml * cl_[k], cuv = mu * cu_[k];                                                \
            T zg = dc * i * (1 - g * g), zo = dm * cv * o * (1 - o), zi = dc * g * i * (1 - i);     \
            T zc = dc * clv * fc * (1 - fc), zr = dc * cuv * fr * (1 - fr);                         \
            dzq[k] = zg; dzq[h + k] = zo; dzq[2 * h + k] = zi; dzq[3 * h + k] = zc; dzq[4 * h + k] = zr; \
            acc[k] += zg; acc[h + k] += zo; acc[2 * h + k] += zi; acc[3 * h + k] += zc; acc[4 * h + k] += zr; \
            dco[k] = dc * fc;                                                                      \
            dco[h + k] = dc * fr;                                                                  \
        }                                                                                          \
    }                                                                                              \
    if (gemm && q1 > q0) {                                                                         \
        /* drec[q0:q1] = dz[q0:q1] @ wrec (wrec: 5h x kb row-major) on this thread's rows */        \
        int m = (int)(q1 - q0), n5 = 5 * h, prev = set_threads ? set_threads(1) : 0;              \
        T one = 1, zero = 0;                                                                       \
        gemm("N", "N", &kb, &m, &n5, &one, wrec, &kb, dz + q0 * h5, &n5, &zero, drec + q0 * kb, &kb); \
        if (set_threads) set_threads(prev);                                                        \
    }                                                                                              \
    }                                                                                              \
}

typedef int (*set_threads_t)(int);
typedef void (*sgemm_t)(const char *, const char *, const int *, const int *, const int *, const float *,
                        const float *, const int *, const float *, const int *, const float *, float *, const int *);
typedef void (*dgemm_t)(const char *, const char *, const int *, const int *, const int *, const double *,
                        const double *, const int *, const double *, const int *, const double *, double *,
                        const int *);
DEFINE_FWD(slstm_fwd_f32, float, sigmoid_f, tanh_f, sgemm_t)
DEFINE_FWD(slstm_fwd_f64, double, sigmoid_d, tanh_d, dgemm_t)
DEFINE_BWD(slstm_bwd_f32, float, sgemm_t)
DEFINE_BWD(slstm_bwd_f64, double, dgemm_t)

/*
 * MCGSM mixture part, one row (pixel) at a time: with e_c = sum_n beta_cn^2 (b_n^T h)^2 and
 * r_c = (y - a_c^T h)^2, gate_cs = eta_cs + nh_cs e_c and joint_cs = gate_cs + cst_cs + nh_cs r_c
 * (nh = -exp(alpha)/2, cst = alpha/2 - log(2 pi)/2); log p = lse(joint) - lse(gate).
 */
#define DEFINE_MCGSM(FWD, BWD, T, EXP, LOG)                                                      \
void FWD(int64_t M, int K, int S, const T *e, const T *r, const T *eta, const T *nh, const T *cst, \
         T *lp, T *lse_j, T *lse_g, int nthreads) {                                               \
    const int KS = K * S;                                                                          \
    _Pragma("omp parallel num_threads(nthreads)")                                                 \
    {                                                                                              \
        T E[KS], R[KS], G[KS], J[KS];                                                              \
        _Pragma("omp for schedule(static)")                                                       \
        for (int64_t m = 0; m < M; m++) {                                                          \
            const T *em = e + m * K, *rm = r + m * K;                                              \
            for (int c = 0; c < K; c++)                                                            \
                for (int s = 0; s < S; s++) { E[c * S + s] = em[c]; R[c * S + s] = rm[c]; }        \
            T mg = -INFINITY, mj = -INFINITY;                                                      \
            _Pragma("omp simd reduction(max:mg,mj)")                                               \
            for (int cs = 0; cs < KS; cs++) {                                                      \
                T g = eta[cs] + nh[cs] * E[cs];                                                    \
                T j = g + cst[cs] + nh[cs] * R[cs];                                                \
                G[cs] = g; J[cs] = j;                                                              \
                mg = g > mg ? g : mg; mj = j > mj ? j : mj;                                        \
            }                                                                                      \
            T sg = 0, sj = 0;                                                                      \
            _Pragma("omp simd reduction(+:sg,sj)")                                                 \
            for (int cs = 0; cs < KS; cs++) { sg += EXP(G[cs] - mg); sj += EXP(J[cs] - mj); }      \
            T lj = mj + LOG(sj), lg = mg + LOG(sg);                                                \
            lse_j[m] = lj; lse_g[m] = lg; lp[m] = lj - lg;                                         \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
/* Backward: de, dr (M x K) and per-thread sums of dL/deta and dL/dalpha (nthreads x K*S). */     \
void BWD(int64_t M, int K, int S, const T *e, const T *r, const T *gout, const T *eta, const T *nh, \
         const T *cst, const T *lse_j, const T *lse_g, T *de, T *dr, T *deta, T *dalpha, int nthreads) { \
    const int KS = K * S;                                                                          \
    _Pragma("omp parallel num_threads(nthreads)")                                                 \
    {                                                                                              \
        T E[KS], R[KS], P[KS], D[KS];                                                              \
        int t = omp_get_thread_num();                                                              \
        T *ae = deta + (int64_t)t * KS, *aa = dalpha + (int64_t)t * KS;                            \
        _Pragma("omp for schedule(static)")                                                       \
        for (int64_t m = 0; m < M; m++) {                                                          \
            const T *em = e + m * K, *rm = r + m * K;                                              \
            const T g = gout[m], lj = lse_j[m], lg = lse_g[m];                                     \
            for (int c = 0; c < K; c++)                                                            \
                for (int s = 0; s < S; s++) { E[c * S + s] = em[c]; R[c * S + s] = rm[c]; }        \
            _Pragma("omp simd")                                                                    \
            for (int cs = 0; cs < KS; cs++) {                                                      \
                T gate = eta[cs] + nh[cs] * E[cs];                                                 \
                T p = g * EXP(gate + cst[cs] + nh[cs] * R[cs] - lj);                               \
                T pq = p - g * EXP(gate - lg);                                                     \
                ae[cs] += pq;                                                                      \
                aa[cs] += (T)0.5 * p + nh[cs] * (pq * E[cs] + p * R[cs]);                          \
                P[cs] = p * nh[cs]; D[cs] = pq * nh[cs];                                           \
            }                                                                                      \
            for (int c = 0; c < K; c++) {                                                          \
                T sde = 0, sdr = 0;                                                                \
                for (int s = 0; s < S; s++) { sde += D[c * S + s]; sdr += P[c * S + s]; }          \
                de[m * K + c] = sde; dr[m * K + c] = sdr;                                          \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_MCGSM(mcgsm_fwd_f32, mcgsm_bwd_f32, float, exp_f, logf)
DEFINE_MCGSM(mcgsm_fwd_f64, mcgsm_bwd_f64, double, exp, log)

/* Accuracy probes for the tests. */
void probe_f32(int n, const float *x, float *tanh_out, float *sig_out) {
    for (int k = 0; k < n; k++) { tanh_out[k] = tanh_f(x[k]); sig_out[k] = sigmoid_f(x[k]); }
}
"""

# -fno-trapping-math lets gcc vectorise the selects and floorf of exp_f (torch builds with it
# too); -funsafe-math-optimizations (reciprocals, reassociation: ~1.6x faster forward kernel)
# is given to the compile step only: linked into a shared library by gcc < 13 it would add
# crtfastmath.o, which turns on flush-to-zero for the whole process. NaNs still propagate
# (no -ffinite-math-only).
_C_COMPILE_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-fPIC", "-std=c99",
                    "-fno-math-errno", "-fno-trapping-math", "-funsafe-math-optimizations"]
_C_LINK_FLAGS = ["-shared", "-fopenmp"]
_c_lock = threading.Lock()
_c_lib: ctypes.CDLL | None = None
_c_error: str | None = None


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_c_kernels() -> ctypes.CDLL:
    cc = os.environ.get("CC", "gcc")
    key = hashlib.sha256(
        "\n".join([_C_SOURCE, cc, *_C_COMPILE_FLAGS, *_C_LINK_FLAGS, _cpu_signature()]).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("RIDE_CACHE_DIR", Path.home() / ".cache" / "ride"))
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "ride-cache"
        cache.mkdir(parents=True, exist_ok=True)
    lib_path = cache / f"slstm_kernels_{key}.so"
    if not lib_path.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / "slstm_kernels.c"
            src.write_text(_C_SOURCE)
            obj, out = Path(tmp) / "slstm_kernels.o", Path(tmp) / lib_path.name
            subprocess.run([cc, *_C_COMPILE_FLAGS, "-c", str(src), "-o", str(obj)], check=True, capture_output=True, timeout=120)
            subprocess.run([cc, *_C_LINK_FLAGS, str(obj), "-o", str(out), "-lm"], check=True, capture_output=True, timeout=120)
            os.replace(out, lib_path)  # atomic: concurrent builders never see a partial file
    lib = ctypes.CDLL(str(lib_path))
    i, p = ctypes.c_int, ctypes.c_void_p
    for name in ("slstm_fwd_f32", "slstm_fwd_f64"):
        getattr(lib, name).argtypes = [i, i, i, i, p, p, p, p, i, i, i, p, p, i, i, i, i, i, p, p, p, p, i, p]
        getattr(lib, name).restype = None
    for name in ("slstm_bwd_f32", "slstm_bwd_f64"):
        getattr(lib, name).argtypes = [i, i, i, i, p, p, p, p, p, p, i, i, p, i, i, i, i, i, i, i, i, p, p, p, i,
                                       p, p, p, p]
        getattr(lib, name).restype = None
    lib.probe_f32.argtypes = [i, p, p, p]
    i64 = ctypes.c_int64
    for name in ("mcgsm_fwd_f32", "mcgsm_fwd_f64"):
        getattr(lib, name).argtypes = [i64, i, i, p, p, p, p, p, p, p, p, i]
        getattr(lib, name).restype = None
    for name in ("mcgsm_bwd_f32", "mcgsm_bwd_f64"):
        getattr(lib, name).argtypes = [i64, i, i, p, p, p, p, p, p, p, p, p, p, p, p, i]
        getattr(lib, name).restype = None
    return lib


def c_kernels() -> ctypes.CDLL | None:
    """The compiled CPU kernels, or None when they cannot be built (reason in :func:`c_kernels_error`)."""
    global _c_lib, _c_error
    if _c_lib is not None or _c_error is not None:
        return _c_lib
    with _c_lock:
        if _c_lib is None and _c_error is None:
            if os.environ.get("RIDE_SLSTM_NO_C"):
                _c_error = "disabled by RIDE_SLSTM_NO_C"
            else:
                try:
                    _c_lib = _build_c_kernels()
                except Exception as exc:  # no compiler, no OpenMP, read-only cache, ...
                    _c_error = f"{type(exc).__name__}: {exc}"
                    warnings.warn(f"SLSTM C kernels unavailable, using torch pointwise ops ({_c_error})", stacklevel=3)
    return _c_lib


_blas: dict[str, int | None] | None = None


def blas_pointers() -> dict[str, int | None]:
    """Addresses of ``sgemm_``/``dgemm_`` and ``MKL_Set_Num_Threads_Local`` exported by torch's
    CPU library (MKL builds), which the C kernels call per thread on their rows; empty where torch
    has no such symbols (the sweeps then call torch GEMMs per diagonal). RIDE_SLSTM_NO_BLAS
    disables them."""
    global _blas
    if _blas is None:
        found: dict[str, int | None] = {}
        if not os.environ.get("RIDE_SLSTM_NO_BLAS"):
            try:
                lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
                names = {"sgemm": "sgemm_", "dgemm": "dgemm_", "set_threads": "MKL_Set_Num_Threads_Local"}
                found = {key: ctypes.cast(getattr(lib, sym), ctypes.c_void_p).value for key, sym in names.items()}
            except (OSError, AttributeError):
                found = {}
        _blas = found
    return _blas


def c_kernels_error() -> str | None:
    c_kernels()
    return _c_error


def _use_c(x: torch.Tensor, force_torch: bool) -> bool:
    return (
        not force_torch
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and c_kernels() is not None
    )


# ----------------------------------------------------------------------------------------------
# The fused autograd Function.
# ----------------------------------------------------------------------------------------------


class _FusedSLSTM(torch.autograd.Function):
    """One SLSTM layer in diagonal-major layout: ``G x P x M x input`` -> ``G x P x M x hidden``
    (G image groups of M images, see :func:`to_diagonal`)."""

    @staticmethod
    def forward(ctx, xd, weight_in, weight_rec, bias, plan, extended, use_c):  # type: ignore[override]
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
        sweep = _fused_forward_c if use_c else _fused_forward_torch

        def run(g: int) -> None:
            sweep(plan, inputs[g], size_in, weight, bias, gates[g], cells[g], hidden[g], h, extended)

        _run_groups(run, groups)
        ctx.save_for_backward(weight_in, weight_rec, inputs, gates, cells, hidden)
        ctx.plan, ctx.extended, ctx.use_c = plan, extended, use_c
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
        grad_w = [inputs.new_zeros(5 * h, inputs.shape[3]) for _ in range(groups)] if needs[1] or needs[2] else None
        grad_b = [inputs.new_empty(5 * h) for _ in range(groups)] if needs[3] else None
        sweep = _fused_backward_c if ctx.use_c else _fused_backward_torch

        def run(g: int) -> None:
            def flush(p0: int, p1: int, dz: torch.Tensor) -> None:
                """Gradients of pixels p0..p1 from their dL/d(pre-activations): large GEMMs."""
                rows = (p1 - p0) * per
                if grad_w is not None:
                    grad_w[g].addmm_(dz.t(), inputs[g, p0:p1].view(rows, -1))
                if grad_x is not None:
                    torch.mm(dz, weight_in, out=grad_x[g, p0:p1].view(rows, size_in))

            # dL/d(pre-activations) lives in a buffer of about _CHUNK_ROWS rows (the saved gates
            # stay intact, so a graph kept with retain_graph=True can be differentiated again);
            # every finished chunk of diagonals is flushed into the weight and input gradients.
            dbias = sweep(plan, gates[g], cells[g], hidden[g], grad_hidden[g], weight_rec, h, extended, flush)
            if grad_b is not None:
                grad_b[g].copy_(dbias)

        _run_groups(run, groups)
        grad_w_in = grad_w_rec = None
        if grad_w is not None:
            total = torch.stack(grad_w).sum(0) if groups > 1 else grad_w[0]
            grad_w_in, grad_w_rec = total[:, :size_in], total[:, size_in:]
        if grad_b is not None:
            grad_b = torch.stack(grad_b).sum(0) if groups > 1 else grad_b[0]
        return grad_x, grad_w_in, grad_w_rec, grad_b, None, None, None


# Below these many elements (rows x hidden units) per diagonal a kernel runs on one thread: an
# OpenMP fork costs more than it saves there, and much more on a machine shared with others.
_PARALLEL_MIN_FWD = 1 << 14
_PARALLEL_MIN_BWD = 1 << 16
_PARALLEL_MIN_ROWS = 16  # with the GEMMs inside the kernels (per thread, on its rows)

# Rows (pixels x images) of dL/dz kept at once by the backward sweep before its gradient GEMMs.
_CHUNK_ROWS = 1 << 15


def _chunks(plan: "_Plan", n_img: int) -> list[tuple[int, int, int, int]]:
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


def _gemm_args(dtype: torch.dtype) -> tuple[int | None, int | None]:
    """(gemm, set_threads) addresses for the C kernels, or (None, None) to use torch GEMMs."""
    blas = blas_pointers()
    gemm = blas.get("sgemm" if dtype == torch.float32 else "dgemm")
    return (gemm, blas.get("set_threads")) if gemm else (None, None)


def _fused_forward_c(plan, inputs, size_in, weight, bias, gates, cells, hidden, h, extended):
    lib = c_kernels()
    fn = lib.slstm_fwd_f32 if gates.dtype == torch.float32 else lib.slstm_fwd_f64
    gemm, set_threads = _gemm_args(gates.dtype)
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
    isz = gates.element_size()
    g_row, s_row, y_row, c_row = n_img * 5 * h * isz, n_img * h * isz, n_img * k_all * isz, n_img * 2 * h * isz
    g0, c0, h0, w0, b0 = _ptr(gates), _ptr(cells), _ptr(hidden), _ptr(weight), _ptr(bias)
    yall = _ptr(inputs)
    y0 = yall + size_in * isz  # recurrent part of the GEMM inputs
    spans = plan.spans
    last = len(spans) - 1
    for d, (off, lo, hi) in enumerate(spans):
        rows = hi - lo + 1
        if gemm is None:
            # One torch GEMM per diagonal: gates = bias + [x, h_left, h_up, ...] @ weight^T.
            torch.addmm(bias, inputs[off : off + rows].view(rows * n_img, k_all), weight_t,
                        out=gates[off : off + rows].view(rows * n_img, 5 * h))
            threads = nthreads if rows * n_img * h >= _PARALLEL_MIN_FWD else 1
        else:
            threads = nthreads if rows * n_img >= _PARALLEL_MIN_ROWS else 1
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
           cin, kc, cl, cu, cout, nxt, k_all, nlo, nhi, int(extended), threads,
           gemm, set_threads, yall + off * y_row, w0, k_all, b0 if gemm else None)


def _fused_inference(xd, weight_in, weight_rec, bias, plan, extended):
    """Forward only (C kernels) of ``G x P x M x input`` inputs, the groups concurrently."""
    groups, num_pix, per, _ = xd.shape
    hidden = xd.new_empty(groups, num_pix, per, weight_rec.shape[0] // 5)

    def run(g: int) -> None:
        _fused_inference_c(xd[g], weight_in, weight_rec, bias, plan, extended, hidden[g])

    _run_groups(run, groups)
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
           int(extended), nthreads if rows * n_img * h >= _PARALLEL_MIN_FWD else 1, None, None, None, None, 0, None)
    return hidden


def _fused_backward_c(plan, gates, cells, hidden, grad_hidden, weight_rec, h, extended, flush):
    lib = c_kernels()
    fn = lib.slstm_bwd_f32 if gates.dtype == torch.float32 else lib.slstm_bwd_f64
    gemm, set_threads = _gemm_args(gates.dtype)
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
    g_row, s_row, r_row = n_img * 5 * h * isz, n_img * h * isz, n_img * k_rec * isz
    z0, dz0, c0, h0, go0 = _ptr(gates), _ptr(dzbuf), _ptr(cells), _ptr(hidden), _ptr(grad_hidden)
    w0 = _ptr(weight_rec)
    ecl, ecu = (2 * h, 3 * h) if extended else (0, 0)
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
            use_gemm = gemm is not None and d > 0
            if use_gemm:
                threads = nthreads if rows * n_img >= _PARALLEL_MIN_ROWS else 1
            else:
                threads = nthreads if rows * n_img * h >= _PARALLEL_MIN_BWD else 1
            fn(rows, n_img, h, lo, z0 + off * g_row, dz0 + local * g_row, c0 + off * s_row, h0 + off * s_row,
               go0 + off * s_row, cprev, plo, phi, _ptr(d_in), k_rec, 0, h, int(extended), ecl, ecu, nlo, nhi,
               _ptr(dcin), _ptr(dcout), _ptr(dbias), threads,
               gemm if use_gemm else None, set_threads, w0, _ptr(d_out) + lo * r_row)
            if d > 0 and not use_gemm:
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


# ----------------------------------------------------------------------------------------------
# The MCGSM on the top layer's states, fused (CPU). Not wired into ride/mcgsm.py, which this
# module does not own: ``MCGSM.log_prob`` can delegate to :func:`mcgsm_log_prob`.
# ----------------------------------------------------------------------------------------------


class _FusedMCGSM(torch.autograd.Function):
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


def mcgsm_log_prob(mcgsm: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor, fallback=None) -> torch.Tensor:
    """Same as ``mcgsm.log_prob(inputs, outputs)`` (ride.mcgsm.MCGSM), fused on the CPU.

    Where the C kernels are unavailable, on other devices and dtypes it returns
    ``fallback(inputs, outputs)`` (default ``mcgsm.log_prob``; pass the original method when
    ``MCGSM.log_prob`` itself delegates here). Equal to ``MCGSM.log_prob`` within float rounding
    (tests/test_slstm_fast.py).
    """
    if inputs.shape[-1] != mcgsm.dim_in or not _use_c(inputs, force_torch=False) or outputs.dtype != inputs.dtype:
        return (fallback or mcgsm.log_prob)(inputs, outputs)
    shape = outputs.shape
    h = inputs.reshape(-1, inputs.shape[-1]).contiguous()
    y = outputs.reshape(-1).contiguous()
    out = _FusedMCGSM.apply(h, y, mcgsm.priors, mcgsm.log_precisions(), mcgsm.weights, mcgsm.features, mcgsm.predictors)
    return out.view(shape)


def tune_malloc(mmap_threshold: int = 1 << 30) -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it (process-wide).

    A training step allocates and frees the same large buffers every time; above glibc's mmap
    threshold (at most 32 MB by default) each one is a fresh mmap whose pages are faulted in and
    zeroed by the kernel again at every step. Measured on the 2-core machine (1 layer, 64 hidden,
    64x64 patches, batch 50, 2 threads): 575k page faults and 1.4 s per step by default, 14k and
    0.66 s with ``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` and ``M_TRIM_THRESHOLD`` at its maximum. The
    cost: memory freed by the process is kept for reuse, not returned to the system (the peak
    resident set is unchanged). Meant for the entry points of long-running jobs (``ride train``,
    ``ride evaluate``, ``ride bench --tune-malloc``); returns False where glibc is not found.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, int(min(mmap_threshold, 2**31 - 1)))
        return bool(ok and libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


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
        groups = num_groups(x.shape[0], x.device, _use_c(x, force_torch=impl == "fused_torch"))
        xd = to_diagonal(x, plan, groups)
        return from_diagonal(self.forward_diagonal(xd, plan, impl), plan, x.shape[0])

    def forward_diagonal(self, xd: torch.Tensor, plan: _Plan, impl: str = "fused") -> torch.Tensor:
        """The fused layer on diagonal-major inputs ``G x P x M x input_size`` (:func:`to_diagonal`)."""
        use_c = _use_c(xd, force_torch=impl == "fused_torch")
        xd = xd.contiguous()
        needs_grad = torch.is_grad_enabled() and (xd.requires_grad or any(p.requires_grad for p in self.parameters()))
        if use_c and not needs_grad:
            return _fused_inference(xd, self.weight_in, self.weight_rec, self.bias, plan, self.extended)
        return _FusedSLSTM.apply(xd, self.weight_in, self.weight_rec, self.bias, plan, self.extended, use_c)

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
        impl = resolve_impl(impl, x)
        if impl in ("fused", "fused_torch") and self.layers:
            self.layers[0]._check(x)
            if x.numel() == 0:
                return x.new_zeros(*x.shape[:-1], self.hidden_size)
            # One layout change for the whole stack: every layer works on diagonal-major tensors.
            plan = _plan(x.shape[1], x.shape[2], x.device)
            groups = num_groups(x.shape[0], x.device, _use_c(x, force_torch=impl == "fused_torch"))
            xd = to_diagonal(x, plan, groups)
            for layer in self.layers:
                xd = layer.forward_diagonal(xd, plan, impl)
            return from_diagonal(xd, plan, x.shape[0])
        for layer in self.layers:
            x = layer(x, impl=impl)
        return x
