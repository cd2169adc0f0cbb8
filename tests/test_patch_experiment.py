"""``ride patch train|evaluate`` (ride/patch_experiment.py): round trips on tiny 3x3 patch sets,
config and data errors, and the 63-dim -> 64-dim conversion against ride.patch_rates."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ride.cli import main
from ride.datasets.patches import remove_dc, save_patches
from ride.errors import ConfigError
from ride.patch_ensemble import PatchEnsemble
from ride.patch_experiment import load_patch_model, validate_patch_config
from ride.patch_rates import PAPER_L_DC, bits_per_pixel_from_patch

SIZE = 3  # 8-dim DC-removed patches: every model fits in a second


pytestmark = pytest.mark.usefixtures("single_thread")


def _patch_set(path: Path, num: int, seed: int, with_dc: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    # Correlated, heavy-tailed pixels with a varying mean (so the DC model has something to fit).
    base = rng.standard_normal((num, 1, 1)) * 0.3 + 0.5
    raw = base + 0.1 * rng.standard_normal((num, SIZE, SIZE)) * rng.uniform(0.3, 1.5, (num, 1, 1))
    raw[:, :, 1:] += 0.5 * raw[:, :, :-1]
    ac, dc = remove_dc(raw.astype(np.float32))
    save_patches(path, ac, dc if with_dc else None, {"source": "test", "crop": np.array([0, 0, 32, 48])})
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    return {"train": _patch_set(root / "train.h5", 600, 0), "test": _patch_set(root / "test.h5", 200, 1), "root": root}


def _config(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


MCGSM_CFG = {"model": {"kind": "patch_mcgsm", "num_components": 2, "num_scales": 2, "num_features": 2},
             "train": {"max_iterations": 20, "check_every": 5}}
DC_CFG = {"model": {"kind": "mogsm", "num_components": 2, "num_scales": 2}, "train": {"max_iterations": 30}}


@pytest.fixture(scope="module")
def trained(data):
    root = data["root"]
    for name, cfg in (("mcgsm", MCGSM_CFG), ("dc", DC_CFG)):
        rc = main(["patch", "train", "--config", _config(root / f"{name}.json", cfg), "--data", str(data["train"]),
                   "--out-dir", str(root / name), "--no-progress", "--device", "cpu"])
        assert rc == 0
    return root


def test_train_writes_verified_model_and_provenance(trained):
    summary = json.loads((trained / "mcgsm" / "train.json").read_text())
    assert summary["kind"] == "patch_mcgsm" and summary["num_train"] + summary["num_valid"] == 600
    assert summary["num_valid"] == 60 and len(summary["history"]) == SIZE * SIZE - 1
    assert summary["provenance"]["seed"] == 0 and "git_commit" in summary["provenance"]
    assert summary["data_attrs"]["crop"] == [0, 0, 32, 48]  # array attributes (van Hateren's crop) as lists
    model = load_patch_model(trained / "mcgsm" / "model.pt")
    assert model.dim == 8 and model.config["num_components"] == 2
    # Trained, not left at its initialisation: the per-pixel held-out NLL went down somewhere.
    assert any(r.get("valid_nll", math.inf) < r.get("valid_nll_start", -math.inf) for r in summary["history"])


def test_evaluate_round_trip_and_conversion(trained, data, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["patch", "evaluate", "--model", str(trained / "mcgsm" / "model.pt"), "--data", str(data["test"]),
                 "--dc-model", str(trained / "dc" / "model.pt"), "--out", str(out), "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    from ride.datasets.patches import load_patches

    ac, dc, _ = load_patches(data["test"])
    model = load_patch_model(trained / "mcgsm" / "model.pt")
    dc_model = load_patch_model(trained / "dc" / "model.pt")
    with torch.no_grad():
        log_p = model.log_prob(torch.from_numpy(ac)).double()
        log_dc = dc_model.log_prob(torch.from_numpy(dc)).double()
    assert res["num_patches"] == 200 and res["dim"] == 8 and res["size"] == SIZE and not res["ensemble"]
    assert res["log_likelihood"] == pytest.approx(float(log_p.mean()), abs=1e-5)
    assert res["sem"] == pytest.approx(float(log_p.std() / math.sqrt(200)), rel=1e-4)
    assert res["l_dc"] == pytest.approx(float(log_dc.mean()), abs=1e-5)
    assert res["log_det_a"] == pytest.approx(-math.log(SIZE * SIZE))
    assert res["bits_per_pixel_our_l_dc"] == pytest.approx(bits_per_pixel_from_patch(res["log_likelihood"], res["l_dc"], SIZE))
    assert res["bits_per_pixel_paper_l_dc"] == pytest.approx(bits_per_pixel_from_patch(res["log_likelihood"], PAPER_L_DC, SIZE))
    assert res["bits_per_pixel"] == res["bits_per_pixel_our_l_dc"]
    # The 9-pixel rate is the mean log-density of the full patches X = A^-1 (x, DC): p(x) p(DC) |det A|.
    full = (log_p + log_dc - math.log(SIZE * SIZE)) / (SIZE * SIZE) / math.log(2)
    assert res["bits_per_pixel"] == pytest.approx(float(full.mean()), abs=1e-6)
    assert res["sem_bits_per_pixel"] == pytest.approx(float(full.std() / math.sqrt(200)), rel=1e-4)
    assert res["provenance"]["seed"] == 0 and res["kind"] == "patch_mcgsm"


def test_evaluate_ensemble_is_log_mean_of_members(trained, data, tmp_path):
    out = tmp_path / "eo.json"
    assert main(["patch", "evaluate", "--model", str(trained / "mcgsm" / "model.pt"), "--data", str(data["test"]),
                 "--ensemble", "--out", str(out), "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    from ride.datasets.patches import load_patches

    ac, _, _ = load_patches(data["test"])
    ens = PatchEnsemble(load_patch_model(trained / "mcgsm" / "model.pt"), SIZE)
    with torch.no_grad():
        members = ens.member_log_probs(torch.from_numpy(ac)).double()
    expected = (torch.logsumexp(members, 0) - math.log(8)).mean()
    assert res["ensemble"] and res["log_likelihood"] == pytest.approx(float(expected), abs=1e-5)
    assert res["log_likelihood"] != pytest.approx(float(members.mean()), abs=1e-3)  # not the mean of the logs
    assert res["l_dc"] is None and res["bits_per_pixel"] == res["bits_per_pixel_paper_l_dc"]


def test_patch_ride_round_trip(data, tmp_path):
    cfg = {"model": {"kind": "patch_ride", "nb_size": 3, "num_hidden": 2, "num_layers": 1, "num_components": 2,
                     "num_scales": 2, "num_features": 2},
           "train": {"learning_rates": [0.1], "batch_size": 50, "max_patches": 200, "lbfgs_iterations": 3,
                     "lbfgs_samples": 2000, "whitening_samples": 2000}}
    out_dir = tmp_path / "ride"
    assert main(["patch", "train", "--config", _config(tmp_path / "r.json", cfg), "--data", str(data["train"]),
                 "--valid", str(data["test"]), "--out-dir", str(out_dir), "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((out_dir / "train.json").read_text())
    assert summary["num_train"] == 200 and summary["num_valid"] == 200 and len(summary["history"]) == 1
    assert main(["patch", "evaluate", "--model", str(out_dir / "model.pt"), "--data", str(data["test"]),
                 "--out", str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    from ride.datasets.patches import load_patches

    ac, _, _ = load_patches(data["test"])
    with torch.no_grad():
        expected = load_patch_model(out_dir / "model.pt").log_prob(torch.from_numpy(ac)).mean()
    assert res["kind"] == "patch_ride" and res["log_likelihood"] == pytest.approx(float(expected), abs=1e-4)


@pytest.mark.parametrize("doc, words", [
    ({"model": {"kind": "gmm"}, "train": {}}, ["model.kind", "'gmm'", "patch_mcgsm"]),
    ({"model": {"kind": "patch_mcgsm", "num_components": 0}, "train": {}}, ["model.num_components", "minimum"]),
    ({"model": {"kind": "mogsm", "num_features": 3}, "train": {}}, ["num_features", "known keys"]),
    ({"model": {"kind": "patch_ride", "nb_size": 4}, "train": {}}, ["model.nb_size", "odd"]),
    ({"model": {"kind": "patch_mcgsm"}, "train": {"max_iterations": "many"}}, ["train.max_iterations"]),
    ({"model": {"kind": "patch_ride"}, "train": {"learning_rates": []}}, ["train.learning_rates"]),
    ({"model": {"kind": "mogsm"}}, ["exactly the sections"]),
])
def test_config_errors_are_one_line_before_any_work(doc, words, data, tmp_path, capsys):
    cfg = _config(tmp_path / "bad.json", doc)
    rc = main(["patch", "train", "--config", cfg, "--data", str(tmp_path / "absent.h5"), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and cfg in err, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "o").exists()


def test_defaults_fill_the_train_section():
    kind, kwargs, opts = validate_patch_config({"model": {"kind": "mogsm"}, "train": {}})
    assert kind == "mogsm" and kwargs == {} and opts["max_iterations"] == 500 and opts["valid_fraction"] == 0.1
    with pytest.raises(ConfigError, match="exactly the sections"):
        validate_patch_config([1, 2])


def test_data_errors(data, trained, tmp_path, capsys):
    odd = tmp_path / "odd.h5"
    save_patches(odd, np.zeros((10, 7), np.float32) + np.arange(7, dtype=np.float32))
    no_dc = _patch_set(tmp_path / "nodc.h5", 50, 3, with_dc=False)
    cases = [
        (["patch", "train", "--config", _config(tmp_path / "m.json", MCGSM_CFG), "--data", str(odd),
          "--out-dir", str(tmp_path / "a")], ["odd.h5", "7 coordinates"]),
        (["patch", "train", "--config", _config(tmp_path / "d.json", DC_CFG), "--data", str(no_dc),
          "--out-dir", str(tmp_path / "b")], ["nodc.h5", "'dc'"]),
        (["patch", "evaluate", "--model", str(trained / "dc" / "model.pt"), "--data", str(data["test"]),
          "--out", str(tmp_path / "c.json")], ["'mogsm' model", "patch_mcgsm"]),
        (["patch", "evaluate", "--model", str(trained / "mcgsm" / "model.pt"), "--data", str(no_dc),
          "--dc-model", str(trained / "dc" / "model.pt"), "--out", str(tmp_path / "c.json")], ["nodc.h5", "'dc'"]),
    ]
    for argv, words in cases:
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err, err
        for word in words:
            assert word in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c.json").exists()


def test_corrupt_model_is_refused(trained, data, tmp_path, capsys):
    broken = tmp_path / "model.pt"
    blob = bytearray((trained / "mcgsm" / "model.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    broken.write_bytes(bytes(blob))
    rc = main(["patch", "evaluate", "--model", str(broken), "--data", str(data["test"]), "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert rc == 2 and str(broken) in err and "ride patch train" in err


def test_raw_patches_rate_without_dc(tmp_path, capsys):
    """Table 2's "256 dim.": raw n x n patches, rate = log-likelihood / n^2 / ln 2; no DC, no ensemble."""
    rng = np.random.default_rng(5)
    raw = rng.standard_normal((300, SIZE * SIZE)).astype(np.float32) @ (np.eye(SIZE * SIZE) + 0.3).astype(np.float32)
    save_patches(tmp_path / "raw.h5", raw)
    cfg = _config(tmp_path / "m.json", MCGSM_CFG)
    assert main(["patch", "train", "--config", cfg, "--data", str(tmp_path / "raw.h5"), "--out-dir",
                 str(tmp_path / "m"), "--no-progress", "--device", "cpu"]) == 0
    model_pt = str(tmp_path / "m" / "model.pt")
    assert main(["patch", "evaluate", "--model", model_pt, "--data", str(tmp_path / "raw.h5"), "--out",
                 str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    with torch.no_grad():
        log_p = load_patch_model(model_pt).log_prob(torch.from_numpy(raw)).double()
    assert res["dim"] == SIZE * SIZE and res["size"] == SIZE and not res["dc_removed"] and "l_dc" not in res
    assert res["bits_per_pixel"] == pytest.approx(float(log_p.mean()) / (SIZE * SIZE) / math.log(2), abs=1e-6)
    capsys.readouterr()
    rc = main(["patch", "evaluate", "--model", model_pt, "--data", str(tmp_path / "raw.h5"), "--ensemble",
               "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "DC-removed" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------------------------------------
# --seed, and PatchRIDE's checkpoint: resume, mismatch, corruption, --restart

RIDE_RESUME_CFG = {
    "model": {"kind": "patch_ride", "nb_size": 3, "num_hidden": 2, "num_layers": 1, "num_components": 2,
              "num_scales": 2, "num_features": 2},
    # 2 epochs of 4 batches, a checkpoint every 2 batches and after each epoch's refinement.
    "train": {"learning_rates": [0.1, 0.05], "batch_size": 50, "max_patches": 200, "lbfgs_iterations": 3,
              "lbfgs_samples": 2000, "whitening_samples": 2000, "checkpoint_every": 2},
}


class _Interrupt(Exception):
    """Stands for a killed job: raised from inside the fit, caught by nobody."""


def _ride_train(data, out_dir: Path, *extra: str, valid: str = "test") -> int:
    cfg = _config(out_dir.parent / f"{out_dir.name}.json", RIDE_RESUME_CFG)
    return main(["patch", "train", "--config", cfg, "--data", str(data["train"]), "--valid", str(data[valid]),
                 "--out-dir", str(out_dir), "--no-progress", "--device", "cpu", *extra])


def _fitted(out_dir: Path) -> tuple[dict[str, torch.Tensor], list]:
    """The trained parameters and the per-epoch records of a finished run."""
    return (load_patch_model(out_dir / "model.pt").state_dict(),
            json.loads((out_dir / "train.json").read_text())["history"])


def _assert_same_fit(got, expected) -> None:
    (state, history), (state_ref, history_ref) = got, expected
    assert state.keys() == state_ref.keys()
    for key, value in state_ref.items():
        assert torch.equal(state[key], value), key  # bitwise: the resumed run retraces the uninterrupted one
    assert history == history_ref


def _count_calls(monkeypatch, target: str, stop_at: int | None = None) -> list[int]:
    """Count calls of ``PatchRIDE.loss`` (one per batch) or of the epoch-end refinement, raising
    :class:`_Interrupt` at call ``stop_at``."""
    import ride.patch_ride as pr

    owner, name = (pr.PatchRIDE, "loss") if target == "batch" else (pr, "_refine_mcgsm")
    original, calls = getattr(owner, name), [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == stop_at:
            raise _Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture(scope="module")
def ride_runs(data, tmp_path_factory):
    """Uninterrupted PatchRIDE fits: the config's seed (0) and ``--seed 3``."""
    root = tmp_path_factory.mktemp("ride_runs")
    assert _ride_train(data, root / "seed0") == 0
    assert _ride_train(data, root / "seed3", "--seed", "3") == 0
    return {0: _fitted(root / "seed0"), 3: _fitted(root / "seed3"), "root": root}


def _interrupted(data, out_dir: Path, monkeypatch, target: str = "batch", stop_at: int = 3) -> None:
    """A fit killed at call ``stop_at`` of ``target``; its checkpoint stays, no model is written."""
    with monkeypatch.context() as patch:
        _count_calls(patch, target, stop_at)
        with pytest.raises(_Interrupt):
            _ride_train(data, out_dir)
    assert (out_dir / "checkpoint.pt").exists() and not (out_dir / "model.pt").exists()


def test_seed_changes_the_fit_and_equal_seeds_reproduce_it(data, ride_runs, tmp_path):
    assert _ride_train(data, tmp_path / "again", "--seed", "3") == 0
    _assert_same_fit(_fitted(tmp_path / "again"), ride_runs[3])
    state0, state3 = ride_runs[0][0], ride_runs[3][0]
    assert any(not torch.equal(state0[k], state3[k]) for k in state0), "seeds 0 and 3 gave the same parameters"
    summary = json.loads((tmp_path / "again" / "train.json").read_text())
    assert summary["provenance"]["seed"] == 3 and summary["train"]["seed"] == 3
    assert json.loads((ride_runs["root"] / "seed0" / "train.json").read_text())["provenance"]["seed"] == 0
    assert not (tmp_path / "again" / "checkpoint.pt").exists()  # removed after success


@pytest.mark.parametrize("target, stop_at, batches_after_resume", [
    ("batch", 7, 2),   # epoch 2, batch 3: resumes from the checkpoint after its batch 2
    ("refine", 1, 4),  # epoch 1's refinement: resumes after its last batch, redoes the refinement
])
def test_resume_after_an_interruption_retraces_the_uninterrupted_fit(
        target, stop_at, batches_after_resume, data, ride_runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted(data, out, monkeypatch, target, stop_at)
    capsys.readouterr()
    with monkeypatch.context() as patch:
        batches = _count_calls(patch, "batch")
        assert _ride_train(data, out, "--resume") == 0
    assert "resuming from" in capsys.readouterr().err
    assert batches[0] == batches_after_resume  # continued, not trained afresh (8 batches)
    _assert_same_fit(_fitted(out), ride_runs[0])
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("extra, valid, words", [
    (["--seed", "3"], "test", ["train", "seed: 0 -> 3"]),
    ([], "train", ["data: the validation patches differ"]),
])
def test_a_checkpoint_of_another_run_is_discarded_naming_the_field(
        extra, valid, words, data, ride_runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted(data, out, monkeypatch)
    capsys.readouterr()
    assert _ride_train(data, out, "--resume", *extra, valid=valid) == 0
    err = capsys.readouterr().err
    assert "checkpoint.pt was written for another run" in err and "discarding it and training afresh" in err, err
    for word in words:
        assert word in err, err
    assert "resuming from" not in err and not (out / "checkpoint.pt").exists()
    if extra:  # trained afresh with seed 3: exactly the uninterrupted seed-3 fit
        _assert_same_fit(_fitted(out), ride_runs[3])


def test_a_corrupt_checkpoint_is_discarded_with_a_warning(data, ride_runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted(data, out, monkeypatch)
    blob = bytearray((out / "checkpoint.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (out / "checkpoint.pt").write_bytes(bytes(blob))
    capsys.readouterr()
    assert _ride_train(data, out, "--resume") == 0
    err = capsys.readouterr().err
    assert "warning" in err and "corrupt" in err and "training afresh" in err and "resuming" not in err, err
    _assert_same_fit(_fitted(out), ride_runs[0])
    assert not (out / "checkpoint.pt").exists()


def test_an_unfinished_run_needs_resume_or_restart(data, ride_runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted(data, out, monkeypatch)
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    for extra, words in ((), ["checkpoint.pt", "--resume", "--restart"]), (("--resume", "--restart"), ["exclude"]), \
            (("--seed", "-1"), ["--seed -1", "non-negative"]):
        assert _ride_train(data, out, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and all(w in err for w in words), err
        assert (out / "checkpoint.pt").read_bytes() == before  # nothing overwritten
    assert _ride_train(data, out, "--restart") == 0
    assert "resuming" not in capsys.readouterr().err
    _assert_same_fit(_fitted(out), ride_runs[0])
    assert not (out / "checkpoint.pt").exists()
