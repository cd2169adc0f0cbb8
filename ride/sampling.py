"""Ancestral sampling of RIDE: a skewed wavefront over the scored grid with a state cache.

Grid cell ``(i, j)`` (image pixel ``(i + r0, j + c0)``) reads its neighbourhood, whose top-right
input is the target of cell ``(i - 1, j + c0)``, and the SLSTM states of ``(i, j - 1)`` and
``(i - 1, j)``. At time ``t = j + k i`` with ``k = c0 + 1`` every one of those was computed at an
earlier time, so all cells of one ``t`` are sampled together: an ``H' x W'`` grid takes
``W' + k (H' - 1)`` sequential steps (1011 for 256x256 at width 5) instead of ``H' W'`` (64008).

The state cache holds one ``(h, c)`` per grid column and layer (plus a zero column for
``j = -1``): cell ``(i, j)`` reads its left state from column ``j - 1`` and its upper state from
column ``j`` and then overwrites column ``j``; no other cell touches those columns in between.
The per-pixel raster loop (``schedule="raster"``) runs the same code one cell per step.

Randomness is drawn up front, one uniform (mixture component, by inverse CDF) and one normal
per grid cell, so both schedules draw exactly the same sample from the same generator.
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from .neighborhood import check_images

if TYPE_CHECKING:
    from .model import RIDE

SCHEDULES = ("wavefront", "raster")


def _steps(gh: int, gw: int, k: int, schedule: str, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Row and column indices of the grid cells sampled at each sequential step."""
    if schedule == "raster":
        cells = [(i, j) for i in range(gh) for j in range(gw)]
        return [(torch.tensor([i], device=device), torch.tensor([j], device=device)) for i, j in cells]
    if schedule != "wavefront":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    steps = []
    for t in range(gw + k * (gh - 1)):
        rows = torch.arange(max(0, -((gw - 1 - t) // k)), min(gh - 1, t // k) + 1)
        if rows.numel():
            steps.append((rows.to(device), (t - k * rows).to(device)))
    return steps


def _draw_mcgsm(
    mcgsm: torch.nn.Module, hidden: torch.Tensor, uniform: torch.Tensor, normal: torch.Tensor
) -> torch.Tensor:
    """A draw from the MCGSM given one uniform (component by inverse CDF) and one normal per input."""
    gate, means = mcgsm._joint_logits(hidden)
    cdf = torch.softmax(gate.flatten(-2), -1).cumsum(-1)
    idx = (cdf < uniform.unsqueeze(-1)).sum(-1).clamp_max(cdf.shape[-1] - 1)
    alpha = mcgsm.log_precisions().flatten()[idx]
    mean = means.gather(-1, (idx // mcgsm.num_scales).unsqueeze(-1)).squeeze(-1)
    return mean + normal * (-0.5 * alpha).exp()


def _grid_mask(model: "RIDE", mask: torch.Tensor | None, num: int, height: int, width: int,
               device: torch.device) -> torch.Tensor:
    """The pixels to resample as an ``N x H' x W'`` boolean grid (default: every scored pixel)."""
    gh, gw = model.neighborhood.grid_shape(height, width)
    if mask is None:
        return torch.ones(num, gh, gw, dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask, device=device).bool()
    if mask.shape not in ((height, width), (num, height, width)):
        raise ValueError(f"mask must have shape {(height, width)} or {(num, height, width)}, got {tuple(mask.shape)}")
    mask = mask.expand(num, height, width)
    rs, cs = model.neighborhood.target_slices(height, width)
    inside = mask[:, rs, cs]
    if int(inside.sum()) != int(mask.sum()):
        r0, c0 = model.neighborhood.target
        raise ValueError(
            f"mask selects pixels outside the scored grid (the top {r0} rows and the {c0} columns at "
            f"each side are conditioned on, never sampled); move the region inside the image"
        )
    return inside


@torch.no_grad()
def sample(
    model: "RIDE",
    num: int,
    height: int,
    width: int,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    return_log_prob: bool = False,
    progress: bool = False,
    schedule: str = "wavefront",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Ancestral samples of ``model``: ``num`` images of ``height x width`` (see :meth:`RIDE.sample`).

    ``mask`` (``H x W`` or ``N x H x W``, scored pixels only) restricts sampling to those pixels;
    the others keep ``init``'s values and are conditioned on. With ``return_log_prob`` also
    returns the conditional log-density (nats, whitening Jacobian included) of every scored
    pixel's final value, ``N x H' x W'``: the same quantity as ``model.log_prob`` of the result.
    """
    nb = model.neighborhood
    nb.check_image_shape(height, width)
    ref = model.mcgsm.predictors
    white = model.whitening
    if init is None:
        std = (1.0 / white.scale_y.square() + white.predictor.square().sum()).sqrt()
        noise = torch.randn(num, height, width, generator=generator, dtype=ref.dtype, device=ref.device)
        images = white.mean_y + std * noise
    else:
        check_images(init)
        if init.shape != (num, height, width):
            raise ValueError(f"init must have shape {(num, height, width)}, got {tuple(init.shape)}")
        images = init.to(ref).clone()
    gh, gw = nb.grid_shape(height, width)
    resample = _grid_mask(model, mask, num, height, width, ref.device)
    uniform = torch.rand(num, gh, gw, generator=generator, dtype=ref.dtype, device=ref.device)
    normal = torch.randn(num, gh, gw, generator=generator, dtype=ref.dtype, device=ref.device)

    r0, c0 = nb.target
    dr, dc = nb.mask().nonzero(as_tuple=True)  # row-major, as Neighborhood.extract orders inputs
    dr, dc = dr.to(ref.device), dc.to(ref.device)
    steps = _steps(gh, gw, c0 + 1, schedule, ref.device)
    if not return_log_prob:
        # Cells after the last resampled one change nothing: stop there.
        flat = resample.any(0)
        last = max((s for s, (rows, cols) in enumerate(steps) if bool(flat[rows, cols].any())), default=-1)
        steps = steps[: last + 1]
    layers = list(model.slstm.layers)
    size = model.slstm.hidden_size
    states = [(ref.new_zeros(num, gw + 1, size), ref.new_zeros(num, gw + 1, size)) for _ in layers]
    log_prob = ref.new_zeros(num, gh, gw) if return_log_prob else None
    for rows, cols in tqdm(steps, desc="sampling", unit="step", disable=not progress, leave=False):
        window = images[:, rows[:, None] + dr, cols[:, None] + dc]  # N x cells x dim
        x = white.whiten_inputs(window)
        h = x
        for layer, (hs, cs) in zip(layers, states):
            h, c = layer.step(h, hs[:, cols], cs[:, cols], hs[:, cols + 1], cs[:, cols + 1])
            hs[:, cols + 1] = h
            cs[:, cols + 1] = c
        current = images[:, rows + r0, cols + c0]
        chosen = resample[:, rows, cols]
        if bool(chosen.any()):
            y = _draw_mcgsm(model.mcgsm, h, uniform[:, rows, cols], normal[:, rows, cols])
            current = torch.where(chosen, white.unwhiten_targets(x, y), current)
            images[:, rows + r0, cols + c0] = current
        if log_prob is not None:
            log_prob[:, rows, cols] = model.mcgsm.log_prob(h, white.whiten_targets(x, current)) + white.log_jacobian
    return (images, log_prob) if return_log_prob else images


def benchmark(
    model: "RIDE | None" = None,
    size: int = 256,
    batches: tuple[int, ...] = (1, 8, 32),
    raster_rows: int = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Sampling throughput (sampled pixels per second) of the wavefront against the raster loop.

    Both schedules run in this process on the same model (default: the paper's size, 64 hidden
    units, 1 layer, random weights). The raster loop costs the same per pixel at any height, so
    it is timed on a ``size``-wide strip of ``raster_rows`` scored rows; the wavefront on the full
    ``size x size`` image. Returns one record per batch size with wall-clock and process CPU
    time rates (the latter is steadier on a shared machine) and ``speedup`` = the wall-clock ratio.
    """
    from .model import RIDE

    if model is None:
        torch.manual_seed(seed)
        model = RIDE(nb_size=5, num_hidden=64, num_layers=1)
    nb = model.neighborhood
    records = []
    for batch in batches:
        timings = {}
        for schedule, height in (("wavefront", size), ("raster", raster_rows + nb.rows - 1)):
            gen = torch.Generator(device=model.mcgsm.predictors.device).manual_seed(seed)
            start, cpu = time.perf_counter(), time.process_time()
            sample(model, batch, height, size, generator=gen, schedule=schedule)
            if model.mcgsm.predictors.device.type == "cuda":
                torch.cuda.synchronize()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            pixels = batch * math.prod(nb.grid_shape(height, size))
            timings[schedule] = (seconds, pixels / seconds, pixels / cpu)
        records.append({
            "size": size, "batch": batch, "raster_rows": raster_rows, "threads": torch.get_num_threads(),
            "wavefront_s": timings["wavefront"][0], "wavefront_px_per_s": timings["wavefront"][1],
            "raster_px_per_s": timings["raster"][1], "speedup": timings["wavefront"][1] / timings["raster"][1],
            "wavefront_px_per_cpu_s": timings["wavefront"][2], "raster_px_per_cpu_s": timings["raster"][2],
        })
    return records


def main(argv: list[str] | None = None) -> int:
    """``python -m ride.sampling``: sampling px/s (wavefront vs raster) and inpainting seconds per sweep."""
    import argparse
    import json
    import os

    from .inpaint import benchmark as inpaint_benchmark
    from .provenance import cpu_model, git_commit

    parser = argparse.ArgumentParser(prog="python -m ride.sampling", description=main.__doc__)
    parser.add_argument("--size", type=int, default=256, help="sampled images are SIZE x SIZE")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated numbers of images sampled at once")
    parser.add_argument("--raster-rows", type=int, default=8, help="scored rows of the raster loop's strip")
    parser.add_argument("--inpaint-size", type=int, default=160, help="inpainted image size (0: skip)")
    parser.add_argument("--hole", type=int, default=71)
    parser.add_argument("--sweeps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    record: dict[str, Any] = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "git_commit": git_commit(),
                              "load_average": os.getloadavg(), "torch": torch.__version__}
    record["sampling"] = benchmark(size=args.size, batches=tuple(int(b) for b in args.batches.split(",")),
                                   raster_rows=args.raster_rows)
    for r in record["sampling"]:
        print(f"sample {r['size']}x{r['size']} batch {r['batch']:>3}: wavefront {r['wavefront_px_per_s']:.4g} px/s "
              f"({r['wavefront_px_per_cpu_s']:.4g} per CPU s), raster {r['raster_px_per_s']:.4g} px/s "
              f"({r['raster_px_per_cpu_s']:.4g} per CPU s), speedup {r['speedup']:.1f}x")
    if args.inpaint_size:
        r = record["inpainting"] = inpaint_benchmark(size=args.inpaint_size, hole=args.hole, sweeps=args.sweeps)
        print(f"inpaint {r['size']}x{r['size']}, hole {r['hole']}: {r['blocks']} blocks in {r['colours']} batches; "
              f"init {r['init_s']:.2f} s ({r['init_cpu_s']:.2f} CPU s), sweeps "
              + ", ".join(f"{w:.2f} s ({c:.2f} CPU s)" for w, c in zip(r["sweep_s"], r["sweep_cpu_s"])))
    record["load_average_after"] = os.getloadavg()
    if args.json:
        from .data import atomic_write

        text = json.dumps(record, indent=2) + "\n"
        atomic_write(args.json, lambda tmp: open(tmp, "w").write(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
