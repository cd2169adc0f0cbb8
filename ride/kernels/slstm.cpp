/* Spatial LSTM: fused pointwise kernels of one anti-diagonal, forward and backward (float32 and
 * float64), and sweeps that run every diagonal in one call; exported with C linkage, built by
 * torch.utils.cpp_extension (build.py). Rows of a diagonal are laid out as (row, image) pairs,
 * q = r * N + n, each holding `h` contiguous units. Where a GEMM pointer is passed (BLAS
 * sgemm_/dgemm_ from torch's library), each OpenMP thread also runs the diagonal's GEMM on its
 * own rows. */
#include "fastmath.h"

typedef int (*set_threads_t)(int);
typedef void (*sgemm_t)(const char *, const char *, const int *, const int *, const int *, const float *,
                        const float *, const int *, const float *, const int *, const float *, float *, const int *);
typedef void (*dgemm_t)(const char *, const char *, const int *, const int *, const int *, const double *,
                        const double *, const int *, const double *, const int *, const double *, double *,
                        const int *);

template <typename T> struct Ops;
template <> struct Ops<float> {
    typedef sgemm_t gemm_t;
    static inline float sig(float x) { return sigmoid_f(x); }
    static inline float th(float x) { return tanh_f(x); }
};
template <> struct Ops<double> {
    typedef dgemm_t gemm_t;
    static inline double sig(double x) { return sigmoid_d(x); }
    static inline double th(double x) { return tanh_d(x); }
};

/* This thread's share [q0, q1) of a diagonal's `total` rows. */
static inline void share(int64_t total, int t, int nt, int64_t *q0, int64_t *q1) {
    *q0 = total * t / nt;
    *q1 = total * (t + 1) / nt;
}

/*
 * Forward of rows q0..q1-1 of one diagonal of L rows (lo..lo+L-1) x N images.
 *   z   : (L*N, 5h) pre-activations (input + recurrent GEMMs); overwritten with the gates
 *         (g, o, i, f_c, f_r) after their nonlinearities. With gemm, z = y w^T (+ bias) is
 *         formed here first (y: the diagonal's GEMM inputs, row length kall; w: 5h x kall).
 *   c,hh: (L*N, h) cell and hidden states of this diagonal (written).
 *   cin : c_left at column cl and c_up at column cu of this diagonal's rows (row stride N*kc).
 *   cout: when not NULL, c is written there for the next diagonal (same layout as cin, rows
 *         from lo, c at column cl of the same row and cu of the next row; may not alias cin).
 *   nxt : the next diagonal's recurrent GEMM input [h_left, h_up(, c_left, c_up)], rows nlo..nhi
 *         (row stride N*kb), or NULL. Every entry of it is written (zeros on the grid border).
 */
