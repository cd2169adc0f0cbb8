/* Fast exp (float32, float64), sigmoid and tanh shared by the SLSTM and MCGSM kernels (ride/kernels/build.py
 * builds slstm.cpp and mcgsm.cpp into one library). */
#ifndef RIDE_FASTMATH_H
#define RIDE_FASTMATH_H
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
/* 1/d for 1 <= d <= 1e37 without a division (vdivps is the slowest instruction of the SLSTM's
 * forward kernel): a first guess from the exponent bits (relative error < 12.5 %) and three Newton
 * steps (error squared each: < 5e-8, below float rounding). NaN stays NaN. */
static inline float recip_f(float d) {
    union { float f; int32_t i; } u;
    u.f = d;
    u.i = 0x7EF311C3 - u.i;
    float r = u.f;
    r = r * (2.0f - d * r);
    r = r * (2.0f - d * r);
    return fmaf(r, fmaf(-d, r, 1.0f), r);  /* last step on the residual: correctly rounded at 1/2, 1 */
}
/* Below -80, sigmoid is < 2e-35: clamped there so that recip_f's range holds. */
static inline float sigmoid_f(float x) { return recip_f(1.0f + exp_f(x < -80.0f ? 80.0f : -x)); }
static inline float tanh_f(float x) {
    float a = fabsf(x);
    float z = x * x;
    /* Cephes tanhf polynomial for |x| < 0.625, else 1 - 2 / (exp(2|x|) + 1) (= 1 in float
     * beyond |x| = 9.1; 2|x| clamped to 40 for recip_f). */
    float p = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
               + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float t = 1.0f - 2.0f * recip_f(exp_f(a > 20.0f ? 40.0f : 2.0f * a) + 1.0f);
    t = x < 0.0f ? -t : t;
    return a < 0.625f ? p : t;
}
/* float64 exp written so that gcc vectorises it (libm's exp does not vectorise without
 * -ffast-math): x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor polynomial of degree 13 (truncation
 * < 5e-18 relative), 2^n assembled in the exponent bits with the 1.5 * 2^52 shifter, so no
 * float->int conversion is needed (AVX2 has none for 64-bit ints); ~1 ulp near 0, 3e-14 relative
 * at |x| ~ 700 (-funsafe-math may merge the two-part ln 2). exp_d_core does not clamp: it needs
 * -708 <= x <= 709. */
static inline double exp_d_core(double x) {
    const double shifter = 6755399441055744.0;  /* 1.5 * 2^52: n + shifter has n in its low bits */
    double n = floor(x * 1.4426950408889634 + 0.5);  /* not (t + shifter) - shifter: -funsafe-math folds it */
    double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    union { double d; int64_t i; } u;
    u.d = n + (1023.0 + shifter);  /* the low mantissa bits now hold n + 1023 */
    u.i <<= 52;
    return p * u.d;
}
static inline double exp_d(double x) {
    double y = exp_d_core(x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x));
    return x < -708.0 ? 0.0 : y;
}
static inline double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double tanh_d(double x) { return tanh(x); }

#endif
