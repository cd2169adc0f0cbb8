"""Training: known entropy rate, samples, resume, failure modes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ride.data import save_images
from ride.evaluate import evaluate
from ride.synthetic import gaussian_ar_field, gaussian_ar_rate
from ride.train import TrainConfig, Trainer, TrainingError, extract_patches, load_model, train

SIGMA = 0.1
MCGSM_CFG = {
    "model": {"nb_size": 3, "num_hidden": 0, "num_layers": 0, "num_components": 4, "num_scales": 2, "num_features": 4},
    "train": {"lbfgs_iterations": 200, "lbfgs_patch": 64, "valid_fraction": 0.2},
}
RIDE_CFG = {
    "model": {"nb_size": 3, "num_hidden": 8, "num_layers": 1, "num_components": 4, "num_scales": 2, "num_features": 4},
    "train": {"stages": [{"patch": 16, "lr": 0.5}, {"patch": 20, "lr": 0.1}], "lbfgs_iterations": 100,
              "valid_fraction": 0.2, "batch_size": 16},
}


@pytest.fixture(scope="module")
def ar_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ar")
    images = gaussian_ar_field(32, 64, sigma=SIGMA, seed=1)
    save_images(root / "train.h5", images[:24])
    return root / "train.h5", torch.from_numpy(images[24:])


@pytest.fixture(scope="module")
def fitted_mcgsm(ar_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mcgsm")
    train(MCGSM_CFG, ar_data[0], out, device="cpu", progress=False)
    return load_model(out / "model.pt")


def test_mcgsm_reaches_entropy_rate(fitted_mcgsm, ar_data):
    result = evaluate(fitted_mcgsm, ar_data[1], tile=32)
    assert abs(result["bits_per_pixel"] - gaussian_ar_rate(SIGMA)) < 0.02, result


def test_ride_reaches_entropy_rate(ar_data, tmp_path):
    train(RIDE_CFG, ar_data[0], tmp_path, device="cpu", progress=False)
    model = load_model(tmp_path / "model.pt")
    assert model.slstm.num_layers == 1
    result = evaluate(model, ar_data[1], tile=32)
    assert abs(result["bits_per_pixel"] - gaussian_ar_rate(SIGMA)) < 0.02, result


def _stats(images: np.ndarray) -> tuple[float, float, float]:
    x = images - images.mean()
    var = float((x**2).mean())
    horiz = float((x[:, :, 1:] * x[:, :, :-1]).mean() / var)
    vert = float((x[:, 1:, :] * x[:, :-1, :]).mean() / var)
    return var, horiz, vert


def test_samples_reproduce_variance_and_correlation(fitted_mcgsm, ar_data):
    gen = torch.Generator().manual_seed(0)
    samples = fitted_mcgsm.sample(6, 72, 72, generator=gen).numpy()
    # Drop the border noise and the burn-in rows/columns the sampler needs to forget it.
    interior = samples[:, 24:, 16:-16]
    data = ar_data[1].numpy()
    for got, want, name in zip(_stats(interior), _stats(data), ["variance", "horizontal corr", "vertical corr"]):
        assert abs(got - want) <= 0.05 * abs(want), (name, got, want)


def test_resume_matches_uninterrupted(ar_data, tmp_path):
    # Checkpoints every 2 batches, interrupted after batch 3: the resumed run redoes batch 3.
    cfg = TrainConfig.from_dict({**RIDE_CFG["train"], "lbfgs_iterations": 10, "checkpoint_every": 2, "batch_size": 4})
    images = torch.from_numpy(gaussian_ar_field(8, 32, seed=3))
    full = Trainer(RIDE_CFG["model"], cfg, images, tmp_path / "full", "cpu", progress=False).run()

    class Interrupt(Exception):
        pass

    def stop_midway(state):
        if state["stage"] == 0 and state["batch"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(RIDE_CFG["model"], cfg, images, tmp_path / "part", "cpu", progress=False, callback=stop_midway).run()
    assert not (tmp_path / "part" / "model.pt").exists()
    resumed = Trainer(RIDE_CFG["model"], cfg, images, tmp_path / "part", "cpu", progress=False).run(resume=True)
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        torch.testing.assert_close(resumed_state[key], full_state[key], rtol=0, atol=1e-6, msg=key)


def test_grow_layers_adds_one_layer_per_stage(tmp_path):
    images = torch.from_numpy(gaussian_ar_field(6, 24, seed=4))
    model_cfg = {**RIDE_CFG["model"], "num_layers": 3}
    cfg = TrainConfig.from_dict({**RIDE_CFG["train"], "grow_layers": True, "lbfgs_iterations": 2,
                                 "stages": [{"patch": 12, "lr": 0.1}] * 4})
    model = Trainer(model_cfg, cfg, images, tmp_path, "cpu", progress=False).run()
    assert model.slstm.num_layers == 3


def test_nan_loss_stops_without_writing_a_model(tmp_path):
    images = torch.from_numpy(gaussian_ar_field(6, 24, seed=5))
    cfg = TrainConfig.from_dict({**RIDE_CFG["train"], "lbfgs_iterations": 2})
    trainer = Trainer(RIDE_CFG["model"], cfg, images, tmp_path, "cpu", progress=False)
    with torch.no_grad():
        trainer.model.mcgsm.scales.fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite loss"):
        trainer.run()
    assert not (tmp_path / "model.pt").exists()


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="patch"):
        TrainConfig.from_dict({"stages": [{"size": 8, "lr": 1.0}]})
    with pytest.raises(ValueError, match="cfg.yaml: the top level: .*'modle' was unexpected"):
        train({"modle": {}}, "unused.h5", "unused", source="cfg.yaml")


def test_extract_patches_are_non_overlapping_tiles():
    images = torch.arange(2 * 10 * 9, dtype=torch.float32).reshape(2, 10, 9)
    patches = extract_patches(images, 4)
    assert patches.shape == (2 * 2 * 2, 4, 4)
    values = patches.flatten()
    assert values.unique().numel() == values.numel()
    torch.testing.assert_close(patches[1], images[0, 0:4, 4:8])
    with pytest.raises(ValueError, match="exceeds"):
        extract_patches(images, 11)


def test_resume_refuses_other_data_and_rewrites_missing_outputs(tmp_path):
    cfg = TrainConfig.from_dict({**RIDE_CFG["train"], "lbfgs_iterations": 2, "stages": [{"patch": 12, "lr": 0.1}]})
    images = torch.from_numpy(gaussian_ar_field(6, 24, seed=6))
    Trainer(RIDE_CFG["model"], cfg, images, tmp_path, "cpu", progress=False).run()
    (tmp_path / "model.pt").unlink()
    Trainer(RIDE_CFG["model"], cfg, images, tmp_path, "cpu", progress=False).run(resume=True)
    assert (tmp_path / "model.pt").exists()
    other = Trainer(RIDE_CFG["model"], cfg, images + 1, tmp_path, "cpu", progress=False)
    with pytest.raises(TrainingError, match="data: the training images differ"):
        other.run(resume=True)
    wider = Trainer({**RIDE_CFG["model"], "num_hidden": 9}, cfg, images, tmp_path, "cpu", progress=False)
    with pytest.raises(TrainingError, match="model num_hidden: 8 -> 9"):
        wider.run(resume=True)


def test_nan_restores_last_checkpoint_with_halved_rate(tmp_path):
    images = torch.from_numpy(gaussian_ar_field(8, 32, seed=7))
    cfg = TrainConfig.from_dict({**RIDE_CFG["train"], "lbfgs_iterations": 2, "batch_size": 4, "checkpoint_every": 2,
                                 "stages": [{"patch": 16, "lr": 0.5}]})
    trainer = Trainer(RIDE_CFG["model"], cfg, images, tmp_path, "cpu", progress=False)
    poisoned = []

    def poison_once(state):
        if state["batch"] == 3 and not poisoned:
            poisoned.append(True)
            with torch.no_grad():
                trainer.model.mcgsm.scales.fill_(float("nan"))

    trainer.callback = poison_once
    model = trainer.run()
    events = [h for h in trainer.history if h.get("event") == "non-finite loss"]
    assert len(events) == 1
    assert events[0]["batch"] == 4 and events[0]["restored"] == {"stage": 1, "batch": 2}
    assert events[0]["new_lr"] == pytest.approx(0.25)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_clip_grad_norm_bounds_each_step(tmp_path, clip):
    # One SGD step without momentum moves the parameters by lr * gradient; with clip_grad_norm
    # the move is at most lr * clip. The unclipped case shows the bound is not trivially met.
    images = torch.from_numpy(gaussian_ar_field(6, 24, seed=6))
    cfg = TrainConfig.from_dict({**RIDE_CFG["train"], "lbfgs_iterations": 0, "momentum": 0.0,
                                 "stages": [{"patch": 12, "lr": 1.0}], "clip_grad_norm": clip})
    moves = []

    def after_batch(state):
        now = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        moves.append((now - before).norm().item())

    trainer = Trainer(RIDE_CFG["model"], cfg, images, tmp_path, "cpu", progress=False, callback=after_batch)
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.run()
    assert moves
    if clip is None:
        assert moves[0] > 10 * 1e-3
    else:
        assert moves[0] <= 1e-3 * (1 + 1e-5)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        TrainConfig.from_dict({"clip_grad_norm": 0.0})


def test_stage_patches_grow_to_fit_wide_neighbourhoods(tmp_path):
    # An 8x8 stage with a 9-wide neighbourhood (5x9 window) has no scored pixel; the trainer
    # widens such a stage's patches to nb_size + 3 and records both sizes.
    images = torch.from_numpy(gaussian_ar_field(6, 24, seed=7))
    model_cfg = {**RIDE_CFG["model"], "nb_size": 9}
    cfg = TrainConfig.from_dict({**RIDE_CFG["train"], "lbfgs_iterations": 2,
                                 "stages": [{"patch": 8, "lr": 0.1}, {"patch": 16, "lr": 0.1}]})
    Trainer(model_cfg, cfg, images, tmp_path, "cpu", progress=False).run()
    history = json.loads((tmp_path / "train.json").read_text())["history"]
    assert [(h["requested_patch"], h["patch"]) for h in history] == [(8, 12), (16, 16)]


def test_train_schema_matches_train_config_and_the_workflow_schema():
    # The schema of `ride train --config` (ride/train_config.py) names exactly TrainConfig's
    # fields, and every config the workflow's schema describes uses only keys it knows, with
    # the same model constraints: the workflow cannot write a config that `ride train` rejects
    # for an unknown key.
    import dataclasses
    from pathlib import Path

    import yaml

    from ride.train_config import MODEL_SCHEMA, TRAIN_SCHEMA

    assert set(TRAIN_SCHEMA["properties"]) == {f.name for f in dataclasses.fields(TrainConfig)}
    workflow = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    assert set(workflow["$defs"]["train"]["properties"]) <= set(TRAIN_SCHEMA["properties"])
    assert workflow["$defs"]["model"]["properties"] == MODEL_SCHEMA["properties"]


# Training on small data (issue 12): several epochs per stage, early stopping on held-out images.
EPOCH_CFG = {**RIDE_CFG["train"], "stages": [{"patch": 10, "lr": 0.1}], "batch_size": 8, "lbfgs_iterations": 0,
             "divergence_margin": None, "valid_fraction": 0.25}


def test_epochs_redraw_offsets_flips_and_order(tmp_path):
    images = torch.from_numpy(gaussian_ar_field(8, 34, seed=5))  # 34 = 3 * 10 + 4: five grid offsets
    trainer = Trainer(RIDE_CFG["model"], TrainConfig.from_dict({**EPOCH_CFG, "epochs": 3}), images, tmp_path, "cpu",
                      progress=False)
    epochs = [trainer.epoch_patches(0, 10, e) for e in range(3)]
    assert all(p.shape == epochs[0].shape for p in epochs)
    # Epoch 0 is the one-epoch protocol's draw; each later epoch differs from it, as a set of
    # patches (offset / flips), not only in its order.
    legacy = Trainer(RIDE_CFG["model"], TrainConfig.from_dict(EPOCH_CFG), images, tmp_path, "cpu", progress=False)
    torch.testing.assert_close(epochs[0], legacy.epoch_patches(0, 10, 0), rtol=0, atol=0)
    sums = [np.sort(p.sum((1, 2)).numpy()) for p in epochs]
    assert not np.allclose(sums[0], sums[1]) and not np.allclose(sums[1], sums[2])
    trainer.run()
    history = json.loads((tmp_path / "train.json").read_text())["history"]
    per_epoch = epochs[0].shape[0] // 8
    assert history[0]["batches"] == 3 * per_epoch and history[0]["epochs"] == 3
    # A stage's own `epochs` overrides the global one.
    stage = TrainConfig.from_dict({**EPOCH_CFG, "epochs": 3, "stages": [{"patch": 10, "lr": 0.1, "epochs": 2}]})
    Trainer(RIDE_CFG["model"], stage, images, tmp_path / "s", "cpu", progress=False).run()
    assert json.loads((tmp_path / "s" / "train.json").read_text())["history"][0]["batches"] == 2 * per_epoch


def test_early_stopping_keeps_the_best_validation_state(tmp_path, monkeypatch):
    images = torch.from_numpy(gaussian_ar_field(8, 34, seed=5))
    cfg = TrainConfig.from_dict({**EPOCH_CFG, "epochs": 10, "early_stopping": 2})
    trainer = Trainer(RIDE_CFG["model"], cfg, images, tmp_path, "cpu", progress=False)
    # Scripted held-out scores: best after epoch 2, then two epochs without gain -> stop after 4.
    scores, states = iter([3.0, 1.0, 2.0, 4.0, 0.5, 0.1]), []

    def scripted(stage, patch):
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(trainer, "valid_nll", scripted)
    model = trainer.run()
    assert len(states) == 4
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, states[1][key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(states[1][k], states[3][k]) for k in states[1])  # training did move on
    record = json.loads((tmp_path / "train.json").read_text())["history"][0]
    assert (record["best_epoch"], record["epochs_run"], record["valid_nll_epochs"]) == (2, 4, [3.0, 1.0, 2.0, 4.0])


def test_early_stopping_on_real_scores_and_determinism(tmp_path):
    images = torch.from_numpy(gaussian_ar_field(8, 34, seed=5))
    cfg = {**EPOCH_CFG, "stages": [{"patch": 10, "lr": 0.5}], "epochs": 4, "early_stopping": 1}
    runs = [Trainer(RIDE_CFG["model"], TrainConfig.from_dict({**cfg, "seed": s}), images, tmp_path / f"r{i}", "cpu",
                    progress=False) for i, s in enumerate([3, 3, 4])]
    models = [t.run() for t in runs]
    record = json.loads((tmp_path / "r0" / "train.json").read_text())["history"][0]
    # The kept state scores the best of the recorded epochs on the held-out images (no L-BFGS here).
    assert runs[0].valid_nll(0, 10) == pytest.approx(min(record["valid_nll_epochs"]), abs=1e-9)
    same = [torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values())]
    assert all(same)
    other = [torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[2].state_dict().values())]
    assert not all(other)


def test_resume_inside_a_later_epoch_matches_uninterrupted(tmp_path):
    images = torch.from_numpy(gaussian_ar_field(8, 34, seed=5))
    cfg = TrainConfig.from_dict({**EPOCH_CFG, "epochs": 3, "early_stopping": 2, "checkpoint_every": 3})
    full = Trainer(RIDE_CFG["model"], cfg, images, tmp_path / "full", "cpu", progress=False).run()

    class Interrupt(Exception):
        pass

    def stop(state):
        if state["batch"] == 7:  # inside the second epoch (6 training images x 9 patches / 8 = 6 batches)
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(RIDE_CFG["model"], cfg, images, tmp_path / "part", "cpu", progress=False, callback=stop).run()
    resumed = Trainer(RIDE_CFG["model"], cfg, images, tmp_path / "part", "cpu", progress=False).run(resume=True)
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
