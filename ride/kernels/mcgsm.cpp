/* Factorized MCGSM: its K x S mixture part, forward and backward, one pixel per row (C-style code
 * with C linkage, built by torch.utils.cpp_extension: ride/kernels/build.py). */
#include "fastmath.h"

typedef int (*mcgsm_set_threads_t)(int);
typedef void (*mcgsm_sgemm_t)(const char *, const char *, const int *, const int *, const int *, const float *,
                              const float *, const int *, const float *, const int *, const float *, float *,
                              const int *);
typedef void (*mcgsm_dgemm_t)(const char *, const char *, const int *, const int *, const int *, const double *,
                              const double *, const int *, const double *, const int *, const double *, double *,
                              const int *);

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


/*
 * Value and parameter gradient of sum_m log p(y_m | h_m) on fixed inputs (L-BFGS refinement), in
 * one pass over row blocks of `block` pixels: per block five BLAS GEMMs (column-major calls on
 * row-major arrays) and a mixture loop over the rows that computes each row's 2 K S exps once.
 *   h: M x D inputs, y: M outputs, both: D x (F+K) = [features | predictors], w2: K x F = weights^2,
 *   eta, nh, cst: S x K (scale-major, so that the loops over components are contiguous and the
 *   per-component e_c, r_c need no broadcast copies), otherwise as in DEFINE_MCGSM.
 *   work: nthreads x mcgsm_nll_grad_work(...) scratch elements of type T.
 *   acc: groups x (1 + 2KS + KF + D(F+K)) float64, zeroed by the caller, groups =
 *   mcgsm_nll_grad_groups(M, block): the blocks fall into that many runs of consecutive blocks,
 *   which the threads claim one at a time (a thread slowed by the machine takes fewer); run g
 *   adds [sum log p, d/deta (S x K), d/dalpha (S x K), sum_m de_mc f_mn^2 (K x F), d/dboth
 *   (D x (F+K))] to row g, block after block. Blocks are summed in T and added to the float64
 *   rows, so float32 sums of many pixels keep float64 accuracy across blocks; the sums do not
 *   depend on which thread ran a run, nor on the number of threads.
 * Training (mcgsm_train_*): gw weights row m's log p (NULL: 1), lp receives every row's log p,
 * grad = 0 stops after the values, dh (M x D) and dy (M) receive the rows' input gradients.
 */
/* Rows go through the mixture loop in groups of MCGSM_PIX, phase by phase (maxima, exps and sums,
 * logs, gradients): each row's phases form one dependency chain, and the group's independent chains
 * overlap (4: 5-10 % faster than one row at a time, same arithmetic; 2-8 about alike). */
#define MCGSM_PIX 4
#define MCGSM_GROUPS 16
static inline int64_t mcgsm_nll_grad_groups_(int64_t M, int block) {
    const int64_t nblocks = (M + block - 1) / block;
    return nblocks < MCGSM_GROUPS ? nblocks : MCGSM_GROUPS;
}
/* First block of run g of G: runs shrink towards the end (the first 1 - (1 - g/G)^2 of the blocks
 * before run g), so that the threads finish close together. */
static inline int64_t mcgsm_group_start_(int64_t nblocks, int64_t G, int64_t g) {
    const int64_t rest = G - g;
    return nblocks - (nblocks * rest * rest) / (G * G);
}
static inline int64_t mcgsm_nll_grad_work_(int block, int D, int K, int S, int F) {
    const int64_t N = F + K, KS = (int64_t)K * S;
    return (block * (2 * N + F + 2 * K) + (2 * MCGSM_PIX + 2) * KS + 2 * MCGSM_PIX * K + K * F + D * N + 15) / 16
           * 16;  /* 64-byte multiple */
}
/* Flush-to-zero and denormals-are-zero for one thread while it runs the kernel (restored after):
 * far in the tails, posteriors times e^alpha products go subnormal, and each subnormal operation
 * costs ~100 cycles (float32 L-BFGS ran 3x slower once parameters had moved). Values below
 * 1e-38 (float32) / 1e-308 (float64) change nothing at the tolerances of the tests. */
