"""Evaluation: the "inf dim" log-likelihood rate on tiles and the 8-transform ensemble.

Each test image is cut into non-overlapping square tiles, each evaluated independently with
zero SLSTM states. The plain rate averages every scored pixel of a tile (62x60 for a 64x64
tile and nb_size 5). An ensemble (EoRIDE) mixes the model over the 8 symmetries of the square,
q(x) = 1/8 sum_k p(T_k x); every member scores the same central pixels of the tile (60x60)
given the tile's border, so q is a normalised density over those pixels.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from .model import RIDE
from .neighborhood import check_images

Transform = Callable[[torch.Tensor], torch.Tensor]


def _compose(*ops: Transform) -> Transform:
    def apply(x: torch.Tensor) -> torch.Tensor:
        for op in ops:
            x = op(x)
        return x

    return apply


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2)


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


TRANSFORMS: list[tuple[str, Transform]] = [
    ("identity", _compose()),
    ("hflip", _hflip),
    ("vflip", _vflip),
    ("rot180", _compose(_hflip, _vflip)),
    ("transpose", _transpose),
    ("transpose+hflip", _compose(_transpose, _hflip)),
    ("transpose+vflip", _compose(_transpose, _vflip)),
    ("transpose+rot180", _compose(_transpose, _hflip, _vflip)),
]


def tile_images(images: torch.Tensor, tile: int) -> torch.Tensor:
    """Non-overlapping ``tile x tile`` tiles of ``N x H x W`` images, in image then raster order."""
    check_images(images)
    n, height, width = images.shape
    if height < tile or width < tile:
        raise ValueError(f"images of {height}x{width} pixels are smaller than the {tile}x{tile} tiles")
    rows, cols = height // tile, width // tile
    crop = images[:, : rows * tile, : cols * tile]
    return crop.reshape(n, rows, tile, cols, tile).transpose(2, 3).reshape(-1, tile, tile)


def central_margin(model: RIDE) -> int:
    nb = model.neighborhood
    return max(nb.rows - 1, nb.target[1])


@torch.no_grad()
def tile_log_likelihoods(model: RIDE, tiles: torch.Tensor, ensemble: bool = False, batch_size: int = 64) -> tuple[torch.Tensor, int]:
    """Per tile: total log-likelihood (nats) of its scored pixels, and the number of pixels each."""
    device = next(model.parameters()).device
    tile = tiles.shape[-1]
    nb = model.neighborhood
    nb.check_image_shape(tile, tile)
    totals = []
    if not ensemble:
        for start in range(0, tiles.shape[0], batch_size):
            lp = model.log_prob(tiles[start : start + batch_size].to(device))
            totals.append(lp.double().sum((1, 2)).cpu())
        gh, gw = nb.grid_shape(tile, tile)
        return torch.cat(totals), gh * gw
    if tiles.shape[-1] != tiles.shape[-2]:
        raise ValueError("the 8-transform ensemble needs square tiles")
    m = central_margin(model)
    if tile <= 2 * m:
        raise ValueError(f"tiles of {tile} pixels leave no central region for a margin of {m}")
    r0, c0 = nb.target
    gh, gw = nb.grid_shape(tile, tile)
    index = torch.arange(tile * tile).reshape(1, tile, tile)
    for start in range(0, tiles.shape[0], batch_size):
        batch = tiles[start : start + batch_size].to(device)
        members = []
        for _, transform in TRANSFORMS:
            lp = model.log_prob(transform(batch)).double()
            full = lp.new_zeros(batch.shape[0], tile, tile)
            full[:, r0 : r0 + gh, c0 : c0 + gw] = lp
            # Back to the tile's own coordinates: where each transformed pixel came from.
            source = transform(index).reshape(-1).to(device)
            back = torch.empty_like(full.reshape(batch.shape[0], -1))
            back[:, source] = full.reshape(batch.shape[0], -1)
            central = back.reshape(-1, tile, tile)[:, m : tile - m, m : tile - m]
            members.append(central.sum((1, 2)))
        stacked = torch.stack(members, 0)
        totals.append((torch.logsumexp(stacked, 0) - math.log(len(TRANSFORMS))).cpu())
    return torch.cat(totals), (tile - 2 * m) ** 2


def evaluate(
    model: RIDE,
    images: torch.Tensor,
    tile: int = 64,
    ensemble: bool = False,
    max_tiles: int | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Mean log-likelihood rate (bit/px, higher is better) over tiles, with its standard error."""
    start = time.perf_counter()
    tiles = tile_images(images, tile)
    if max_tiles:
        tiles = tiles[:max_tiles]
    totals, per_tile = tile_log_likelihoods(model, tiles, ensemble, batch_size)
    rates = totals / per_tile / math.log(2.0)
    if not torch.isfinite(rates).all():
        raise FloatingPointError("non-finite log-likelihood in evaluation; the model or data are broken")
    n = rates.numel()
    sem = float(rates.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "bits_per_pixel": float(rates.mean()),
        "sem": sem,
        "num_tiles": n,
        "num_pixels": n * per_tile,
        "pixels_per_tile": per_tile,
        "tile": tile,
        "ensemble": ensemble,
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
