"""The dead-leaves generator (ride.deadleaves): reproducibility, form, r^-3 law, occlusion, noise."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import optimize, stats

from ride import deadleaves as dl


def truncated_power_cdf(r, r_min, r_max, power=3.0):
    e = 1.0 - power
    return (np.asarray(r) ** e - r_min**e) / (r_max**e - r_min**e)


def power_mle(r, r_min, r_max):
    """Maximum-likelihood exponent of a density ∝ r^-a truncated to [r_min, r_max]."""
    logs = np.log(r).sum()
    n = r.size

    def nll(a):
        norm = (r_max ** (1 - a) - r_min ** (1 - a)) / (1 - a)
        return n * np.log(norm) + a * logs

    return optimize.minimize_scalar(nll, bounds=(1.5, 4.5), method="bounded").x


def test_reproducible_for_a_seed():
    a = dl.generate(3, 48, seed=7)
    b = dl.generate(3, 48, seed=7)
    np.testing.assert_array_equal(a, b)
    c = dl.generate(3, 48, seed=8)
    assert not np.array_equal(a, c)


def test_each_image_independent_of_num_images():
    few = dl.generate(2, 40, seed=3)
    many = dl.generate(5, 40, seed=3)
    np.testing.assert_array_equal(few, many[:2])
    # and images of one set differ from each other
    assert not np.array_equal(many[0], many[1])


def test_shape_dtype_range():
    x = dl.generate(4, 64, seed=0)
    assert x.shape == (4, 64, 64) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() < 1.0
    assert np.isfinite(x).all()
    assert dl.generate(0, 16, seed=0).shape == (0, 16, 16)


def test_defaults_and_parameter_errors():
    assert set(dl.DEFAULTS) == {"r_min", "r_max", "grey_levels", "noise"}
    with pytest.raises(ValueError, match="r_mni"):
        dl.generate(1, 16, 0, r_mni=2.0)
    with pytest.raises(ValueError, match="r_min < r_max"):
        dl.generate(1, 16, 0, r_min=10.0, r_max=5.0)
    with pytest.raises(ValueError, match="grey_levels"):
        dl.generate(1, 16, 0, grey_levels=1)
    with pytest.raises(ValueError, match="noise"):
        dl.generate(1, 16, 0, noise="lots")


def test_radius_sampler_follows_r_minus_3():
    rng = np.random.default_rng(0)
    r_min, r_max = 1.0, 256.0
    r = dl.sample_radii(rng, 200_000, r_min, r_max)
    assert r.min() >= r_min and r.max() <= r_max
    assert abs(power_mle(r, r_min, r_max) - 3.0) < 0.03  # SE of the MLE here is about 0.005
    assert stats.kstest(r, lambda q: truncated_power_cdf(q, r_min, r_max)).pvalue > 1e-3


def test_disks_reaching_the_image_keep_the_r3_law_and_uniform_positions():
    """Centres are uniform over the image enlarged by r, radii weighted by that area, so the
    disks centred inside any fixed region (here the image itself) carry the pure r^-3 law."""
    rng = np.random.default_rng(1)
    size, r_min, r_max = 64, 1.0, 256.0
    cx, cy, r = dl.sample_disks(rng, 400_000, size, r_min, r_max)
    assert ((cx >= -r) & (cx <= size + r) & (cy >= -r) & (cy <= size + r)).all()
    inside = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
    ri = r[inside]
    assert ri.size > 50_000
    assert abs(power_mle(ri, r_min, r_max) - 3.0) < 0.05
    assert stats.kstest(ri, lambda q: truncated_power_cdf(q, r_min, r_max)).pvalue > 1e-3
    # centres inside the image are uniform
    assert stats.kstest(cx[inside] / size, "uniform").pvalue > 1e-3
    assert stats.kstest(cy[inside] / size, "uniform").pvalue > 1e-3


def test_occlusion_first_disk_in_front():
    # Two overlapping disks on a 16 x 16 grid: disk 0 centred (6, 8), disk 1 centred (10, 8).
    cx, cy, r = np.array([6.0, 10.0]), np.array([8.0, 8.0]), np.array([4.0, 4.0])
    labels = dl.render(cx, cy, r, 16)
    yy, xx = np.mgrid[0:16, 0:16] + 0.5
    in0 = (xx - 6) ** 2 + (yy - 8) ** 2 <= 16
    in1 = (xx - 10) ** 2 + (yy - 8) ** 2 <= 16
    assert (in0 & in1).any()
    assert (labels[in0] == 0).all()  # disk 0 wins wherever it is, including the overlap
    assert (labels[in1 & ~in0] == 1).all()
    assert (labels[~in0 & ~in1] == -1).all()
    # the opposite order puts disk 1 in front
    flipped = dl.render(cx[::-1], cy[::-1], r[::-1], 16)
    assert (flipped[in1] == 0).all() and (flipped[in0 & ~in1] == 1).all()


def test_rasterise_clips_to_image_and_handles_disks_outside():
    cx, cy, r = np.array([-5.0, 3.0, 100.0]), np.array([-5.0, 3.0, 3.0]), np.array([2.0, 1.0, 1.0])
    pix, disk = dl.rasterise(cx, cy, r, 8)
    assert set(disk.tolist()) == {1}  # disks 0 and 2 do not reach the 8 x 8 image
    assert ((pix >= 0) & (pix < 64)).all()


def test_images_are_covered_piecewise_constant_plus_noise():
    params = dl.check_params({"noise": 0.0})
    img, n_disks = dl.generate_one(dl.image_rng(0, 0), 64, params)
    levels = img * 256
    np.testing.assert_array_equal(levels, np.round(levels))  # without noise: exact grey levels
    assert n_disks > 0 and 2 < np.unique(levels).size <= 256
    # the same stream with noise: same leaves, plus U[0, 1) grey levels of noise
    noisy, _ = dl.generate_one(dl.image_rng(0, 0), 64, dl.check_params({}))
    np.testing.assert_array_equal(np.floor(noisy * 256), levels)
    frac = noisy * 256 - levels
    assert (frac > 0).mean() > 0.999 and frac.max() < 1.0
    assert 0.45 < frac.mean() < 0.55


def test_noise_makes_values_non_integer():
    x = dl.generate(2, 32, seed=11).astype(np.float64) * 256
    assert (np.abs(x - np.round(x)) > 1e-6).mean() > 0.99


def test_grey_levels_roughly_uniform():
    x = dl.generate(20, 64, seed=2, noise=0.0)
    levels = np.round(x * 256).astype(int).ravel()
    hist = np.bincount(levels // 32, minlength=8)  # 8 bins of 32 grey levels
    # leaves are large, so pixels are strongly correlated; ask only that every bin is used
    assert (hist > 0).all()


def test_fast_enough():
    start = time.perf_counter()
    dl.generate(10, 256, seed=0)
    per_image = (time.perf_counter() - start) / 10
    # 1000 images in a few minutes on one core: about 0.05 s per image here
    assert per_image < 0.5, f"{per_image:.3f} s per 256 x 256 image"


def test_pixel_std_about_0_28_so_zscoring_moves_rates_by_about_minus_1_8_bit():
    """The fact behind Z-scored rates: with the defaults the pixel std is about 0.28 (log2: -1.8)."""
    images = dl.generate(20, 256, seed=0)
    attrs = dl.zscore_attrs(images)
    assert attrs["zscore_mean"] == pytest.approx(float(images.astype(np.float64).mean()), rel=1e-12)
    assert attrs["zscore_std"] == pytest.approx(float(images.astype(np.float64).std()), rel=1e-12)
    assert 0.26 < attrs["zscore_std"] < 0.30 and -1.95 < np.log2(attrs["zscore_std"]) < -1.74
    with pytest.raises(ValueError, match="two training pixels"):
        dl.zscore_attrs(np.zeros((1, 1, 1)))


def test_ride_deadleaves_records_the_training_sets_statistics_in_both_files(tmp_path):
    from ride import cli
    from ride.data import load_attrs, load_images

    train, test = tmp_path / "train.h5", tmp_path / "test.h5"
    assert cli.main(["deadleaves", "--out-train", str(train), "--out-test", str(test), "--num-images", "6",
                     "--num-test", "2", "--size", "24", "--seed", "3"]) == 0
    expected = dl.zscore_attrs(load_images(train))
    for path in (train, test):
        attrs = load_attrs(path)
        assert attrs["zscore_mean"] == pytest.approx(expected["zscore_mean"], rel=1e-6)
        assert attrs["zscore_std"] == pytest.approx(expected["zscore_std"], rel=1e-6)
    # The test set's own statistics differ: the training set's are the ones recorded.
    assert dl.zscore_attrs(load_images(test))["zscore_std"] != pytest.approx(expected["zscore_std"], rel=1e-6)
