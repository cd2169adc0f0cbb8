"""Standard errors of a rate measured on tiles that are clustered by image.

Tiles cut from one test image share that image's content, so their rates are correlated and
the standard error over tiles (``tile_sem``) understates the uncertainty of the mean: what
varies from one test set to another is mostly the images. Two estimates that account for it:

* ``image_sem``: each image's mean first (its tiles weighted by their scored pixels), then the
  standard error of the image means (an SEM of the mean over images).
* ``clustered_sem``: the cluster-robust (sandwich, CR1) standard error of the pixel-weighted
  tile mean, clustered by image: ``G/(G-1) * sum_g (sum_{t in g} w_t (r_t - mean))^2 / W^2``.

Both coincide when every image contributes the same scored pixels (the usual case: equal
images, equal tiles); they differ when a tile limit cuts through an image. Two rows scored on
the SAME tiles are compared by ``paired_difference``: the per-tile differences share each
image's effect, so their mean is far more precise than either row's SEM suggests.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def _prepare(values: ArrayLike, groups: ArrayLike, weights: ArrayLike | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 values, group codes 0..G-1 and positive weights of equal length (ValueError otherwise)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if groups.shape != values.shape:
        raise ValueError(f"{values.size} values but {groups.size} group labels: one image index per tile is needed")
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if weights.shape != values.shape:
        raise ValueError(f"{values.size} values but {weights.size} weights: one weight (scored pixels) per tile")
    if values.size == 0:
        raise ValueError("no values: a standard error needs at least one tile")
    if not np.isfinite(values).all():
        raise ValueError("non-finite values: every tile's rate must be finite")
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ValueError("weights must be finite and positive (scored pixels per tile)")
    codes = np.unique(groups, return_inverse=True)[1].reshape(-1)
    return values, codes, weights


def weighted_mean(values: ArrayLike, weights: ArrayLike | None = None) -> float:
    """The mean of ``values`` weighted by ``weights`` (scored pixels): the rate over all pixels."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    return float((weights * values).sum() / weights.sum())


def image_means(values: ArrayLike, groups: ArrayLike, weights: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per image (in sorted label order): the pixel-weighted mean of its tiles, and its total weight."""
    values, codes, weights = _prepare(values, groups, weights)
    totals = np.bincount(codes, weights=weights)
    return np.bincount(codes, weights=weights * values) / totals, totals


def tile_sem(values: ArrayLike) -> float:
    """The naive standard error over tiles, as if they were independent (NaN for one tile)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")


def image_sem(values: ArrayLike, groups: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Standard error of the mean over images of the images' mean rates (NaN for one image)."""
    means, _ = image_means(values, groups, weights)
    return float(means.std(ddof=1) / math.sqrt(means.size)) if means.size > 1 else float("nan")


def clustered_sem(values: ArrayLike, groups: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Cluster-robust (CR1) standard error of the weighted tile mean, clustered by image (NaN for one image)."""
    values, codes, weights = _prepare(values, groups, weights)
    num_groups = int(codes.max()) + 1
    if num_groups < 2:
        return float("nan")
    mean = (weights * values).sum() / weights.sum()
    scores = np.bincount(codes, weights=weights * (values - mean))
    variance = num_groups / (num_groups - 1) * (scores**2).sum() / weights.sum() ** 2
    return float(math.sqrt(variance))


@dataclass(frozen=True)
class PairedDifference:
    """``first - second`` on the same tiles: mean difference (bit/px) and its image-clustered SEM."""

    mean: float
    sem: float
    num_tiles: int
    num_images: int

    @property
    def z(self) -> float:
        """The difference in units of its standard error (NaN without one)."""
        return self.mean / self.sem if self.sem > 0 else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "sem": self.sem, "num_tiles": self.num_tiles, "num_images": self.num_images}


def paired_difference(
    first: ArrayLike, second: ArrayLike, groups: ArrayLike, weights: ArrayLike | None = None
) -> PairedDifference:
    """Mean of ``first - second`` per tile (pixel-weighted) with its SEM clustered by image."""
    first = np.asarray(first, dtype=np.float64).reshape(-1)
    second = np.asarray(second, dtype=np.float64).reshape(-1)
    if first.shape != second.shape:
        raise ValueError(f"paired rows must be scored on the same tiles, got {first.size} and {second.size} tiles")
    diff, codes, weights = _prepare(first - second, groups, weights)
    return PairedDifference(
        mean=weighted_mean(diff, weights),
        sem=clustered_sem(diff, codes, weights),
        num_tiles=int(diff.size),
        num_images=int(codes.max()) + 1,
    )


def summarize(values: ArrayLike, groups: ArrayLike, weights: ArrayLike | None = None) -> dict[str, float | int]:
    """The three standard errors of a tile rate and the number of images (fields of eval.json)."""
    values, codes, weights = _prepare(values, groups, weights)
    return {
        "sem": tile_sem(values),
        "sem_images": image_sem(values, codes, weights),
        "sem_clustered": clustered_sem(values, codes, weights),
        "num_images": int(codes.max()) + 1,
    }


def paired_difference_of_results(first: Mapping[str, Any], second: Mapping[str, Any]) -> PairedDifference:
    """:func:`paired_difference` of two eval.json results; ValueError unless they share their tiles.

    Both must come from the same data file and tiling (``data``, ``tile``, ``tile_image``); the
    file is identified by its checksum (``data_sha256``) where both record one (runs on different
    machines have different paths), else by its path. The raw ``tile_rates`` are compared (a
    Z-score shift is the same for both and cancels).
    """
    for key in ("tile_rates", "tile_image"):
        if key not in first or key not in second:
            raise ValueError(f"an eval result lacks '{key}': re-run `ride evaluate` to record per-tile rates")
    same_file = "data_sha256" if "data_sha256" in first and "data_sha256" in second else "data"
    for key in (same_file, "tile", "tile_image"):
        if key in first and key in second and first[key] != second[key]:
            raise ValueError(f"the two results differ in '{key}': a paired difference needs the same tiles")
    # Every tile of a result scores the same number of pixels, so tiles weigh equally.
    return paired_difference(first["tile_rates"], second["tile_rates"], first["tile_image"])


__all__ = [
    "PairedDifference",
    "clustered_sem",
    "image_means",
    "image_sem",
    "paired_difference",
    "paired_difference_of_results",
    "summarize",
    "tile_sem",
    "weighted_mean",
]
