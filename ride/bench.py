"""Throughput benchmark of RIDE training (``ride bench``) and evaluation (``ride bench --eval``).

Training throughput is forward + backward of ``model.loss`` (whitening -> SLSTM stack -> MCGSM),
without the optimiser step, in **scored pixels per second**: an ``H x W`` patch with the
neighbourhood of width 5 scores ``(H - 2) x (W - 4)`` pixels (a 22x22 patch scores 20x18 = 360).

For every configuration (layers, hidden units, patch size, batch) one process measures,
interleaved rep by rep so that a shared machine slows all of them alike (medians are reported):

* ``px_per_s``: the selected SLSTM implementation (``--impl``, default ``auto``);
* ``per_pixel_px_per_s``: the per-pixel raster schedule (``impl="reference"``: one cell at a
  time, batched over images, as the original Caffe code did);
* ``gemm_flops``: a dense float32 GEMM (``--gemm-size``, default 2048 on CPU, 8192 on CUDA),
  timed right before and right after every timed step of the selected implementation (median
  over all of them), and ``roofline_px_per_s = gemm_flops / flops_per_px``;
* with ``--cuda-graph`` (CUDA): the selected implementation's step is replayed from a CUDA graph
  (``ride.cuda_graph.GraphedLoss``, as training on CUDA does by default) and the same step
  eager is timed in the same reps (``eager_px_per_s``, ``graph_over_eager``);
* ``frac_roofline``: the median over reps of the step's px/s over the roofline of the two GEMMs
  around it (``frac_roofline_reps``). A shared machine's speed drifts by tens of percent within
  seconds and moves the steps and the GEMMs alike; the ratio of the two medians taken apart is
  kept as ``frac_roofline_unpaired`` (``px_per_s / roofline_px_per_s``), which that drift
  scatters more (results/benchmarks/README.md).

FLOPs per scored pixel of one training step (forward + backward = 3x the forward GEMMs; the
pointwise work is not counted)::

    flops_per_px = 3 * ( sum_l 2 * 5H * (in_l + R)          # SLSTM layer l: input + recurrent GEMMs
                        + 2*H*F + 2*F*K + 2*H*K )          # MCGSM: features, energies, means

with ``H`` hidden units, ``in_1`` = neighbourhood size (12 for width 5), ``in_l = H`` above,
``R = 2H`` (``4H`` extended), ``F`` MCGSM features and ``K`` components (32 and 32). For 1 layer,
64 hidden: 3 * (89,600 + 10,240) = 299,520 FLOP/px.

Peak memory (``peak_mem_mb``): on CPU each configuration runs once more in a fresh subprocess
that builds the model and data, resets the kernel's resident-set high-water mark
(``/proc/self/clear_refs``), runs two training steps and reads ``VmHWM``: ``peak_mem_mb`` is
that peak minus the resident set before the steps (the training step's working memory),
``peak_rss_mb`` the process's absolute peak during the steps (Python, torch and all). Where
``clear_refs`` is not writable it falls back to ``getrusage`` ``ru_maxrss`` (then small steps can
read 0, hidden below the earlier high-water mark). On CUDA
``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` over a training step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch

from .neighborhood import Neighborhood
from .provenance import device_name

NEIGHBORHOOD = Neighborhood(5)  # the paper's default width: 12 inputs
COMPONENTS, SCALES, FEATURES = 32, 4, 32


def scored_pixels(patch: int) -> int:
    """Scored pixels of a ``patch x patch`` image (the neighbourhood's grid: (H-2)(W-4) for width 5)."""
    rows, cols = NEIGHBORHOOD.grid_shape(patch, patch)
    return rows * cols


def flops_per_pixel(layers: int, hidden: int, extended: bool = False, nb_dim: int = NEIGHBORHOOD.dim,
                    components: int = COMPONENTS, features: int = FEATURES) -> int:
    """GEMM FLOPs per scored pixel of one training step (see the module docstring)."""
    rec = (4 if extended else 2) * hidden
    forward = 0
    for layer in range(layers):
        size_in = nb_dim if layer == 0 else hidden
        forward += 2 * 5 * hidden * (size_in + rec)
    top = hidden if layers else nb_dim
    forward += 2 * top * features + 2 * features * components + 2 * top * components
    return 3 * forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gemm_runner(device: torch.device, size: int) -> Callable[[], float]:
    """Returns a function that times one ``size^3`` float32 GEMM and returns FLOP/s."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    out = torch.empty(size, size, device=device)

    def run() -> float:
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        return 2.0 * size**3 / (time.perf_counter() - start)

    run()
    return run


def _make_model(layers: int, hidden: int, patch: int, batch: int, device: torch.device, extended: bool = False):
    from .model import RIDE

    torch.manual_seed(0)
    model = RIDE(nb_size=NEIGHBORHOOD.n, num_hidden=hidden, num_layers=layers, extended=extended,
                 num_components=COMPONENTS, num_scales=SCALES, num_features=FEATURES)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, patch, patch, generator=gen)
    # Smooth-ish images so that the whitening has structure to fit; values are irrelevant to speed.
    images = (images + images.roll(1, 1) + images.roll(1, 2)) / 3
    model.fit_whitening(images)
    return model.to(device), images.to(device)


def _train_step(model, images, impl: str) -> None:
    model.impl = impl
    for p in model.parameters():
        p.grad = None
    loss = model.loss(images)
    loss.backward()


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure_config(layers: int, hidden: int, patch: int, batch: int, device: torch.device, impl: str,
                   reps: int, per_pixel_reps: int, gemm: Callable[[], float], extended: bool = False,
                   baselines: tuple[str, ...] = ("reference",), cuda_graph: bool = False) -> dict[str, Any]:
    from .kernels import blas_pointers, c_kernels, num_groups, use_c_kernels
    from .slstm import resolve_impl

    model, images = _make_model(layers, hidden, patch, batch, device, extended)
    px = batch * scored_pixels(patch)
    _train_step(model, images, impl)  # warm-up (also builds the C kernels once)
    timed: Callable[[], Any] = lambda: _train_step(model, images, impl)  # noqa: E731
    steps = {base: (lambda base=base: _train_step(model, images, base)) for base in baselines}
    if cuda_graph:
        # The selected implementation replayed from a CUDA graph, and the same steps eager beside it.
        from .cuda_graph import GraphedLoss

        model.impl = impl
        graphed = GraphedLoss(model, images)
        steps["eager"] = timed
        timed = lambda: graphed(images)  # noqa: E731
    times: dict[str, list[float]] = {name: [] for name in [impl, *steps]}
    flops: list[float] = []
    fracs: list[float] = []
    fpp = flops_per_pixel(layers, hidden, extended)
    for rep in range(max(reps, per_pixel_reps)):
        for base, fn in steps.items():
            if rep < (reps if base == "eager" else per_pixel_reps):
                times[base].append(_time(fn, device))
        if rep < reps:
            before = gemm()
            step = _time(timed, device)
            after = gemm()
            times[impl].append(step)
            flops += [before, after]
            fracs.append(px / step / ((before + after) / 2 / fpp))
    gemm_flops = statistics.median(flops)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    record: dict[str, Any] = {
        "layers": layers,
        "hidden": hidden,
        "extended": extended,
        "patch": patch,
        "batch": batch,
        "device": device_name(device),
        "impl": resolve_impl(impl, images),
        "scored_px_per_step": px,
        "step_s": med[impl],
        "px_per_s": px / med[impl],
        "flops_per_px": fpp,
        "gemm_flops": gemm_flops,
        "roofline_px_per_s": gemm_flops / fpp,
        "reps": reps,
        "threads": torch.get_num_threads(),
    }
    record["c_kernels"] = c_kernels() is not None
    record["blas_in_kernels"] = bool(blas_pointers())
    # Image groups of the training step's sweeps (one per thread where they apply, ride/kernels/fused_slstm.py).
    record["image_groups"] = (num_groups(batch, device, use_c_kernels(images), training=True)
                              if record["impl"] == "fused" else 1)
    if "reference" in med:
        record["per_pixel_px_per_s"] = px / med["reference"]
        record["per_pixel_step_s"] = med["reference"]
        record["speedup_vs_per_pixel"] = record["px_per_s"] / record["per_pixel_px_per_s"]
    else:
        record["per_pixel_px_per_s"] = None
        record["speedup_vs_per_pixel"] = None
    if "wavefront" in med:
        record["wavefront_px_per_s"] = px / med["wavefront"]
    record["cuda_graph"] = cuda_graph
    if "eager" in med:
        record["eager_px_per_s"] = px / med["eager"]
        record["graph_over_eager"] = med["eager"] / med[impl]
    record["frac_roofline"] = statistics.median(fracs)
    record["frac_roofline_unpaired"] = record["px_per_s"] / record["roofline_px_per_s"]
    record["frac_roofline_reps"] = fracs
    return record


_MEM_CHILD = """
import ctypes, json, resource, sys, torch
from ride.bench import _make_model, _train_step

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return None

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
if cfg.get("tune_malloc"):
    from ride.kernels import tune_malloc
    tune_malloc()
model, images = _make_model(cfg["layers"], cfg["hidden"], cfg["patch"], cfg["batch"], torch.device("cpu"), cfg["extended"])
try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand memory freed while building back to the OS
except OSError:
    pass
before = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark VmHWM to the current RSS (Linux >= 4.0)
    method = "VmHWM"
except OSError:
    before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
for _ in range(2):
    _train_step(model, images, cfg["impl"])
after = status("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "method": method}))
"""


def peak_memory(layers: int, hidden: int, patch: int, batch: int, device: torch.device, impl: str,
                extended: bool = False, tune_malloc: bool = False) -> dict[str, float | None]:
    """Peak memory of a training step: CPU via a fresh subprocess's maxrss, CUDA via the allocator."""
    if device.type == "cuda":
        model, images = _make_model(layers, hidden, patch, batch, device, extended)
        _train_step(model, images, impl)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _train_step(model, images, impl)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del model, images
        return {"peak_mem_mb": (peak - base) / 2**20, "peak_total_mb": peak / 2**20}
    cfg = {"layers": layers, "hidden": hidden, "patch": patch, "batch": batch, "impl": impl,
           "extended": extended, "threads": torch.get_num_threads(), "tune_malloc": tune_malloc}
    try:
        out = subprocess.run([sys.executable, "-c", _MEM_CHILD, json.dumps(cfg)], capture_output=True,
                             text=True, check=True, timeout=1800)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        print(f"ride bench: memory probe failed for {cfg}: {exc}", file=sys.stderr)
        return {"peak_mem_mb": None, "peak_rss_mb": None}
    return {"peak_mem_mb": (res["after_kb"] - res["before_kb"]) / 1024, "peak_rss_mb": res["after_kb"] / 1024,
            "mem_method": res["method"]}


def best_batch(layers: int, hidden: int, patch: int, device: torch.device, impl: str, candidates: list[int],
               extended: bool = False) -> tuple[int, dict[int, float]]:
    """Batch size with the highest training px/s among ``candidates`` (best of three timed steps)."""
    rates: dict[int, float] = {}
    for batch in candidates:
        model, images = _make_model(layers, hidden, patch, batch, device, extended)
        _train_step(model, images, impl)
        t = min(_time(lambda: _train_step(model, images, impl), device) for _ in range(3))
        rates[batch] = batch * scored_pixels(patch) / t
        del model, images
    return max(rates, key=rates.get), rates


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


_HEAD = (f"{'layers':>6} {'hidden':>6} {'patch':>5} {'batch':>6} {'impl':>11} {'px/s':>10} {'per-px px/s':>11} "
         f"{'speedup':>7} {'roofline':>10} {'%roof':>6} {'mem MB':>7} {'rss MB':>7}")


def format_row(r: dict[str, Any]) -> str:
    batch = f"{r['batch']}{'*' if r.get('best_batch') else ''}"
    impl = f"{r['impl']}{'+graph' if r.get('cuda_graph') else ''}"
    speedup = f"{r['speedup_vs_per_pixel']:.1f}x" if r.get("speedup_vs_per_pixel") else "-"
    return (
        f"{r['layers']:>6} {r['hidden']:>6} {r['patch']:>5} {batch:>6} {impl:>11} {r['px_per_s']:>10.4g} "
        f"{_fmt(r.get('per_pixel_px_per_s'), '>11.4g'):>11} {speedup:>7} {r['roofline_px_per_s']:>10.4g} "
        f"{100 * r['frac_roofline']:>5.1f}% {_fmt(r.get('peak_mem_mb'), '>7.0f'):>7} {_fmt(r.get('peak_rss_mb'), '>7.0f'):>7}"
    )


def print_table(records: list[dict[str, Any]], file=None) -> None:
    file = file or sys.stdout
    print(_HEAD, file=file)
    print("-" * len(_HEAD), file=file)
    for r in records:
        print(format_row(r), file=file)


def run_eval(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time the exact log-likelihood of 100 256x256 images in 64x64 tiles for RIDE 1 layer, 64 hidden."""
    from .deadleaves import generate
    from .evaluate import evaluate
    from .model import RIDE

    images = torch.from_numpy(generate(args.eval_images, args.eval_size, seed=0))
    torch.manual_seed(0)
    model = RIDE(nb_size=NEIGHBORHOOD.n, num_hidden=64, num_layers=1)
    model.fit_whitening(images[:10])
    model = model.to(device).eval()
    model.impl = args.impl
    _sync(device)
    start = time.perf_counter()
    result = evaluate(model, images, tile=64, batch_size=args.eval_batch)
    _sync(device)
    seconds = time.perf_counter() - start
    tiles = result.get("num_tiles")
    return {
        "mode": "eval",
        "device": device_name(device),
        "impl": model.impl,
        "images": args.eval_images,
        "size": args.eval_size,
        "tiles": tiles,
        "images_source": "dead leaves (ride.deadleaves.generate, seed 0)",
        "seconds": seconds,
        "scored_px_per_s": tiles * scored_pixels(64) / seconds if tiles else None,
        "bits_per_pixel": result.get("bits_per_pixel"),
        "target_s": 60.0,
        "met": seconds <= 60.0,
    }


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


DESCRIPTION = __doc__.split("\n\n")[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ride bench`` (also ``python -m ride.bench``)."""
    p.add_argument("--layers", type=_ints, default=[1, 2, 3])
    p.add_argument("--hidden", type=_ints, default=[64, 128])
    p.add_argument("--patch", type=_ints, default=[8, 22, 64])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--best-batch", type=_ints, default=None, metavar="B1,B2,...",
                   help="also search these batch sizes and add a record for the fastest one "
                        "(default: 16,50,128,512 on CPU, 50,128,256,512,1024 on CUDA)")
    p.add_argument("--max-batch-px", type=int, default=None,
                   help="skip search candidates whose step scores more pixels (default 250k on CPU, 4M on CUDA)")
    p.add_argument("--no-best-batch", action="store_true", help="skip the best-batch search")
    p.add_argument("--extended", action="store_true", help="the extended SLSTM (cell states in the gates)")
    p.add_argument("--impl", default="auto", help="SLSTM implementation to measure (default auto)")
    p.add_argument("--wavefront", action="store_true", help="also time impl='wavefront' in the same reps")
    p.add_argument("--cuda-graph", action="store_true",
                   help="CUDA: time the selected implementation's step replayed from a CUDA graph (ride.cuda_graph, "
                        "as training on CUDA does unless RIDE_CUDA_GRAPH=0), and the eager step beside it")
    p.add_argument("--reps", type=int, default=5, help="timed training steps per configuration")
    p.add_argument("--per-pixel-reps", type=int, default=2, help="timed steps of the per-pixel schedule")
    p.add_argument("--max-per-pixel-px", type=int, default=200_000,
                   help="skip the per-pixel schedule where a step scores more pixels (it is slow)")
    p.add_argument("--gemm-size", type=int, default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--tune-malloc", action="store_true",
                   help="call ride.kernels.tune_malloc() first (glibc keeps freed memory: no page faults per step)")
    p.add_argument("--quick", action="store_true", help="1 layer, 64 hidden, 8x8 and 22x22, 2 reps (< 60 s)")
    p.add_argument("--eval", action="store_true", help="time the evaluation of 100 256x256 images in 64x64 tiles")
    p.add_argument("--eval-images", type=int, default=100)
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument("--eval-batch", type=int, default=64, help="tiles per log_prob call")
    p.add_argument("--json", metavar="FILE", help="write the records (one per configuration) as a JSON list")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m ride.bench`` (``ride bench`` registers :func:`add_arguments`)."""
    p = argparse.ArgumentParser(prog="ride bench", description=DESCRIPTION)
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m ride.bench [options]``: the same as ``ride bench [options]``."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed options ask for; prints a table, writes ``--json``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tune_malloc:
        from .kernels import tune_malloc

        print(f"ride bench: tune_malloc() -> {tune_malloc()}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("ride bench: CUDA is not available", file=sys.stderr)
        return 2
    if args.cuda_graph and device.type != "cuda":
        print(f"ride bench: --cuda-graph needs --device cuda (got {device})", file=sys.stderr)
        return 2
    print(f"ride bench: device {device_name(device)}, torch {torch.__version__}, {os.cpu_count()} CPUs; "
          "pixels are scored pixels ((H-2)x(W-4) per HxW patch), training = forward + backward of the loss")
    records: list[dict[str, Any]] = []
    if args.eval:
        rec = run_eval(args, device)
        print(f"eval: {rec['images']} images {rec['size']}x{rec['size']} -> {rec['tiles']} tiles of 64x64, "
              f"RIDE 1 layer 64 hidden ({rec['impl']}, {rec['images_source']}): {rec['seconds']:.1f} s, "
              f"{_fmt(rec['scored_px_per_s'], '.3g')} px/s, {_fmt(rec['bits_per_pixel'], '.4f')} bit/px "
              f"(target <= 60 s: {'met' if rec['met'] else 'MISSED'})")
        records.append(rec)
    else:
        layers, hidden, patches, reps, pp_reps = args.layers, args.hidden, args.patch, args.reps, args.per_pixel_reps
        if args.quick:
            layers, hidden, patches, reps, pp_reps = [1], [64], [8, 22], 2, 1
        if args.no_best_batch or args.quick:
            candidates: list[int] = []
        elif args.best_batch is not None:
            candidates = args.best_batch
        else:
            candidates = [50, 128, 256, 512, 1024] if device.type == "cuda" else [16, 50, 128, 512]
        max_px = args.max_batch_px or (4_000_000 if device.type == "cuda" else 250_000)
        size = args.gemm_size or (8192 if device.type == "cuda" else 2048)
        gemm = _gemm_runner(device, size)
        baselines = ("reference", "wavefront") if args.wavefront else ("reference",)
        print(_HEAD)
        print("-" * len(_HEAD))
        for n_layers in layers:
            for n_hidden in hidden:
                for patch in patches:
                    batches = [(args.batch, False)]
                    fits = [b for b in candidates if b * scored_pixels(patch) <= max_px or b == args.batch]
                    if fits:
                        best, rates = best_batch(n_layers, n_hidden, patch, device, args.impl, fits, args.extended)
                        if best != args.batch:
                            batches.append((best, True))
                    for batch, is_best in batches:
                        px = batch * scored_pixels(patch)
                        bases = tuple(b for b in baselines if b != "reference" or px <= args.max_per_pixel_px)
                        rec = measure_config(n_layers, n_hidden, patch, batch, device, args.impl, reps, pp_reps,
                                             gemm, args.extended, bases, args.cuda_graph)
                        rec["best_batch"] = is_best
                        if fits:
                            rec["batch_search"] = {str(k): v for k, v in rates.items()}
                        if not args.no_memory:
                            rec.update(peak_memory(n_layers, n_hidden, patch, batch, device, args.impl, args.extended,
                                                   args.tune_malloc))
                        else:
                            rec.update({"peak_mem_mb": None})
                        rec["gemm_size"] = size
                        records.append(rec)
                        print(format_row(rec), flush=True)
                        if "eager_px_per_s" in rec:
                            print(f"{'':>6} the same step eager: {rec['eager_px_per_s']:.4g} px/s; the graph replays it "
                                  f"{rec['graph_over_eager']:.2f}x as fast", flush=True)
                        if args.json:  # after every configuration, so that a cut-short run keeps its records
                            _write_json(args.json, records)
        print("\n(* = best batch of the search; speedup = px/s over the per-pixel schedule (impl='reference') in "
              f"the same reps; roofline = measured {size}^3 GEMM FLOP/s / GEMM FLOPs per scored pixel; %roof = median "
              "over reps of the step against the GEMMs timed just before and after it; mem MB = "
              "peak working memory of a training step, rss MB = peak resident set of that process)")
    if args.json:
        _write_json(args.json, records)
    return 0


def _write_json(path: str, records: list[dict[str, Any]]) -> None:
    with open(path, "w") as fh:
        json.dump(records, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    raise SystemExit(main())