#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>
static inline unsigned mcgsm_ftz_on_(void) { unsigned csr = _mm_getcsr(); _mm_setcsr(csr | 0x8040u); return csr; }
static inline void mcgsm_ftz_off_(unsigned csr) { _mm_setcsr(csr); }
#else
static inline unsigned mcgsm_ftz_on_(void) { return 0; }
static inline void mcgsm_ftz_off_(unsigned csr) { (void)csr; }
#endif
/* e^x for the kernel's arguments, all <= 0 (minus a maximum): float32 exp_f; float64 exp_d without
 * the upper clamp and the final select (below -708 it returns e^-708 ~ 3e-308, not 0: nothing
 * next to the sums' largest term, 1). */
static inline float mcgsm_exp_(float x) { return exp_f(x); }
static inline double mcgsm_exp_(double x) { return exp_d_core(x < -708.0 ? -708.0 : x); }
static inline float mcgsm_log_(float x) { return logf(x); }
static inline double mcgsm_log_(double x) { return log(x); }
/* log p = lse(joint) - lse(gate) = ((mj - mg) + log sj) - log sg, in this order whatever
 * -funsafe-math-optimizations would reassociate (the volatiles pin it), so that the values do not
 * depend on the code around the call. */
template <typename T>
static inline T mcgsm_lp_(T mj, T mg, T sj, T sg) {
    volatile T d = mj - mg;
    volatile T a = d + mcgsm_log_(sj);
    return a - mcgsm_log_(sg);
}
/* loss + w log p, rounded product then sum, one row after the other: the row groups' unrolled
 * loop would otherwise let the compiler add the group's terms first (another rounding). */
template <typename T>
static inline T mcgsm_add_(T loss, T term) {
    volatile T t = term;
    volatile T sum = loss + t;
    return sum;
}

