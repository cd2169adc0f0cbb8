"""Figures 3 and 4 (issue 12): the stand-in texture set, the texture config's checks, texture
statistics of ancestral samples, the figure files, and the texture rules end to end."""
from __future__ import annotations

import copy
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from ride.data import load_images, save_images
from ride.datasets.photos import photo_path
from ride.datasets.pixels import load_gray
from ride.datasets.texture_standin import prepare
from ride.errors import ConfigError
from ride.textures import (
    check,
    figure_targets,
    hole_args,
    scored_part,
    texture_grid,
    texture_statistics,
)

ROOT = Path(__file__).resolve().parents[1]
needs_ride = pytest.mark.skipif(shutil.which("ride") is None, reason="the `ride` command is not installed")


@pytest.fixture(scope="module")
def gravel(tmp_path_factory):
    out = tmp_path_factory.mktemp("standin")
    prepare("gravel", out, seed=0)
    return out / "gravel_train.h5", out / "gravel_test.h5"


def test_standin_is_prepared_like_brodatz_and_says_it_is_a_stand_in(gravel):
    train, test = (load_images(p) for p in gravel)
    assert train.shape == (15, 128, 128) and test.shape == (1, 128, 128)
    for path in gravel:
        with h5py.File(path, "r") as fh:
            assert bool(fh.attrs["stand_in"]) and fh.attrs["dataset"] == "textures_standin"
            assert "NOT Brodatz" in fh.attrs["stand_in_for"]
    # The regions tile the texture: their grey-level bins are the photograph's, each pixel
    # dequantised inside its own bin (U[0,1) / 256), and the test region is one of them.
    grey = load_gray(photo_path("gravel"))
    whole = texture_grid(*gravel)
    np.testing.assert_array_equal(np.floor(whole.astype(np.float64) * 256).astype(np.uint8), grey)
    frac = whole.astype(np.float64) * 256 - grey
    assert 0 <= frac.min() and frac.max() < 1 and 0.45 < frac.mean() < 0.55
    # The same seed gives the same files; another seed other noise.
    other = gravel[0].parent / "again"
    prepare("gravel", other, seed=0)
    np.testing.assert_array_equal(load_images(other / "gravel_train.h5"), train)
    prepare("gravel", other / "s1", seed=1)
    assert not np.array_equal(load_images(other / "s1" / "gravel_train.h5"), train)


def test_texture_grid_refuses_regions_of_another_split(gravel, tmp_path):
    save_images(tmp_path / "bad_test.h5", load_images(gravel[1]), {"region_index": json.dumps([0]), "grid": 4})
    with pytest.raises(ConfigError, match="do not tile"):
        texture_grid(gravel[0], tmp_path / "bad_test.h5")


