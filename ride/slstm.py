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
    A custom :class:`torch.autograd.Function` per layer working in a diagonal-major layout
    (``P x N x F``, pixels ordered diagonal by diagonal, rows ascending inside a diagonal, so a
    diagonal is one contiguous ``(len * N) x F`` matrix). Forward: the input half of all gates is
    one GEMM over all pixels; per diagonal one GEMM adds the recurrent half (the left and upper
    neighbours are kept side by side in a rolling ``(H + 1) x N x K`` buffer, so ``[h_left, h_up]``
    is a contiguous matrix) and one fused pointwise kernel applies the gates. Backward sweeps the
    diagonals in reverse computing only the state gradients (one GEMM + one pointwise kernel per
    diagonal) and then forms the weight gradients as a few large GEMMs over all pixels. On the
    CPU the pointwise kernels are a small C library compiled on first use (``gcc``, cached); where
    it cannot be built, and on other devices, the same sweeps run with torch pointwise ops.
``"fused_torch"``
    The same autograd Function with torch pointwise ops forced (the CUDA path; testable on CPU).
``"wavefront"``
    Diagonal schedule with plain autograd (every pointwise op recorded).
``"reference"``
    Plain per-pixel raster schedule, batched over images only (kept for tests and benchmarks).
``"auto"`` (default)
    ``"fused"`` for float32/float64 inputs, ``"wavefront"`` otherwise. ``RIDE_SLSTM_IMPL`` in the
    environment overrides what ``"auto"`` resolves to.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
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


