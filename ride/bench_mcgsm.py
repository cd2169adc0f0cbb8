"""Benchmark of the MCGSM's L-BFGS refinement (``python -m ride.bench_mcgsm``) with its own roofline.

Training ends every stage by refining the MCGSM with ``torch.optim.LBFGS`` in float64 on fixed
features (``ride.refine.fit_mcgsm_lbfgs``); for the MCGSM rows of Table 3 that is all of training.
This runs the same optimiser and closure (``ride.refine.mcgsm_lbfgs``; on the CPU the closure is
the fused value and gradient ``ride.kernels.mcgsm_nll_grad``, 2KS exps per pixel) on the MCGSM
baseline's whitened neighbourhoods of dead-leaves images, in float64 and in float32 from the
same initial parameters, and reports for each, interleaved on one machine:

* ``px_iter_per_s``: pixels x L-BFGS iterations per second (wall clock; per CPU second too);
* ``gflops``: FLOPs of the value and gradient per pixel x pixels x function evaluations / s;
* ``frac_f64_gemm`` / ``frac_f32_gemm``: that rate over a measured dense float64 / float32 GEMM
  (``size^3``, median of ``--gemm-reps``) on the same threads: the roofline. The GEMMs are
  timed around every L-BFGS step of the run (before it, between steps and after it; not in its
  time) and the run is compared with the median of those: a shared machine's speed drifts by
  tens of percent within seconds, and GEMMs timed once before all runs measured that drift as
  much as the kernel (``gemm_gflops_range`` shows the spread). Not after every function
  evaluation: GEMMs that often evict the run's data and slowed it by about 14 %;
* the float32 - float64 difference of the objective reached after the same iterations, both
  scored in float64 on the training and on held-out pixels (nats/px; > 0: float32 is worse).

FLOPs of value and gradient per pixel, counted from ``MCGSM.reference_log_prob`` (``D`` inputs,
``K`` components, ``S`` scales, ``F`` features; inputs are data, so no input gradient; every
add, multiply, max, exp and log counts as one FLOP; parameter-only terms are not per pixel)::

    GEMM:      forward 2DF + 2FK + 2DK      backward 2DF + 4FK + 2DK     = 4D(F+K) + 6FK
    pointwise: forward F + 2K + 13KS + 5    backward 2F + 2K + 17KS      = 3F + 4K + 30KS + 5

(forward: feature energies F, residuals 2K, gate 2KS, expert 2KS, sum KS, two logsumexps over
KS 4KS + 2 each, difference 1; backward: two softmaxes 6KS, gate gradient KS, expert 5KS, gate
5KS, residuals 2K, squares 2F.) For D = 12, K = 32, S = 4, F = 32 (the MCGSM-32 baseline):
9216 + 4069 = 13285 FLOP per pixel and evaluation. ``tests/test_bench_mcgsm.py`` checks the
GEMM count against ``torch.utils.flop_counter``.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .mcgsm import MCGSM
from .provenance import device_name


def flops_per_pixel(dim_in: int, components: int, scales: int, features: int) -> dict[str, int]:
    """FLOPs of the MCGSM's value and parameter gradient per pixel (module docstring)."""
    d, k, s, f = dim_in, components, scales, features
    gemm = 4 * d * (f + k) + 6 * f * k
    pointwise = 3 * f + 4 * k + 30 * k * s + 5
    return {"gemm": gemm, "pointwise": pointwise, "total": gemm + pointwise}


