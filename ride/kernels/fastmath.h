/* Fast float32 exp/sigmoid/tanh shared by the SLSTM and MCGSM kernels (ride/kernels/build.py
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

#endif
