"""The CUDA path: the same densities, gradients and workflow steps as on the CPU.

Every test here carries the `cuda` marker and is skipped without a CUDA device; on a GPU
machine `python -m pytest -q -m cuda` runs them (with the CUDA cases of tests/test_slstm_fast.py).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ride.data import save_images
from ride.deadleaves import generate
from ride.evaluate import evaluate
from ride.mcgsm import MCGSM
from ride.model import RIDE
from ride.refine import _mean_nll, fit_mcgsm_lbfgs
from ride.slstm import SLSTMStack
from ride.train import load_model, train

# RIDE_TEST_DEVICE=cpu runs the same tests on the CPU (a dry run of their logic without a GPU).
DEV = os.environ.get("RIDE_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEV.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device")]


def _images(n: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(generate(n, size, seed=seed, noise=8.0))


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * 0.5)
    return module


@pytest.mark.parametrize("impl", ["auto", "fused_torch", "fused_triton"])
@pytest.mark.parametrize("extended", [False, True])
def test_fused_slstm_on_cuda_equals_the_cpu_reference_float64(extended, impl):
    if impl == "fused_triton" and not DEV.startswith("cuda"):
        pytest.skip("the Triton sweeps run on CUDA (tests/test_slstm_fast.py runs them in Triton's interpreter)")
    torch.manual_seed(0)
    stack = _randomise(SLSTMStack(4, 6, 2, extended), 1).double()
    x = torch.randn(3, 7, 9, 4, dtype=torch.float64)
    w = torch.randn(3, 7, 9, 6, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    ref = stack(xr, impl="reference")
    (ref * w).sum().backward()
    ref_grads = [xr.grad] + [p.grad.clone() for p in stack.parameters()]
    gpu = stack.to(DEV)
    gpu.zero_grad()
    xg = x.to(DEV).requires_grad_(True)
    out = gpu(xg, impl=impl)
    (out * w.to(DEV)).sum().backward()
    assert torch.allclose(out.cpu(), ref.detach(), atol=1e-12)
    for a, b in zip([xg.grad] + [p.grad for p in gpu.parameters()], ref_grads):
        assert torch.allclose(a.cpu(), b, atol=1e-10), (a.cpu() - b).abs().max()


def test_auto_takes_the_triton_sweeps_on_cuda():
    from ride.kernels.fused_slstm import sweep_mode
    from ride.kernels.triton_slstm import triton_available

    x = torch.zeros(1, device=DEV)
    assert sweep_mode(x, "fused") == ("triton" if DEV.startswith("cuda") and triton_available(x.device) else "c")


def test_fused_slstm_gradcheck_on_cuda():
    stack = _randomise(SLSTMStack(2, 3, 1, False), 2).double().to(DEV)
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: stack(t, impl="fused_torch"), (x,))


@pytest.mark.parametrize("num_layers", [0, 1, 2])
def test_ride_log_prob_on_cuda_equals_cpu(num_layers):
    images = _images()
    torch.manual_seed(1)
    model = RIDE(nb_size=5, num_hidden=8, num_layers=num_layers, num_components=4, num_scales=2, num_features=6).double()
    model.fit_whitening(images.double())
    cpu = model.log_prob(images.double())
    gpu = model.to(DEV).log_prob(images.double().to(DEV))
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-9)


def test_mcgsm_refinement_on_cuda_matches_the_cpu_objective():
    torch.manual_seed(2)
    x = torch.randn(20000, 6, dtype=torch.float64)
    y = (x[:, :2].sum(1) + 0.3 * torch.randn(20000, dtype=torch.float64)) * (1 + x[:, 2].abs())
    mcgsm = MCGSM(6, num_components=4, num_scales=3, num_features=5).double()
    start_cpu = float(_mean_nll(mcgsm, x, y))
    gpu = MCGSM(6, num_components=4, num_scales=3, num_features=5).double()
    gpu.load_state_dict(mcgsm.state_dict())
    gpu = gpu.to(DEV)
    assert float(_mean_nll(gpu, x.to(DEV), y.to(DEV))) == pytest.approx(start_cpu, abs=1e-10)
    info = fit_mcgsm_lbfgs(gpu, x.to(DEV), y.to(DEV), None, None, max_iterations=50)
    assert info["valid_nll"] < start_cpu - 0.1
    cpu_after = MCGSM(6, num_components=4, num_scales=3, num_features=5).double()
    cpu_after.load_state_dict({k: v.cpu() for k, v in gpu.state_dict().items()})
    assert float(_mean_nll(cpu_after, x, y)) == pytest.approx(info["valid_nll"], abs=1e-9)


def _tiny_training(tmp_path, num_layers: int) -> tuple[np.ndarray, dict]:
    """12 dead-leaves images (the first 10 saved as train.h5) and a two-stage training config."""
    images = _images(12, 24).numpy()
    save_images(tmp_path / "train.h5", images[:10])
    model = {"nb_size": 5, "num_hidden": 8, "num_layers": num_layers, "num_components": 4, "num_scales": 2,
             "num_features": 6}
    return images, {"model": model, "train": {
        "stages": [{"patch": 8, "lr": 0.5}, {"patch": 10, "lr": 0.1}], "batch_size": 16, "max_patches": 200,
        "whitening_samples": 5000, "lbfgs_iterations": 5, "lbfgs_samples": 2000}}


def test_train_evaluate_and_sample_on_cuda(tmp_path):
    images, config = _tiny_training(tmp_path, 1)
    model = train(config, tmp_path / "train.h5", tmp_path / "run", device=DEV, seed=0, progress=False)
    assert next(model.parameters()).device.type == torch.device(DEV).type
    meta = json.loads((tmp_path / "run" / "train.json").read_text())
    assert torch.device(DEV).type in json.dumps(meta.get("provenance", meta))
    test = torch.from_numpy(images[10:])
    on_gpu = evaluate(model, test, tile=24)
    on_cpu = evaluate(load_model(tmp_path / "run" / "model.pt", "cpu"), test, tile=24)
    assert np.isfinite(on_gpu["bits_per_pixel"])
    assert on_gpu["bits_per_pixel"] == pytest.approx(on_cpu["bits_per_pixel"], abs=1e-4)
    gen = torch.Generator(device=DEV).manual_seed(0)
    samples = model.sample(2, 16, 16, generator=gen)
    assert samples.device.type == torch.device(DEV).type and torch.isfinite(samples).all()


def _graph_setup(layers: int, extended: bool) -> tuple[RIDE, list[torch.Tensor]]:
    if not DEV.startswith("cuda"):
        pytest.skip("CUDA graphs need a CUDA device (tests/test_cuda_graph.py checks the step on the CPU)")
    torch.manual_seed(0)
    model = RIDE(nb_size=5, num_hidden=8, num_layers=layers, extended=extended, num_components=4, num_scales=2,
                 num_features=6)
    batches = [_images(6, 14, seed=s) for s in (0, 1)]
    model.fit_whitening(batches[0])
    return model.to(DEV), [b.to(DEV) for b in batches]


@pytest.mark.parametrize("layers,extended", [(1, False), (2, True)])
def test_graphed_training_step_equals_the_eager_step(layers, extended):
    from ride.cuda_graph import GraphedLoss

    model, (first, second) = _graph_setup(layers, extended)
    graphed = GraphedLoss(model, first)
    losses = []
    for batch in (second, first, second):
        model.zero_grad(set_to_none=True)  # the replay points .grad at its own gradients again
        loss = graphed(batch).clone()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        ref = model.loss(batch)
        ref.backward()
        assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6), (float(loss), float(ref))
        for g, p in zip(got, model.parameters()):
            assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6), (g - p.grad).abs().max()
        losses.append(float(loss))
        torch.optim.SGD(model.parameters(), lr=0.5).step()  # in place: the next replay reads the new values
    assert losses[0] != losses[1]


def test_graphed_step_checks_every_batch():
    from ride.cuda_graph import GraphedLoss

    model, (first, second) = _graph_setup(1, False)
    graphed = GraphedLoss(model, first)
    bad = second.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        graphed(bad)
    assert torch.equal(graphed.input, first)  # nothing copied in
    with pytest.raises(ValueError, match="captured for"):
        graphed(second[:3])


def test_training_with_cuda_graphs_equals_eager_training(tmp_path, monkeypatch):
    if not DEV.startswith("cuda"):
        pytest.skip("CUDA graphs need a CUDA device")
    _, config = _tiny_training(tmp_path, 2)
    runs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("RIDE_CUDA_GRAPH", flag)
        model = train(config, tmp_path / "train.h5", tmp_path / f"run{flag}", device=DEV, seed=0, progress=False)
        meta = json.loads((tmp_path / f"run{flag}" / "train.json").read_text())
        runs[flag] = (model, [s for s in meta["history"] if "stage" in s and "batches" in s])
    (eager, eager_hist), (graphed, graph_hist) = runs["0"], runs["1"]
    assert [s.get("cuda_graph", False) for s in graph_hist] == [True, True]
    assert not any(s.get("cuda_graph", False) for s in eager_hist)
    for a, b in zip(eager_hist, graph_hist):
        assert a["train_nll_last"] == pytest.approx(b["train_nll_last"], rel=1e-4, abs=1e-5)
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), name