template <typename T>
static void fwd_rows(int64_t q0, int64_t q1, int L, int N, int h, int lo, T *z, T *c, T *hh, const T *cin,
                     int kc, int cl, int cu, T *cout, T *nxt, int kb, int nlo, int nhi, int ext,
                     typename Ops<T>::gemm_t gemm, const T *y, const T *w, int kall, const T *bias) {
    const int64_t h5 = 5 * (int64_t)h;
    if (gemm && q1 > q0) {
        /* z[q0:q1] = y[q0:q1] @ w^T on this thread's rows (column-major BLAS: z^T = w y^T) */
        int m = (int)(q1 - q0), n5 = 5 * h;
        T one = 1, zero = 0;
        gemm("T", "N", &n5, &m, &kall, &one, w, &kall, y + q0 * kall, &kall, &zero, z + q0 * h5, &n5);
    }
    for (int64_t q = q0; q < q1; q++) {
        const int r = lo + (int)(q / N), n = (int)(q % N);
        T *zq = z + q * h5;
        if (bias) {
#pragma omp simd
            for (int k = 0; k < 5 * h; k++) zq[k] += bias[k];
        }
        const T *cl_ = cin + q * kc + cl, *cu_ = cin + q * kc + cu;
        T *cq = c + q * h, *hq = hh + q * h;
#pragma omp simd
        for (int k = 0; k < h; k++) {
            T g = Ops<T>::th(zq[k]);
            T o = Ops<T>::sig(zq[h + k]);
            T i = Ops<T>::sig(zq[2 * h + k]);
            T fc = Ops<T>::sig(zq[3 * h + k]);
            T fr = Ops<T>::sig(zq[4 * h + k]);
            zq[k] = g; zq[h + k] = o; zq[2 * h + k] = i; zq[3 * h + k] = fc; zq[4 * h + k] = fr;
            T cv = g * i + cl_[k] * fc + cu_[k] * fr;
            cq[k] = cv;
            hq[k] = Ops<T>::th(cv * o);
        }
        if (cout) {
            T *cown = cout + q * kc + cl, *cbelow = cout + (q + N) * kc + cu;
            for (int k = 0; k < h; k++) { cown[k] = cq[k]; cbelow[k] = cq[k]; }
        }
        if (nxt) {
            if (r >= nlo && r <= nhi) {
                T *dst = nxt + ((int64_t)(r - nlo) * N + n) * kb;
                for (int k = 0; k < h; k++) dst[k] = hq[k];
                if (ext) for (int k = 0; k < h; k++) dst[2 * h + k] = cq[k];
            }
            if (r + 1 >= nlo && r + 1 <= nhi) {
                T *dst = nxt + ((int64_t)(r + 1 - nlo) * N + n) * kb;
                for (int k = 0; k < h; k++) dst[h + k] = hq[k];
                if (ext) for (int k = 0; k < h; k++) dst[3 * h + k] = cq[k];
            }
            /* Border: the next diagonal's cell in column 0 has no left, the one in row 0 no up. */
            if (r == lo + L - 1 && r + 1 == nhi) {
                T *dst = nxt + ((int64_t)(nhi - nlo) * N + n) * kb;
                for (int k = 0; k < h; k++) dst[k] = 0;
                if (ext) for (int k = 0; k < h; k++) dst[2 * h + k] = 0;
            }
            if (r == lo && nlo == 0) {
                T *dst = nxt + (int64_t)n * kb;
                for (int k = 0; k < h; k++) dst[h + k] = 0;
                if (ext) for (int k = 0; k < h; k++) dst[3 * h + k] = 0;
            }
        }
    }
}

/*
 * Backward of rows q0..q1-1 of one diagonal (rows lo..lo+L-1) given the gradients flowing back
 * from the next diagonal (rows nlo..nhi; nlo > nhi when there is none).
 *   z    : (L*N, 5h) gates from the forward;  dz: (L*N, 5h) dL/d(pre-activations) (written).
 *   c, hh: (L*N, h) this diagonal's states;  gout: (L*N, h) gradient of the layer's output.
 *   cprev: previous diagonal's cell states (rows plo..phi), compact (row stride N*h); NULL if none.
 *   db   : (H+1, N, kb) full buffer: dL/d(recurrent inputs) of the next diagonal at its rows;
 *          dh_left at column hl, dh_up at hu, and when ext dc_left at ecl, dc_up at ecu.
 *   dcin : (H+1, N, 2h) full buffer, next diagonal's dc*f_c (columns 0..h) and dc*f_r (h..2h).
 *   dcout: same layout, written for this diagonal's rows (may not alias dcin).
 *   acc  : this thread's sums of dz (the bias gradient, 5h).
 * With gemm, also on these rows: drec = dz @ wrec when rec (the recurrent inputs' gradient),
 * and when gw is not NULL gw += y^T dz (this thread's weight gradient, transposed: kall x 5h, y
 * the diagonal's GEMM inputs with row length kall) while dz is in cache.
 */
