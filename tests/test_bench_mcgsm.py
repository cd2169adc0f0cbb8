"""The MCGSM L-BFGS benchmark (ride.bench_mcgsm): its FLOP count and that it runs training's optimiser."""
from __future__ import annotations

import copy
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ride import bench_mcgsm
from ride.mcgsm import MCGSM
from ride.refine import fit_mcgsm_lbfgs

# Ops that move or allocate without arithmetic, and the GEMMs (counted by FlopCounterMode).
_NO_ARITHMETIC = {
    "view", "_unsafe_view", "t", "transpose", "expand", "unsqueeze", "squeeze", "detach", "alias", "permute",
    "reshape", "clone", "copy_", "_to_copy", "zeros_like", "ones_like", "empty_like", "fill_", "zero_",
    "new_zeros", "new_empty", "select", "slice", "as_strided", "mm", "addmm", "bmm",
}


class _ElementOps(TorchDispatchMode):
    """Elements produced by every arithmetic aten op (reductions: elements read; logsumexp: 4 per element)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("sum", "amax", "logsumexp"):
            self.count += args[0].numel() * (4 if name == "logsumexp" else 1)
        elif name not in _NO_ARITHMETIC:
            outs = out if isinstance(out, (tuple, list)) else [out]
            self.count += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))
        return out


def _value_and_gradient(mcgsm: MCGSM, n: int, mode) -> None:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, mcgsm.dim_in, generator=gen, dtype=torch.float64)
    y = torch.randn(n, generator=gen, dtype=torch.float64)
    with mode:
        mcgsm.reference_log_prob(x, y).sum().backward()


@pytest.mark.parametrize("sizes", [(12, 32, 4, 32), (7, 5, 3, 9)])
def test_flop_count_matches_the_operations_torch_runs(sizes):
    dim_in, k, s, f = sizes
    counted = bench_mcgsm.flops_per_pixel(dim_in, k, s, f)
    mcgsm = MCGSM(dim_in, k, s, f).double()
    per_px = []
    for n in (100, 300):
        counter = FlopCounterMode(display=False)
        _value_and_gradient(mcgsm, n, counter)
        per_px.append(counter.get_total_flops())
    # GEMM FLOPs are exact and grow linearly with the pixels (nothing parameter-only hides in them).
    assert per_px[0] == 100 * counted["gemm"] and per_px[1] == 300 * counted["gemm"]
    ops = []
    for n in (100, 300):
        counter = _ElementOps()
        _value_and_gradient(mcgsm, n, counter)
        ops.append(counter.count)
    # Autograd's pointwise work per pixel (parameter-only terms cancel in the difference) is the
    # hand count up to its bookkeeping (negations, broadcasts): within 15 %.
    assert (ops[1] - ops[0]) / 200 == pytest.approx(counted["pointwise"], rel=0.15)
    if sizes == (12, 32, 4, 32):
        assert counted == {"gemm": 9216, "pointwise": 4069, "total": 13285}


def test_run_lbfgs_is_the_training_refinement():
    mcgsm, x, y, _, _ = bench_mcgsm.dead_leaves_pixels(600, 100, size=16, components=4, scales=2, features=3)
    mcgsm = mcgsm.double()
    trained = copy.deepcopy(mcgsm)
    fit_mcgsm_lbfgs(trained, x, y, None, None, max_iterations=6, check_every=25)
    run = bench_mcgsm.run_lbfgs(mcgsm, x, y, torch.float64, iterations=6)
    assert 1 <= run["lbfgs_iterations"] <= 6 and run["evaluations"] >= run["lbfgs_iterations"]
    assert run["wall_s"] > 0
    for mine, theirs in zip(run["mcgsm"].parameters(), trained.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert bench_mcgsm.mean_nll(run["mcgsm"], x, y) < bench_mcgsm.mean_nll(mcgsm, x, y)


def test_roofline_gemms_between_steps_change_nothing_and_are_not_timed():
    mcgsm, x, y, _, _ = bench_mcgsm.dead_leaves_pixels(600, 100, size=16, components=4, scales=2, features=3)
    mcgsm = mcgsm.double()
    plain = bench_mcgsm.run_lbfgs(mcgsm, x, y, torch.float64, iterations=6)
    calls = []
    timed = bench_mcgsm.run_lbfgs(mcgsm, x, y, torch.float64, iterations=6,
                                  between=lambda: calls.append(time.sleep(0.5)))
    assert len(calls) == 2  # 6 iterations are one step: before it and after it
    for mine, theirs in zip(timed["mcgsm"].parameters(), plain["mcgsm"].parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert timed["wall_s"] < 0.5  # the sleeps are taken out of the wall time


def test_benchmark_reports_both_precisions_against_the_roofline():
    result = bench_mcgsm.benchmark(pixels=500, valid_pixels=200, iterations=3, size=16, gemm_size=64, gemm_reps=1)
    assert result["pixels"] == 500 and result["valid_pixels"] == 200
    assert set(result["runs"]) == {"float64", "float32"}
    for run in result["runs"].values():
        flops = result["flops_per_px"]["total"] * 500 * run["evaluations"] / run["wall_s"]
        assert run["gflops"] == pytest.approx(flops / 1e9)
        # against the GEMMs timed around this run (before, between and after its L-BFGS steps)
        assert run["frac_f64_gemm"] == pytest.approx(flops / (1e9 * run["roofline_gflops"]["float64"][0]))
        assert run["frac_f32_gemm"] == pytest.approx(flops / (1e9 * run["roofline_gflops"]["float32"][0]))
        assert run["px_iter_per_s"] == pytest.approx(500 * run["lbfgs_iterations"] / run["wall_s"])
        assert run["train_nll"] < result["start"]["train_nll"]
    lo, hi = result["gemm_gflops_range"]["float64"]
    assert lo <= result["gemm_gflops"]["float64"] <= hi
    assert result["optimum_diff_train"] == pytest.approx(
        result["runs"]["float32"]["train_nll"] - result["runs"]["float64"]["train_nll"])
    report = bench_mcgsm.format_report(result)
    assert "float32 / float64" in report and "%f64GEMM" in report
