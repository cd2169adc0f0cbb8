"""Median and minimum wall time of the training step of `ride bench` (1 layer, 64 hidden, 22x22, batch 50,
2 threads) over N steps after 3 warm-up steps, without the benchmark's interleaved baselines.
Usage: PYTHONPATH=. python slstm_step_timing.py [N]"""
import time, torch, statistics, sys
from ride.kernels import tune_malloc
tune_malloc()
torch.set_num_threads(2)
from ride.bench import _make_model, _train_step
model, images = _make_model(1, 64, 22, 50, torch.device("cpu"))
for _ in range(3): _train_step(model, images, "fused")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
ts=[]
for _ in range(n):
    t=time.perf_counter(); _train_step(model, images, "fused"); ts.append(time.perf_counter()-t)
print("step median ms %.1f min %.1f" % (1000*statistics.median(ts), 1000*min(ts)))
