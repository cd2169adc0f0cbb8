/* Factorized MCGSM: its K x S mixture part, forward and backward, one pixel per row (C-style code
 * with C linkage, built by torch.utils.cpp_extension: ride/kernels/build.py). */
#include "fastmath.h"

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

extern "C" {
DEFINE_MCGSM(mcgsm_fwd_f32, mcgsm_bwd_f32, float, exp_f, logf)
DEFINE_MCGSM(mcgsm_fwd_f64, mcgsm_bwd_f64, double, exp, log)
}