template <typename T>
static void bwd_rows(int64_t q0, int64_t q1, int N, int h, int lo, const T *z, T *dz, const T *c, const T *hh,
                     const T *gout, const T *cprev, int plo, int phi, const T *db, int kb, int hl, int hu,
                     int ext, int ecl, int ecu, int nlo, int nhi, const T *dcin, T *dcout, T *acc,
                     typename Ops<T>::gemm_t gemm, const T *wrec, T *drec, int rec, const T *y, int kall, T *gw) {
    const int64_t h5 = 5 * (int64_t)h;
    for (int64_t q = q0; q < q1; q++) {
        const int r = lo + (int)(q / N), n = (int)(q % N);
        const int same = (r >= nlo && r <= nhi), below = (r + 1 >= nlo && r + 1 <= nhi);
        const int has_left = cprev && r >= plo && r <= phi;
        const int has_up = cprev && r - 1 >= plo && r - 1 <= phi;
        const T *dbs = db + ((int64_t)r * N + n) * kb, *dbb = db + ((int64_t)(r + 1) * N + n) * kb;
        const T *dcs = dcin + ((int64_t)r * N + n) * 2 * h;
        const T *dcb = dcin + ((int64_t)(r + 1) * N + n) * 2 * h;
        const T *cl_ = has_left ? cprev + ((int64_t)(r - plo) * N + n) * h : c;
        const T *cu_ = has_up ? cprev + ((int64_t)(r - 1 - plo) * N + n) * h : c;
        const T ml = has_left ? 1 : 0, mu = has_up ? 1 : 0;
        const T ms = same ? 1 : 0, mb = below ? 1 : 0, me = ext ? 1 : 0;
        const int ecl_ = ext ? ecl : 0, ecu_ = ext ? ecu : 0;
        const T *zq = z + q * h5;
        T *dzq = dz + q * h5;
        const T *cq = c + q * h, *hq = hh + q * h, *gq = gout + q * h;
        T *dco = dcout + ((int64_t)r * N + n) * 2 * h;
#pragma omp simd
        for (int k = 0; k < h; k++) {
            T dh = gq[k] + ms * dbs[hl + k] + mb * dbb[hu + k];
            T dc = ms * dcs[k] + mb * dcb[h + k] + me * (ms * dbs[ecl_ + k] + mb * dbb[ecu_ + k]);
            T g = zq[k], o = zq[h + k], i = zq[2 * h + k], fc = zq[3 * h + k], fr = zq[4 * h + k];
            T t = hq[k], cv = cq[k];
            T dm = dh * (1 - t * t);
            dc += dm * o;
            T clv = ml * cl_[k], cuv = mu * cu_[k];
            T zg = dc * i * (1 - g * g), zo = dm * cv * o * (1 - o), zi = dc * g * i * (1 - i);
            T zc = dc * clv * fc * (1 - fc), zr = dc * cuv * fr * (1 - fr);
            dzq[k] = zg; dzq[h + k] = zo; dzq[2 * h + k] = zi; dzq[3 * h + k] = zc; dzq[4 * h + k] = zr;
            acc[k] += zg; acc[h + k] += zo; acc[2 * h + k] += zi; acc[3 * h + k] += zc; acc[4 * h + k] += zr;
            dco[k] = dc * fc;
            dco[h + k] = dc * fr;
        }
    }
    if (gemm && (rec || gw) && q1 > q0) {
        int m = (int)(q1 - q0), n5 = 5 * h;
        T one = 1, zero = 0;
        /* drec[q0:q1] = dz[q0:q1] @ wrec (wrec: 5h x kb row-major) on this thread's rows */
        if (rec) gemm("N", "N", &kb, &m, &n5, &one, wrec, &kb, dz + q0 * h5, &n5, &zero, drec + q0 * kb, &kb);
        /* gw (kall x 5h row-major) += y[q0:q1]^T dz[q0:q1] */
        if (gw) gemm("N", "T", &n5, &kall, &m, &one, dz + q0 * h5, &n5, y + q0 * kall, &kall, &one, gw, &n5);
    }
}

/* One diagonal without the GEMMs (the caller formed z, bias included): the paths without BLAS
 * pointers and inference. Arguments as fwd_rows' and bwd_rows', for all L*N rows; dbias holds one
 * row of 5h sums per thread. */
template <typename T>
static void fwd_diagonal(int L, int N, int h, int lo, T *z, T *c, T *hh, const T *cin, int kc, int cl, int cu,
                         T *cout, T *nxt, int kb, int nlo, int nhi, int ext, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        int64_t q0, q1;
        share((int64_t)L * N, omp_get_thread_num(), omp_get_num_threads(), &q0, &q1);
        fwd_rows<T>(q0, q1, L, N, h, lo, z, c, hh, cin, kc, cl, cu, cout, nxt, kb, nlo, nhi, ext, 0, 0, 0, 0, 0);
    }
}

template <typename T>
static void bwd_diagonal(int L, int N, int h, int lo, const T *z, T *dz, const T *c, const T *hh, const T *gout,
                         const T *cprev, int plo, int phi, const T *db, int kb, int hl, int hu, int ext, int ecl,
                         int ecu, int nlo, int nhi, const T *dcin, T *dcout, T *dbias, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num();
        int64_t q0, q1;
        share((int64_t)L * N, t, omp_get_num_threads(), &q0, &q1);
        bwd_rows<T>(q0, q1, N, h, lo, z, dz, c, hh, gout, cprev, plo, phi, db, kb, hl, hu, ext, ecl, ecu, nlo, nhi,
                    dcin, dcout, dbias + (int64_t)t * 5 * h, 0, 0, 0, 0, 0, 0, 0);
    }
}

