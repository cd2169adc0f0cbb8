"""In-process A/B of the MCGSM pass (mcgsm_train_*) of two commits: both kernels are built from
``git show REV:ride/kernels/{mcgsm.cpp,fastmath.h}`` with the package's compile flags, loaded side
by side, and called alternately on the same data (random parameters, N(0, 1) data).

    python kernel_ab.py OLD NEW THREADS DTYPE D PIXELS [CALLS]

DTYPE is float32 or float64; D = 12 with float64 and 50000 pixels is the L-BFGS benchmark's pass
(ride.bench_mcgsm), D = 64 with float32 and 18000 pixels a training step's (1 layer, 64 hidden,
batch 50 of 22x22). Prints each kernel's median time per call, the median of the per-call ratios
NEW / OLD, and the largest differences of the summed value and gradients and of the rows' log p.
"""
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ride.kernels.build import COMPILE_FLAGS, LINK_FLAGS, gemm_args

old_rev, new_rev, threads, dtype_name, d, m = sys.argv[1:7]
calls = int(sys.argv[7]) if len(sys.argv) > 7 else 40
threads, d, m = int(threads), int(d), int(m)
dtype = getattr(torch, dtype_name)
torch.set_num_threads(threads)
K, S, F, BLOCK = 32, 4, 32, 128
i, p, i64 = ctypes.c_int, ctypes.c_void_p, ctypes.c_int64


def build(rev: str, folder: Path) -> ctypes.CDLL:
    for name in ("mcgsm.cpp", "fastmath.h"):
        src = subprocess.run(["git", "show", f"{rev}:ride/kernels/{name}"], capture_output=True, text=True, check=True)
        (folder / name).write_text(src.stdout)
    out = folder / "mcgsm.so"
    subprocess.run(["g++", *COMPILE_FLAGS, *LINK_FLAGS, "-fPIC", "-shared", "-o", str(out), str(folder / "mcgsm.cpp")],
                   check=True)
    lib = ctypes.CDLL(str(out))
    for fn in (lib.mcgsm_train_f32, lib.mcgsm_train_f64):
        fn.argtypes, fn.restype = [i64, i, i, i, i] + [p] * 9 + [i, i, p, p, p, p, i, p, p], None
    lib.mcgsm_nll_grad_work.argtypes, lib.mcgsm_nll_grad_work.restype = [i, i, i, i, i], i64
    try:  # since b0b513a: one accumulator row per run of blocks, else one per thread
        lib.mcgsm_nll_grad_groups.argtypes, lib.mcgsm_nll_grad_groups.restype = [i64, i], i64
        lib.rows = lambda: lib.mcgsm_nll_grad_groups(m, BLOCK)
    except AttributeError:
        lib.rows = lambda: max(1, min(threads, -(-m // BLOCK)))
    return lib


gen = torch.Generator().manual_seed(0)
h = torch.randn(m, d, generator=gen, dtype=dtype)
y = torch.randn(m, generator=gen, dtype=dtype)
both = (torch.randn(d, F + K, generator=gen, dtype=dtype) * 0.1).contiguous()
w2 = (torch.randn(K, F, generator=gen, dtype=dtype) * 0.3).square().contiguous()
eta = torch.randn(S, K, generator=gen, dtype=dtype).contiguous()
alpha = torch.randn(S, K, generator=gen, dtype=dtype) * 0.3
nh = (-0.5 * alpha.exp()).contiguous()
cst = (0.5 * alpha - 0.5 * torch.log(torch.tensor(2 * torch.pi))).to(dtype).contiguous()
gemm, set_threads = gemm_args(dtype)
nacc = 1 + 2 * K * S + K * F + d * (F + K)
results = {}


def call(lib) -> float:
    fn = lib.mcgsm_train_f32 if dtype == torch.float32 else lib.mcgsm_train_f64
    acc = torch.zeros(lib.rows(), nacc, dtype=torch.float64)
    work = torch.empty(threads * lib.mcgsm_nll_grad_work(BLOCK, d, K, S, F), dtype=dtype)
    lp, dh, dy = torch.empty(m, dtype=dtype), torch.empty(m, d, dtype=dtype), torch.empty(m, dtype=dtype)
    start = time.perf_counter()
    fn(m, d, K, S, F, h.data_ptr(), y.data_ptr(), both.data_ptr(), w2.data_ptr(), eta.data_ptr(), nh.data_ptr(),
       cst.data_ptr(), acc.data_ptr(), work.data_ptr(), BLOCK, threads, gemm, set_threads, None, lp.data_ptr(), 1,
       dh.data_ptr(), dy.data_ptr())
    elapsed = time.perf_counter() - start
    results[id(lib)] = (acc.sum(0), lp)
    return elapsed


with tempfile.TemporaryDirectory() as tmp:
    libs = {}
    for rev in (old_rev, new_rev):
        (Path(tmp) / rev).mkdir()
        libs[rev] = build(rev, Path(tmp) / rev)
    times = {rev: [] for rev in libs}
    for _ in range(calls):
        for rev, lib in libs.items():
            times[rev].append(call(lib))
    ratios = [b / a for a, b in zip(times[old_rev], times[new_rev])]
    (acc0, lp0), (acc1, lp1) = results[id(libs[old_rev])], results[id(libs[new_rev])]
    print(f"{dtype_name} D={d} M={m} threads={threads}: {old_rev} {1e3 * statistics.median(times[old_rev]):.2f} ms, "
          f"{new_rev} {1e3 * statistics.median(times[new_rev]):.2f} ms, {new_rev}/{old_rev} median ratio "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); "
          f"max |d sums| / |sums| {float(((acc1 - acc0).abs() / acc0.abs().clamp_min(1e-3)).max()):.1e}, "
          f"max |d log p| {float((lp1 - lp0).abs().max()):.1e}")
