"""Tests of the fast SLSTM paths (ride/slstm.py: "fused", "fused_torch", "auto"; ride/kernels/) and of ride.bench.

The fused paths must pass the same equality and gradient tests as the reference schedule: on
the CPU always, on CUDA where a GPU is present. No test asserts on speed.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import ride.kernels as kernels
import ride.kernels.fused_mcgsm as fused_mcgsm
import ride.kernels.fused_slstm as fused_slstm
import ride.slstm as slstm
from ride.model import RIDE
from ride.slstm import SLSTMStack, SpatialLSTM, resolve_impl

FAST = ["fused", "fused_torch"]
SHAPES = [(1, 1), (1, 7), (6, 1), (3, 7), (7, 3), (5, 5), (2, 9)]
# The CUDA cases carry the `cuda` marker: `pytest -m cuda` runs every CUDA test of the suite.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])]


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.5) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale)
    return module


def _grads(stack, x, weights, impl):
    stack.zero_grad()
    xi = x.clone().requires_grad_(True)
    out = stack(xi, impl=impl)
    (out * weights).sum().backward()
    return out.detach(), [xi.grad.clone()] + [p.grad.clone() for p in stack.parameters()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("extended", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_forward_equals_reference_float32(device, impl, extended, num_layers):
    torch.manual_seed(num_layers + 2 * extended)
    stack = _randomise(SLSTMStack(4, 6, num_layers, extended), seed=num_layers).to(device)
    for shape in SHAPES if num_layers == 1 else SHAPES[2:5]:
        x = torch.randn(3, *shape, 4, device=device)
        out = stack(x, impl=impl)
        with torch.no_grad():
            ref = stack(x, impl="reference")
            nograd = stack(x, impl=impl)  # the no-grad path (no history kept on the CPU)
        assert out.shape == ref.shape == (3, *shape, 6) and out.is_contiguous()
        assert ref.abs().max() > 0.05
        assert torch.allclose(out, ref, atol=1e-5, rtol=0), (shape, (out - ref).abs().max())
        assert torch.allclose(nograd, ref, atol=1e-5, rtol=0), shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("extended", [False, True])
def test_gradients_equal_reference_float64(device, impl, extended):
    stack = _randomise(SLSTMStack(3, 4, 2, extended).double(), seed=6).to(device)
    for shape in [(4, 5), (1, 6), (5, 1)]:
        x = torch.randn(2, *shape, 3, dtype=torch.float64, device=device)
        weights = torch.randn(2, *shape, 4, dtype=torch.float64, device=device)
        out, grads = _grads(stack, x, weights, impl)
        ref_out, ref = _grads(stack, x, weights, "reference")
        assert torch.allclose(out, ref_out, atol=1e-12)
        for a, b in zip(grads, ref):
            assert a.abs().max() > 0
            assert torch.allclose(a, b, atol=1e-10), (shape, (a - b).abs().max())


@pytest.mark.parametrize("blas", ["in the kernels", "torch GEMMs"])
def test_fused_c_sweeps_with_and_without_blas_pointers(monkeypatch, blas):
    """The C sweeps call BLAS per thread where torch exports it (the weight gradient formed inside
    the backward kernel) and torch GEMMs per diagonal / per chunk where not: both equal the
    reference, with several backward chunks."""
    from ride.kernels import build

    if kernels.c_kernels() is None:
        pytest.skip(f"C kernels unavailable: {kernels.c_kernels_error()}")
    if blas == "torch GEMMs":
        monkeypatch.setattr(build, "_blas", {})
    elif not build.blas_pointers():
        pytest.skip("torch exports no BLAS symbols here")
    monkeypatch.setattr(fused_slstm, "_CHUNK_ROWS", 16)
    for extended in (False, True):
        _assert_fused_equals_reference(_randomise(SLSTMStack(3, 4, 2, extended).double(), seed=8))


@pytest.mark.parametrize("extended", [False, True])
def test_backward_without_input_gradient_reuses_one_dz_buffer(monkeypatch, extended):
    """Where the input needs no gradient (training's first layer) the C backward runs every
    diagonal in one sweep writing dL/dz to one buffer: parameter gradients bitwise equal to the
    chunked sweep's (input with a gradient, several chunks) and to the reference within 1e-10."""
    from ride.kernels import build

    if kernels.c_kernels() is None or not build.blas_pointers():
        pytest.skip("needs the C kernels and torch's BLAS pointers")
    monkeypatch.setattr(fused_slstm, "_CHUNK_ROWS", 16)
    fixed = []
    sweep = fused_slstm._fused_backward_c_sweep
    monkeypatch.setattr(fused_slstm, "_fused_backward_c_sweep",
                        lambda *a, **k: fixed.append(not k.get("keep_dz", True)) or sweep(*a, **k))
    stack = _randomise(SLSTMStack(3, 4, 2, extended).double(), seed=21)
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    w = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    results = {}
    for impl, needs_x in (("fused", False), ("fused", True), ("reference", False)):
        stack.zero_grad()
        (stack(x.clone().requires_grad_(needs_x), impl=impl) * w).sum().backward()
        results[impl, needs_x] = [p.grad.clone() for p in stack.parameters()]
    assert fixed == [False, True, False, False]  # layer 2, then layer 1 without / with an input gradient
    for a, b, c in zip(results["fused", False], results["fused", True], results["reference", False]):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("extended", [False, True])
def test_gradients_equal_reference_float32(device, impl, extended):
    torch.manual_seed(11)
    stack = SLSTMStack(12, 16, 2, extended).to(device)  # default initialisation
    x = torch.randn(3, 5, 7, 12, device=device)
    weights = torch.randn(3, 5, 7, 16, device=device)
    _, grads = _grads(stack, x, weights, impl)
    _, ref = _grads(stack, x, weights, "reference")
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("extended", [False, True])
def test_gradcheck_layer(impl, extended):
    layer = _randomise(SpatialLSTM(2, 2, extended).double(), seed=4)
    x = torch.randn(1, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    names = [n for n, _ in layer.named_parameters()]

    def fn(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,), {"impl": impl})

    assert torch.autograd.gradcheck(fn, (x, *params))


@pytest.mark.parametrize("impl", FAST)
def test_gradcheck_stack(impl):
    stack = _randomise(SLSTMStack(2, 2, 2, extended=True).double(), seed=5)
    x = torch.randn(1, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in stack.parameters()]
    names = [n for n, _ in stack.named_parameters()]

    def fn(x, *values):
        return torch.func.functional_call(stack, dict(zip(names, values)), (x,), {"impl": impl})

    assert torch.autograd.gradcheck(fn, (x, *params))


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("extended", [False, True])
def test_chunked_backward(monkeypatch, impl, extended):
    """The backward flushes dL/dz in chunks of diagonals; tiny chunks give the same gradients."""
    monkeypatch.setattr(fused_slstm, "_CHUNK_ROWS", 5)
    stack = _randomise(SLSTMStack(3, 4, 2, extended).double(), seed=12)
    x = torch.randn(2, 5, 6, 3, dtype=torch.float64)
    weights = torch.randn(2, 5, 6, 4, dtype=torch.float64)
    assert len(fused_slstm._chunks(slstm._plan(5, 6, torch.device("cpu")), 2)) > 3
    _, grads = _grads(stack, x, weights, impl)
    _, ref = _grads(stack, x, weights, "reference")
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("chunk_rows", [None, 5])
@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("extended", [False, True])
def test_image_groups(monkeypatch, groups, extended, chunk_rows):
    """Image groups (sweeps over parts of the batch, zero-padded to equal parts: in one C call per
    chunk of diagonals under autograd, concurrently in a thread pool without) give the same outputs
    and gradients, with and without autograd, in one chunk of diagonals or several."""
    if kernels.c_kernels() is None:
        pytest.skip("image groups need the C kernels")
    monkeypatch.setattr(fused_slstm, "GROUPS", groups)
    if chunk_rows is not None:
        monkeypatch.setattr(fused_slstm, "_CHUNK_ROWS", chunk_rows)
        assert len(fused_slstm._chunks(slstm._plan(4, 3, torch.device("cpu")), 2)) > 2
    stack = _randomise(SLSTMStack(3, 4, 2, extended).double(), seed=16)
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    weights = torch.randn(5, 4, 3, 4, dtype=torch.float64)
    assert fused_slstm.num_groups(5, x.device, True) == groups
    out, grads = _grads(stack, x, weights, "fused")
    ref_out, ref = _grads(stack, x, weights, "reference")
    assert torch.allclose(out, ref_out, atol=1e-12)
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(stack(x, impl="fused"), ref_out, atol=1e-12)


def test_default_image_groups(monkeypatch):
    """By default training sweeps one group per thread where torch's BLAS is in the kernels and the
    batch splits evenly into groups of at least MIN_GROUP_IMAGES; inference and uneven or small
    batches keep one group (no padding images to compute)."""
    from ride.kernels import build

    monkeypatch.setattr(fused_slstm, "GROUPS", None)
    monkeypatch.delenv("RIDE_SLSTM_GROUPS", raising=False)
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        blas = build.gemm_args(torch.float32)[0] is not None
        assert fused_slstm.num_groups(50, cpu, True, training=True) == (2 if blas else 1)
        assert fused_slstm.num_groups(50, cpu, True, training=False) == 1
        assert fused_slstm.num_groups(51, cpu, True, training=True) == 1
        assert fused_slstm.num_groups(14, cpu, True, training=True) == 1  # 7 < MIN_GROUP_IMAGES per group
        assert fused_slstm.num_groups(50, cpu, False, training=True) == 1  # no C kernels
        torch.set_num_threads(1)
        assert fused_slstm.num_groups(50, cpu, True, training=True) == 1
        monkeypatch.setenv("RIDE_SLSTM_GROUPS", "1")
        torch.set_num_threads(2)
        assert fused_slstm.num_groups(50, cpu, True, training=True) == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("impl", FAST)
def test_retain_graph_backward_twice(impl):
    stack = _randomise(SLSTMStack(2, 3, 2).double(), seed=13)
    x = torch.randn(1, 4, 4, 2, dtype=torch.float64, requires_grad=True)
    out = stack(x, impl=impl)
    first = torch.autograd.grad(out.sum(), x, retain_graph=True)[0]
    second = torch.autograd.grad(out.sum(), x)[0]
    assert torch.equal(first, second)


@pytest.mark.parametrize("impl", FAST)
def test_causality_by_gradient(impl):
    height, width = 3, 4
    stack = _randomise(SLSTMStack(2, 3, 2, extended=True).double(), seed=8)
    x = torch.randn(1, height, width, 2, dtype=torch.float64, requires_grad=True)
    out = stack(x, impl=impl)
    for i in range(height):
        for j in range(width):
            (grad,) = torch.autograd.grad(out[0, i, j].sum(), x, retain_graph=True)
            dep = grad[0].abs().amax(-1)
            allowed = torch.zeros(height, width, dtype=torch.bool)
            allowed[: i + 1, : j + 1] = True
            assert torch.all(dep[~allowed] == 0) and torch.all(dep[allowed] > 0), (i, j)


def test_parameter_gradients_only():
    """Inputs without requires_grad (the first layer's whitened neighbourhoods) still train."""
    stack = _randomise(SLSTMStack(3, 4, 1).double(), seed=14)
    x = torch.randn(2, 3, 5, 3, dtype=torch.float64)
    weights = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    grads = {}
    for impl in ("fused", "reference"):
        stack.zero_grad()
        (stack(x, impl=impl) * weights).sum().backward()
        grads[impl] = [p.grad.clone() for p in stack.parameters()]
    for a, b in zip(grads["fused"], grads["reference"]):
        assert torch.allclose(a, b, atol=1e-10)


def test_auto_resolution(monkeypatch):
    x32 = torch.zeros(1, 2, 2, 3)
    assert resolve_impl("auto", x32) == "fused"
    assert resolve_impl("auto", x32.double()) == "fused"
    assert resolve_impl("auto", x32.half()) == "wavefront"
    for name in ("fused", "fused_torch", "wavefront", "reference"):
        assert resolve_impl(name, x32) == name  # forced
    monkeypatch.setenv("RIDE_SLSTM_IMPL", "wavefront")
    assert resolve_impl("auto", x32) == "wavefront"
    assert resolve_impl("fused", x32) == "fused"
    monkeypatch.setenv("RIDE_SLSTM_IMPL", "nonsense")
    with pytest.raises(ValueError, match="RIDE_SLSTM_IMPL"):
        resolve_impl("auto", x32)
    with pytest.raises(ValueError, match="unknown SLSTM implementation 'cuda'"):
        SpatialLSTM(3, 4)(x32, impl="cuda")


def test_default_is_auto_and_model_uses_it():
    assert RIDE(num_hidden=4, num_components=2, num_scales=2, num_features=3).impl == "auto"
    torch.manual_seed(0)
    model = RIDE(num_hidden=5, num_layers=2, num_components=3, num_scales=2, num_features=4)
    images = torch.rand(3, 9, 10)
    model.fit_whitening(images)
    with torch.no_grad():
        fast = model.log_prob(images)
        model.impl = "reference"
        ref = model.log_prob(images)
    assert torch.allclose(fast, ref, atol=1e-5)


def test_c_kernels_accuracy():
    lib = kernels.c_kernels()
    if lib is None:
        pytest.skip(f"C kernels unavailable: {kernels.c_kernels_error()}")
    x = torch.linspace(-40, 40, 200_001)
    tanh, sig = torch.empty_like(x), torch.empty_like(x)
    lib.probe_f32(x.numel(), x.data_ptr(), tanh.data_ptr(), sig.data_ptr())
    assert (tanh - torch.tanh(x)).abs().max() < 3e-7
    assert (sig - torch.sigmoid(x)).abs().max() < 3e-7
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
    tanh, sig = torch.empty_like(special), torch.empty_like(special)
    lib.probe_f32(4, special.data_ptr(), tanh.data_ptr(), sig.data_ptr())
    assert tanh[0].isnan() and sig[0].isnan()  # NaNs propagate
    assert tanh[1:].tolist() == [1.0, -1.0, 0.0] and sig[1] == 1.0 and sig[3] == 0.5
    # Loading the library must not switch the process to flush-to-zero.
    assert torch.tensor(1e-40) * 1 != 0


def _assert_fused_equals_reference(stack: SLSTMStack) -> None:
    """impl="fused" gives the per-pixel reference's outputs and gradients (float64 stack)."""
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    w = torch.randn(2, 4, 3, 4, dtype=torch.float64)
    out, grads = _grads(stack, x, w, "fused")
    ref_out, ref = _grads(stack, x, w, "reference")
    assert torch.allclose(out, ref_out, atol=1e-12)
    for a, b in zip(grads, ref):
        assert torch.allclose(a, b, atol=1e-10)


def test_fused_without_c_kernels(monkeypatch):
    """Without a C compiler "fused" falls back to torch pointwise ops, with the same results."""
    monkeypatch.setattr(slstm, "use_c_kernels", lambda x, force_torch: False)
    stack = _randomise(SLSTMStack(3, 4, 2).double(), seed=15)
    _assert_fused_equals_reference(stack)


def test_failed_build_falls_back_to_torch(monkeypatch, tmp_path):
    """A machine without a compiler: the build fails once with a warning naming the cause, and
    the SLSTM and the MCGSM run on torch ops with the reference's results."""
    from ride.kernels import build
    from ride.mcgsm import MCGSM

    monkeypatch.setattr(build, "_lib", None)
    monkeypatch.setattr(build, "_error", None)
    monkeypatch.delenv("RIDE_SLSTM_NO_C", raising=False)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("RIDE_CACHE_DIR", str(tmp_path / "cache"))  # empty: the build is attempted
    with pytest.warns(UserWarning, match="C kernels unavailable.*no-such-cc"):
        assert kernels.c_kernels() is None
    assert "no-such-cc" in kernels.c_kernels_error()
    assert not list((tmp_path / "cache").glob("*.so"))
    stack = _randomise(SLSTMStack(3, 4, 2, extended=True).double(), seed=20)
    _assert_fused_equals_reference(stack)
    mcgsm = MCGSM(5, 3, 2, 4).double()
    h, y = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    assert torch.equal(mcgsm.log_prob(h, y), mcgsm.reference_log_prob(h, y))


def test_kernel_cache_rebuilds_on_change_and_clears_stale_locks(tmp_path):
    """The cached library is reused only for the same sources and flags; a lock file left by a
    killed build does not make later builds wait, however fresh it is (no live builder holds the
    flock; a subprocess: its own cache and state)."""
    import subprocess
    import sys

    if kernels.c_kernels() is None:
        pytest.skip(f"C kernels unavailable: {kernels.c_kernels_error()}")
    probe = """
from ride.kernels import build
first = build.build_library()
again = build.build_library()
lock = first.parent / "lock"
lock.write_text("")  # as a build killed a moment ago leaves it
build.COMPILE_FLAGS.append("-DRIDE_REBUILD_PROBE")
second = build.build_library()
print(first, again, second, lock.exists(), (first.parent / "built-from.sha256").read_text().split()[1])
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True,
                         env={**os.environ, "RIDE_CACHE_DIR": str(tmp_path)}).stdout.split()
    first, again, second, lock_left, stamped = out
    assert first == again and second != first and lock_left == "False" and stamped == second
    assert first.startswith(str(tmp_path)) and os.path.exists(second)


def test_installed_package_builds_the_kernels(tmp_path):
    """A non-editable install (a wheel) ships the C sources, and the kernels build from it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("setuptools")
    if kernels.c_kernels() is None:
        pytest.skip(f"C kernels unavailable: {kernels.c_kernels_error()}")
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a copy, so that the in-tree build leaves the checkout alone
    shutil.copytree(root / "ride", src / "ride", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("ride-*.whl")
    shutil.unpack_archive(wheel, tmp_path / "site", "zip")
    probe = "from ride.kernels import build; print(build.build_library()); print(build.c_kernels() is not None)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site"),
                                            "RIDE_CACHE_DIR": str(tmp_path / "cache")}).stdout.split()
    assert out[0].startswith(str(tmp_path / "cache")) and out[1] == "True"