def gemm_timer(dtype: torch.dtype, size: int = 1024) -> Callable[[], float]:
    """A function that times one dense ``size^3`` GEMM in ``dtype`` on the CPU (current thread
    count) and returns its FLOP/s; the matrices are made, and the GEMM warmed up, once."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen, dtype=dtype)
    b = torch.randn(size, size, generator=gen, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: thread pool and caches

    def run() -> float:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        return 2.0 * size**3 / (time.perf_counter() - start)

    return run


def dead_leaves_pixels(
    pixels: int, valid_pixels: int, size: int = 64, seed: int = 0, components: int = 32, scales: int = 4,
    features: int = 32,
) -> tuple[MCGSM, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An initial MCGSM and the whitened neighbourhoods/targets of training and held-out dead-leaves pixels."""
    from .deadleaves import generate
    from .model import mcgsm_baseline
    from .train import mcgsm_data

    model = mcgsm_baseline(nb_size=5, num_components=components, num_scales=scales, num_features=features)
    rows, cols = model.neighborhood.grid_shape(size, size)
    num_train = -(-pixels // (rows * cols))
    num_valid = -(-valid_pixels // (rows * cols))
    images = torch.from_numpy(generate(num_train + num_valid, size, seed))
    torch.manual_seed(seed)
    model.fit_whitening(images[:num_train])
    model.mcgsm.reset_parameters()
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y = mcgsm_data(model, images[:num_train], pixels, gen)
    valid_x, valid_y = mcgsm_data(model, images[num_train:], valid_pixels, gen)
    return model.mcgsm, train_x, train_y, valid_x, valid_y


def run_lbfgs(
    mcgsm: MCGSM, inputs: torch.Tensor, outputs: torch.Tensor, dtype: torch.dtype, iterations: int,
    check_every: int = 25, between: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Training's L-BFGS on a copy of ``mcgsm`` in ``dtype``: timings, counts and the result.

    As in ``fit_mcgsm_lbfgs``, ``iterations`` is spent in steps of ``check_every`` iterations
    (without the held-out checks between them); torch's default ``max_eval`` (1.25 x the step's
    iterations) can end a step early, so the L-BFGS iterations done are counted separately.
    ``between`` (if given) runs before every step and after the last; its time is taken out of
    the timings.
    """
    from .refine import mcgsm_lbfgs

    work = copy.deepcopy(mcgsm).to(dtype)
    optimizer, closure = mcgsm_lbfgs(work, inputs.to(dtype), outputs.to(dtype), check_every)
    wall = cpu = 0.0
    done = 0
    while done < iterations:
        if between is not None:
            between()
        optimizer.param_groups[0]["max_iter"] = min(check_every, iterations - done)
        w, c = time.perf_counter(), time.process_time()
        optimizer.step(closure)
        wall, cpu = wall + time.perf_counter() - w, cpu + time.process_time() - c
        done += optimizer.param_groups[0]["max_iter"]
    if between is not None:
        between()
    state = optimizer.state[next(iter(work.parameters()))]
    return {"mcgsm": work, "wall_s": wall, "cpu_s": cpu, "lbfgs_iterations": int(state["n_iter"]),
            "evaluations": int(state["func_evals"])}


@torch.no_grad()
def mean_nll(mcgsm: MCGSM, inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """Mean negative log-likelihood (nats/px) of the whitened targets, computed in float64."""
    from .refine import _mean_nll

    return float(_mean_nll(copy.deepcopy(mcgsm).double(), inputs.double(), outputs.double()))


def benchmark(pixels: int = 20_000, valid_pixels: int = 20_000, iterations: int = 50, size: int = 64,
              seed: int = 0, gemm_size: int = 1024, gemm_reps: int = 5, reps: int = 1) -> dict[str, Any]:
    """Both precisions on the same pixels and initial parameters; see the module docstring.

    With ``reps`` > 1 the two precisions alternate and the median timings are reported (the
    trajectories are deterministic, so every repetition reaches the same parameters).
    """
    mcgsm, x, y, vx, vy = dead_leaves_pixels(pixels, valid_pixels, size, seed)
    flops = flops_per_pixel(mcgsm.dim_in, mcgsm.num_components, mcgsm.num_scales, mcgsm.num_features)
    dtypes = {"float64": torch.float64, "float32": torch.float32}
    start = {"train_nll": mean_nll(mcgsm, x, y), "valid_nll": mean_nll(mcgsm, vx, vy)}
    for dtype in dtypes.values():  # warm-up: the C kernels build and load on first use
        run_lbfgs(mcgsm, x[:512], y[:512], dtype, 1)
    timers = {key: gemm_timer(dtype, gemm_size) for key, dtype in dtypes.items()}
    trials: dict[str, list[dict[str, Any]]] = {name: [] for name in dtypes}
    for _ in range(reps):
        for name, dtype in dtypes.items():
            rates: dict[str, list[float]] = {key: [] for key in dtypes}

            def time_gemms(rates: dict[str, list[float]] = rates) -> None:
                for key, timer in timers.items():
                    rates[key].append(statistics.median(timer() for _ in range(gemm_reps)))

            trial = run_lbfgs(mcgsm, x, y, dtype, iterations, between=time_gemms)
            trial["gemm"] = {key: statistics.median(v) for key, v in rates.items()}
            trial["gemm_samples"] = rates
            trials[name].append(trial)
    runs: dict[str, dict[str, Any]] = {}
    n = x.shape[0]
    samples = {key: [r for done in trials.values() for t in done for r in t["gemm_samples"][key]] for key in dtypes}
    gemm = {key: statistics.median(v) for key, v in samples.items()}
    for name, done in trials.items():
        run = {key: done[-1][key] for key in ("lbfgs_iterations", "evaluations")}
        run["wall_s"] = statistics.median(t["wall_s"] for t in done)
        run["cpu_s"] = statistics.median(t["cpu_s"] for t in done)
        # each repetition against the GEMMs timed around it; the median of those fractions
        per_rep = [flops["total"] * n * t["evaluations"] / t["wall_s"] for t in done]
        achieved = flops["total"] * n * run["evaluations"] / run["wall_s"]
        run.update({
            "px_iter_per_s": n * run["lbfgs_iterations"] / run["wall_s"],
            "px_iter_per_cpu_s": n * run["lbfgs_iterations"] / run["cpu_s"],
            "px_eval_per_s": n * run["evaluations"] / run["wall_s"],
            "us_per_px_iter": 1e6 * run["wall_s"] / (n * max(run["lbfgs_iterations"], 1)),
            "gflops": achieved / 1e9,
            "frac_f64_gemm": statistics.median(a / t["gemm"]["float64"] for a, t in zip(per_rep, done)),
            "frac_f32_gemm": statistics.median(a / t["gemm"]["float32"] for a, t in zip(per_rep, done)),
            "frac_f64_gemm_reps": [a / t["gemm"]["float64"] for a, t in zip(per_rep, done)],
            "roofline_gflops": {key: [t["gemm"][key] / 1e9 for t in done] for key in dtypes},
            "train_nll": mean_nll(done[-1]["mcgsm"], x, y),
            "valid_nll": mean_nll(done[-1]["mcgsm"], vx, vy),
        })
        runs[name] = run
    return {
        "pixels": int(n), "valid_pixels": int(vx.shape[0]), "iterations": iterations, "image_size": size,
        "seed": seed, "reps": reps, "threads": torch.get_num_threads(), "device": device_name(torch.device("cpu")),
        "flops_per_px": flops, "gemm_size": gemm_size,
        "gemm_gflops": {k: v / 1e9 for k, v in gemm.items()},
        "gemm_gflops_range": {k: [min(v) / 1e9, max(v) / 1e9] for k, v in samples.items()},
        "start": start, "runs": runs,
        "speedup_f32": runs["float32"]["px_eval_per_s"] / runs["float64"]["px_eval_per_s"],
        "optimum_diff_train": runs["float32"]["train_nll"] - runs["float64"]["train_nll"],
        "optimum_diff_valid": runs["float32"]["valid_nll"] - runs["float64"]["valid_nll"],
    }


def format_report(r: dict[str, Any]) -> str:
    f = r["flops_per_px"]
    lines = [
        f"MCGSM L-BFGS refinement: {r['pixels']} dead-leaves pixels ({r['image_size']}x{r['image_size']} images), "
        f"{r['iterations']} iterations in training's steps of 25, median of {r['reps']} (wall), {r['device']}",
        f"FLOP per pixel and evaluation: {f['total']} ({f['gemm']} GEMM + {f['pointwise']} pointwise); "
        f"{r['gemm_size']}^3 GEMM, timed around every L-BFGS step (median, range): "
        f"{r['gemm_gflops']['float64']:.1f} ({r['gemm_gflops_range']['float64'][0]:.1f}-"
        f"{r['gemm_gflops_range']['float64'][1]:.1f}) GFLOP/s float64, {r['gemm_gflops']['float32']:.1f} "
        f"({r['gemm_gflops_range']['float32'][0]:.1f}-{r['gemm_gflops_range']['float32'][1]:.1f}) GFLOP/s float32",
        f"{'dtype':<8} {'iter':>5} {'evals':>5} {'wall s':>7} {'px*it/s':>10} {'px*it/CPU s':>11} {'us/px/it':>8} "
        f"{'GFLOP/s':>8} {'%f64GEMM':>8} {'%f32GEMM':>8} {'train NLL':>10} {'valid NLL':>10}",
    ]
    for name, run in r["runs"].items():
        lines.append(
            f"{name:<8} {run['lbfgs_iterations']:>5} {run['evaluations']:>5} {run['wall_s']:>7.2f} {run['px_iter_per_s']:>10.4g} "
            f"{run['px_iter_per_cpu_s']:>11.4g} {run['us_per_px_iter']:>8.2f} {run['gflops']:>8.2f} "
            f"{100 * run['frac_f64_gemm']:>7.1f}% {100 * run['frac_f32_gemm']:>7.1f}% {run['train_nll']:>10.5f} "
            f"{run['valid_nll']:>10.5f}"
        )
    if r["reps"] > 1:
        lines.append("float64 %f64GEMM by repetition: " + ", ".join(
            f"{100 * v:.1f}%" for v in r["runs"]["float64"]["frac_f64_gemm_reps"]))
    lines.append(
        f"float32 / float64 px*evaluations/s: {r['speedup_f32']:.2f}x; float32 - float64 NLL after {r['iterations']} iterations "
        f"(nats/px, scored in float64): train {r['optimum_diff_train']:+.2e}, held-out {r['optimum_diff_valid']:+.2e} "
        f"(start: train {r['start']['train_nll']:.5f})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ride.bench_mcgsm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pixels", type=int, default=20_000, help="training pixels (whitened neighbourhoods)")
    parser.add_argument("--valid-pixels", type=int, default=20_000, help="held-out pixels")
    parser.add_argument("--iterations", type=int, default=50, help="L-BFGS iterations as training counts them")
    parser.add_argument("--size", type=int, default=64, help="dead-leaves image size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--gemm-size", type=int, default=1024)
    parser.add_argument("--gemm-reps", type=int, default=5,
                        help="GEMMs per roofline sample (median); a sample before, between and after the L-BFGS steps")
    parser.add_argument("--reps", type=int, default=1, help="alternating repetitions of both precisions (median)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if min(args.pixels, args.valid_pixels, args.iterations, args.size, args.gemm_size, args.gemm_reps, args.reps) < 1:
        parser.error("--pixels, --valid-pixels, --iterations, --size, --gemm-size, --gemm-reps, --reps must be positive")
    if args.size < 6:
        parser.error("--size must be at least 6 (the width-5 neighbourhood scores (size-2) x (size-4) pixels)")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = benchmark(args.pixels, args.valid_pixels, args.iterations, args.size, args.seed, args.gemm_size,
                       args.gemm_reps, args.reps)
    print(format_report(result))
    if args.json:
        from pathlib import Path

        from .data import atomic_write

        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
