/* Spatial LSTM: fused pointwise kernels of one anti-diagonal, forward and backward (float32 and
 * float64); C-style code with C linkage, built by torch.utils.cpp_extension (build.py). Rows of a
 * diagonal are laid out as (row, image) pairs, q = r * N + n, each holding `h` contiguous units.
 * Where a GEMM pointer is passed (BLAS sgemm_/dgemm_ from torch's library), each OpenMP thread
 * also runs the diagonal's GEMM on its own rows. */
#include "fastmath.h"

typedef int (*set_threads_t)(int);
typedef void (*sgemm_t)(const char *, const char *, const int *, const int *, const int *, const float *,
                        const float *, const int *, const float *, const int *, const float *, float *, const int *);
typedef void (*dgemm_t)(const char *, const char *, const int *, const int *, const int *, const double *,
                        const double *, const int *, const double *, const int *, const double *, double *,
                        const int *);

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
 * With gemm, each thread also runs on its rows: drec = dz @ wrec when rec (the recurrent
 * inputs' gradient), and when gw is not NULL gw[t] += y^T dz (the weight gradient, transposed:
 * kall x 5h per thread, y the diagonal's GEMM inputs with row length kall) while dz is in cache.
 */
#define DEFINE_BWD(NAME, T, GEMM)                                                                \
void NAME(int L, int N, int h, int lo, const T *z, T *dz, const T *c, const T *hh, const T *gout, \
          const T *cprev, int plo, int phi, const T *db, int kb, int hl, int hu, int ext,        \
          int ecl, int ecu, int nlo, int nhi, const T *dcin, T *dcout, T *dbias, int nthreads,    \
          GEMM gemm, set_threads_t set_threads, const T *wrec, T *drec, int rec, const T *y,     \
          int kall, T *gw) {                                                                       \
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
    if (gemm && (rec || gw) && q1 > q0) {                                                         \
        int m = (int)(q1 - q0), n5 = 5 * h, prev = set_threads ? set_threads(1) : 0;              \
        T one = 1, zero = 0;                                                                       \
        /* drec[q0:q1] = dz[q0:q1] @ wrec (wrec: 5h x kb row-major) on this thread's rows */        \
        if (rec) gemm("N", "N", &kb, &m, &n5, &one, wrec, &kb, dz + q0 * h5, &n5, &zero, drec + q0 * kb, &kb); \
        /* gw[t] (kall x 5h row-major) += y[q0:q1]^T dz[q0:q1] */                                    \
        if (gw) gemm("N", "T", &n5, &kall, &m, &one, dz + q0 * h5, &n5, y + q0 * kall, &kall, &one,  \
                     gw + (int64_t)t * kall * h5, &n5);                                             \
        if (set_threads) set_threads(prev);                                                        \
    }                                                                                              \
    }                                                                                              \
}

extern "C" {
DEFINE_FWD(slstm_fwd_f32, float, sigmoid_f, tanh_f, sgemm_t)
DEFINE_FWD(slstm_fwd_f64, double, sigmoid_d, tanh_d, dgemm_t)
DEFINE_BWD(slstm_bwd_f32, float, sgemm_t)
DEFINE_BWD(slstm_bwd_f64, double, dgemm_t)

/* Accuracy probes for the tests. */
void probe_f32(int n, const float *x, float *tanh_out, float *sig_out) {
    for (int k = 0; k < n; k++) { tanh_out[k] = tanh_f(x[k]); sig_out[k] = sigmoid_f(x[k]); }
}
}
