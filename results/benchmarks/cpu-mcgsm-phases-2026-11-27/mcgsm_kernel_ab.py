"""In-process A/B of two builds of the C kernels on the MCGSM's value-and-gradient pass
(ride.kernels.fused_mcgsm._train_pass, the L-BFGS closure's work) on the L-BFGS benchmark's 50,000
whitened dead-leaves pixels (D = 12, K = 32, S = 4, F = 32).

Usage (from a checkout): python mcgsm_kernel_ab.py THREADS REPS OLD.so NEW.so
First checks that both builds give bitwise the same log p, input and parameter gradients and sums
(several shapes, float32 and float64, 1 and 2 threads); then alternates the two builds REPS times,
5 passes each, in this one process (a drifting machine slows both alike) and prints microseconds
per pixel and the per-repeat ratio new/old."""
import ctypes
import statistics
import sys
import time

import torch

from ride import bench_mcgsm as bm
from ride.kernels import build
from ride.kernels import fused_mcgsm as fm
from ride.mcgsm import MCGSM

threads, reps, paths = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:5]
libs = [build._declare(ctypes.CDLL(p)) for p in paths]


def run(lib, *args, **kw):
    fm.c_kernels = lambda: lib
    return fm._train_pass(*args, **kw)


for d, k, s, f, m in [(12, 32, 4, 32, 1003), (7, 5, 3, 9, 517), (12, 8, 2, 16, 130), (3, 1, 1, 2, 7)]:
    torch.manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        mcgsm = MCGSM(d, k, s, f).to(dtype)
        with torch.no_grad():
            for p in mcgsm.parameters():
                p.add_(0.3 * torch.randn_like(p))
        x, y = torch.randn(m, d, dtype=dtype), torch.randn(m, dtype=dtype)
        args = (x, y, mcgsm.priors.detach(), mcgsm.log_precisions().detach(), mcgsm.weights.detach(),
                mcgsm.features.detach(), mcgsm.predictors.detach())
        for t in (1, 2):
            torch.set_num_threads(t)
            out = []
            for lib in libs:
                lp, dh, dy = torch.empty_like(y), torch.empty_like(x), torch.empty_like(y)
                total, grads = run(lib, *args, lp=lp, grad=True, dh=dh, dy=dy)
                out.append([total.reshape(1), *grads, lp, dh, dy])
            same = all(torch.equal(a, b) for a, b in zip(*out))
            print(f"D={d} K={k} S={s} F={f} M={m} {dtype} {t} thread(s): {'bitwise equal' if same else 'DIFFERENT'}")

torch.set_num_threads(threads)
mcgsm, x, y, _, _ = bm.dead_leaves_pixels(50000, 2000)
mcgsm, x, y = mcgsm.double(), x.double().contiguous(), y.double().contiguous()
args = (x, y, mcgsm.priors.detach(), mcgsm.log_precisions().detach(), mcgsm.weights.detach(),
        mcgsm.features.detach(), mcgsm.predictors.detach())
for lib in libs:
    run(lib, *args, grad=True)
times = [[], []]
for _ in range(reps):
    for i, lib in enumerate(libs):
        start = time.perf_counter()
        for _ in range(5):
            run(lib, *args, grad=True)
        times[i].append((time.perf_counter() - start) / 5 / x.shape[0] * 1e6)
ratio = [b / a for a, b in zip(*times)]
print(f"float64, {threads} thread(s), {reps} alternations of 5 passes over {x.shape[0]} pixels:")
for name, ts in zip(("old", "new"), times):
    print(f"  {name}: median {statistics.median(ts):.3f} us/px, min {min(ts):.3f}, max {max(ts):.3f}")
print(f"  new / old per alternation: median {statistics.median(ratio):.3f}, range {min(ratio):.3f}-{max(ratio):.3f}")
