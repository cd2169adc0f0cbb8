"""ride.calibration: the one fit of the dead-leaves noise width (secant in log2 width)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ride import experiments as E
from ride.calibration import secant_fit
from ride.cli import main
from ride.deadleaves import generate

pytestmark = pytest.mark.usefixtures("single_thread")


def test_secant_lands_on_a_log_linear_rate_whatever_the_prior():
    # rate(w) = 5 - 0.9 log2 w: target 1.294 at w = 2^((5 - 1.294) / 0.9)
    exact = 2 ** ((5 - 1.294) / 0.9)
    for prior in (0.3, 0.87, 2.0):
        fit = secant_fit(lambda w: 5 - 0.9 * math.log2(w), 1.294, 12.0, prior, runs=3)
        assert fit["width"] == pytest.approx(exact, abs=0.01)
        assert len(fit["runs"]) == 3 and fit["runs"][2]["width"] == fit["width"]
        assert abs(fit["residual"]) < 0.9 * 0.01 / exact * 2  # rounding of the width only
        assert fit["slope"] == pytest.approx(0.9, rel=0.02)


def test_secant_keeps_the_prior_when_the_rate_does_not_fall():
    fit = secant_fit(lambda w: 1.5, 1.294, 12.0, 0.87, runs=2)
    assert fit["slope_source"].startswith("prior")
    assert fit["width"] == pytest.approx(12.0 * 2 ** (0.206 / 0.87) * 2 ** (0.206 / 0.87), abs=0.02)


def test_secant_refuses_a_non_finite_rate():
    with pytest.raises(Exception, match="non-finite"):
        secant_fit(lambda w: float("nan"), 1.294, 12.0, 0.87)


def test_parallel_generation_gives_the_same_images():
    a = generate(5, 24, seed=3, noise=4.0)
    b = generate(5, 24, seed=3, workers=2, noise=4.0)
    np.testing.assert_array_equal(a, b)


def test_width_only_scales_one_uniform_draw():
    # Common random numbers across the calibration's runs: x * 256 = grey + width * u, with the
    # same leaves (grey) and the same u for every width.
    a, b = generate(2, 24, seed=1, noise=2.0) * 256.0, generate(2, 24, seed=1, noise=6.0) * 256.0
    u = (b - a) / 4.0
    assert ((u > -1e-3) & (u < 1 + 1e-3)).all()
    grey = a - 2.0 * u
    np.testing.assert_allclose(grey, np.round(grey), atol=5e-3)


def test_calibrate_command_at_smoke_scale(tmp_path):
    out = tmp_path / "calibration.json"
    code = main(["calibrate", "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--device", "cpu",
                 "--scale", "smoke", "--runs", "2"])
    assert code == 0
    doc = json.loads(out.read_text())
    config = E.load_config()
    assert doc["target"] == config["tables"]["table3"]["variants"]["mcgsm32"]["paper"]
    assert [r["width"] for r in doc["runs"]][0] == config["datasets"]["deadleaves"]["calibration"]["start"]
    assert len(doc["run_details"]) == 2 and all(math.isfinite(r["bits_per_pixel_z"]) for r in doc["run_details"])
    assert 0.25 <= doc["width"] <= 64.0 and doc["provenance"]["git_commit"]