/*
 * The whole forward sweep in one parallel region (the threads meet at a barrier after every
 * diagonal instead of returning to Python), with gemm (required). spans: D x (offset, lo, hi)
 * of the diagonals. gates (P*N, 5h), cells and hidden (P*N, h), inputs (P*N, kall): the GEMM
 * inputs [x (size_in), recurrent part], whose recurrent part of the first pixel the caller
 * zeroed. cb0, cb1: (H+1, N, 2h) zeroed ping-pong [c_left, c_up] buffers (not extended; with
 * ext, c_left and c_up are read from the GEMM inputs). w: 5h x kall, bias: 5h.
 */
template <typename T>
static void fwd_sweep(int D, const int *spans, int N, int h, int ext, T *gates, T *cells, T *hidden, T *inputs,
                      int size_in, int kall, T *cb0, T *cb1, const T *w, const T *bias, int nthreads,
                      typename Ops<T>::gemm_t gemm, set_threads_t set_threads) {
    const int64_t h5 = 5 * (int64_t)h, c_row = 2 * (int64_t)h * N;
#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int prev = set_threads ? set_threads(1) : 0;
        for (int d = 0; d < D; d++) {
            const int off = spans[3 * d], lo = spans[3 * d + 1], L = spans[3 * d + 2] - lo + 1;
            int64_t q0, q1;
            share((int64_t)L * N, t, nt, &q0, &q1);
            T *y = inputs + (int64_t)off * N * kall;
            const T *cin;
            T *cout;
            int kc, cl, cu;
            if (ext) {
                cin = y + size_in, cout = 0, kc = kall, cl = 2 * h, cu = 3 * h;
            } else {
                T *cur = d % 2 ? cb1 : cb0, *nxt_c = d % 2 ? cb0 : cb1;
                cin = cur + lo * c_row, cout = nxt_c + lo * c_row, kc = 2 * h, cl = 0, cu = h;
            }
            T *nxt = 0;
            int nlo = 1, nhi = 0;
            if (d + 1 < D) {
                nxt = inputs + (int64_t)spans[3 * d + 3] * N * kall + size_in;
                nlo = spans[3 * d + 4], nhi = spans[3 * d + 5];
            }
            fwd_rows<T>(q0, q1, L, N, h, lo, gates + (int64_t)off * N * h5, cells + (int64_t)off * N * h,
                        hidden + (int64_t)off * N * h, cin, kc, cl, cu, cout, nxt, kall, nlo, nhi, ext, gemm, y, w,
                        kall, bias);
#pragma omp barrier
        }
        if (set_threads) set_threads(prev);
    }
}

/*
 * The backward sweep over diagonals d_last down to d_first in one parallel region, with gemm
 * (required). Buffers as the Python sweep keeps them: dz of the chunk's diagonals in dzbuf from
 * pixel offset p0 on; ping-pong dL/d(recurrent inputs) dr0/dr1 ((H+1, N, kb), diagonal d reads
 * dr[(d+1)%2], writes dr[d%2]) and dc0/dc1 ((H+1, N, 2h), reads dc[d%2], writes dc[(d+1)%2]).
 * gout: (P*N, h) gradient of the layer's output; wrec: 5h x kb; dbias: one row of 5h sums per
 * thread; gw: one kall x 5h weight-gradient block per thread (with inputs, the GEMM inputs
 * (P*N, kall)), or NULL. dz_fixed: every diagonal's dz goes to the start of dzbuf (sized for the
 * longest diagonal) instead of its own rows, where nothing reads dz after its diagonal's GEMMs: the
 * same cache lines each diagonal, not a fresh stretch of a chunk-sized buffer.
 */