template <typename T, typename GEMM>
static void mcgsm_nll_grad_(int64_t M, int D, int K, int S, int F, const T *h, const T *y, const T *both,
                            const T *w2, const T *__restrict__ eta, const T *__restrict__ nh,
                            const T *__restrict__ cst, double *acc, T *work, int block, int nthreads, GEMM gemm,
                            mcgsm_set_threads_t set_threads, const T *gw, T *lp, int grad, T *dh, T *dy) {
    const int KS = K * S, N = F + K;
    const int64_t nacc = 1 + 2 * (int64_t)KS + (int64_t)K * F + (int64_t)D * N;
    const int64_t nblocks = (M + block - 1) / block, groups = mcgsm_nll_grad_groups_(M, block);
#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num();
        /* scratch: FM, DFM (block x N), F2 (block x F), E, DE (block x K), G, J (MCGSM_PIX x KS), AE, AA (KS),
         * Rc, Dc (MCGSM_PIX x K), dW (K x F), dB (D x N) */
        T *buf = work + (size_t)t * mcgsm_nll_grad_work_(block, D, K, S, F);
        T *FM = buf, *DFM = FM + (size_t)block * N, *F2 = DFM + (size_t)block * N;
        T *E = F2 + (size_t)block * F, *DE = E + (size_t)block * K;
        T *__restrict__ G = DE + (size_t)block * K;
        T *__restrict__ J = G + (size_t)MCGSM_PIX * KS;
        T *__restrict__ AE = J + (size_t)MCGSM_PIX * KS;
        T *__restrict__ AA = AE + KS;
        T *__restrict__ Rc = AA + KS;
        T *__restrict__ Dc = Rc + MCGSM_PIX * K;
        T *dW = Dc + MCGSM_PIX * K, *dB = dW + (size_t)K * F;
        const int prev = set_threads ? set_threads(1) : 0;
        const unsigned csr = mcgsm_ftz_on_();
        const T one = 1, zero = 0;
#pragma omp for schedule(dynamic, 1)
        for (int64_t grp = 0; grp < groups; grp++) {
            double *a = acc + grp * nacc;
            const int64_t b_end = mcgsm_group_start_(nblocks, groups, grp + 1);
            for (int64_t b = mcgsm_group_start_(nblocks, groups, grp); b < b_end; b++) {
                const int64_t r0 = b * block;
                int B = (int)(M - r0 < block ? M - r0 : block);
                const T *hb = h + r0 * D;
                /* FM = hb @ both (B x N); F2 = FM[:, :F]^2; E = F2 @ w2^T (B x K) */
                gemm("N", "N", &N, &B, &D, &one, both, &N, hb, &D, &zero, FM, &N);
                for (int i = 0; i < B; i++) {
                    const T *__restrict__ fi = FM + (size_t)i * N;
                    T *__restrict__ f2 = F2 + (size_t)i * F;
#pragma omp simd
                    for (int n = 0; n < F; n++) f2[n] = fi[n] * fi[n];
                }
                gemm("T", "N", &K, &B, &F, &one, w2, &F, F2, &F, &zero, E, &K);
                T loss = 0;
                for (int q = 0; q < KS; q++) { AE[q] = 0; AA[q] = 0; }
                for (int i0 = 0; i0 < B; i0 += MCGSM_PIX) {
                    const int np = B - i0 < MCGSM_PIX ? B - i0 : MCGSM_PIX;
                    T mgv[MCGSM_PIX], mjv[MCGSM_PIX], sgv[MCGSM_PIX], sjv[MCGSM_PIX];
                    for (int p = 0; p < np; p++) {
                        const int i = i0 + p;
                        const T yi = y[r0 + i];
                        const T *__restrict__ mu = FM + (size_t)i * N + F;
                        const T *__restrict__ ei = E + (size_t)i * K;
                        T *__restrict__ rc = Rc + p * K, *__restrict__ dc = Dc + p * K;
#pragma omp simd
                        for (int c = 0; c < K; c++) { T d = yi - mu[c]; dc[c] = d; rc[c] = d * d; }
                        T mg = -INFINITY, mj = -INFINITY;
                        for (int s = 0; s < S; s++) {
                            const T *__restrict__ et = eta + s * K, *__restrict__ nt = nh + s * K;
                            const T *__restrict__ ct = cst + s * K;
                            T *__restrict__ gs = G + (size_t)p * KS + s * K;
                            T *__restrict__ js = J + (size_t)p * KS + s * K;
#pragma omp simd reduction(max : mg, mj)
                            for (int c = 0; c < K; c++) {
                                T g = et[c] + nt[c] * ei[c];
                                T j = g + ct[c] + nt[c] * rc[c];
                                gs[c] = g; js[c] = j;
                                mg = g > mg ? g : mg; mj = j > mj ? j : mj;
                            }
                        }
                        mgv[p] = mg; mjv[p] = mj;
                    }
                    for (int p = 0; p < np; p++) {
                        T *__restrict__ gp = G + (size_t)p * KS, *__restrict__ jp = J + (size_t)p * KS;
                        const T mg = mgv[p], mj = mjv[p];
                        T sg = 0, sj = 0;
#pragma omp simd reduction(+ : sg, sj)
                        for (int q = 0; q < KS; q++) {
                            T eg = mcgsm_exp_(gp[q] - mg), ej = mcgsm_exp_(jp[q] - mj);
                            gp[q] = eg; jp[q] = ej; sg += eg; sj += ej;
                        }
                        sgv[p] = sg; sjv[p] = sj;
                    }
                    for (int p = 0; p < np; p++) {
                        const int i = i0 + p;
                        const T lpi = mcgsm_lp_(mjv[p], mgv[p], sjv[p], sgv[p]);
                        const T wi = gw ? gw[r0 + i] : (T)1;
                        loss = mcgsm_add_(loss, wi * lpi);
                        if (lp) lp[r0 + i] = lpi;
                        sgv[p] = wi / sgv[p]; sjv[p] = wi / sjv[p];
                    }
                    if (!grad) continue;
                    for (int p = 0; p < np; p++) {
                        const int i = i0 + p;
                        const T ig = sgv[p], ij = sjv[p];
                        const T *__restrict__ ei = E + (size_t)i * K;
                        const T *__restrict__ rc = Rc + p * K, *__restrict__ dc = Dc + p * K;
                        const T *__restrict__ gp = G + (size_t)p * KS, *__restrict__ jp = J + (size_t)p * KS;
                        T *__restrict__ dei = DE + (size_t)i * K;
                        T *__restrict__ dmu = DFM + (size_t)i * N + F;
                        /* p: joint posterior, pq: p - gate posterior; de_c = sum_s nh pq,
                         * dmu_c = -2 (y - mu_c) sum_s nh p */
#pragma omp simd
                        for (int c = 0; c < K; c++) { dei[c] = 0; dmu[c] = 0; }
                        for (int s = 0; s < S; s++) {
                            const T *__restrict__ nt = nh + s * K;
                            const T *__restrict__ gs = gp + s * K, *__restrict__ js = jp + s * K;
                            T *__restrict__ ae = AE + s * K, *__restrict__ aa = AA + s * K;
#pragma omp simd
                            for (int c = 0; c < K; c++) {
                                T pj = js[c] * ij, pq = pj - gs[c] * ig;
                                ae[c] += pq;
                                aa[c] += (T)0.5 * pj + nt[c] * (pq * ei[c] + pj * rc[c]);
                                dei[c] += pq * nt[c];
                                dmu[c] += pj * nt[c];
                            }
                        }
                        T sdy = 0;
#pragma omp simd reduction(+ : sdy)
                        for (int c = 0; c < K; c++) { dmu[c] *= -2 * dc[c]; sdy -= dmu[c]; }
                        if (dy) dy[r0 + i] = sdy;
                    }
                }
                if (!grad) {
                    a[0] += loss;
                    continue;
                }
                /* dW = DE^T @ F2 (K x F); DFM[:, :F] = 2 FM[:, :F] * (DE @ w2); dB = hb^T @ DFM */
                gemm("N", "T", &F, &K, &B, &one, F2, &F, DE, &K, &zero, dW, &F);
                gemm("N", "N", &F, &B, &K, &one, w2, &F, DE, &K, &zero, DFM, &N);
                for (int i = 0; i < B; i++) {
                    const T *__restrict__ fi = FM + (size_t)i * N;
                    T *__restrict__ di = DFM + (size_t)i * N;
#pragma omp simd
                    for (int n = 0; n < F; n++) di[n] *= 2 * fi[n];
                }
                gemm("N", "T", &N, &D, &B, &one, DFM, &N, hb, &D, &zero, dB, &N);
                /* dh = DFM @ both^T (B x D) */
                if (dh) gemm("T", "N", &D, &B, &N, &one, both, &N, DFM, &N, &zero, dh + r0 * D, &D);
                double *__restrict__ ae = a + 1, *__restrict__ aa = ae + KS, *__restrict__ aw = aa + KS;
                double *__restrict__ ab = aw + (int64_t)K * F;
                a[0] += loss;
                for (int q = 0; q < KS; q++) { ae[q] += AE[q]; aa[q] += AA[q]; }
                for (int64_t q = 0; q < (int64_t)K * F; q++) aw[q] += dW[q];
                for (int64_t q = 0; q < (int64_t)D * N; q++) ab[q] += dB[q];
            }
        }
        mcgsm_ftz_off_(csr);
        if (set_threads) set_threads(prev);
    }
}