def test_config_passes_its_schema_and_checks_and_bad_values_are_named():
    import jsonschema

    doc = yaml.safe_load((ROOT / "config/textures.yaml").read_text())["textures"]
    schema = yaml.safe_load((ROOT / "workflow/schemas/textures.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    check(doc)
    assert set(doc) == {"smoke", "quick", "paper"} and doc["quick"]["source"] == "textures_standin"
    assert doc["paper"]["source"] == "brodatz" and doc["paper"]["inpaint"] == {"hole": 71, "sweeps": 100, "seed": 0}
    # Figures 3-4 are in `snakemake --cores all` at quick and paper; the CI's smoke `all` leaves them out.
    assert [doc[s].get("in_all", False) for s in ("smoke", "quick", "paper")] == [False, True, True]
    assert figure_targets(doc, "smoke") == [] and "results/quick/figure4.json" in figure_targets(doc, "quick")
    bad = copy.deepcopy(doc)
    bad["quick"]["mcgsm"]["model"]["num_layers"] = 1
    bad["quick"]["mcgsm"]["model"]["num_hidden"] = 8
    with pytest.raises(ConfigError, match=r"textures.quick.mcgsm.model.num_layers"):
        check(bad)
    bad = copy.deepcopy(doc)
    bad["paper"]["textures"] = ["D104", "gravel"]
    with pytest.raises(ConfigError, match=r"\['gravel'\] are not textures of the source 'brodatz'"):
        check(bad)
    bad = copy.deepcopy(doc)
    bad["quick"]["inpaint"]["hole"] = 125
    with pytest.raises(ConfigError, match="inpaint.hole 125"):
        check(bad)
    bad = copy.deepcopy(doc)
    bad["smoke"]["ride"]["train"]["epochs"] = 0
    with pytest.raises(ConfigError, match=r"textures.smoke.ride: train.epochs"):
        check(bad)
    bad = copy.deepcopy(doc)
    bad["smoke"]["colour"] = True
    assert not jsonschema.Draft202012Validator(schema).is_valid(bad)
    assert hole_args("brodatz", 71) == "44 44 71" and hole_args("textures_standin", 31) == "48 48 31"


def test_texture_statistics_on_known_fields():
    rng = np.random.default_rng(0)
    noise = rng.random((4, 96, 96))
    stats = texture_statistics(noise, value_range=(0, 1), bins=10)
    np.testing.assert_allclose(stats["histogram"], 0.1, atol=0.01)  # uniform marginal
    assert np.abs(stats["horizontal"]).max() < 0.02 and np.abs(stats["vertical"]).max() < 0.02
    # Constant along rows: horizontal autocorrelation 1 at every lag; vertical ~0.
    rows = np.repeat(rng.standard_normal((40, 96, 1)), 96, axis=2)
    stats = texture_statistics(rows)
    np.testing.assert_allclose(stats["horizontal"], 1.0, atol=1e-12)
    assert np.abs(stats["vertical"]).max() < 0.06
    assert scored_part(np.zeros((10, 12)), 5).shape == (8, 8)


# Tolerances of the texture-statistics check (a small RIDE, 2 samples of 128x128 against the 15
# training regions of gravel): total variation between the 32-bin marginal histograms, and the
# largest difference of the autocorrelation at lags 1-8 along rows and along columns. Measured:
# TV 0.07, autocorrelation up to 0.08 (the samples' correlations decay more slowly at lags 6-8).
# Shuffled pixels (the right marginal, no spatial structure) miss the autocorrelation by 0.86.
TV_TOLERANCE = 0.12
ACF_TOLERANCE = 0.12
SMALL_RIDE = {
    "model": {"nb_size": 5, "num_hidden": 16, "num_layers": 1, "num_components": 8, "num_scales": 4, "num_features": 8},
    "train": {"stages": [{"patch": 12, "lr": 0.5, "epochs": 4}, {"patch": 20, "lr": 0.1, "epochs": 4}],
              "batch_size": 32, "clip_grad_norm": 1.0, "early_stopping": 2, "valid_fraction": 0.07,
              "lbfgs_iterations": 50, "lbfgs_samples": 50000, "whitening_samples": 100000},
}


def _distances(a: dict, b: dict) -> tuple[float, float]:
    tv = 0.5 * float(np.abs(a["histogram"] - b["histogram"]).sum())
    acf = max(float(np.abs(a[d] - b[d]).max()) for d in ("horizontal", "vertical"))
    return tv, acf


@pytest.mark.slow
def test_ancestral_samples_reproduce_the_texture_statistics(gravel, tmp_path):
    # About 40 s on one core: a small RIDE on the gravel stand-in (the quick scale's data).
    from ride.train import load_model, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the measured tolerances above: one thread (bit-identical runs)
    try:
        train(SMALL_RIDE, gravel[0], tmp_path, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    model = load_model(tmp_path / "model.pt")
    samples = model.sample(2, 128, 128, generator=torch.Generator().manual_seed(0)).numpy()
    samples = np.stack([scored_part(s, 5) for s in samples])
    texture = load_images(gravel[0])
    target = texture_statistics(texture, value_range=(0, 1))
    tv, acf = _distances(target, texture_statistics(samples, value_range=(0, 1)))
    assert tv < TV_TOLERANCE and acf < ACF_TOLERANCE, (tv, acf)
    # The check can fail: the same marginal without spatial structure misses it.
    shuffled = np.random.default_rng(0).permutation(texture.ravel())[: samples.size].reshape(samples.shape)
    tv_s, acf_s = _distances(target, texture_statistics(shuffled, value_range=(0, 1)))
    assert tv_s < TV_TOLERANCE and acf_s > 0.5, (tv_s, acf_s)


@pytest.mark.slow
@needs_ride
def test_smoke_texture_rules_write_figures_3_and_4(tmp_path):
    # About 90 s: 18 jobs (2 stand-in textures, MCGSM and RIDE each) with the real `ride` command.
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "config", tmp_path / "config")
    targets = [f"results/smoke/{name}" for name in ("figure3.png", "figure3.csv", "figure4.png", "figure4.json")]
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *targets, "--config", "scale=smoke"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    cfg = yaml.safe_load((ROOT / "config/textures.yaml").read_text())["textures"]["smoke"]
    rows = list(csv.DictReader((tmp_path / "results/smoke/figure3.csv").open()))
    assert [r["texture"] for r in rows] == cfg["textures"]
    for row in rows:
        assert row["stand_in"] == "True" and row["source"] == "textures_standin"
        for kind in ("mcgsm", "ride"):
            ev = json.loads((tmp_path / f"runs/smoke/textures/{row['texture']}/{kind}/eval.json").read_text())
            assert float(row[f"{kind}_bits_per_px"]) == pytest.approx(ev["bits_per_pixel"], abs=1e-4)
            assert ev["model_config"]["num_layers"] == (0 if kind == "mcgsm" else 1)
            samples = load_images(tmp_path / f"runs/smoke/textures/{row['texture']}/{kind}/samples.h5")
            assert samples.shape == (cfg["sample"]["num"], cfg["sample"]["size"], cfg["sample"]["size"])
    doc = json.loads((tmp_path / "results/smoke/figure4.json").read_text())
    assert doc["stand_in"] is True and [t["texture"] for t in doc["textures"]] == cfg["textures"]
    for entry in doc["textures"]:
        assert entry["hole"]["size"] == cfg["inpaint"]["hole"] and entry["sweeps"] == cfg["inpaint"]["sweeps"]
        original = load_images(tmp_path / entry["test"])[0]
        filled = load_images(tmp_path / entry["inpainted"])[0]
        top, left, side = entry["hole"]["top"], entry["hole"]["left"], entry["hole"]["size"]
        inside = np.zeros(original.shape, bool)
        inside[top : top + side, left : left + side] = True
        np.testing.assert_array_equal(filled[~inside], original[~inside])
        assert not np.array_equal(filled[inside], original[inside])
    prov = json.loads((tmp_path / "results/smoke/figure3.provenance.json").read_text())
    assert len(prov["evaluations"]["ride"]) == len(cfg["textures"]) and "provenance" in prov
    again = subprocess.run(cmd + ["--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
