"""The ``ride`` command line: train, evaluate, sample; errors name the file and the fix."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml

from ride.data import save_images
from ride.synthetic import gaussian_ar_field


def ride(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "ride.cli", *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"ride {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    images = gaussian_ar_field(10, 32, seed=2)
    save_images(root / "train.h5", images[:8])
    save_images(root / "test.h5", images[8:])
    config = {"model": {"nb_size": 5, "num_hidden": 4, "num_layers": 1, "num_components": 2, "num_scales": 2,
                        "num_features": 2},
              "train": {"stages": [{"patch": 12, "lr": 0.1}], "batch_size": 8, "lbfgs_iterations": 5}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    ride("train", "--config", root / "cfg.yaml", "--data", root / "train.h5", "--out-dir", root / "run",
         "--device", "cpu", "--no-progress")
    return root


def test_train_writes_model_and_log(trained):
    assert (trained / "run" / "model.pt").exists()
    log = json.loads((trained / "run" / "train.json").read_text())
    assert log["model_config"]["num_hidden"] == 4
    assert {"git_commit", "versions", "device", "seed", "wall_time_s"} <= set(log["provenance"])


@pytest.mark.parametrize("ensemble", [False, True])
def test_evaluate_writes_json_with_provenance(trained, ensemble):
    out = trained / f"eval{int(ensemble)}.json"
    args = ["evaluate", "--model", trained / "run" / "model.pt", "--data", trained / "test.h5", "--tile", 16,
            "--out", out, "--device", "cpu"]
    ride(*args, *(["--ensemble"] if ensemble else []))
    result = json.loads(out.read_text())
    assert result["ensemble"] is ensemble
    assert result["num_tiles"] == 2 * 4
    assert result["num_pixels"] == 8 * (144 if ensemble else 14 * 12)
    assert np.isfinite(result["bits_per_pixel"]) and result["sem"] > 0
    assert {"git_commit", "versions", "device", "command", "timestamp", "wall_time_s"} <= set(result["provenance"])
    # the test file's checksum: rows evaluated on other machines (other paths) still pair by tile
    assert result["data_sha256"] == hashlib.sha256((trained / "test.h5").read_bytes()).hexdigest()


def test_sample_writes_images(trained):
    out = trained / "samples.h5"
    ride("sample", "--model", trained / "run" / "model.pt", "--out", out, "--num", 2, "--size", 12, 14,
         "--device", "cpu")
    with h5py.File(out) as fh:
        assert fh["images"].shape == (2, 12, 14)
        assert np.isfinite(fh["images"][()]).all()


def test_bad_inputs_name_the_problem(trained, tmp_path):
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as fh:
        fh["pixels"] = np.zeros((2, 8, 8), np.float32)
    proc = ride("evaluate", "--model", trained / "run" / "model.pt", "--data", wrong, check=False)
    assert proc.returncode == 2
    assert "wrong.h5" in proc.stderr and "'images'" in proc.stderr

    corrupt = tmp_path / "corrupt.h5"
    save_images(corrupt, np.zeros((2, 8, 8), np.float32))
    with open(corrupt, "r+b") as fh:
        fh.truncate(100)
    proc = ride("train", "--config", trained / "cfg.yaml", "--data", corrupt, "--out-dir", tmp_path / "r", check=False)
    assert proc.returncode == 2 and "corrupt.h5" in proc.stderr and "sha256" in proc.stderr
    assert not (tmp_path / "r" / "model.pt").exists()

    small = tmp_path / "small.h5"
    save_images(small, np.zeros((2, 2, 3), np.float32))
    proc = ride("evaluate", "--model", trained / "run" / "model.pt", "--data", small, "--tile", 2, check=False)
    assert proc.returncode == 2 and "smaller than" in proc.stderr


def test_bench_takes_leading_options(tmp_path):
    # `ride bench --quick ...` (options first) reaches the benchmark's own parser; the JSON has
    # the keys the README documents. Figures are not judged here: benchmarks are not tests.
    from ride.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--no-memory", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert records and {"layers", "hidden", "patch", "batch", "device", "px_per_s", "per_pixel_px_per_s",
                        "roofline_px_per_s", "peak_mem_mb"} <= set(records[0])


def test_resume_discards_a_checkpoint_of_another_config(trained, tmp_path):
    # `ride train --resume` after the config changed: the old checkpoint cannot be continued, so
    # the command says which field differs, discards it and trains afresh; after success no
    # checkpoint is left, so a deliberate re-run starts afresh too.
    import torch

    from ride.data import load_images
    from ride.train import TrainConfig, Trainer

    config = yaml.safe_load((trained / "cfg.yaml").read_text())
    run = tmp_path / "run"
    images = torch.from_numpy(load_images(trained / "train.h5"))
    Trainer(config["model"], TrainConfig.from_dict(config["train"]), images, run, "cpu", progress=False).save_checkpoint()
    config["train"]["lbfgs_iterations"] = 6
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    proc = ride("train", "--config", tmp_path / "cfg.yaml", "--data", trained / "train.h5", "--out-dir", run, "--resume",
                "--device", "cpu", "--no-progress")
    assert "lbfgs_iterations: 5 -> 6" in proc.stderr and "training afresh" in proc.stderr, proc.stderr
    assert (run / "model.pt").exists() and not (run / "checkpoint.pt").exists()
    assert json.loads((run / "train.json").read_text())["train_config"]["lbfgs_iterations"] == 6
