"""Training step (1 layer, 64 hidden, 22x22, batch 50, 2 threads) with the default image groups
(one per thread), forced G = 1 (threads split every diagonal, the sweep before 2026-11-27) and
forced G = 4, alternating step by step in one process. Prints medians and paired ratios."""
import statistics
import time

import torch

import ride.kernels.fused_slstm as fs
from ride.bench import _make_model, _train_step
from ride.kernels.malloc import tune_malloc

tune_malloc()
torch.set_num_threads(2)
model, images = _make_model(1, 64, 22, 50, torch.device("cpu"))
variants = {"G=1": 1, "default": None, "G=4": 4}
times = {name: [] for name in variants}
for name, g in variants.items():
    fs.GROUPS = g
    for _ in range(3):
        _train_step(model, images, "fused")
for _ in range(80):
    for name, g in variants.items():
        fs.GROUPS = g
        start = time.perf_counter()
        _train_step(model, images, "fused")
        times[name].append(time.perf_counter() - start)
fs.GROUPS = None
print("default groups:", fs.num_groups(50, images.device, True, training=True))
for name, v in times.items():
    print(f"{name:8s} median {1e3 * statistics.median(v):6.2f} ms  min {1e3 * min(v):6.2f} ms")
for name in ("default", "G=4"):
    ratio = statistics.median([a / b for a, b in zip(times["G=1"], times[name])])
    print(f"step time G=1 / {name}: paired median {ratio:.3f}")
