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


def test_graphs_are_opt_in_and_cuda_only(monkeypatch):
    monkeypatch.delenv("RIDE_CUDA_GRAPH", raising=False)
    assert not graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("RIDE_CUDA_GRAPH", "1")
    assert graphs_enabled(torch.device("cuda")) and not graphs_enabled(torch.device("cpu"))


def test_bench_refuses_cuda_graphs_off_cuda(capsys):
    from ride import bench

    assert bench.main(["--cuda-graph", "--device", "cpu", "--quick", "--no-memory"]) == 2
    assert "--cuda-graph needs --device cuda" in capsys.readouterr().err
