"""Variants of the SLSTM kernels tried on 2026-11-27 and left out, each against the kernels of
this commit in one process, alternating training steps (1 layer, 64 hidden, 22x22, batch 50,
2 threads): text patches of ride/kernels/slstm.cpp and fastmath.h, built with the package's
flags, swapped in for ride.kernels.fused_slstm's library.

    python slstm_variants.py VARIANT [STEPS]

fused_bias:     the bias added inside the gate loop instead of a pass of its own over z (exact)
dynamic_chunks: the forward's rows of each diagonal in chunks of 128, claimed dynamically
big_then_small: the forward's rows in 2 x threads chunks, 4/5 of them first, claimed dynamically
free_gates:     sigmoid and tanh replaced by clamped linear functions (a bound on what cheaper
                gate arithmetic could gain; not a model)
nop_gemm:       the SLSTM sweeps' GEMMs replaced by a function that returns at once (the step
                without them: what the rest of the step costs)
"""
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import ride.kernels.build as kb
import ride.kernels.fused_slstm as fs
from ride.bench import _make_model, _train_step
from ride.kernels import tune_malloc

tune_malloc()
torch.set_num_threads(2)
KERNELS = Path(kb.__file__).parent


def patch(variant: str, slstm: str, fastmath: str) -> tuple[str, str]:
    def sub(text: str, old: str, new: str) -> str:
        assert old in text, (variant, old[:60])
        return text.replace(old, new, 1)

    fwd = slstm.index("static void fwd_sweep")
    head, sweep = slstm[:fwd], slstm[fwd:]
    if variant == "fused_bias":
        head = sub(head, "        if (bias) {\n#pragma omp simd\n            for (int k = 0; k < 5 * h; k++) zq[k] += bias[k];\n"
                   "        }\n", "")
        for g, off in (("g", "k"), ("o", "h + k"), ("i", "2 * h + k"), ("fc", "3 * h + k"), ("fr", "4 * h + k")):
            fn = "th" if g == "g" else "sig"
            head = sub(head, f"T {g} = Ops<T>::{fn}(zq[{off}]);", f"T {g} = Ops<T>::{fn}(zq[{off}] + (bias ? bias[{off}] : 0));")
    elif variant in ("dynamic_chunks", "big_then_small"):
        sweep = sub(sweep, "            int64_t q0, q1;\n            share((int64_t)L * N, t, nt, &q0, &q1);\n            T *y = inputs",
                    "            const int64_t R = (int64_t)L * N;\n            T *y = inputs")
        call = ("fwd_rows<T>(a0, a1, L, N, h, lo, gates + (int64_t)off * N * h5, cells + (int64_t)off * N * h, "
                "hidden + (int64_t)off * N * h, cin, kc, cl, cu, cout, nxt, kall, nlo, nhi, ext, gemm, y, w, kall, bias);")
        if variant == "dynamic_chunks":
            loop = ("const int64_t nch = (R + 127) / 128;\n#pragma omp for schedule(dynamic, 1)\n"
                    "for (int64_t j = 0; j < nch; j++) { const int64_t a0 = R * j / nch, a1 = R * (j + 1) / nch; " + call + " }")
        else:
            loop = ("const int64_t big = R * 4 / 5;\n#pragma omp for schedule(dynamic, 1)\n"
                    "for (int j = 0; j < 2 * nt; j++) { int64_t a0, a1;\n"
                    "  if (j < nt) a0 = big * j / nt, a1 = big * (j + 1) / nt;\n"
                    "  else a0 = big + (R - big) * (j - nt) / nt, a1 = big + (R - big) * (j - nt + 1) / nt;\n  " + call + " }")
        sweep = sub(sweep, """            fwd_rows<T>(q0, q1, L, N, h, lo, gates + (int64_t)off * N * h5, cells + (int64_t)off * N * h,
                        hidden + (int64_t)off * N * h, cin, kc, cl, cu, cout, nxt, kall, nlo, nhi, ext, gemm, y, w,
                        kall, bias);
#pragma omp barrier""", loop)
    elif variant == "free_gates":
        fastmath = sub(fastmath, "static inline float sigmoid_f(float x) { return recip_f(1.0f + exp_f(x < -80.0f ? 80.0f : -x)); }",
                       "static inline float sigmoid_f(float x) { float y = 0.25f * x + 0.5f; return y < 0 ? 0 : (y > 1 ? 1 : y); }")
        fastmath = sub(fastmath, "static inline float tanh_f(float x) {",
                       "static inline float tanh_f(float x) { return x < -1 ? -1 : (x > 1 ? 1 : x); }\nstatic inline float tanh_unused(float x) {")
    return head + sweep, fastmath


def build(folder: Path, slstm: str, fastmath: str) -> ctypes.CDLL:
    (folder / "slstm.cpp").write_text(slstm)
    (folder / "fastmath.h").write_text(fastmath)
    (folder / "mcgsm.cpp").write_text((KERNELS / "mcgsm.cpp").read_text())
    out = folder / "lib.so"
    subprocess.run(["g++", *kb.COMPILE_FLAGS, *kb.LINK_FLAGS, "-fPIC", "-shared", "-o", str(out),
                    str(folder / "slstm.cpp"), str(folder / "mcgsm.cpp")], check=True)
    return kb._declare(ctypes.CDLL(str(out)))


variant = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 60
slstm, fastmath = (KERNELS / "slstm.cpp").read_text(), (KERNELS / "fastmath.h").read_text()
model, images = _make_model(1, 64, 22, 50, torch.device("cpu"))
real_gemm_args = fs.gemm_args
with tempfile.TemporaryDirectory() as tmp:
    (Path(tmp) / "base").mkdir()
    base = build(Path(tmp) / "base", slstm, fastmath)
    setups = {"base": (base, real_gemm_args)}
    if variant == "nop_gemm":
        (Path(tmp) / "nop.c").write_text("void nop(void) {}\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", f"{tmp}/nop.so", f"{tmp}/nop.c"], check=True)
        nop = ctypes.cast(ctypes.CDLL(f"{tmp}/nop.so").nop, ctypes.c_void_p).value
        setups[variant] = (base, lambda dtype: (nop, real_gemm_args(dtype)[1]))
    else:
        (Path(tmp) / variant).mkdir()
        setups[variant] = (build(Path(tmp) / variant, *patch(variant, slstm, fastmath)), real_gemm_args)
    times = {name: [] for name in setups}
    for _ in range(steps):
        for name, (lib, args) in setups.items():
            fs.c_kernels, fs.gemm_args = (lambda lib=lib: lib), args
            start = time.perf_counter()
            _train_step(model, images, "fused")
            times[name].append(time.perf_counter() - start)
    ratios = [b / a for a, b in zip(times["base"], times[variant])]
    print(f"{variant}: base {1e3 * statistics.median(times['base']):.2f} ms/step, {variant} "
          f"{1e3 * statistics.median(times[variant]):.2f} ms/step, ratio {statistics.median(ratios):.3f} "
          f"(median of {steps} alternations)")