@pytest.mark.parametrize("impl", ["blocked", "unblocked"])
@pytest.mark.parametrize("weighting", ["per-pixel", "constant"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_mcgsm_equals_mcgsm(monkeypatch, dtype, weighting, impl):
    """Values and every gradient of both fused paths equal the reference: the blocked pass (BLAS
    builds; 3 blocks of 128 rows here) for per-pixel output gradients (recomputed) and for one
    constant gradient (a mean loss: the forward's gradients, scaled), and FusedMCGSM."""
    from ride.kernels.build import gemm_args
    from ride.mcgsm import MCGSM

    if impl == "blocked" and (kernels.c_kernels() is None or gemm_args(dtype)[0] is None):
        pytest.skip("the blocked MCGSM needs the C kernels and torch's BLAS pointers")
    monkeypatch.setenv("RIDE_MCGSM_IMPL", "auto" if impl == "blocked" else "unblocked")
    torch.manual_seed(17)
    mcgsm = MCGSM(6, 3, 2, 4).to(dtype)
    with torch.no_grad():
        for p in mcgsm.parameters():
            p.normal_()
    h = torch.randn(3, 4, 25, 6, dtype=dtype)
    y = torch.randn(3, 4, 25, dtype=dtype)
    weights = torch.randn(3, 4, 25, dtype=dtype) if weighting == "per-pixel" else torch.full((3, 4, 25), -0.37, dtype=dtype)
    used = []
    for cls in (fused_mcgsm.BlockedMCGSM, fused_mcgsm.FusedMCGSM):
        monkeypatch.setattr(cls, "apply", (lambda c, f: lambda *a: used.append(c.__name__) or f(*a))(cls, cls.apply))
    results = {}
    for name, fn in (("fused", kernels.mcgsm_log_prob), ("plain", lambda m, a, b: m.reference_log_prob(a, b))):
        mcgsm.zero_grad()
        hi, yi = h.clone().requires_grad_(True), y.clone().requires_grad_(True)
        out = fn(mcgsm, hi, yi)
        (out * weights).sum().backward()
        results[name] = [out.detach(), hi.grad, yi.grad] + [p.grad.clone() for p in mcgsm.parameters()]
    assert used == [{"blocked": "BlockedMCGSM", "unblocked": "FusedMCGSM"}[impl]]
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for a, b in zip(results["fused"], results["plain"]):
        assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()


def test_fused_mcgsm_leaves_broadcast_outputs_to_the_reference():
    """Outputs that only broadcast against the inputs are scored as the reference scores them
    (the kernels would read one output per input row); outputs that do not fit raise its error,
    and the internal pass refuses mismatched rows before any kernel runs."""
    from ride.mcgsm import MCGSM

    if kernels.c_kernels() is None:
        pytest.skip("the fused MCGSM needs the C kernels")
    torch.manual_seed(29)
    mcgsm = MCGSM(5, 3, 2, 4)
    h, y = torch.randn(4, 25, 5), torch.randn(25)
    assert torch.allclose(mcgsm.log_prob(h, y), mcgsm.reference_log_prob(h, y))
    with pytest.raises(RuntimeError, match="must match"):
        mcgsm.log_prob(torch.randn(100_000, 5), torch.randn(10))
    p = [t.detach() for t in (mcgsm.priors, mcgsm.log_precisions(), mcgsm.weights, mcgsm.features, mcgsm.predictors)]
    with pytest.raises(ValueError, match="M outputs"):
        fused_mcgsm._train_pass(torch.randn(100, 5), torch.randn(10), *p)


def test_blocked_mcgsm_retained_graph_backward_twice():
    """A mean loss scales the forward's input gradients in place; a second backward of the same
    retained graph recomputes them and gives the same gradients again."""
    from ride.kernels.build import gemm_args
    from ride.mcgsm import MCGSM

    if kernels.c_kernels() is None or gemm_args(torch.float64)[0] is None:
        pytest.skip("the blocked MCGSM needs the C kernels and torch's BLAS pointers")
    torch.manual_seed(23)
    mcgsm = MCGSM(6, 3, 2, 4).double()
    h = torch.randn(300, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(300, dtype=torch.float64, requires_grad=True)
    loss = -kernels.mcgsm_log_prob(mcgsm, h, y).mean()
    inputs = (h, y, *mcgsm.parameters())
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    second = torch.autograd.grad(loss, inputs)
    plain = torch.autograd.grad(-mcgsm.reference_log_prob(h, y).mean(), inputs)
    for a, b, c in zip(first, second, plain):
        assert torch.allclose(a, c, atol=1e-12, rtol=1e-10)
        assert torch.allclose(b, c, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("impl", ["auto", "unblocked"])
def test_fused_mcgsm_gradcheck(monkeypatch, impl):
    from types import SimpleNamespace

    from ride.mcgsm import MCGSM

    if kernels.c_kernels() is None:
        pytest.skip("the fused MCGSM needs the C kernels")
    monkeypatch.setenv("RIDE_MCGSM_IMPL", impl)
    torch.manual_seed(18)
    mcgsm = MCGSM(3, 2, 3, 2).double()
    with torch.no_grad():
        for p in mcgsm.parameters():
            p.normal_()
    names = [n for n, _ in mcgsm.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for p in mcgsm.parameters()]
    h = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def fn(h, y, *vals):
        # A stand-in module whose parameters are the gradcheck inputs; the density reads the
        # log-precisions through MCGSM.log_precisions (the clamp), so the stand-in provides it too.
        ns = SimpleNamespace(dim_in=3, **dict(zip(names, vals)))
        ns.log_precisions = lambda: MCGSM.log_precisions(ns)
        return kernels.mcgsm_log_prob(ns, h, y)

    assert torch.autograd.gradcheck(fn, (h, y, *values))


def _needs_nll_grad():
    from ride.kernels.build import gemm_args

    if kernels.c_kernels() is None or gemm_args(torch.float64)[0] is None:
        pytest.skip("mcgsm_nll_grad needs the C kernels and torch's BLAS pointers")


def _random_mcgsm(sizes, dtype, seed, magnitude, rows=203):
    """An MCGSM with N(0, magnitude^2) parameters and data; a few log-precisions lie beyond the
    clamp (zero gradient there), and large magnitudes put exp arguments far below -30."""
    from ride.mcgsm import MCGSM

    d, k, s, f = sizes
    gen = torch.Generator().manual_seed(seed)
    mcgsm = MCGSM(d, k, s, f).to(dtype)
    with torch.no_grad():
        for p in mcgsm.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * magnitude)
        mcgsm.scales.view(-1)[:2] = torch.tensor([35.0, -41.0])[: mcgsm.scales.numel()]
    x = torch.randn(rows, d, generator=gen, dtype=torch.float64) * magnitude
    y = torch.randn(rows, generator=gen, dtype=torch.float64) * magnitude
    return mcgsm, x.to(dtype), y.to(dtype)


def _autograd_nll_grad(mcgsm, x, y):
    mcgsm.zero_grad()
    loss = -mcgsm.reference_log_prob(x, y).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in mcgsm.parameters()]


def _scaled_error(a, b):
    """max |a - b| over max |b| (the gradient's own scale; 0 where both vanish)."""
    scale = b.abs().max()
    return float((a.double() - b.double()).abs().max() / scale) if scale > 0 else float((a - b).abs().max())


MCGSM_SIZES = [(12, 32, 4, 32), (5, 4, 3, 7), (3, 5, 1, 4), (1, 3, 2, 2), (1, 1, 1, 1)]


@pytest.mark.parametrize("magnitude", [1.0, 4.0])
@pytest.mark.parametrize("sizes", MCGSM_SIZES)
def test_mcgsm_nll_grad_equals_autograd_float64(sizes, magnitude):
    # The L-BFGS closure's fused value and gradient against autograd of reference_log_prob:
    # several row blocks (203 rows in blocks of 16 and the default), S = 1 and D = 1 included.
    _needs_nll_grad()
    mcgsm, x, y = _random_mcgsm(sizes, torch.float64, seed=sum(sizes), magnitude=magnitude)
    if magnitude > 1 and sizes[1] * sizes[2] > 1:
        with torch.no_grad():  # the test reaches the far tails of the exps
            gate, _ = mcgsm._joint_logits(x)
            flat = gate.flatten(-2)
            assert float((flat - flat.amax(-1, keepdim=True)).min()) < -30
    loss, grads = _autograd_nll_grad(mcgsm, x, y)
    assert mcgsm.scales.grad.view(-1)[:2].abs().max() == 0  # the clamp's zero gradient is part of the test
    for block in (16, kernels.fused_mcgsm.NLL_GRAD_BLOCK):
        value, fused = kernels.mcgsm_nll_grad(mcgsm, x, y, block=block)
        assert value.dtype == torch.float64
        assert abs(float(value - loss)) <= 1e-12 * abs(float(loss))
        for name, a, b in zip(["priors", "scales", "weights", "features", "predictors"], fused, grads):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert _scaled_error(a, b) <= 1e-12, (name, _scaled_error(a, b))


@pytest.mark.parametrize("magnitude, tol", [(1.0, 1e-5), (4.0, 5e-5)])
@pytest.mark.parametrize("sizes", MCGSM_SIZES)
def test_mcgsm_nll_grad_float32_is_close_to_float64(sizes, magnitude, tol):
    # float32 against the float64 autograd reference (float32 autograd itself is off by up to
    # ~5e-5 of the gradient's scale at the larger magnitude).
    _needs_nll_grad()
    mcgsm, x, y = _random_mcgsm(sizes, torch.float64, seed=sum(sizes) + 1, magnitude=magnitude)
    loss, grads = _autograd_nll_grad(mcgsm, x, y)
    value, fused = kernels.mcgsm_nll_grad(mcgsm.float(), x.float(), y.float(), block=16)
    assert abs(float(value - loss)) <= 1e-6 * max(1.0, abs(float(loss)))
    for name, a, b in zip(["priors", "scales", "weights", "features", "predictors"], fused, grads):
        assert a.dtype == torch.float32
        assert _scaled_error(a, b) <= tol, (name, _scaled_error(a, b))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mcgsm_pass_sums_rows_in_order(monkeypatch, dtype):
    """The pass's sum of (weighted) log p is the rows' values added one after the other within a
    block (per block in the dtype, blocks in float64), whether or not it also writes the rows'
    values: so the L-BFGS closure's value is the same number whatever the compiler makes of the
    code around it (an unrolled, reassociated sum once changed it by an ulp and, through L-BFGS's
    line search, moved trained MCGSMs)."""
    _needs_nll_grad()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # one thread: one running sum
    block = kernels.fused_mcgsm.NLL_GRAD_BLOCK
    for seed in range(3):
        mcgsm, x, y = _random_mcgsm((12, 32, 4, 32), dtype, seed=seed, magnitude=1.0, rows=3 * block + 37)
        args = (x, y, mcgsm.priors.detach(), mcgsm.log_precisions().detach(), mcgsm.weights.detach(),
                mcgsm.features.detach(), mcgsm.predictors.detach())
        weights = torch.rand(y.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(seed))
        for grad in (True, False):
            for gw in (None, weights):
                lp = torch.empty_like(y)
                kernels.fused_mcgsm._train_pass(*args, lp=lp, grad=grad, gw=gw)
                total = kernels.fused_mcgsm._train_pass(*args, grad=grad, gw=gw)[0]
                terms = (lp if gw is None else gw * lp).numpy()
                expected = 0.0
                for start in range(0, len(terms), block):
                    expected += float(np.cumsum(terms[start : start + block])[-1])  # sequential, in dtype
                assert float(total) == expected, (seed, grad, gw is not None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mcgsm_pass_is_the_same_on_any_number_of_threads(monkeypatch, dtype):
    """The threads claim runs of blocks as they come free, each run summed into its own row:
    values, parameter and input gradients are bitwise the same on 1, 2 or 3 threads (and so
    whichever thread the machine slowed down)."""
    _needs_nll_grad()
    block = kernels.fused_mcgsm.NLL_GRAD_BLOCK
    mcgsm, x, y = _random_mcgsm((12, 32, 4, 32), dtype, seed=5, magnitude=1.0, rows=21 * block + 5)
    args = (x, y, mcgsm.priors.detach(), mcgsm.log_precisions().detach(), mcgsm.weights.detach(),
            mcgsm.features.detach(), mcgsm.predictors.detach())
    weights = torch.rand(y.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(1))
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        lp, dh, dy = torch.empty_like(y), torch.empty_like(x), torch.empty_like(y)
        total, grads = kernels.fused_mcgsm._train_pass(*args, lp=lp, grad=True, gw=weights, dh=dh, dy=dy)
        results.append([total, *grads, lp, dh, dy])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_mcgsm_nll_grad_declines_where_it_does_not_apply(monkeypatch):
    _needs_nll_grad()
    mcgsm, x, y = _random_mcgsm((4, 3, 2, 5), torch.float64, seed=3, magnitude=1.0)
    assert kernels.mcgsm_nll_grad(mcgsm, x, y) is not None
    assert kernels.mcgsm_nll_grad(mcgsm, x.float(), y.float()) is None  # parameters in float64
    assert kernels.mcgsm_nll_grad(mcgsm, x[:, :3], y) is None
    assert kernels.mcgsm_nll_grad(mcgsm, x.view(7, 29, 4), y.view(7, 29)) is None
    monkeypatch.setenv("RIDE_MCGSM_IMPL", "torch")
    assert kernels.mcgsm_nll_grad(mcgsm, x, y) is None


def test_lbfgs_refinement_unchanged_by_the_fused_closure(monkeypatch):
    # fit_mcgsm_lbfgs in float64 follows the same trajectory with the fused value and gradient
    # as with autograd of the reference (RIDE_MCGSM_IMPL=torch): same parameters and held-out NLL.
    import copy

    import ride.refine as refine

    _needs_nll_grad()
    mcgsm, x, y = _random_mcgsm((6, 4, 3, 5), torch.float64, seed=8, magnitude=0.3)
    mcgsm.reset_parameters()
    vx, vy = x[150:], y[150:]
    x, y = x[:150], y[:150]
    calls = []
    original = refine.mcgsm_nll_grad
    monkeypatch.setattr(refine, "mcgsm_nll_grad", lambda *a: calls.append(1) or original(*a))
    fused = copy.deepcopy(mcgsm)
    info_fused = refine.fit_mcgsm_lbfgs(fused, x, y, vx, vy, max_iterations=12, check_every=4, patience=5)
    assert calls  # the fused closure ran
    monkeypatch.setenv("RIDE_MCGSM_IMPL", "torch")
    plain = copy.deepcopy(mcgsm)
    info_plain = refine.fit_mcgsm_lbfgs(plain, x, y, vx, vy, max_iterations=12, check_every=4, patience=5)
    assert info_fused["iterations"] == info_plain["iterations"] == 12
    assert info_plain["valid_nll"] < info_plain["valid_nll_start"] - 1e-3  # it did move
    assert info_fused["valid_nll"] == pytest.approx(info_plain["valid_nll"], abs=1e-10)
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_bench_flops_formula():
    from ride.bench import flops_per_pixel, scored_pixels

    assert scored_pixels(22) == 20 * 18
    # 3 x (SLSTM 2*320*(12+128) + MCGSM 2*64*32 + 2*32*32 + 2*64*32)
    assert flops_per_pixel(1, 64) == 3 * (2 * 320 * 140 + 4096 + 2048 + 4096) == 299_520
    assert flops_per_pixel(2, 64) == flops_per_pixel(1, 64) + 3 * 2 * 320 * (64 + 128)
    assert flops_per_pixel(1, 64, extended=True) == flops_per_pixel(1, 64) + 3 * 2 * 320 * 128


def test_bench_quick_smoke(tmp_path):
    """Functional smoke test of `ride bench --quick --json` (timings are not checked; the
    memory probes, a subprocess per configuration, are tested below on a tiny configuration)."""
    from ride.bench import main

    out = tmp_path / "bench.json"
    assert main(["--quick", "--no-memory", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert len(records) >= 2
    keys = {"layers", "hidden", "patch", "batch", "device", "px_per_s", "per_pixel_px_per_s",
            "roofline_px_per_s", "peak_mem_mb"}
    for rec in records:
        assert keys <= rec.keys()
        assert rec["px_per_s"] > 0 and rec["roofline_px_per_s"] > 0 and rec["per_pixel_px_per_s"] > 0
        assert rec["layers"] == 1 and rec["hidden"] == 64 and rec["batch"] == 50
    assert {r["patch"] for r in records} == {8, 22}


def test_bench_pairs_each_step_with_the_gemms_around_it(monkeypatch):
    """frac_roofline is the median over reps of each step against the GEMMs timed just before and
    after it: where the machine's speed drifts during the reps (here linearly from one GEMM to the
    next, steps and GEMMs alike) it stays at the true fraction, while the ratio of the medians
    taken apart (kept as frac_roofline_unpaired) does not."""
    import ride.bench as bench

    reps = [(1.0, 1.0), (1.0, 1.0), (1.0, 0.5), (0.5, 0.5), (0.5, 1.0)]  # speed at each rep's GEMMs
    speeds = iter([v for b, a in reps for v in (b, (b + a) / 2, a)])  # the step runs in between
    calls = []

    def fake_time(fn, device):
        calls.append("step")
        return 0.01 / next(speeds)

    def gemm():
        calls.append("gemm")
        return 1e11 * next(speeds)

    monkeypatch.setattr(bench, "_time", fake_time)
    monkeypatch.setattr(bench, "_train_step", lambda *a: None)
    monkeypatch.setattr(bench, "_make_model", lambda *a: (None, torch.zeros(1)))
    rec = bench.measure_config(1, 64, 22, 50, torch.device("cpu"), "fused", 5, 0, gemm, baselines=())
    assert calls == ["gemm", "step", "gemm"] * 5
    px, fpp = 50 * 360, bench.flops_per_pixel(1, 64)
    true = px / 0.01 / (1e11 / fpp)  # the step's px/s over the roofline at the same speed
    assert rec["frac_roofline_reps"] == pytest.approx([true] * 5)
    assert rec["frac_roofline"] == pytest.approx(true)
    # apart: median step at speed 0.75 against the median GEMM at speed 1
    assert rec["frac_roofline_unpaired"] == pytest.approx(0.75 * true)


def test_bench_peak_memory():
    from ride.bench import peak_memory

    mem = peak_memory(1, 8, 10, 4, torch.device("cpu"), "auto")
    assert mem["peak_mem_mb"] is not None and mem["peak_mem_mb"] >= 0
    assert mem["peak_rss_mb"] > 10  # the whole process: Python and torch


def test_bench_eval_smoke(tmp_path):
    from ride.bench import main

    out = tmp_path / "eval.json"
    assert main(["--eval", "--eval-images", "2", "--eval-size", "128", "--json", str(out)]) == 0
    (rec,) = json.loads(out.read_text())
    assert rec["tiles"] == 8 and rec["seconds"] > 0 and rec["bits_per_pixel"] is not None


def test_mcgsm_log_prob_routes_through_the_fused_kernel_on_cpu(monkeypatch):
    # MCGSM.log_prob delegates to the fused kernel on the CPU; RIDE_MCGSM_IMPL=torch forces the
    # reference ops. Both give the same values (the equality tests above check gradients too).
    from ride.mcgsm import MCGSM

    if kernels.c_kernels() is None:
        pytest.skip("the fused MCGSM needs the C kernels")
    calls = []
    for cls in (fused_mcgsm.BlockedMCGSM, fused_mcgsm.FusedMCGSM):
        monkeypatch.setattr(cls, "apply", (lambda f: lambda *a: calls.append(1) or f(*a))(cls.apply))
    torch.manual_seed(19)
    mcgsm = MCGSM(5, 3, 2, 4)
    h, y = torch.randn(7, 5), torch.randn(7)
    fused = mcgsm.log_prob(h, y)
    assert calls
    monkeypatch.setenv("RIDE_MCGSM_IMPL", "torch")
    calls.clear()
    plain = mcgsm.log_prob(h, y)
    assert not calls
    assert torch.allclose(fused, plain, atol=2e-5)


_TRITON_CHECK = r"""
import torch
import ride.kernels.fused_slstm as fs
from ride.slstm import SLSTMStack
fs._CHUNK_ROWS = 24  # several backward chunks even at this size
torch.manual_seed(0)
worst = 0.0
for ext in (False, True):
    for shape in [(1, 1), (1, 6), (5, 1), (3, 6), (6, 3)]:
        st = SLSTMStack(3, 5, 2, ext).double()
        x = torch.randn(4, *shape, 3, dtype=torch.float64)
        w = torch.randn(4, *shape, 5, dtype=torch.float64)
        res = {}
        for impl in ("reference", "fused_triton"):
            st.zero_grad()
            xi = x.clone().requires_grad_(True)
            out = st(xi, impl=impl)
            (out * w).sum().backward()
            res[impl] = [out.detach(), xi.grad] + [p.grad.clone() for p in st.parameters()]
        worst = max(worst, max((a - b).abs().max().item() for a, b in zip(res["reference"], res["fused_triton"])))
print(worst)
"""


def test_triton_sweeps_equal_the_reference_under_the_interpreter():
    """The CUDA default's Triton kernels, run by Triton's CPU interpreter (needs `triton` installed)."""
    pytest.importorskip("triton")
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-12
