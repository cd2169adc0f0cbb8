"""Time one value-and-gradient pass of the MCGSM kernel (ride.kernels.fused_mcgsm._train_pass) on the
L-BFGS benchmark's 50,000 whitened dead-leaves pixels (D = 12, K = 32, S = 4, F = 32).

Usage (from a checkout): PYTHONPATH=. python mcgsm_kernel_timing.py THREADS f64|f32 [REPS]
Prints the median and minimum microseconds per pixel. Alternate trees (with their own
RIDE_CACHE_DIR) in fresh processes to compare kernels."""
import statistics
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]))
dtype = torch.float64 if (len(sys.argv) < 3 or sys.argv[2] == "f64") else torch.float32
from ride import bench_mcgsm as bm  # noqa: E402
from ride.kernels import fused_mcgsm as fm  # noqa: E402

mcgsm, x, y, vx, vy = bm.dead_leaves_pixels(50000, 2000)
m = mcgsm.to(dtype)
x, y = x.to(dtype).contiguous(), y.to(dtype).contiguous()
args = (x, y, m.priors.detach(), m.log_precisions().detach(), m.weights.detach(), m.features.detach(),
        m.predictors.detach())
fm._train_pass(*args, grad=True)
ts = []
for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 20):
    t = time.perf_counter()
    fm._train_pass(*args, grad=True)
    ts.append(time.perf_counter() - t)
print("%s %d thr: us/px %.3f (min %.3f)" % (dtype, torch.get_num_threads(), 1e6 * statistics.median(ts) / x.shape[0],
                                            1e6 * min(ts) / x.shape[0]))
