"""The forward sweep alone (1 layer, 64 hidden, 20x18 grid): two image groups of 25 on 2 OpenMP
threads in one call, against one group of 25 on one thread (the same work per thread), with
torch's sgemm and with a no-op in its place (the pointwise part alone), alternating call by call."""
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import ride.kernels.fused_slstm as fs
from ride import slstm
from ride.kernels.malloc import tune_malloc

tune_malloc()
folder = tempfile.mkdtemp()
src = os.path.join(folder, "nop.c")
with open(src, "w") as fh:
    fh.write("void nop_gemm(void) {}\n")  # called with sgemm_'s arguments; does nothing
subprocess.run(["cc", "-O2", "-shared", "-fPIC", src, "-o", os.path.join(folder, "libnop.so")], check=True)
nop = ctypes.cast(ctypes.CDLL(os.path.join(folder, "libnop.so")).nop_gemm, ctypes.c_void_p).value
real_gemm_args = fs.gemm_args

plan = slstm._plan(20, 18, torch.device("cpu"))
h, size_in = 64, 12
torch.manual_seed(0)
weight = torch.cat([torch.randn(5 * h, size_in), torch.randn(5 * h, 2 * h)], 1) * 0.1
bias = torch.zeros(5 * h)
pixels = sum(hi - lo + 1 for _, lo, hi in plan.spans)


def buffers(groups, per):
    inputs = torch.empty(groups, pixels, per, size_in + 2 * h)
    inputs[..., :size_in] = torch.randn(groups, pixels, per, size_in)
    gates = torch.zeros(groups, pixels, per, 5 * h)
    return inputs, gates, torch.empty(groups, pixels, per, h), torch.empty(groups, pixels, per, h)


two, one = buffers(2, 25), buffers(1, 25)


def sweep(bufs, threads, gemm):
    torch.set_num_threads(threads)
    fs.gemm_args = (lambda dt: (nop, real_gemm_args(dt)[1])) if gemm == "nop" else real_gemm_args
    inputs, gates, cells, hidden = bufs
    fs._fused_forward_c_sweep(plan, inputs, size_in, weight, bias, gates, cells, hidden, h, False)


cases = {f"{gemm} {name}": (bufs, threads, gemm) for gemm in ("sgemm", "nop")
         for name, bufs, threads in (("2 groups x 25, 2 threads", two, 2), ("1 group x 25, 1 thread", one, 1))}
times = {k: [] for k in cases}
for k, args in cases.items():
    for _ in range(5):
        sweep(*args)
for _ in range(150):
    for k, args in cases.items():
        start = time.perf_counter()
        sweep(*args)
        times[k].append(time.perf_counter() - start)
for k, v in times.items():
    print(f"{k:36s} median {1e3 * statistics.median(v):6.3f} ms  min {1e3 * min(v):6.3f} ms")
sys.exit(0)
