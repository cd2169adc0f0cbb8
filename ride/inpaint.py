"""Inpainting by Metropolis-within-Gibbs sampling of the posterior (paper section 3.4, eq. 9).

Target: ``p(x_hole | x_rest) ∝ p(x)``, the model's density of the whole image. The hole is first
filled by ancestral sampling (``candidates`` draws, the one of highest ``p(x)`` kept). A sweep
then visits overlapping ``block x block`` squares (stride ``stride``) covering the hole; block
``B`` gets a proposal ``x'_B`` by ancestral sampling given its causal past, i.e. from
``q(x'_B) = prod_{k in B} p(x'_k | x'_<k)``, and is accepted with probability ``min(1, a)``::

    a = p(x') q(x_B) / (p(x) q(x'_B)) = prod_{k not in B, k after B's first pixel} p(x_k | x'_<k) / p(x_k | x_<k)

(eq. 9: the block's own factors cancel against the proposal, pixels before the block do not
depend on it). Densities are computed on a ``window x window`` crop around the block (19, as in
the paper; clamped to the image), with zero SLSTM states at its border: each step is an exact
Metropolis step for that windowed density, and exact for the full image when the model's
conditionals do not reach beyond the window (the Gaussian field of the tests).

Flips (``flip=``), one of none / horizontal / vertical / both drawn per sweep:

``"proposal"`` (default)
    The proposal is ancestral sampling in the flipped crop, so the block is drawn given the pixels
    below and/or to the right of it: ``q_f(x'_B) = prod p_f(x'_k | ...)`` in the flipped scan
    order. The target stays the unflipped ``p`` and the acceptance ratio is the full
    ``p(x') q_f(x_B) / (p(x) q_f(x'_B))`` (it reduces to eq. 9 when no flip is drawn), so every
    step keeps detailed balance with respect to ``p`` however asymmetric the model.
``"image"``
    The paper's wording: the whole image is flipped for a sweep and updated with eq. 9 under the
    same model. As the model is not flip-invariant, such a sweep targets ``p(flip(x))`` instead of
    ``p(x)``: the chain alternates between targets (exact only for a flip-invariant model).
``"none"``
    No flips: eq. 9 sweeps in the model's scan order only.

Blocks are coloured greedily so that no block of a colour lies in another's window; the blocks of
one colour then read and write disjoint pixels, so updating them at once equals updating them
one after the other, and each colour is one batched sampler call. The run is seeded (one
``torch.Generator``), and with ``state_path`` it saves image, sweep, generator state and history
atomically after every sweep; ``resume`` continues from there and retraces the uninterrupted run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import load_verified, save_verified
from .data import atomic_write
from .errors import ConfigError

FLIP_MODES = ("proposal", "image", "none")
# (flip rows, flip columns): identity, vertical, horizontal, both.
FLIPS = ((False, False), (True, False), (False, True), (True, True))
FLIP_NAMES = {(False, False): "none", (True, False): "vertical", (False, True): "horizontal", (True, True): "both"}


@dataclass
class InpaintConfig:
    """Parameters of the sampler (REFERENCE.md's protocol by default; stride is our choice)."""

    sweeps: int = 100
    block: int = 5
    stride: int = 3
    window: int = 19
    candidates: int = 5
    flip: str = "proposal"

    def validate(self, model: nn.Module) -> None:
        r0, c0 = model.neighborhood.target
        if self.flip not in FLIP_MODES:
            raise ConfigError(f"flip must be one of {FLIP_MODES}, got {self.flip!r}")
        for name in ("sweeps", "candidates"):
            if getattr(self, name) < (0 if name == "sweeps" else 1):
                raise ConfigError(f"{name} must be {'>= 0' if name == 'sweeps' else '>= 1'}, got {getattr(self, name)}")
        if not 1 <= self.stride <= self.block:
            raise ConfigError(
                f"stride must be in 1..block ({self.block}) so that blocks cover the hole, got {self.stride}"
            )
        if self.window < self.block + 2 * max(r0, c0):
            raise ConfigError(
                f"window {self.window} is too small: the block ({self.block}) needs {max(r0, c0)} pixels of "
                f"context on each side; use --window >= {self.block + 2 * max(r0, c0)}"
            )


@dataclass
class InpaintResult:
    image: torch.Tensor  # H x W, the final state of the chain
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per sweep
    init: dict[str, Any] = field(default_factory=dict)  # the ancestral initialisation

    def summary(self) -> dict[str, Any]:
        return {"init": self.init, "sweeps": self.history}


def hole_mask(height: int, width: int, size: int = 71, top: int | None = None, left: int | None = None) -> torch.Tensor:
    """A square ``size x size`` hole (default: centred) as an ``H x W`` boolean mask."""
    top = (height - size) // 2 if top is None else top
    left = (width - size) // 2 if left is None else left
    if size < 1 or top < 0 or left < 0 or top + size > height or left + size > width:
        raise ConfigError(f"hole of {size}x{size} at row {top}, column {left} does not fit a {height}x{width} image")
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top : top + size, left : left + size] = True
    return mask


