"""Evaluation: tiling, the plain rate, and the 8-transform ensemble."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from ride import cli
from ride.checkpoint import save_verified
from ride.data import load_attrs, load_images, save_images
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


def _rescaled(model: RIDE, scale: float, shift: float) -> RIDE:
    """The model's density transported to y = scale * x + shift: the whitening absorbs the map."""
    moved = copy.deepcopy(model)
    w = moved.whitening
    with torch.no_grad():
        w.mean_x.mul_(scale).add_(shift)
        w.whiten_x.div_(scale)
        w.mean_y.mul_(scale).add_(shift)
        w.predictor.mul_(scale)  # whitened inputs -> target units
        w.scale_y.div_(scale)
    return moved


def test_scaling_the_data_shifts_the_rate_by_minus_log2_of_the_scale(model):
    """Rates on intensities scaled by a move by -log2(a) bit/px: exactly, and after refitting the whitening."""
    torch.manual_seed(2)
    images = torch.randn(2, 14, 16, dtype=torch.float64).cumsum(-1)
    scale, shift = 0.283, -1.7
    moved = _rescaled(model, scale, shift)
    got = moved.bits_per_pixel(scale * images + shift)
    assert got.item() == pytest.approx(model.bits_per_pixel(images).item() - math.log2(scale), abs=1e-10)
    # Refitting the whitening on scaled training data finds that transform: the rest of the
    # model sees the same whitened inputs, so training is unaffected by the data's scale.
    train = torch.randn(4, 20, 20, dtype=torch.float64).cumsum(-1)
    refit = copy.deepcopy(model)
    refit.fit_whitening(train)
    refit_scaled = copy.deepcopy(model)
    refit_scaled.fit_whitening(scale * train + shift)
    torch.testing.assert_close(refit_scaled.log_prob(scale * images + shift),
                               refit.log_prob(images) - math.log(scale), rtol=0, atol=1e-8)


def test_zscored_rate_is_the_rate_of_the_model_on_zscored_data(model):
    torch.manual_seed(3)
    images = torch.randn(3, 24, 24, dtype=torch.float64).cumsum(-1)
    mean, std = 0.49, 0.283
    for ensemble in (False, True):
        result = evaluate(model, images, tile=12, ensemble=ensemble, zscore=(mean, std))
        assert result["zscore"] == {"mean": mean, "std": std, "log2_jacobian": math.log2(std)}
        # The model of z = (x - mean) / std, scored on Z-scored tiles: the same numbers, no formula.
        on_z = evaluate(_rescaled(model, 1 / std, -mean / std), (images - mean) / std, tile=12, ensemble=ensemble)
        assert result["bits_per_pixel_z"] == pytest.approx(on_z["bits_per_pixel"], abs=1e-9)
        np.testing.assert_allclose(result["tile_rates_z"], on_z["tile_rates"], rtol=0, atol=1e-9)
        assert result["bits_per_pixel_z"] == pytest.approx(result["bits_per_pixel"] - 1.8211, abs=1e-4)
        assert result["sem_images"] == pytest.approx(on_z["sem_images"], rel=1e-9)
    assert "bits_per_pixel_z" not in evaluate(model, images, tile=12)
    with pytest.raises(ValueError, match="positive std"):
        evaluate(model, images, tile=12, zscore=(mean, 0.0))


@pytest.mark.parametrize("ensemble", [False, True])
def test_tile_rates_image_index_and_image_level_sems(model, ensemble):
    torch.manual_seed(4)
    images = torch.randn(3, 24, 26, dtype=torch.float64).cumsum(-1)
    result = evaluate(model, images, tile=12, ensemble=ensemble, max_tiles=10)  # cuts the last image
    assert result["tile_image"] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert result["num_images"] == 3 and result["num_tiles"] == 10
    tiles = tile_images(images, 12)[:10]
    totals, per_tile = tile_log_likelihoods(model, tiles, ensemble)
    expected = (totals / per_tile / math.log(2)).numpy()
    np.testing.assert_allclose(result["tile_rates"], expected, rtol=0, atol=1e-12)
    assert result["bits_per_pixel"] == pytest.approx(expected.mean(), abs=1e-12)
    means = [expected[:4].mean(), expected[4:8].mean(), expected[8:].mean()]
    assert result["sem_images"] == pytest.approx(np.std(means, ddof=1) / math.sqrt(3), rel=1e-9)
    assert result["sem"] == pytest.approx(expected.std(ddof=1) / math.sqrt(10), rel=1e-9)
    # Unequal images: the clustered SEM of the tile mean is not the SEM of image means.
    residual = expected - expected.mean()
    scores = [residual[:4].sum(), residual[4:8].sum(), residual[8:].sum()]
    assert result["sem_clustered"] == pytest.approx(math.sqrt(1.5 * np.sum(np.square(scores))) / 10, rel=1e-9)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A float32 model file and dead-leaves data written by `ride deadleaves` (with Z-score attributes)."""
    root = tmp_path_factory.mktemp("evaluate_cli")
    assert cli.main(["deadleaves", "--out-train", str(root / "train.h5"), "--out-test", str(root / "test.h5"),
                     "--num-images", "5", "--num-test", "2", "--size", "32"]) == 0
    torch.manual_seed(5)
    m = RIDE(nb_size=5, num_hidden=3, num_layers=1, num_components=2, num_scales=2, num_features=2)
    m.fit_whitening(torch.from_numpy(load_images(root / "train.h5")))
    save_verified(root / "model.pt", {"config": m.config, "state_dict": m.state_dict(), "summary": {}}, "model")
    return root


def test_ride_evaluate_reports_zscored_rates_from_the_data_file(saved, capsys):
    out = saved / "eval.json"
    args = ["evaluate", "--model", str(saved / "model.pt"), "--data", str(saved / "test.h5"), "--tile", "16",
            "--device", "cpu", "--out", str(out)]
    assert cli.main(args) == 0
    result = json.loads(out.read_text())
    attrs = load_attrs(saved / "test.h5")
    assert result["zscore"]["std"] == attrs["zscore_std"] and result["zscore"]["mean"] == attrs["zscore_mean"]
    assert result["bits_per_pixel_z"] == pytest.approx(result["bits_per_pixel"] + math.log2(attrs["zscore_std"]))
    assert len(result["tile_rates"]) == len(result["tile_rates_z"]) == len(result["tile_image"]) == 8
    assert {"sem", "sem_images", "sem_clustered", "num_images"} <= set(result)
    assert cli.main([*args, "--no-zscore"]) == 0
    assert "bits_per_pixel_z" not in json.loads(out.read_text())
    # A file without the attributes: --zscore refuses it, by name, before any work.
    save_images(saved / "plain.h5", load_images(saved / "test.h5"))
    capsys.readouterr()
    assert cli.main([*args[:4], str(saved / "plain.h5"), *args[5:], "--zscore"]) == 2
    err = capsys.readouterr().err
    assert "plain.h5" in err and "zscore_std" in err and "ride deadleaves" in err and len(err.splitlines()) == 1
    save_images(saved / "bad.h5", load_images(saved / "test.h5"), {"zscore_mean": 0.5, "zscore_std": -1.0})
    assert cli.main([*args[:4], str(saved / "bad.h5"), *args[5:]]) == 2
    err = capsys.readouterr().err
    assert "bad.h5" in err and "positive std" in err and len(err.splitlines()) == 1
