"""ride.cuda_graph on machines without a GPU: what the CPU can check of a capturable step.

A CUDA graph cannot hold a host synchronisation (``.item()``, ``bool(t)``, ``nonzero``, a copy to
the host): capture fails. The training step's CUDA path is the torch (or Triton) sweeps with the
MCGSM in torch ops; here it runs on the CPU under a detector that fails on every such call in
the forward and the backward. The capture itself, and that a replay equals the eager step, are
tested on CUDA (tests/test_cuda.py).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator

import pytest
import torch

import ride.neighborhood
from ride.cuda_graph import GraphedLoss, graphs_enabled
from ride.model import RIDE

_SYNCS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero")


@contextlib.contextmanager
def host_syncs_fail(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every tensor-to-host conversion outside Triton's interpreter raises (on CUDA each waits for
    the GPU, which a graph capture refuses)."""
    def flag(name, original):
        def wrapper(*args, **kwargs):
            if not any(f"{os.sep}triton{os.sep}" in frame.filename for frame in traceback.extract_stack()):
                raise AssertionError(f"host synchronisation in the training step: Tensor.{name}")
            return original(*args, **kwargs)
        return wrapper

    with monkeypatch.context() as m:
        for name in _SYNCS:
            m.setattr(torch.Tensor, name, flag(name, getattr(torch.Tensor, name)))
        m.setattr(torch, "nonzero", flag("nonzero", torch.nonzero))
        yield


def _model_and_batch(impl: str, layers: int = 2, extended: bool = True) -> tuple[RIDE, torch.Tensor]:
    torch.manual_seed(0)
    model = RIDE(5, 8, layers, extended=extended, num_components=4, num_scales=2, num_features=4)
    images = torch.rand(4, 10, 11)
    model.fit_whitening(images)
    model.impl = impl
    return model, images


def test_the_detector_catches_a_host_sync(monkeypatch):
    with host_syncs_fail(monkeypatch), pytest.raises(AssertionError, match="host synchronisation"):
        bool(torch.ones(()) > 0)
    with host_syncs_fail(monkeypatch), pytest.raises(AssertionError, match="Tensor.item"):
        torch.ones(()).item()


@pytest.mark.parametrize("layers,extended", [(1, False), (2, True)])
def test_the_cuda_training_step_has_no_host_sync(monkeypatch, layers, extended):
    monkeypatch.setenv("RIDE_MCGSM_IMPL", "torch")  # the MCGSM as on CUDA (reference_log_prob)
    model, images = _model_and_batch("fused_torch", layers, extended)
    model.loss(images).backward()  # warm-up, as GraphedLoss does: plans and index maps are cached
    # GraphedLoss checks each batch before replay; inside the capture check_images skips its test.
    monkeypatch.setattr(ride.neighborhood, "check_images", lambda images: None)
    model.zero_grad(set_to_none=True)
    with host_syncs_fail(monkeypatch):
        loss = model.loss(images)
        loss.backward()
    assert all(p.grad is not None for p in model.parameters())


_TRITON_STEP = """
import sys, torch
sys.path.insert(0, {tests!r})
import pytest
from test_cuda_graph import _model_and_batch, host_syncs_fail
import ride.neighborhood
model, images = _model_and_batch("fused_triton")
model.loss(images).backward()
with pytest.MonkeyPatch.context() as mp:
    mp.setattr(ride.neighborhood, "check_images", lambda images: None)
    model.zero_grad(set_to_none=True)
    with host_syncs_fail(mp):
        model.loss(images).backward()
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_the_triton_training_step_has_no_host_sync():
    # Triton's interpreter (the sweeps' kernels on the CPU) needs TRITON_INTERPRET before it loads.
    env = {**os.environ, "TRITON_INTERPRET": "1", "RIDE_MCGSM_IMPL": "torch"}
    code = _TRITON_STEP.format(tests=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_graphed_loss_needs_a_cuda_batch():
    model, images = _model_and_batch("auto", 1, False)
    with pytest.raises(ValueError, match="CUDA graphs.*cpu"):
        GraphedLoss(model, images)


def test_graphs_are_on_by_default_on_cuda_only(monkeypatch):
    monkeypatch.delenv("RIDE_CUDA_GRAPH", raising=False)
    assert graphs_enabled(torch.device("cuda")) and not graphs_enabled(torch.device("cpu"))
    monkeypatch.setenv("RIDE_CUDA_GRAPH", "0")
    assert not graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("RIDE_CUDA_GRAPH", "1")
    assert graphs_enabled(torch.device("cuda")) and not graphs_enabled(torch.device("cpu"))


def test_bench_refuses_cuda_graphs_off_cuda(capsys):
    from ride import bench

    assert bench.main(["--cuda-graph", "--device", "cpu", "--quick", "--no-memory"]) == 2
    assert "--cuda-graph needs --device cuda" in capsys.readouterr().err


def _train_tiny(tmp_path, name: str) -> tuple[RIDE, list[dict]]:
    """The CUDA tests' tiny two-stage training (2 layers, grown), on the CPU; the model and the
    stages' history entries."""
    import json

    from test_cuda import _tiny_training

    from ride.train import train

    _, config = _tiny_training(tmp_path, 2)
    model = train(config, tmp_path / "train.h5", tmp_path / name, device="cpu", seed=0, progress=False)
    history = json.loads((tmp_path / name / "train.json").read_text())["history"]
    return model, [h for h in history if "batches" in h]


class _EagerStandIn:
    """What GraphedLoss does for the trainer, without a GPU: forward and backward of one batch shape."""
    made: list[tuple[int, ...]] = []

    def __init__(self, model, example):
        self.model, self.input = model, example.clone()
        _EagerStandIn.made.append(tuple(example.shape))

    def __call__(self, images):
        assert images.shape == self.input.shape
        loss = self.model.loss(images)
        loss.backward()
        return loss.detach()


def test_training_through_the_graph_branch_equals_eager_training(tmp_path, monkeypatch):
    """The trainer's graph branch (capture once per stage, gradients from the replay, the
    optimiser step eager) gives the eager run's model, with the stand-in in place of the capture."""
    eager, eager_hist = _train_tiny(tmp_path, "eager")
    monkeypatch.setattr("ride.train.graphs_enabled", lambda device: True)
    monkeypatch.setattr("ride.train.GraphedLoss", _EagerStandIn)
    _EagerStandIn.made = []
    graphed, graph_hist = _train_tiny(tmp_path, "graphed")
    assert _EagerStandIn.made == [(16, 8, 8), (16, 10, 10)]  # one capture per stage (patch 8, then 10)
    assert [h.get("cuda_graph") for h in graph_hist] == [True, True]
    assert all("cuda_graph" not in h for h in eager_hist)
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_failed_capture_leaves_the_stage_eager(tmp_path, monkeypatch, capsys):
    eager, _ = _train_tiny(tmp_path, "eager")

    def refuse(model, example):
        for p in model.parameters():  # as a capture cut short might leave them
            p.grad = torch.full_like(p, 1e3)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr("ride.train.graphs_enabled", lambda device: True)
    monkeypatch.setattr("ride.train.GraphedLoss", refuse)
    model, hist = _train_tiny(tmp_path, "refused")
    assert all(h["cuda_graph"].startswith("capture failed, ran eager: operation not permitted") for h in hist)
    assert "CUDA graph capture failed" in capsys.readouterr().err
    for (name, a), b in zip(eager.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