template <typename T>
static void bwd_sweep(int D, const int *spans, int d_first, int d_last, int p0, int N, int h, int ext,
                      const T *gates, T *dzbuf, const T *cells, const T *hidden, const T *gout, T *dr0, T *dr1,
                      int kb, T *dc0, T *dc1, T *dbias, int nthreads, typename Ops<T>::gemm_t gemm,
                      set_threads_t set_threads, const T *wrec, const T *inputs, int kall, T *gw, int dz_fixed) {
    const int64_t h5 = 5 * (int64_t)h, s_row = (int64_t)h * N;
    const int ecl = ext ? 2 * h : 0, ecu = ext ? 3 * h : 0;
#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int prev = set_threads ? set_threads(1) : 0;
        T *acc = dbias + (int64_t)t * h5, *gwt = gw ? gw + (int64_t)t * kall * h5 : (T *)0;
        for (int d = d_last; d >= d_first; d--) {
            const int off = spans[3 * d], lo = spans[3 * d + 1], L = spans[3 * d + 2] - lo + 1;
            int64_t q0, q1;
            share((int64_t)L * N, t, nt, &q0, &q1);
            const T *cprev = 0;
            int plo = 1, phi = 0;
            if (d > 0) cprev = cells + spans[3 * d - 3] * s_row, plo = spans[3 * d - 2], phi = spans[3 * d - 1];
            int nlo = 1, nhi = 0;
            if (d + 1 < D) nlo = spans[3 * d + 4], nhi = spans[3 * d + 5];
            T *d_in = d % 2 ? dr0 : dr1, *d_out = d % 2 ? dr1 : dr0;
            T *dcin = d % 2 ? dc1 : dc0, *dcout = d % 2 ? dc0 : dc1;
            bwd_rows<T>(q0, q1, N, h, lo, gates + (int64_t)off * N * h5, dzbuf + (dz_fixed ? 0 : (int64_t)(off - p0) * N * h5),
                        cells + off * s_row, hidden + off * s_row, gout + off * s_row, cprev, plo, phi, d_in, kb,
                        0, h, ext, ecl, ecu, nlo, nhi, dcin, dcout, acc, gemm, wrec, d_out + (int64_t)lo * N * kb,
                        d > 0, gw ? inputs + (int64_t)off * N * kall : inputs, kall, gwt);
#pragma omp barrier
        }
        if (set_threads) set_threads(prev);
    }
}

/* Pixels of a plan of D diagonals: the last diagonal's offset plus its length. */
static inline int64_t plan_pixels(int D, const int *spans) {
    return (int64_t)spans[3 * (D - 1)] + spans[3 * (D - 1) + 2] - spans[3 * (D - 1) + 1] + 1;
}

/*
 * Image groups: G groups of N images each, laid out one after another (G x P x N x ...), one
 * group's whole sweep per thread and no barrier between diagonals; the buffers of fwd_sweep and
 * bwd_sweep carry one block per group, `cstride` (fwd: cb0, cb1), `dzs`, `drs`, `dcs` (bwd: dzbuf,
 * dr0/dr1, dc0/dc1) elements apart; dbias and gw one row / block per group. G == 1 is the plain
 * sweep on `nthreads` threads. The sweeps inside run as nested teams of one thread.
 */
template <typename T>
static void fwd_sweep_groups(int G, int D, const int *spans, int N, int h, int ext, T *gates, T *cells, T *hidden,
                             T *inputs, int size_in, int kall, T *cb0, T *cb1, int64_t cstride, const T *w,
                             const T *bias, int nthreads, typename Ops<T>::gemm_t gemm, set_threads_t set_threads) {
    if (G == 1) {
        fwd_sweep<T>(D, spans, N, h, ext, gates, cells, hidden, inputs, size_in, kall, cb0, cb1, w, bias, nthreads,
                     gemm, set_threads);
        return;
    }
    const int64_t ps = plan_pixels(D, spans) * N;
#pragma omp parallel for num_threads(nthreads < G ? nthreads : G) schedule(dynamic, 1)
    for (int g = 0; g < G; g++)
        fwd_sweep<T>(D, spans, N, h, ext, gates + g * ps * 5 * h, cells + g * ps * h, hidden + g * ps * h,
                     inputs + g * ps * kall, size_in, kall, cb0 ? cb0 + g * cstride : cb0,
                     cb1 ? cb1 + g * cstride : cb1, w, bias, 1, gemm, set_threads);
}