def to_diagonal(x: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """``N x H x W x F`` -> diagonal-major ``P x N x F`` (contiguous)."""
    n_img, height, width, feat = x.shape
    return x.permute(1, 2, 0, 3).reshape(height * width, n_img, feat).index_select(0, plan.order)


def from_diagonal(xd: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Diagonal-major ``P x N x F`` -> ``N x H x W x F`` (contiguous)."""
    _, n_img, feat = xd.shape
    out = xd.index_select(0, plan.inverse).view(plan.height, plan.width, n_img, feat)
    return out.permute(2, 0, 1, 3).contiguous()


# ----------------------------------------------------------------------------------------------
# Pointwise kernels in C (CPU). Compiled with the system C compiler on first use and loaded with
# ctypes; everything else (GEMMs, memory) stays in torch. Rows of a diagonal are laid out as
# (row, image) pairs, q = r * N + n, each holding `h` contiguous units.
# ----------------------------------------------------------------------------------------------

_C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* float32: Cephes-style exp (rel. error ~1e-7) written so that gcc vectorises the loops. */
static inline float exp_f(float x) {
    x = x > 88.0f ? 88.0f : (x < -87.0f ? -87.0f : x);
    float fx = floorf(x * 1.44269504088896341f + 0.5f);
    x = x - fx * 0.693359375f - fx * -2.12194440e-4f;
    float z = x * x;
    float y = ((((( 1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x
                + 4.1665795894e-2f) * x + 1.6666665459e-1f) * x + 5.0000001201e-1f) * z + x + 1.0f;
    int32_t e = ((int32_t)fx + 127) << 23;
    float s;
    memcpy(&s, &e, 4);
    return y * s;
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
 * Forward of one diagonal of L rows x N images.
 *   z   : (L*N, 5h) pre-activations (input + recurrent GEMMs); overwritten with the gates
 *         (g, o, i, f_c, f_r) after their nonlinearities.
 *   c,hh: (L*N, h) cell and hidden states of this diagonal (written).
 *   cin : rolling buffer from row lo, row stride N*kc: c_left at column cl, c_up at column cu.
 *   cout: rolling buffer for the next diagonal (same layout; may not alias cin).
 *   hb  : rolling buffer of recurrent GEMM inputs, row stride N*kb: h written at column hl
 *         (same row) and hu (next row); when ext, c also written at columns ecl / ecu.
 */
#define DEFINE_FWD(NAME, T, SIG, TANH)                                                           \
void NAME(int L, int N, int h, T *z, T *c, T *hh, const T *cin, T *cout, int kc, int cl, int cu, \
          T *hb, int kb, int hl, int hu, int ext, int ecl, int ecu, int nthreads) {              \
    const int64_t h5 = 5 * (int64_t)h;                                                            \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                           \
    for (int64_t q = 0; q < (int64_t)L * N; q++) {                                                \
        T *zq = z + q * h5;                                                                        \
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
        T *own = hb + q * kb, *below = hb + (q + N) * kb;                                          \
        T *cown = cout + q * kc, *cbelow = cout + (q + N) * kc;                                    \
        for (int k = 0; k < h; k++) {                                                              \
            own[hl + k] = hq[k]; below[hu + k] = hq[k];                                            \
            cown[cl + k] = cq[k]; cbelow[cu + k] = cq[k];                                          \
        }                                                                                          \
        if (ext) {                                                                                 \
            for (int k = 0; k < h; k++) { own[ecl + k] = cq[k]; below[ecu + k] = cq[k]; }          \
        }                                                                                          \
    }                                                                                              \
}

/*
 * Backward of one diagonal (rows lo..lo+L-1) given the gradients flowing back from the next
 * diagonal (rows nlo..nhi; nlo > nhi when there is none).
 *   z    : (L*N, 5h) gates from the forward; overwritten with dL/d(pre-activations).
 *   c, hh: (L*N, h) this diagonal's states;  gout: (L*N, h) gradient of the layer's output.
 *   cprev: previous diagonal's cell states (rows plo..phi), compact (row stride N*h); NULL if none.
 *   db   : (H+1, N, kb) full buffer: dL/d(recurrent inputs) of the next diagonal at its rows;
 *          dh_left at column hl, dh_up at hu, and when ext dc_left at ecl, dc_up at ecu.
 *   dcin : (H+1, N, 2h) full buffer, next diagonal's dc*f_c (columns 0..h) and dc*f_r (h..2h).
 *   dcout: same layout, written for this diagonal's rows (may not alias dcin).
 */
#define DEFINE_BWD(NAME, T)                                                                      \
void NAME(int L, int N, int h, int lo, T *z, const T *c, const T *hh, const T *gout,            \
          const T *cprev, int plo, int phi, const T *db, int kb, int hl, int hu, int ext,        \
          int ecl, int ecu, int nlo, int nhi, const T *dcin, T *dcout, int nthreads) {           \
    const int64_t h5 = 5 * (int64_t)h;                                                            \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                           \
    for (int64_t q = 0; q < (int64_t)L * N; q++) {                                                \
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
        T *zq = z + q * h5;                                                                        \
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
            zq[k] = dc * i * (1 - g * g);                                                          \
            zq[h + k] = dm * cv * o * (1 - o);                                                     \
            zq[2 * h + k] = dc * g * i * (1 - i);                                                  \
            zq[3 * h + k] = dc * clv * fc * (1 - fc);                                              \
            zq[4 * h + k] = dc * cuv * fr * (1 - fr);                                              \
            dco[k] = dc * fc;                                                                      \
            dco[h + k] = dc * fr;                                                                  \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_FWD(slstm_fwd_f32, float, sigmoid_f, tanh_f)
DEFINE_FWD(slstm_fwd_f64, double, sigmoid_d, tanh_d)
DEFINE_BWD(slstm_bwd_f32, float)
DEFINE_BWD(slstm_bwd_f64, double)

/* Accuracy probes for the tests. */
void probe_f32(int n, const float *x, float *tanh_out, float *sig_out) {
    for (int k = 0; k < n; k++) { tanh_out[k] = tanh_f(x[k]); sig_out[k] = sigmoid_f(x[k]); }
}
"""

_C_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-std=c99"]
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
    key = hashlib.sha256("\n".join([_C_SOURCE, cc, *_C_FLAGS, _cpu_signature()]).encode()).hexdigest()[:16]
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
            out = Path(tmp) / lib_path.name
            subprocess.run([cc, *_C_FLAGS, str(src), "-o", str(out), "-lm"], check=True, capture_output=True, timeout=120)
            os.replace(out, lib_path)  # atomic: concurrent builders never see a partial file
    lib = ctypes.CDLL(str(lib_path))
    i, p = ctypes.c_int, ctypes.c_void_p
    for name in ("slstm_fwd_f32", "slstm_fwd_f64"):
        getattr(lib, name).argtypes = [i, i, i, p, p, p, p, p, i, i, i, p, i, i, i, i, i, i, i]
        getattr(lib, name).restype = None
    for name in ("slstm_bwd_f32", "slstm_bwd_f64"):
        getattr(lib, name).argtypes = [i, i, i, i, p, p, p, p, p, i, i, p, i, i, i, i, i, i, i, i, p, p, i]
        getattr(lib, name).restype = None
    lib.probe_f32.argtypes = [i, p, p, p]
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
    """One SLSTM layer in diagonal-major layout: ``P x N x input`` -> ``P x N x hidden``."""

    @staticmethod
    def forward(ctx, xd, weight_in, weight_rec, bias, plan, extended, use_c):  # type: ignore[override]
        num_pix, n_img, _ = xd.shape
        h = weight_rec.shape[0] // 5
        k_rec = weight_rec.shape[1]
        height = plan.height
        # Gates buffer: input half of every gate as one GEMM over all pixels (plus the bias).
        gates = torch.addmm(bias, xd.reshape(num_pix * n_img, -1), weight_in.t()).view(num_pix, n_img, 5 * h)
        cells = xd.new_empty(num_pix, n_img, h)
        hidden = xd.new_empty(num_pix, n_img, h)
        # Rolling buffer of recurrent GEMM inputs [h_left, h_up(, c_left, c_up)] indexed by row
        # (+1 spare row); rows never written stay zero, which is the border of the grid.
        rec = xd.new_zeros(height + 1, n_img, k_rec)
        w_rec_t = weight_rec.t()
        if use_c:
            _fused_forward_c(plan, gates, cells, hidden, rec, w_rec_t, h, extended)
        else:
            _fused_forward_torch(plan, gates, cells, hidden, rec, w_rec_t, h, extended)
        ctx.save_for_backward(xd, weight_in, weight_rec, gates, cells, hidden)
        ctx.plan, ctx.extended, ctx.use_c = plan, extended, use_c
        ctx.mark_non_differentiable()
        return hidden

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hidden):  # type: ignore[override]
        xd, weight_in, weight_rec, gates, cells, hidden = ctx.saved_tensors
        plan, extended = ctx.plan, ctx.extended
        num_pix, n_img, h = hidden.shape
        grad_hidden = grad_hidden.contiguous()
        # The sweep overwrites the saved gates with dL/d(pre-activations); a second backward
        # through the same graph is refused by autograd (saved tensors are freed after the first).
        dz = gates
        if ctx.use_c:
            _fused_backward_c(plan, dz, cells, hidden, grad_hidden, weight_rec, h, extended)
        else:
            _fused_backward_torch(plan, dz, cells, hidden, grad_hidden, weight_rec, h, extended)
        dz2 = dz.view(num_pix * n_img, 5 * h)
        grad_x = grad_w_in = grad_w_rec = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (dz2 @ weight_in).view(num_pix, n_img, -1)
        if ctx.needs_input_grad[1]:
            grad_w_in = dz2.t() @ xd.reshape(num_pix * n_img, -1)
        if ctx.needs_input_grad[3]:
            grad_b = dz2.sum(0)
        if ctx.needs_input_grad[2]:
            grad_w_rec = _recurrent_weight_grad(plan, dz, hidden, cells, extended)
        return grad_x, grad_w_in, grad_w_rec, grad_b, None, None, None


def _recurrent_weight_grad(plan: _Plan, dz: torch.Tensor, hidden: torch.Tensor, cells: torch.Tensor, extended: bool):
    """``sum_pixels dz^T [h_left, h_up(, c_left, c_up)]`` as large GEMMs over chunks of pixels."""
    num_pix, n_img, h = hidden.shape
    zero = hidden.new_zeros(1, n_img, h)
    h_pad = torch.cat([hidden, zero])
    c_pad = torch.cat([cells, zero]) if extended else None
    k_rec = (4 if extended else 2) * h
    grad = dz.new_zeros(5 * h, k_rec)
    chunk = max(1, (1 << 16) // n_img)  # about 64k rows per GEMM bounds the temporary memory
    for p0 in range(0, num_pix, chunk):
        p1 = min(num_pix, p0 + chunk)
        left, up = plan.left[p0:p1], plan.up[p0:p1]
        parts = [h_pad.index_select(0, left), h_pad.index_select(0, up)]
        if extended:
            parts += [c_pad.index_select(0, left), c_pad.index_select(0, up)]
        rec = torch.cat(parts, -1).view(-1, k_rec)
        grad.addmm_(dz[p0:p1].reshape(-1, 5 * h).t(), rec)
    return grad


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _fused_forward_c(plan, gates, cells, hidden, rec, w_rec_t, h, extended):
    lib = c_kernels()
    fn = lib.slstm_fwd_f32 if gates.dtype == torch.float32 else lib.slstm_fwd_f64
    n_img = gates.shape[1]
    k_rec = rec.shape[2]
    # Rolling cell-state buffers [c_left, c_up] (ping-pong: the kernel reads one, writes the other).
    cbuf = [gates.new_zeros(plan.height + 1, n_img, 2 * h) for _ in range(2)]
    nthreads = torch.get_num_threads()
    isz = gates.element_size()
    g_row, s_row, r_row, c_row = n_img * 5 * h * isz, n_img * h * isz, n_img * k_rec * isz, n_img * 2 * h * isz
    g0, c0, h0, r0 = _ptr(gates), _ptr(cells), _ptr(hidden), _ptr(rec)
    ecl, ecu = (2 * h, 3 * h) if extended else (0, 0)
    for d, (off, lo, hi) in enumerate(plan.spans):
        rows = hi - lo + 1
        z = gates[off : off + rows].view(rows * n_img, 5 * h)
        if d > 0:
            z.addmm_(rec[lo : hi + 1].view(rows * n_img, k_rec), w_rec_t)
        cin, cout = cbuf[d % 2], cbuf[(d + 1) % 2]
        fn(rows, n_img, h, g0 + off * g_row, c0 + off * s_row, h0 + off * s_row,
           _ptr(cin) + lo * c_row, _ptr(cout) + lo * c_row, 2 * h, 0, h,
           r0 + lo * r_row, k_rec, 0, h, int(extended), ecl, ecu, nthreads)


def _fused_backward_c(plan, dz, cells, hidden, grad_hidden, weight_rec, h, extended):
    lib = c_kernels()
    fn = lib.slstm_bwd_f32 if dz.dtype == torch.float32 else lib.slstm_bwd_f64
    n_img = dz.shape[1]
    k_rec = weight_rec.shape[1]
    height = plan.height
    d_rec = dz.new_zeros(height + 1, n_img, k_rec)
    dcbuf = [dz.new_zeros(height + 1, n_img, 2 * h) for _ in range(2)]
    nthreads = torch.get_num_threads()
    isz = dz.element_size()
    g_row, s_row = n_img * 5 * h * isz, n_img * h * isz
    z0, c0, h0, go0 = _ptr(dz), _ptr(cells), _ptr(hidden), _ptr(grad_hidden)
    ecl, ecu = (2 * h, 3 * h) if extended else (0, 0)
    nlo, nhi = 1, 0  # rows of the next diagonal (none yet)
    steps = plan.steps
    for d in range(len(steps) - 1, -1, -1):
        off, lo, hi, prev = steps[d]
        rows = hi - lo + 1
        if prev is None:
            cprev, plo, phi = None, 1, 0
        else:
            cprev, plo, phi = c0 + prev[0] * s_row, prev[1], prev[2]
        dcin, dcout = dcbuf[d % 2], dcbuf[(d + 1) % 2]
        fn(rows, n_img, h, lo, z0 + off * g_row, c0 + off * s_row, h0 + off * s_row, go0 + off * s_row,
           cprev, plo, phi, _ptr(d_rec), k_rec, 0, h, int(extended), ecl, ecu, nlo, nhi,
           _ptr(dcin), _ptr(dcout), nthreads)
        if d > 0:
            torch.mm(dz[off : off + rows].view(rows * n_img, 5 * h), weight_rec,
                     out=d_rec[lo : hi + 1].view(rows * n_img, k_rec))
        nlo, nhi = lo, hi


def _fused_forward_torch(plan, gates, cells, hidden, rec, w_rec_t, h, extended):
    """Same sweep as the C kernel with torch ops (any device)."""
    n_img = gates.shape[1]
    k_rec = rec.shape[2]
    cbuf = rec[..., 2 * h :] if extended else gates.new_zeros(plan.height + 1, n_img, 2 * h)
    for d, (off, lo, hi) in enumerate(plan.spans):
        rows = hi - lo + 1
        z = gates[off : off + rows]
        if d > 0:
            z.view(rows * n_img, 5 * h).addmm_(rec[lo : hi + 1].view(rows * n_img, k_rec), w_rec_t)
        z[..., :h].tanh_()
        z[..., h:].sigmoid_()
        g, o, i, f_c, f_r = z.split(h, -1)
        c = torch.mul(g, i, out=cells[off : off + rows])
        c.addcmul_(cbuf[lo : hi + 1, :, :h], f_c).addcmul_(cbuf[lo : hi + 1, :, h:], f_r)
        hh = torch.mul(c, o, out=hidden[off : off + rows]).tanh_()
        rec[lo : hi + 1, :, :h] = hh
        rec[lo + 1 : hi + 2, :, h : 2 * h] = hh
        cbuf[lo : hi + 1, :, :h] = c
        cbuf[lo + 1 : hi + 2, :, h:] = c


def _fused_backward_torch(plan, dz, cells, hidden, grad_hidden, weight_rec, h, extended):
    n_img = dz.shape[1]
    k_rec = weight_rec.shape[1]
    height = plan.height
    # Gradients w.r.t. the recurrent inputs / cell contributions of the next diagonal, by row.
    # Two spare rows; rows the next diagonal does not cover are kept zero.
    d_rec = dz.new_zeros(height + 2, n_img, k_rec)
    d_cell = dz.new_zeros(height + 2, n_img, 2 * h)
    c_pad = torch.cat([cells, cells.new_zeros(1, n_img, h)])
    steps = plan.steps
    for d in range(len(steps) - 1, -1, -1):
        off, lo, hi, _ = steps[d]
        rows = hi - lo + 1
        sl = slice(off, off + rows)
        z = dz[sl]
        g, o, i, f_c, f_r = z.split(h, -1)
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
        new = torch.cat(
            [
                dc * i * (1 - g * g),
                dm * c * o * (1 - o),
                dc * g * i * (1 - i),
                dc * c_left * f_c * (1 - f_c),
                dc * c_up * f_r * (1 - f_r),
            ],
            -1,
        )
        z.copy_(new)
        d_cell[hi + 1].zero_()
        if lo > 0:
            d_cell[lo - 1].zero_()
        torch.mm(z.view(rows * n_img, 5 * h), weight_rec, out=d_rec[lo : hi + 1].view(rows * n_img, k_rec))
        d_rec[hi + 1].zero_()
        if lo > 0:
            d_rec[lo - 1].zero_()


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
        return from_diagonal(self.forward_diagonal(to_diagonal(x, plan), plan, impl), plan)

    def forward_diagonal(self, xd: torch.Tensor, plan: _Plan, impl: str = "fused") -> torch.Tensor:
        """The fused layer on diagonal-major inputs ``P x N x input_size`` (see :func:`to_diagonal`)."""
        use_c = _use_c(xd, force_torch=impl == "fused_torch")
        return _FusedSLSTM.apply(
            xd.contiguous(), self.weight_in, self.weight_rec, self.bias, plan, self.extended, use_c
        )

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
            xd = to_diagonal(x, plan)
            for layer in self.layers:
                xd = layer.forward_diagonal(xd, plan, impl)
            return from_diagonal(xd, plan)
        for layer in self.layers:
            x = layer(x, impl=impl)
        return x