def _check_inputs(model: nn.Module, image: torch.Tensor, mask: torch.Tensor) -> None:
    if image.dim() != 2 or not torch.is_floating_point(image) or not torch.isfinite(image).all():
        raise ConfigError(f"image must be a finite float H x W tensor, got {image.dtype} {tuple(image.shape)}")
    if mask.shape != image.shape:
        raise ConfigError(f"mask must have the image's shape {tuple(image.shape)}, got {tuple(mask.shape)}")
    if not mask.any():
        raise ConfigError("mask selects no pixel: nothing to inpaint")
    r0, c0 = model.neighborhood.target
    rows, cols = mask.nonzero(as_tuple=True)
    height, width = image.shape
    if rows.min() < r0 or rows.max() > height - 1 - r0 or cols.min() < c0 or cols.max() > width - 1 - c0:
        raise ConfigError(
            f"the hole must keep {r0} rows to the top and bottom and {c0} columns to each side of the image "
            f"(the pixels the model conditions on, also after a flip); rows {int(rows.min())}..{int(rows.max())}, "
            f"columns {int(cols.min())}..{int(cols.max())} of a {height}x{width} image do not"
        )


def _starts(lo: int, hi: int, block: int, stride: int) -> list[int]:
    """Block origins covering ``lo..hi`` (inclusive) with the given stride, the last flush with ``hi``."""
    last = max(lo, hi - block + 1)
    starts = list(range(lo, last + 1, stride))
    return starts if starts[-1] == last else starts + [last]


@dataclass(frozen=True)
class _Block:
    top: int
    left: int
    win_top: int
    win_left: int


def plan_blocks(mask: torch.Tensor, cfg: InpaintConfig) -> tuple[tuple[int, int], list[list[_Block]]]:
    """Window shape and the blocks of one sweep, grouped into colours that may update at once."""
    height, width = mask.shape
    wh, ww = min(cfg.window, height), min(cfg.window, width)
    rows, cols = mask.nonzero(as_tuple=True)
    pad = (cfg.window - cfg.block) // 2
    blocks = []
    for top in _starts(int(rows.min()), int(rows.max()), cfg.block, cfg.stride):
        for left in _starts(int(cols.min()), int(cols.max()), cfg.block, cfg.stride):
            if mask[top : top + cfg.block, left : left + cfg.block].any():
                win_top = min(max(top - pad, 0), height - wh)
                win_left = min(max(left - pad, 0), width - ww)
                blocks.append(_Block(top, left, win_top, win_left))

    def reads(a: _Block, b: _Block) -> bool:  # does a's window hold pixels of block b?
        return (b.top < a.win_top + wh and a.win_top < b.top + cfg.block
                and b.left < a.win_left + ww and a.win_left < b.left + cfg.block)

    colours: list[list[_Block]] = []
    for blk in blocks:
        for group in colours:
            if not any(reads(blk, other) or reads(other, blk) for other in group):
                group.append(blk)
                break
        else:
            colours.append([blk])
    return (wh, ww), colours


def _flip(t: torch.Tensor, flip: tuple[bool, bool]) -> torch.Tensor:
    dims = [d for d, on in zip((-2, -1), flip) if on]
    return t.flip(dims) if dims else t