template <typename T>
static void bwd_sweep_groups(int G, int D, const int *spans, int d_first, int d_last, int p0, int N, int h, int ext,
                             const T *gates, T *dzbuf, int64_t dzs, const T *cells, const T *hidden, const T *gout,
                             T *dr0, T *dr1, int64_t drs, int kb, T *dc0, T *dc1, int64_t dcs, T *dbias,
                             int nthreads, typename Ops<T>::gemm_t gemm, set_threads_t set_threads, const T *wrec,
                             const T *inputs, int kall, T *gw, int dz_fixed) {
    if (G == 1) {
        bwd_sweep<T>(D, spans, d_first, d_last, p0, N, h, ext, gates, dzbuf, cells, hidden, gout, dr0, dr1, kb, dc0,
                     dc1, dbias, nthreads, gemm, set_threads, wrec, inputs, kall, gw, dz_fixed);
        return;
    }
    const int64_t ps = plan_pixels(D, spans) * N, h5 = 5 * (int64_t)h;
#pragma omp parallel for num_threads(nthreads < G ? nthreads : G) schedule(dynamic, 1)
    for (int g = 0; g < G; g++)
        bwd_sweep<T>(D, spans, d_first, d_last, p0, N, h, ext, gates + g * ps * h5, dzbuf + g * dzs,
                     cells + g * ps * h, hidden + g * ps * h, gout + g * ps * h, dr0 + g * drs, dr1 + g * drs, kb,
                     dc0 + g * dcs, dc1 + g * dcs, dbias + g * h5, 1, gemm, set_threads, wrec,
                     inputs ? inputs + g * ps * kall : inputs, kall, gw ? gw + g * kall * h5 : gw, dz_fixed);
}

#define EXPORT(T, SUF)                                                                               \
void slstm_fwd_##SUF(int L, int N, int h, int lo, T *z, T *c, T *hh, const T *cin, int kc, int cl, int cu, \
                     T *cout, T *nxt, int kb, int nlo, int nhi, int ext, int nthreads) {               \
    fwd_diagonal<T>(L, N, h, lo, z, c, hh, cin, kc, cl, cu, cout, nxt, kb, nlo, nhi, ext, nthreads);  \
}                                                                                                      \
void slstm_bwd_##SUF(int L, int N, int h, int lo, const T *z, T *dz, const T *c, const T *hh, const T *gout, \
                     const T *cprev, int plo, int phi, const T *db, int kb, int hl, int hu, int ext, int ecl, \
                     int ecu, int nlo, int nhi, const T *dcin, T *dcout, T *dbias, int nthreads) {      \
    bwd_diagonal<T>(L, N, h, lo, z, dz, c, hh, gout, cprev, plo, phi, db, kb, hl, hu, ext, ecl, ecu, nlo, nhi, \
                    dcin, dcout, dbias, nthreads);                                                     \
}                                                                                                      \
void slstm_fwd_sweep_##SUF(int G, int D, const int *spans, int N, int h, int ext, T *gates, T *cells,     \
                           T *hidden, T *inputs, int size_in, int kall, T *cb0, T *cb1, int64_t cstride,   \
                           const T *w, const T *bias, int nthreads, Ops<T>::gemm_t gemm,                 \
                           set_threads_t set_threads) {                                                \
    fwd_sweep_groups<T>(G, D, spans, N, h, ext, gates, cells, hidden, inputs, size_in, kall, cb0, cb1,   \
                        cstride, w, bias, nthreads, gemm, set_threads);                                \
}                                                                                                      \
void slstm_bwd_sweep_##SUF(int G, int D, const int *spans, int d_first, int d_last, int p0, int N, int h, \
                           int ext, const T *gates, T *dzbuf, int64_t dzs, const T *cells, const T *hidden, \
                           const T *gout, T *dr0, T *dr1, int64_t drs, int kb, T *dc0, T *dc1, int64_t dcs, \
                           T *dbias, int nthreads, Ops<T>::gemm_t gemm, set_threads_t set_threads,       \
                           const T *wrec, const T *inputs, int kall, T *gw, int dz_fixed) {              \
    bwd_sweep_groups<T>(G, D, spans, d_first, d_last, p0, N, h, ext, gates, dzbuf, dzs, cells, hidden, gout, \
                        dr0, dr1, drs, kb, dc0, dc1, dcs, dbias, nthreads, gemm, set_threads, wrec, inputs, \
                        kall, gw, dz_fixed);                                                           \
}

extern "C" {
EXPORT(float, f32)
EXPORT(double, f64)

/* Accuracy probes for the tests. */
void probe_f32(int n, const float *x, float *tanh_out, float *sig_out) {
    for (int k = 0; k < n; k++) { tanh_out[k] = tanh_f(x[k]); sig_out[k] = sigmoid_f(x[k]); }
}
}
