"""Evaluation: tiling, the plain rate, and the 8-transform ensemble."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ride.evaluate import TRANSFORMS, central_margin, evaluate, tile_images, tile_log_likelihoods
from ride.model import RIDE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RIDE(nb_size=5, num_hidden=6, num_layers=1, num_components=3, num_scales=2, num_features=3).double()
    images = torch.randn(4, 20, 20, dtype=torch.float64).cumsum(-1)
    m.fit_whitening(images)
    with torch.no_grad():
        for p in m.slstm.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def test_tiles_are_non_overlapping_in_raster_order():
    images = torch.arange(2 * 9 * 13, dtype=torch.float32).reshape(2, 9, 13)
    tiles = tile_images(images, 4)
    assert tiles.shape == (2 * 2 * 3, 4, 4)
    torch.testing.assert_close(tiles[4], images[0, 4:8, 4:8])
    torch.testing.assert_close(tiles[6], images[1, 0:4, 0:4])
    with pytest.raises(ValueError, match="smaller than"):
        tile_images(images, 10)


def test_plain_rate_and_standard_error(model):
    images = torch.randn(2, 24, 24, dtype=torch.float64)
    result = evaluate(model, images, tile=12)
    tiles = tile_images(images, 12)
    per_tile = np.array([model.log_prob(t[None]).mean().item() / math.log(2) for t in tiles])
    assert result["num_tiles"] == 8 and result["pixels_per_tile"] == 10 * 8
    assert result["num_pixels"] == 8 * 80
    assert result["bits_per_pixel"] == pytest.approx(per_tile.mean(), abs=1e-9)
    assert result["sem"] == pytest.approx(per_tile.std(ddof=1) / math.sqrt(8), rel=1e-6)


def _naive_member(model, tile, transform, margin):
    """Sum of the member's conditionals over the central pixels, by explicit coordinates."""
    size = tile.shape[-1]
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1)
    moved = transform(coords.permute(2, 0, 1)).permute(1, 2, 0)  # original coords at each new position
    lp = model.log_prob(transform(tile)[None])[0]
    r0, c0 = model.neighborhood.target
    total = 0.0
    for gi in range(lp.shape[0]):
        for gj in range(lp.shape[1]):
            oi, oj = moved[gi + r0, gj + c0].tolist()
            if margin <= oi < size - margin and margin <= oj < size - margin:
                total += lp[gi, gj].item()
    return total


def test_ensemble_members_score_the_same_central_pixels(model):
    torch.manual_seed(1)
    tile = torch.randn(10, 10, dtype=torch.float64)
    margin = central_margin(model)
    assert margin == 2
    naive = [_naive_member(model, tile, t, margin) for _, t in TRANSFORMS]
    got, per_tile = tile_log_likelihoods(model, tile[None], ensemble=True)
    assert per_tile == 6 * 6
    expected = torch.logsumexp(torch.tensor(naive, dtype=torch.float64), 0) - math.log(8)
    assert got.item() == pytest.approx(expected.item(), abs=1e-8)
    # A mixture lies between its worst and best member.
    assert min(naive) <= got.item() <= max(naive)


def test_transforms_are_the_eight_symmetries_of_the_square():
    x = torch.arange(9).reshape(3, 3)
    outputs = {tuple(t(x).flatten().tolist()) for _, t in TRANSFORMS}
    assert len(outputs) == 8