def log_acceptance(
    model: nn.Module, current: torch.Tensor, proposed: torch.Tensor, blocks: torch.Tensor, flip: tuple[bool, bool],
) -> torch.Tensor:
    """``log a`` for ``N`` windows (``N x h x w``), proposals differing inside ``blocks`` (``N x h x w``).

    Without a flip this is eq. 9; with one, the proposal is ancestral sampling of the flipped
    window and ``a = p(x') q_f(x_B) / (p(x) q_f(x'_B))`` (module docstring).
    """
    rs, cs = model.neighborhood.target_slices(*current.shape[1:])
    in_block = blocks[:, rs, cs]
    num = current.shape[0]
    # Pixels at or after the block's first pixel in scan order: the only ones that depend on it.
    after = in_block.flatten(1).cumsum(1).gt(0).view_as(in_block)
    if flip == (False, False):
        lp = model.log_prob(torch.cat([current, proposed]))
        return ((lp[num:] - lp[:num]) * (after & ~in_block)).sum((1, 2))
    lp = model.log_prob(torch.cat([current, proposed, _flip(current, flip), _flip(proposed, flip)]))
    target = ((lp[num : 2 * num] - lp[:num]) * after).sum((1, 2))
    proposal = ((lp[3 * num :] - lp[2 * num : 3 * num]) * _flip(blocks, flip)[:, rs, cs]).sum((1, 2))
    return target - proposal


def _update(model: nn.Module, image: torch.Tensor, mask: torch.Tensor, group: list[_Block], shape: tuple[int, int],
            block: int, flip: tuple[bool, bool], gen: torch.Generator) -> int:
    """One Metropolis step for every block of ``group`` (in place); returns the number accepted."""
    wh, ww = shape
    wins = torch.stack([image[b.win_top : b.win_top + wh, b.win_left : b.win_left + ww] for b in group])
    blocks = torch.zeros(len(group), wh, ww, dtype=torch.bool, device=image.device)
    for n, b in enumerate(group):
        r, c = b.top - b.win_top, b.left - b.win_left
        blocks[n, r : r + block, c : c + block] = mask[b.top : b.top + block, b.left : b.left + block]
    drawn = model.sample(len(group), wh, ww, init=_flip(wins, flip), mask=_flip(blocks, flip), generator=gen)
    proposed = _flip(drawn, flip)
    log_a = log_acceptance(model, wins, proposed, blocks, flip)
    accept = torch.rand(len(group), generator=gen, dtype=log_a.dtype, device=log_a.device).log() < log_a
    for n, b in enumerate(group):
        if accept[n]:
            r, c = b.top - b.win_top, b.left - b.win_left
            image[b.top : b.top + block, b.left : b.left + block] = proposed[n, r : r + block, c : c + block]
    return int(accept.sum())


def _fingerprint(model: nn.Module, image: torch.Tensor, mask: torch.Tensor, cfg: InpaintConfig, seed: int,
                 start: torch.Tensor | None) -> str:
    """Hash of everything that determines the chain: a saved state is resumed only by its own run."""
    digest = hashlib.sha256(json.dumps({**asdict(cfg), "sweeps": None, "seed": seed}, sort_keys=True).encode())
    given = [] if start is None else [start]
    for tensor in [*model.state_dict().values(), torch.where(mask, 0.0, image.double()), mask, *given]:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _log_likelihood(model: nn.Module, image: torch.Tensor) -> tuple[float, float]:
    """Log-likelihood of the whole image (nats) and its mean per scored pixel (bits)."""
    lp = model.log_prob(image[None]).double()
    return float(lp.sum()), float(lp.mean() / np.log(2.0))