extern "C" {
DEFINE_MCGSM(mcgsm_fwd_f32, mcgsm_bwd_f32, float, exp_f, logf)
DEFINE_MCGSM(mcgsm_fwd_f64, mcgsm_bwd_f64, double, exp_d, log)
/* Scratch elements per thread that mcgsm_train_f32/_f64 need. */
int64_t mcgsm_nll_grad_work(int block, int D, int K, int S, int F) { return mcgsm_nll_grad_work_(block, D, K, S, F); }
/* Rows of the accumulator (acc) that mcgsm_train_f32/_f64 need for M pixels. */
int64_t mcgsm_nll_grad_groups(int64_t M, int block) { return mcgsm_nll_grad_groups_(M, block); }
/* The pass above (fused_mcgsm.py: mcgsm_nll_grad for L-BFGS, BlockedMCGSM for training): per-row log p
 * into lp (when not NULL); with grad, the gradients of sum_m gw_m log p_m (gw NULL: 1) into acc, and into
 * dh (M x D) and dy (M) when not NULL. */
void mcgsm_train_f32(int64_t M, int D, int K, int S, int F, const float *h, const float *y, const float *both,
                     const float *w2, const float *eta, const float *nh, const float *cst, double *acc, float *work,
                     int block, int nthreads, mcgsm_sgemm_t gemm, mcgsm_set_threads_t set_threads, const float *gw,
                     float *lp, int grad, float *dh, float *dy) {
    mcgsm_nll_grad_(M, D, K, S, F, h, y, both, w2, eta, nh, cst, acc, work, block, nthreads, gemm, set_threads,
                    gw, lp, grad, dh, dy);
}
void mcgsm_train_f64(int64_t M, int D, int K, int S, int F, const double *h, const double *y, const double *both,
                     const double *w2, const double *eta, const double *nh, const double *cst, double *acc,
                     double *work, int block, int nthreads, mcgsm_dgemm_t gemm, mcgsm_set_threads_t set_threads,
                     const double *gw, double *lp, int grad, double *dh, double *dy) {
    mcgsm_nll_grad_(M, D, K, S, F, h, y, both, w2, eta, nh, cst, acc, work, block, nthreads, gemm, set_threads,
                    gw, lp, grad, dh, dy);
}
}
