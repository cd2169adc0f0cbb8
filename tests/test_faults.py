"""Faults of issue 8: one test per numbered item."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from ride.cli import main as ride_main
from ride.data import atomic_write, load_images, save_images
from ride.model import RIDE
from ride.synthetic import gaussian_ar_field
from ride.train import TrainConfig, Trainer, TrainingError, load_model

# Items 1, 3-6, 8-10: a tiny model on 24x24 Gaussian-field images (seconds per run).
MODEL = {"nb_size": 3, "num_hidden": 4, "num_layers": 1, "num_components": 2, "num_scales": 2, "num_features": 2}
TRAIN = {"stages": [{"patch": 12, "lr": 0.1}], "batch_size": 4, "lbfgs_iterations": 3, "valid_fraction": 0.25,
         "checkpoint_every": 2}


def ride(capsys, *args):
    """``ride ARGS`` in this process: (exit status, stderr). An uncaught exception fails the test."""
    try:
        rc = ride_main([str(a) for a in args])
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    return rc, capsys.readouterr().err


def one_line_error(rc, err):
    """A bad input ends with status 2 and one ``ride ...: error: ...`` line, never a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err and lines, (rc, err)
    assert lines[-1].startswith("ride") and "error:" in lines[-1], err
    return lines[-1]


