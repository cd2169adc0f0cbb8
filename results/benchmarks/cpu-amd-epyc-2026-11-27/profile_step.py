"""torch.profiler over 20 training steps of the SLSTM target's configuration (1 layer, 64 hidden,
22x22, batch 50, 2 threads, tune_malloc), after 10 warm-up steps; prints ops by self CPU time.
Usage: python results/benchmarks/cpu-amd-epyc-2026-11-27/profile_step.py  (repository root)"""
import torch
from torch.profiler import ProfilerActivity, profile

from ride.bench import _make_model, _train_step
from ride.kernels import tune_malloc

torch.set_num_threads(2)
tune_malloc()
model, images = _make_model(1, 64, 22, 50, torch.device("cpu"))
for _ in range(10):
    _train_step(model, images, "fused")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(20):
        _train_step(model, images, "fused")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
