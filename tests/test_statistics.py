"""Standard errors of tile rates clustered by image (ride.statistics), against Monte Carlo truth.

The synthetic data follow a random-effects model, rate = mu + image effect + tile noise, whose
sampling distribution of the mean is known; each estimator must match the spread of the mean
over many independent replications of the test set.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ride import statistics as st

REPLICATIONS = 3000


def random_effects(rng, tiles_per_image, image_sd=1.0, tile_sd=1.0, mu=2.0):
    """One data set: per-tile rates and their image index (images may have different tile counts)."""
    groups = np.repeat(np.arange(len(tiles_per_image)), tiles_per_image)
    effects = image_sd * rng.standard_normal(len(tiles_per_image))
    return mu + effects[groups] + tile_sd * rng.standard_normal(groups.size), groups


def test_image_sem_matches_the_monte_carlo_spread_and_the_tile_sem_underestimates_it():
    rng = np.random.default_rng(0)
    tiles = [16] * 10  # 10 test images of 16 tiles: the paper's 256x256 images in 64x64 tiles
    means, image_var, clustered_var, tile_var = [], [], [], []
    for _ in range(REPLICATIONS):
        rates, groups = random_effects(rng, tiles)
        means.append(rates.mean())
        image_var.append(st.image_sem(rates, groups) ** 2)
        clustered_var.append(st.clustered_sem(rates, groups) ** 2)
        tile_var.append(st.tile_sem(rates) ** 2)
    truth = math.sqrt(1.0 / 10 + 1.0 / 160)  # var(mean) = image_sd^2 / G + tile_sd^2 / (G k)
    spread = float(np.std(means, ddof=1))
    assert spread == pytest.approx(truth, rel=0.05)  # the simulation itself
    # Balanced design: the squared image SEM is unbiased for var(mean), and CR1 equals it.
    assert math.sqrt(np.mean(image_var)) == pytest.approx(spread, rel=0.06)
    np.testing.assert_allclose(clustered_var, image_var, rtol=1e-10)
    # Tiles as independent: about sqrt((1 + 1) / 160) = 0.11 against 0.33.
    assert math.sqrt(np.mean(tile_var)) < 0.45 * spread


def test_clustered_sem_of_unequal_images_matches_the_monte_carlo_spread():
    rng = np.random.default_rng(1)
    tiles = [4, 16, 9, 16, 2, 12, 16, 6, 16, 8, 16, 16, 3, 16, 10, 16, 5, 16, 14, 16]
    pixels = np.concatenate([rng.integers(2000, 4000, n) for n in tiles]).astype(float)
    means, clustered_var = [], []
    for _ in range(REPLICATIONS):
        rates, groups = random_effects(rng, tiles, image_sd=0.5, tile_sd=1.0)
        means.append(st.weighted_mean(rates, pixels))
        clustered_var.append(st.clustered_sem(rates, groups, pixels) ** 2)
    assert math.sqrt(np.mean(clustered_var)) == pytest.approx(np.std(means, ddof=1), rel=0.08)


def test_image_sem_is_the_sem_of_pixel_weighted_image_means():
    rates = np.array([1.0, 3.0, 2.0, 5.0, 7.0, 0.0])
    groups = np.array([10, 10, 4, 4, 4, 99])
    pixels = np.array([1.0, 3.0, 2.0, 1.0, 1.0, 5.0])
    means, totals = st.image_means(rates, groups, pixels)
    # Labels in sorted order: image 4, 10, 99.
    np.testing.assert_allclose(means, [(4 + 5 + 7) / 4, (1 + 9) / 4, 0.0])
    np.testing.assert_allclose(totals, [4.0, 4.0, 5.0])
    assert st.image_sem(rates, groups, pixels) == pytest.approx(np.std(means, ddof=1) / math.sqrt(3))


def test_clustered_sem_equals_the_sandwich_of_an_intercept_regression():
    """Reference: (X'WX)^-1 [sum_g X_g' W_g e_g e_g' W_g X_g] (X'WX)^-1 with the CR1 factor."""
    rng = np.random.default_rng(2)
    rates, groups = random_effects(rng, [3, 7, 1, 5, 4])
    weights = rng.uniform(1, 3, rates.size)
    x = np.ones((rates.size, 1))
    bread = np.linalg.inv(x.T @ (weights[:, None] * x))
    beta = bread @ x.T @ (weights * rates)
    resid = rates - x @ beta
    meat = np.zeros((1, 1))
    for g in np.unique(groups):
        sel = groups == g
        score = x[sel].T @ (weights[sel] * resid[sel])
        meat += np.outer(score, score)
    reference = math.sqrt(5 / 4 * (bread @ meat @ bread)[0, 0])
    assert st.clustered_sem(rates, groups, weights) == pytest.approx(reference, rel=1e-12)
    assert st.weighted_mean(rates, weights) == pytest.approx(beta[0], rel=1e-12)


def test_paired_difference_removes_the_shared_image_effect():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(10), 16)
    diffs, paired_var, first_var, second_var = [], [], [], []
    for _ in range(REPLICATIONS):
        shared = rng.standard_normal(10)[groups] + rng.standard_normal(groups.size)  # image + tile content
        gap = 0.05 * rng.standard_normal(10)[groups]  # the rows' difference varies a little by image
        first = 2.0 + shared + gap + 0.1 * rng.standard_normal(groups.size)
        second = 1.9 + shared + 0.1 * rng.standard_normal(groups.size)
        result = st.paired_difference(first, second, groups)
        assert result.num_tiles == 160 and result.num_images == 10
        diffs.append(result.mean)
        paired_var.append(result.sem**2)
        first_var.append(st.image_sem(first, groups) ** 2)
        second_var.append(st.image_sem(second, groups) ** 2)
    assert np.mean(diffs) == pytest.approx(0.1, abs=0.002)
    truth = math.sqrt(0.05**2 / 10 + 2 * 0.1**2 / 160)
    assert np.std(diffs, ddof=1) == pytest.approx(truth, rel=0.05)
    assert math.sqrt(np.mean(paired_var)) == pytest.approx(np.std(diffs, ddof=1), rel=0.08)
    # The difference of 0.1 bit/px is ~5 paired SEMs but a third of either row's SEM.
    assert math.sqrt(np.mean(paired_var)) < 0.1 * min(math.sqrt(np.mean(first_var)), math.sqrt(np.mean(second_var)))


def test_paired_difference_of_eval_results_checks_the_tiles():
    a = {"data": "test.h5", "tile": 64, "tile_rates": [1.0, 2.0, 3.0, 5.0], "tile_image": [0, 0, 1, 1]}
    b = {"data": "test.h5", "tile": 64, "tile_rates": [0.5, 1.0, 3.0, 4.0], "tile_image": [0, 0, 1, 1]}
    result = st.paired_difference_of_results(a, b)
    assert result.mean == pytest.approx(0.625)
    per_image = np.array([0.75, 0.5])  # tile differences 0.5, 1.0 | 0.0, 1.0
    assert result.sem == pytest.approx(np.std(per_image, ddof=1) / math.sqrt(2))
    assert result.as_dict()["num_images"] == 2 and result.z == pytest.approx(0.625 / result.sem)
    with pytest.raises(ValueError, match="'data'"):
        st.paired_difference_of_results(a, {**b, "data": "other.h5"})
    # the file's checksum, where both record one, decides over its path (runs from other machines)
    moved = {**b, "data": "/elsewhere/test.h5", "data_sha256": "ab" * 32}
    assert st.paired_difference_of_results({**a, "data_sha256": "ab" * 32}, moved).mean == pytest.approx(0.625)
    with pytest.raises(ValueError, match="'data_sha256'"):
        st.paired_difference_of_results({**a, "data_sha256": "cd" * 32}, {**b, "data_sha256": "ab" * 32})
    with pytest.raises(ValueError, match="'data'"):
        st.paired_difference_of_results(a, moved)  # one without a checksum: the paths decide
    with pytest.raises(ValueError, match="'tile_image'"):
        st.paired_difference_of_results(a, {**b, "tile_image": [0, 1, 1, 1]})
    with pytest.raises(ValueError, match="same tiles"):
        st.paired_difference_of_results(a, {**b, "tile_rates": [1.0, 2.0, 3.0], "tile_image": [0, 0, 1, 1]})
    with pytest.raises(ValueError, match="re-run `ride evaluate`"):
        st.paired_difference_of_results(a, {"tile_rates": [1.0]})


def test_bad_input_and_nothing_to_judge():
    with pytest.raises(ValueError, match="one image index per tile"):
        st.image_sem([1.0, 2.0], [0])
    with pytest.raises(ValueError, match="non-finite"):
        st.clustered_sem([1.0, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="positive"):
        st.clustered_sem([1.0, 2.0], [0, 1], [1.0, 0.0])
    # One image: no spread over images to estimate, so no standard error (NaN), not zero.
    assert math.isnan(st.image_sem([1.0, 2.0, 4.0], [3, 3, 3]))
    assert math.isnan(st.clustered_sem([1.0, 2.0, 4.0], [3, 3, 3]))
    assert math.isnan(st.tile_sem([1.0]))
    summary = st.summarize([1.0, 2.0, 4.0, 3.0], [0, 0, 1, 1])
    assert summary["num_images"] == 2
    assert summary["sem_images"] == pytest.approx(summary["sem_clustered"]) == pytest.approx(1.0)
    assert summary["sem"] == pytest.approx(np.std([1, 2, 4, 3], ddof=1) / 2)
