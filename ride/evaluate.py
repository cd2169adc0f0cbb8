"""Evaluation: the "inf dim" log-likelihood rate on tiles and the 8-transform ensemble.

Each test image is cut into non-overlapping square tiles, each evaluated independently with
zero SLSTM states. The plain rate averages every scored pixel of a tile (62x60 for a 64x64
tile and nb_size 5). An ensemble (EoRIDE) mixes the model over the 8 symmetries of the square,
q(x) = 1/8 sum_k p(T_k x); every member scores the same central pixels of the tile (60x60)
given the tile's border, so q is a normalised density over those pixels.

Standard errors (``ride.statistics``): ``sem`` treats tiles as independent (tile level, kept
for compatibility); tiles of one image are correlated, so ``sem_images`` (over the images' mean
rates) and ``sem_clustered`` (tile mean, clustered by image) are the ones to judge by. The
per-tile rates and each tile's image index let two rows be compared on the same tiles.

Z-scored units: for z = (x - m) / s per pixel, log2 p_z(z) = log2 p_x(x) + log2 s exactly, so
a rate on Z-scored data is ``bits_per_pixel + log2(s)`` (dead leaves: s ~ 0.283, -1.82 bit/px).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from .errors import DataError, EvaluationError
from .model import RIDE
from .neighborhood import check_images
from .statistics import summarize
from .train import extract_patches

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
    _, height, width = images.shape
    if height < tile or width < tile:
        raise ValueError(f"images of {height}x{width} pixels are smaller than the {tile}x{tile} tiles")
    return extract_patches(images, tile)  # the training grid without its random offset: from the top left


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


def tile_image_index(images: torch.Tensor, tile: int) -> torch.Tensor:
    """The image each tile of :func:`tile_images` comes from (tiles are in image order)."""
    num, height, width = images.shape
    return torch.arange(num).repeat_interleave((height // tile) * (width // tile))


def zscore_of_data(attrs: dict[str, Any], path: str, mode: str = "auto") -> tuple[float, float] | None:
    """``(mean, std)`` of the Z-scoring recorded in a data file's attributes, or None.

    ``mode``: ``auto`` uses them when the file has them, ``require`` fails without them, ``off``
    ignores them.
    """
    if mode not in ("auto", "require", "off"):
        raise ValueError(f"zscore mode must be auto, require or off, got {mode!r}")
    if mode == "off" or (mode == "auto" and "zscore_std" not in attrs):
        return None
    if "zscore_std" not in attrs or "zscore_mean" not in attrs:
        raise DataError(
            f"{path}: no zscore_mean/zscore_std attributes, so Z-scored rates cannot be computed; regenerate it "
            f"with `ride deadleaves` (which records the training set's pixel mean and std) or drop --zscore"
        )
    mean, std = float(attrs["zscore_mean"]), float(attrs["zscore_std"])
    try:
        check_zscore(mean, std)
    except ValueError as err:
        raise DataError(f"{path}: {err}; regenerate the file with `ride deadleaves`") from None
    return mean, std


def check_zscore(mean: float, std: float) -> None:
    """ValueError unless ``mean`` is finite and ``std`` finite and positive."""
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"Z-scoring needs a finite mean and a positive std, got mean={mean}, std={std}")


def zscored(result: dict[str, Any], mean: float, std: float) -> dict[str, Any]:
    """The rates of ``result`` on Z-scored intensities (x - mean) / std: each + log2(std) bit/px."""
    check_zscore(mean, std)
    shift = math.log2(std)
    return {
        "bits_per_pixel_z": result["bits_per_pixel"] + shift,
        "tile_rates_z": [rate + shift for rate in result["tile_rates"]],
        "zscore": {"mean": mean, "std": std, "log2_jacobian": shift},
    }


def evaluate(
    model: RIDE,
    images: torch.Tensor,
    tile: int = 64,
    ensemble: bool = False,
    max_tiles: int | None = None,
    batch_size: int = 64,
    zscore: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Mean log-likelihood rate (bit/px, higher is better) over tiles, with its standard errors.

    Returns ``bits_per_pixel``, ``sem`` (tile level), ``sem_images``, ``sem_clustered``,
    ``tile_rates`` and ``tile_image`` (per tile, in tile order), counts and the tiling; with
    ``zscore = (mean, std)`` also ``bits_per_pixel_z``, ``tile_rates_z`` and ``zscore``
    (:func:`zscored`). The standard errors hold for both units (the shift is a constant).
    """
    if tile < 1 or batch_size < 1 or (max_tiles is not None and max_tiles < 1):
        raise ValueError(f"tile ({tile}), batch_size ({batch_size}) and max_tiles ({max_tiles}) must be positive")
    if zscore is not None:
        check_zscore(*zscore)
    start = time.perf_counter()
    tiles = tile_images(images, tile)
    image_index = tile_image_index(images, tile)
    if max_tiles is not None:
        tiles, image_index = tiles[:max_tiles], image_index[:max_tiles]
    totals, per_tile = tile_log_likelihoods(model, tiles, ensemble, batch_size)
    rates = totals / per_tile / math.log(2.0)
    bad = (~torch.isfinite(rates)).nonzero().flatten()
    if bad.numel():
        raise EvaluationError(
            f"non-finite log-likelihood on {bad.numel()} of {rates.numel()} tiles (first: tile {int(bad[0])}); "
            f"the data or the model are broken: rebuild the data file (or check it against its .sha256) and "
            f"re-train the model"
        )
    n = rates.numel()
    result: dict[str, Any] = {
        "bits_per_pixel": float(rates.mean()),
        **summarize(rates.numpy(), image_index.numpy()),  # sem (tile level), sem_images, sem_clustered
        "num_tiles": n,
        "num_pixels": n * per_tile,
        "pixels_per_tile": per_tile,
        "tile": tile,
        "ensemble": ensemble,
        "tile_rates": rates.tolist(),
        "tile_image": image_index.tolist(),
    }
    if zscore is not None:
        result.update(zscored(result, *zscore))
    result["wall_time_s"] = round(time.perf_counter() - start, 3)
    return result