def write_config(path, model=MODEL, train=TRAIN, **sections):
    config = {"model": model, "train": train, **sections}
    path.write_text(yaml.safe_dump({k: v for k, v in config.items() if v is not ...}))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Training and test data, the config, and a model trained from them by `ride train`."""
    root = tmp_path_factory.mktemp("faults")
    images = gaussian_ar_field(10, 24, seed=11)
    save_images(root / "train.h5", images[:8])
    save_images(root / "test.h5", images[8:])
    write_config(root / "cfg.yaml")
    assert ride_main(["train", "--config", str(root / "cfg.yaml"), "--data", str(root / "train.h5"), "--out-dir",
                      str(root / "run"), "--device", "cpu", "--no-progress"]) == 0
    return root


def interrupted_run(files, out_dir, after_batch=2):
    """A `ride train` of cfg.yaml stopped right after its checkpoint at ``after_batch``."""

    class Interrupt(Exception):
        pass

    def stop(state):
        if state["batch"] == after_batch:
            raise Interrupt

    images = torch.from_numpy(load_images(files / "train.h5"))
    trainer = Trainer(MODEL, TrainConfig.from_dict(TRAIN), images, out_dir, "cpu", progress=False, callback=stop)
    with pytest.raises(Interrupt):
        trainer.run()
    assert (out_dir / "checkpoint.pt").exists() and not (out_dir / "model.pt").exists()
    return trainer.model


def flip_bytes_of(path, tensor, count=16):
    """Flip ``count`` bytes inside ``tensor``'s stored values in ``path`` (a silent corruption)."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().cpu().contiguous().numpy().tobytes()
    start = data.find(raw)
    assert start >= 0, "tensor bytes not found in the file"
    for i in range(start + 4, start + 4 + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def largest(state_dict):
    return max(state_dict.values(), key=lambda t: t.numel())


def train_args(files, out_dir, config=None, data=None):
    return ["train", "--config", config or files / "cfg.yaml", "--data", data or files / "train.h5", "--out-dir",
            out_dir, "--device", "cpu", "--no-progress"]


def test_item1_divergence_without_nan_is_recovered_or_stopped(tmp_path):
    """Item 1: stage 1 at lr 1000 without clipping took the NLL from -0.6 to 14 and was saved as
    a normal model. A stage whose validation NLL ends more than divergence_margin (1 nat/px)
    above the whitened Gaussian's is redone from its start at half the rate, a bounded number
    of times: lr 40 recovers at 10, lr 1000 stops with no model written."""
    images = torch.from_numpy(gaussian_ar_field(8, 32, seed=3))
    model = {**MODEL, "num_hidden": 8, "num_components": 4, "num_features": 4}
    train = {"lbfgs_iterations": 5, "batch_size": 4, "valid_fraction": 0.25, "clip_grad_norm": None}

    cfg = TrainConfig.from_dict({**train, "stages": [{"patch": 16, "lr": 40.0}]})
    trainer = Trainer(model, cfg, images, tmp_path / "recovered", "cpu", progress=False)
    trainer.run()
    events = [h for h in trainer.history if "event" in h]
    assert events and all(e["event"] == "diverged" and e["new_lr"] == e["lr"] / 2 for e in events), events
    final = trainer.history[-1]
    assert final["valid_nll"] <= final["valid_nll_gaussian"] + cfg.divergence_margin, final
    assert (tmp_path / "recovered" / "model.pt").exists()

    cfg = TrainConfig.from_dict({**train, "stages": [{"patch": 16, "lr": 1000.0}]})
    with pytest.raises(TrainingError, match=r"diverged: validation NLL .* above the whitened Gaussian"):
        Trainer(model, cfg, images, tmp_path / "stopped", "cpu", progress=False).run()
    assert not (tmp_path / "stopped" / "model.pt").exists()


def test_item3_integer_images_are_refused(files, tmp_path, capsys):
    """Item 3: uint8 `images` trained (rc 0) and evaluated to -72088 bit/px."""
    data = tmp_path / "uint8.h5"
    with h5py.File(data, "w") as fh:
        fh["images"] = np.random.default_rng(0).integers(0, 256, (8, 24, 24), dtype=np.uint8)
    line = one_line_error(*ride(capsys, *train_args(files, tmp_path / "run", data=data)))
    assert "uint8.h5" in line and "uint8" in line and "float" in line and "save_images" in line
    assert not (tmp_path / "run").exists()
    line = one_line_error(*ride(capsys, "evaluate", "--model", files / "run" / "model.pt", "--data", data))
    assert "uint8.h5" in line and "float" in line


@pytest.mark.parametrize("section, key, value", [
    ("train", "batch_size", -4),
    ("train", "max_patches", -5),
    ("train", "flip", "no"),
    (None, "model", ...),
])
def test_item4_config_values_are_validated_before_any_work(files, tmp_path, capsys, section, key, value):
    """Item 4: these trained silently (one 36-patch batch, 5 patches dropped, flipping on, the
    default model). The config is checked against its schema first; the message names the
    file, the key and the fix, and nothing is written."""
    config = {"model": dict(MODEL), "train": dict(TRAIN)}
    if section is None:
        config[key] = value
    else:
        config[section][key] = value
    cfg = write_config(tmp_path / "bad.yaml", **config)
    line = one_line_error(*ride(capsys, *train_args(files, tmp_path / "run", config=cfg)))
    assert "bad.yaml" in line and key in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("max_tiles", [-1, 0])
def test_item4_max_tiles_must_be_positive(files, capsys, max_tiles):
    """Item 4: `--max-tiles -1` dropped a tile, `--max-tiles 0` evaluated all of them."""
    line = one_line_error(*ride(capsys, "evaluate", "--model", files / "run" / "model.pt", "--data",
                                files / "test.h5", "--tile", 12, "--max-tiles", max_tiles))
    assert "--max-tiles" in line


def test_item5_corrupt_model_and_checkpoint_files_are_caught(files, tmp_path, capsys):
    """Item 5: 16 flipped bytes inside a tensor of model.pt evaluated to a wrong rate with rc 0;
    a bit-flipped checkpoint resumed and finished at a wrong rate; a truncated one failed every
    re-run with a traceback. Now model.pt is refused naming the file and the fix, and `ride
    train --resume` drops a damaged checkpoint with a warning and trains afresh, ending with
    the weights of an uninterrupted run."""
    model = tmp_path / "model.pt"
    model.write_bytes((files / "run" / "model.pt").read_bytes())
    fresh = load_model(files / "run" / "model.pt").state_dict()
    flip_bytes_of(model, largest(fresh))
    args = ["evaluate", "--model", model, "--data", files / "test.h5", "--tile", 12]
    line = one_line_error(*ride(capsys, *args))
    assert str(model) in line and "corrupt" in line and "train" in line
    model.write_bytes((files / "run" / "model.pt").read_bytes()[:1000])
    line = one_line_error(*ride(capsys, *args))
    assert str(model) in line and "train" in line

    for damage in ("flip", "truncate"):
        out = tmp_path / damage
        weights = interrupted_run(files, out)
        ckpt = out / "checkpoint.pt"
        if damage == "flip":
            flip_bytes_of(ckpt, largest(weights.state_dict()))
        else:
            ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        rc, err = ride(capsys, *train_args(files, out), "--resume")
        assert rc == 0 and "checkpoint.pt" in err and "corrupt" in err and "afresh" in err, err
        resumed = load_model(out / "model.pt").state_dict()
        for key in fresh:
            torch.testing.assert_close(resumed[key], fresh[key], rtol=0, atol=0, msg=key)


def test_item6_images_smaller_than_a_stage_patch_are_refused(files, tmp_path, capsys):
    """Item 6: 6x6 images trained on 6x6 patches while train.json recorded patch 8/12."""
    save_images(tmp_path / "small.h5", gaussian_ar_field(8, 10, seed=1))
    line = one_line_error(*ride(capsys, *train_args(files, tmp_path / "run", data=tmp_path / "small.h5")))
    assert "small.h5" in line and "10x10" in line and "12x12" in line
    assert not (tmp_path / "run").exists()


def _bad_train_config(tmp_path, section, key, value):
    config = {"model": dict(MODEL), "train": dict(TRAIN)}
    config[section][key] = value
    return write_config(tmp_path / "bad.yaml", **config)


ITEM8_CASES = {
    "device-cuda": (lambda f, t: train_args(f, t / "run") + ["--device", "cuda"], "CUDA"),
    "device-gpu": (lambda f, t: train_args(f, t / "run") + ["--device", "gpu"], "gpu"),
    "tile-0": (lambda f, t: ["evaluate", "--model", f / "run" / "model.pt", "--data", f / "test.h5", "--tile", 0],
               "--tile"),
    "tile-neg": (lambda f, t: ["evaluate", "--model", f / "run" / "model.pt", "--data", f / "test.h5", "--tile", -5],
                 "--tile"),
    "num-0": (lambda f, t: ["sample", "--model", f / "run" / "model.pt", "--out", t / "s.h5", "--num", 0], "--num"),
    "num-neg": (lambda f, t: ["sample", "--model", f / "run" / "model.pt", "--out", t / "s.h5", "--num", -1], "--num"),
    "model-key": (lambda f, t: train_args(f, t / "run", config=_bad_train_config(t, "model", "hidden", 8)), "hidden"),
    "batch-0": (lambda f, t: train_args(f, t / "run", config=_bad_train_config(t, "train", "batch_size", 0)),
                "batch_size"),
    "batch-str": (lambda f, t: train_args(f, t / "run", config=_bad_train_config(t, "train", "batch_size", "4")),
                  "batch_size"),
    "ckpt-every-0": (lambda f, t: train_args(f, t / "run", config=_bad_train_config(t, "train", "checkpoint_every", 0)),
                     "checkpoint_every"),
    "stages-null": (lambda f, t: train_args(f, t / "run", config=_bad_train_config(t, "train", "stages", None)),
                    "stages"),
    "hidden-neg": (lambda f, t: train_args(f, t / "run", config=_bad_train_config(t, "model", "num_hidden", -3)),
                   "num_hidden"),
}


@pytest.mark.parametrize("case", sorted(ITEM8_CASES))
def test_item8_bad_arguments_give_one_line_errors(files, tmp_path, capsys, case):
    """Item 8 (arguments and config values): each gave a traceback; the first three training
    cases also left a checkpoint.pt behind."""
    if case == "device-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    make_args, words = ITEM8_CASES[case]
    line = one_line_error(*ride(capsys, *make_args(files, tmp_path)))
    assert words in line, line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_item8_bad_files_give_one_line_errors(files, tmp_path, capsys):
    """Item 8 (files): a non-model model.pt, `images` stored as an HDF5 group, and bit flips in
    a data file without a sidecar (a FloatingPointError traceback) end in one line naming the
    file."""
    def evaluate(model, data):
        return one_line_error(*ride(capsys, "evaluate", "--model", model, "--data", data, "--tile", 12))

    not_model = tmp_path / "model.pt"
    torch.save({"weights": torch.ones(3)}, not_model)
    assert "model.pt" in evaluate(not_model, files / "test.h5")
    not_model.write_text("not a model\n")
    assert "model.pt" in evaluate(not_model, files / "test.h5")

    group = tmp_path / "group.h5"
    with h5py.File(group, "w") as fh:
        fh.create_group("images")["0"] = np.zeros((24, 24), np.float32)
    line = evaluate(files / "run" / "model.pt", group)
    assert "group.h5" in line and "images" in line

    flipped = tmp_path / "flipped.h5"
    images = load_images(files / "test.h5")
    bits = images.view(np.uint32)
    bits[0, 10, 10] ^= 1 << 30  # one flipped exponent bit: 0.5 becomes 1.7e38, still finite
    with h5py.File(flipped, "w") as fh:
        fh["images"] = images
    line = evaluate(files / "run" / "model.pt", flipped)
    assert "flipped.h5" in line and "non-finite" in line


def test_item9_stop_advice_works_and_constant_images_are_named(files, tmp_path, capsys, monkeypatch):
    """Item 9: the NaN stop advised a --resume that the resume guard refused; constant images
    stopped "on NaN" blaming the learning rate. Following the advice now trains the model;
    constant data are named as such before any training."""
    monkeypatch.setattr(RIDE, "loss", lambda self, images: torch.full((), float("nan"), requires_grad=True))
    out = tmp_path / "run"
    rc, err = ride(capsys, *train_args(files, out))
    assert rc != 0 and "non-finite loss" in err and not (out / "model.pt").exists(), err
    monkeypatch.undo()
    advice = [flag for flag in ("--restart", "--resume") if flag in err]
    assert advice and "lr" in err, err
    lowered = write_config(tmp_path / "lower.yaml", train={**TRAIN, "stages": [{"patch": 12, "lr": 0.05}]})
    rc, err = ride(capsys, *train_args(files, out, config=lowered), advice[0])
    assert rc == 0 and (out / "model.pt").exists(), err

    save_images(tmp_path / "flat.h5", np.full((8, 24, 24), 0.5, np.float32))
    line = one_line_error(*ride(capsys, *train_args(files, tmp_path / "flat", data=tmp_path / "flat.h5")))
    assert "flat.h5" in line and "constant" in line and "learning rate" not in line
    assert not (tmp_path / "flat" / "checkpoint.pt").exists()


def test_item10_unfinished_runs_are_not_overwritten_and_files_get_normal_modes(files, tmp_path, capsys):
    """Item 10: `ride train` without --resume silently overwrote an interrupted run's checkpoint;
    atomic_write left files 0600."""
    out = tmp_path / "run"
    interrupted_run(files, out)
    before = (out / "checkpoint.pt").read_bytes()
    line = one_line_error(*ride(capsys, *train_args(files, out)))
    assert "checkpoint.pt" in line and "--resume" in line and "--restart" in line
    assert (out / "checkpoint.pt").read_bytes() == before
    rc, err = ride(capsys, *train_args(files, out), "--restart")
    assert rc == 0 and (out / "model.pt").exists(), err

    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644



# ---------------------------------------------------------------------------------------------
# Items 2 and 7 (interrupted re-runs; a scale's run must not touch another scale's files)
# ---------------------------------------------------------------------------------------------

import shutil as _shutil
import subprocess as _subprocess
import sys as _sys
from pathlib import Path as _Path

_ROOT = _Path(__file__).resolve().parents[1]


def _snakemake(args, cwd, timeout=300):
    return _subprocess.run([_sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                           timeout=timeout)


def _planned_files(work, *args):
    """Every output and benchmark file a dry run of ``args`` plans, from Snakemake's job listing."""
    res = _snakemake(["-n", "--nolock", "--forceall", *args], work)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = set()
    for line in res.stdout.splitlines():
        key, _, value = line.strip().partition(": ")
        if key in ("output", "benchmark"):
            files.update(f.strip() for f in value.split(","))
    assert files, res.stdout[-3000:]
    return files


def _workflow_copy(dest):
    _shutil.copytree(_ROOT / "workflow", dest / "workflow", ignore=_shutil.ignore_patterns("__pycache__"))
    _shutil.copytree(_ROOT / "config", dest / "config")
    return dest


def test_item2_a_model_missing_behind_an_up_to_date_table_is_rebuilt(tmp_path):
    """Item 2: an interrupted `--forcerun runs/.../model.pt` leaves model.pt missing while the
    table and eval.json are up to date; the plain command must train, evaluate and render again
    instead of saying "Nothing to be done" while the table cites the lost model. (Deleting a run
    directory is the same case.) Checked on a finished smoke DAG made of placeholder files."""
    work = _workflow_copy(tmp_path / "wf")
    for name in sorted(_planned_files(work, "--config", "scale=smoke")):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text("")
    touched = _snakemake(["--touch", "--cores", "1", "--config", "scale=smoke"], work)
    assert touched.returncode == 0, touched.stderr[-3000:]
    before = _snakemake(["-n", "--config", "scale=smoke"], work)
    assert "Nothing to be done" in before.stdout + before.stderr, before.stdout[-3000:]  # the premise
    run = "runs/smoke/table3/ride64_l3" if (work / "runs/smoke/table3").exists() else "runs/smoke/ride64_l3"
    (work / run / "model.pt").unlink()
    after = _snakemake(["-n", "--config", "scale=smoke"], work)
    out = after.stdout + after.stderr
    assert after.returncode == 0 and "Nothing to be done" not in out, out[-3000:]
    assert f"output: {run}/model.pt" in out  # trained again ...
    assert f"output: {run}/eval.json" in out  # ... evaluated again ...
    assert "output: results/smoke/table3.csv" in out  # ... and the table rebuilt


def test_item7_a_scale_never_writes_committed_files_of_another_scale():
    """Item 7: the README's smoke command rewrote the committed quick-scale copies results/table3.*
    and results/figure2.* and the committed smoke references. Each scale's planned outputs may
    only be committed files of that scale's own results/<scale>/; the smoke scale writes no
    committed file at all (its references live in tests/references/smoke/)."""
    ls = _subprocess.run(["git", "ls-files"], cwd=_ROOT, capture_output=True, text=True)
    if ls.returncode != 0 or not ls.stdout:
        import pytest

        pytest.skip("not a git checkout: which files are committed is unknown")
    committed = {f for f in ls.stdout.splitlines() if (_ROOT / f).exists()}
    for scale in ("smoke", "quick", "paper"):
        planned = _planned_files(_ROOT, "--config", f"scale={scale}")
        clash = sorted(f for f in planned & committed if not (scale != "smoke" and f.startswith(f"results/{scale}/")))
        assert not clash, f"scale {scale} would overwrite committed files: {clash}"