def _initialise(model: nn.Module, image: torch.Tensor, mask: torch.Tensor, cfg: InpaintConfig,
                gen: torch.Generator, progress: bool) -> InpaintResult:
    """Ancestral samples of the hole given its causal past; the one of highest ``p(x)`` is kept."""
    t0, c0 = time.perf_counter(), time.process_time()
    # The hole's true values never enter the chain: it starts from the mean of the known pixels.
    image = torch.where(mask, image[~mask].mean(), image)
    height, width = image.shape
    cands = model.sample(cfg.candidates, height, width, init=image.expand(cfg.candidates, height, width),
                         mask=mask, generator=gen, progress=progress)
    scores = model.log_prob(cands).double().sum((1, 2))
    best = int(scores.argmax())
    return InpaintResult(cands[best].clone(), [], {"candidates_log_prob": scores.tolist(), "chosen": best,
                                                   "seconds": time.perf_counter() - t0,
                                                   "cpu_seconds": time.process_time() - c0})


def _sweep(model: nn.Module, image: torch.Tensor, mask: torch.Tensor, cfg: InpaintConfig, gen: torch.Generator,
           plans: dict[tuple[bool, bool], Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """One sweep over all blocks; returns the new image and the sweep's record."""
    t0, c0 = time.perf_counter(), time.process_time()
    flip = FLIPS[int(torch.randint(len(FLIPS), (1,), generator=gen, device=image.device))]
    if cfg.flip == "none":
        flip = (False, False)
    # "image" mode flips the whole image and mask and runs plain eq. 9 sweeps on them.
    outer, inner = (flip, (False, False)) if cfg.flip == "image" else ((False, False), flip)
    work, work_mask = _flip(image, outer).clone(), _flip(mask, outer)
    if outer not in plans:
        plans[outer] = plan_blocks(work_mask, cfg)
    shape, colours = plans[outer]
    accepted = sum(_update(model, work, work_mask, group, shape, cfg.block, inner, gen) for group in colours)
    image = _flip(work, outer)
    log_p, bits = _log_likelihood(model, image)
    return image, {"flip": FLIP_NAMES[flip], "acceptance_rate": accepted / sum(map(len, colours)),
                   "log_prob": log_p, "bits_per_pixel": bits, "seconds": time.perf_counter() - t0,
                   "cpu_seconds": time.process_time() - c0}


@torch.no_grad()
def inpaint(
    model: nn.Module,
    image: torch.Tensor,
    mask: torch.Tensor,
    config: InpaintConfig | None = None,
    seed: int = 0,
    state_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    start: torch.Tensor | None = None,
) -> InpaintResult:
    """Sample the pixels of ``mask`` (``H x W`` bool) of ``image`` from the model's posterior.

    ``model`` needs ``neighborhood``, ``log_prob(N x H x W)`` and ``sample(num, h, w, init=,
    mask=, generator=)`` as :class:`ride.model.RIDE` has them. ``start`` (``H x W``) replaces
    the ancestral initialisation: the chain starts from its values in the hole.
    ``callback(sweep, image)`` is called after every sweep (after its state is saved). Returns
    the final image and, per sweep, the flip drawn, the acceptance rate and the log-likelihood
    of the whole image.
    """
    cfg = config or InpaintConfig()
    cfg.validate(model)
    ref = next(model.parameters())
    mask = torch.as_tensor(mask).bool().to(ref.device)
    image = torch.as_tensor(image).to(ref)
    _check_inputs(model, image, mask)
    if start is not None and start.shape != image.shape:
        raise ConfigError(f"start must have the image's shape {tuple(image.shape)}, got {tuple(start.shape)}")
    key = _fingerprint(model, image, mask, cfg, seed, start)
    gen = torch.Generator(device=ref.device).manual_seed(seed)
    state = _load_state(state_path, key) if resume and state_path else None
    if state is not None:
        gen.set_state(state["rng"])
        result = InpaintResult(state["image"].to(ref), state["history"], state["init"])
    else:
        if start is not None:
            result = InpaintResult(torch.where(mask, start.to(ref), image), [], {"start": "given"})
        else:
            result = _initialise(model, image, mask, cfg, gen, progress)
        _save_state(state_path, key, result, gen)
    plans: dict[tuple[bool, bool], Any] = {}
    bar = tqdm(total=cfg.sweeps, initial=len(result.history), desc="inpainting", unit="sweep", disable=not progress)
    for sweep in range(len(result.history) + 1, cfg.sweeps + 1):
        result.image, record = _sweep(model, result.image, mask, cfg, gen, plans)
        result.history.append({"sweep": sweep, **record})
        _save_state(state_path, key, result, gen)
        bar.update(1)
        bar.set_postfix(acceptance=f"{record['acceptance_rate']:.2f}", bits=f"{record['bits_per_pixel']:.3f}")
        if callback is not None:
            callback(sweep, result.image)
    bar.close()
    return result


def _save_state(path: str | Path | None, key: str, result: InpaintResult, gen: torch.Generator) -> None:
    if path is None:
        return
    state = {"key": key, "image": result.image.cpu(), "sweep": len(result.history),
             "rng": gen.get_state(), "history": result.history, "init": result.init}
    save_verified(path, state, "inpaint-state")


def _load_state(path: str | Path, key: str) -> dict[str, Any] | None:
    """The saved state of this very run, or None (no file: start afresh)."""
    if not Path(path).exists():
        return None
    state = load_verified(path, "inpaint-state")
    if state["key"] != key:
        raise ConfigError(
            f"{path}: saved by a run with another model, image, mask, seed or settings; delete it to start afresh"
        )
    return state


# ------------------------------------------------------------------------------------------------
# ``ride inpaint``


def load_image(path: str, index: int = 0) -> np.ndarray:
    """One grayscale image (H x W float) from an HDF5 file of the project's format, .npy or an image file."""
    from .data import load_images
    from .errors import DataError

    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        images = load_images(path, index=slice(index, index + 1))
        if index < 0 or len(images) == 0:
            raise DataError(f"{path}: --index {index} out of range (the file holds fewer images)")
        index = 0
    elif suffix == ".npy":
        images = np.load(path)
    elif suffix in (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp"):
        import matplotlib.image

        images = matplotlib.image.imread(path)
        if images.ndim == 3:  # colour: the mean of the colour channels, alpha dropped
            images = images[..., :3].mean(-1)
        if images.dtype == np.uint8:
            images = images / 256.0
    else:
        raise DataError(f"{path}: unknown image format {suffix!r}; give an HDF5 file (with --index), .npy or .png")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        if not 0 <= index < len(images):
            raise DataError(f"{path}: --index {index} out of range, the file holds {len(images)} images")
        images = images[index]
    if images.ndim != 2 or not np.isfinite(images).all():
        raise DataError(f"{path}: expected one finite grayscale image (H x W or N x H x W), got shape {images.shape}")
    return images


def load_mask(path: str, shape: tuple[int, int]) -> torch.Tensor:
    """A hole mask from .npy (non-zero = hole) or an image file (bright = hole)."""
    from .errors import DataError

    mask = np.load(path) if path.endswith(".npy") else load_image(path) > 0.5
    if mask.shape != shape:
        raise DataError(f"{path}: mask of shape {mask.shape} does not match the image's {shape}")
    return torch.from_numpy(np.asarray(mask) != 0)


def cmd_inpaint(args: argparse.Namespace) -> int:
    from .data import save_images
    from .provenance import provenance, resolve_device
    from .train import load_model

    start = time.perf_counter()
    cfg = InpaintConfig(sweeps=args.sweeps, block=args.block, stride=args.stride, window=args.window,
                        candidates=args.candidates, flip=args.flip)
    out = Path(args.out)
    if out.suffix.lower() not in (".h5", ".hdf5", ".png"):
        raise ConfigError(f"--out {out}: give an .h5 (the project's image format) or a .png file")
    image = load_image(args.image, args.index)
    if args.mask:
        mask = load_mask(args.mask, image.shape)
        hole = {"mask": args.mask}
    else:
        x, y, size = args.hole if args.hole else (None, None, 71)
        mask = hole_mask(*image.shape, size=size, top=y, left=x)
        rows, cols = mask.nonzero(as_tuple=True)
        hole = {"top": int(rows.min()), "left": int(cols.min()), "size": size}
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    state_path = out.with_name(out.name + ".state.pt")
    result = inpaint(model, torch.from_numpy(image), mask, cfg, seed=args.seed, state_path=state_path,
                     resume=args.resume, progress=not args.no_progress)
    final = result.image.cpu().numpy().astype(np.float32)
    if out.suffix.lower() == ".png":
        import matplotlib.pyplot as plt

        atomic_write(out, lambda tmp: plt.imsave(tmp, final, cmap="gray", format="png"))
    else:
        save_images(out, final[None], {"model": str(args.model), "image": str(args.image), "index": args.index,
                                       "seed": args.seed, "hole": json.dumps(hole)})
    record = {"model": str(args.model), "image": str(args.image), "index": args.index, "hole": hole,
              "hole_pixels": int(mask.sum()), "config": asdict(cfg), "seed": args.seed, **result.summary(),
              "provenance": provenance(device, args.seed, time.perf_counter() - start)}
    if args.json:
        text = json.dumps(record, indent=2) + "\n"
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    state_path.unlink(missing_ok=True)  # finished: a later run starts afresh
    last = result.history[-1] if result.history else None
    rate = f", last: acceptance {last['acceptance_rate']:.2f}, {last['bits_per_pixel']:.3f} bit/px" if last else ""
    print(f"wrote {out} ({cfg.sweeps} sweeps{rate})")
    return 0


def add_command(subparsers: Any) -> None:
    """Register ``ride inpaint`` with the ``ride`` command's subparsers."""
    from .cli import positive_int

    p = subparsers.add_parser("inpaint", help="fill a hole by MCMC from the model's posterior (paper section 3.4)")
    p.add_argument("--model", required=True, help="model.pt written by ride train")
    p.add_argument("--image", required=True, help="HDF5 file of the project's format (with --index), .npy or .png")
    p.add_argument("--index", type=int, default=0, help="which image of an HDF5/.npy stack (default 0)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--mask", help=".npy (non-zero = hole) or image file (bright = hole) of the image's size")
    where.add_argument("--hole", type=int, nargs=3, metavar=("X", "Y", "SIZE"),
                       help="square hole: column X and row Y of its top-left pixel, side SIZE (default: 71x71 centred)")
    p.add_argument("--sweeps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="inpainted image: .h5 (1 x H x W 'images') or .png")
    p.add_argument("--json", default=None, help="per-sweep acceptance rate and log-likelihood, settings, provenance")
    p.add_argument("--resume", action="store_true", help="continue from OUT.state.pt (saved after every sweep)")
    p.add_argument("--flip", choices=FLIP_MODES, default="proposal", help="flips between sweeps (ride/inpaint.py)")
    p.add_argument("--block", type=positive_int, default=5)
    p.add_argument("--stride", type=positive_int, default=3)
    p.add_argument("--window", type=positive_int, default=19)
    p.add_argument("--candidates", type=positive_int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_inpaint)


def benchmark(model: nn.Module | None = None, size: int = 160, hole: int = 71, sweeps: int = 2,
              seed: int = 0) -> dict[str, Any]:
    """Seconds (wall clock and process CPU) of the initialisation and per sweep for a centred hole.

    Default model: the paper's size (64 hidden units, 1 layer), random weights, whitening fitted
    to the Gaussian field of ride/synthetic.py, which is also the image; the cost of a sweep does
    not depend on the weights or the image content.
    """
    from .model import RIDE
    from .synthetic import gaussian_ar_field

    if model is None:
        torch.manual_seed(seed)
        model = RIDE(nb_size=5, num_hidden=64, num_layers=1)
        model.fit_whitening(torch.from_numpy(gaussian_ar_field(4, 64, seed=seed + 1)))
    image = torch.from_numpy(gaussian_ar_field(1, size, seed=seed + 2)[0])
    mask = hole_mask(size, size, hole)
    cfg = InpaintConfig(sweeps=sweeps)
    _, colours = plan_blocks(mask, cfg)
    result = inpaint(model, image, mask, cfg, seed=seed)
    return {"size": size, "hole": hole, "blocks": sum(map(len, colours)), "colours": len(colours),
            "threads": torch.get_num_threads(), "init_s": result.init["seconds"],
            "init_cpu_s": result.init["cpu_seconds"], "sweep_s": [h["seconds"] for h in result.history],
            "sweep_cpu_s": [h["cpu_seconds"] for h in result.history]}
