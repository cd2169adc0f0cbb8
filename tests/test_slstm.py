"""Tests of the spatial LSTM (paper eq. 6; ride/slstm.py)."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from ride.slstm import IMPLEMENTATIONS, SLSTMStack, SpatialLSTM, resolve_impl


pytestmark = pytest.mark.usefixtures("single_thread")


SHAPES = [(1, 1), (1, 6), (5, 1), (3, 7), (6, 4), (5, 5)]
# Every fast implementation is checked against the per-pixel raster reference.
FAST_IMPLS = ("wavefront", "fused", "fused_torch", "auto")


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.5) -> torch.nn.Module:
    """Weights and biases larger than at initialisation so that every gate matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale)
    return module


def _naive_cell(layer: SpatialLSTM, x, h_left, c_left, h_up, c_up):
    """Eq. 6 written out from REFERENCE.md, independent of the module's own cell code."""
    n = layer.hidden_size
    rec = [h_left, h_up] + ([c_left, c_up] if layer.extended else [])
    y = torch.cat([x] + rec, -1)
    weight = torch.cat([layer.weight_in, layer.weight_rec], 1)
    z = y @ weight.T + layer.bias
    g = torch.tanh(z[..., :n])
    o = torch.sigmoid(z[..., n : 2 * n])
    i = torch.sigmoid(z[..., 2 * n : 3 * n])
    f_c = torch.sigmoid(z[..., 3 * n : 4 * n])
    f_r = torch.sigmoid(z[..., 4 * n :])
    c = g * i + c_left * f_c + c_up * f_r
    return torch.tanh(c * o), c


def _naive_forward(layer: SpatialLSTM, x: torch.Tensor) -> torch.Tensor:
    n_img, height, width, _ = x.shape
    zero = x.new_zeros(n_img, layer.hidden_size)
    h = {}
    c = {}
    for i in range(height):
        for j in range(width):
            h[i, j], c[i, j] = _naive_cell(
                layer,
                x[:, i, j],
                h.get((i, j - 1), zero),
                c.get((i, j - 1), zero),
                h.get((i - 1, j), zero),
                c.get((i - 1, j), zero),
            )
    return torch.stack([torch.stack([h[i, j] for j in range(width)], 1) for i in range(height)], 1)


def test_initialisation():
    torch.manual_seed(0)
    layer = SpatialLSTM(12, 64)
    assert layer.weight_in.shape == (5 * 64, 12)
    assert layer.weight_rec.shape == (5 * 64, 2 * 64)
    assert layer.bias.shape == (5 * 64,)
    for w in (layer.weight_in, layer.weight_rec):
        assert w.min() >= -0.08 and w.max() <= 0.08
        assert w.min() < -0.07 and w.max() > 0.07  # uniform over the whole range
        assert abs(float(w.detach().mean())) < 0.005
    assert torch.all(layer.bias == 0)
    ext = SpatialLSTM(12, 8, extended=True)
    assert ext.weight_rec.shape == (5 * 8, 4 * 8)


@pytest.mark.parametrize("impl", ("reference",) + FAST_IMPLS)
@pytest.mark.parametrize("extended", [False, True])
def test_forward_matches_equation(extended, impl):
    layer = _randomise(SpatialLSTM(3, 4, extended).double(), seed=1)
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    expected = _naive_forward(layer, x)
    with torch.no_grad():
        assert torch.allclose(layer(x, impl=impl), expected, atol=1e-12)


def test_extended_differs_from_plain():
    """The cell states really enter the extended variant's gates."""
    plain = _randomise(SpatialLSTM(3, 4, False).double(), seed=2)
    ext = SpatialLSTM(3, 4, True).double()
    with torch.no_grad():
        ext.weight_in.copy_(plain.weight_in)
        ext.bias.copy_(plain.bias)
        ext.weight_rec.zero_()
        ext.weight_rec[:, :8].copy_(plain.weight_rec)
    x = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(ext(x), plain(x), atol=1e-12)
        ext.weight_rec[:, 8:].fill_(0.3)
        assert (ext(x) - plain(x)).abs().max() > 1e-3


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("extended", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_fast_impls_equal_reference(shape, extended, num_layers):
    torch.manual_seed(sum(shape) + 10 * num_layers + extended)
    stack = _randomise(SLSTMStack(4, 5, num_layers, extended), seed=num_layers)
    x = torch.randn(2, *shape, 4)
    with torch.no_grad():
        ref = stack(x, impl="reference")
        assert ref.shape == (2, *shape, 5)
        assert ref.abs().max() > 0.05  # not a trivially small output
        for impl in FAST_IMPLS:
            fast = stack(x, impl=impl)
            assert fast.shape == (2, *shape, 5), impl
            assert fast.dtype == torch.float32, impl
            assert torch.allclose(fast, ref, atol=1e-5, rtol=0), impl


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_fast_impls_equal_reference_default_init(impl):
    torch.manual_seed(3)
    stack = SLSTMStack(12, 16, 2, extended=True)
    x = torch.randn(3, 6, 8, 12)
    with torch.no_grad():
        assert torch.allclose(stack(x, impl=impl), stack(x, impl="reference"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_single_layer_module_equals_stack(impl):
    """SpatialLSTM.forward and the stack's shared diagonal layout give the same result."""
    stack = _randomise(SLSTMStack(3, 4, 2, True).double(), seed=11)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        layered = stack.layers[1](stack.layers[0](x, impl=impl), impl=impl)
        assert torch.allclose(stack(x, impl=impl), layered, atol=1e-12)


def test_zero_layer_stack_is_identity():
    stack = SLSTMStack(4, 5, 0)
    assert stack.output_size == 4
    x = torch.randn(1, 2, 3, 4)
    assert torch.equal(stack(x), x)


def test_stack_layers_and_add_layer():
    stack = SLSTMStack(4, 6, 1).double()
    assert stack.output_size == 6
    layer = stack.add_layer()
    assert stack.num_layers == 2
    assert layer.input_size == 6 and layer.hidden_size == 6
    assert layer.weight_in.dtype == torch.float64  # follows the existing layers
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = _naive_forward(stack.layers[1], _naive_forward(stack.layers[0], x))
        assert torch.allclose(stack(x), expected, atol=1e-12)


GRAD_IMPLS = ("wavefront", "fused", "fused_torch")


def _params_call_impl(module, names, impl):
    def fn(x, *values):
        return functional_call(module, dict(zip(names, values)), (x,), {"impl": impl})

    return fn


@pytest.mark.parametrize("impl", GRAD_IMPLS)
@pytest.mark.parametrize("extended", [False, True])
def test_gradcheck(extended, impl):
    layer = _randomise(SpatialLSTM(2, 2, extended).double(), seed=4)
    names = [n for n, _ in layer.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_params_call_impl(layer, names, impl), (x, *values))


@pytest.mark.parametrize("impl", GRAD_IMPLS)
def test_gradcheck_two_layers_two_images(impl):
    stack = _randomise(SLSTMStack(2, 2, 2, extended=True).double(), seed=5)
    names = [n for n, _ in stack.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for p in stack.parameters()]
    x = torch.randn(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_params_call_impl(stack, names, impl), (x, *values))


@pytest.mark.parametrize("extended", [False, True])
def test_gradients_equal_reference(extended):
    stack = _randomise(SLSTMStack(3, 4, 2, extended).double(), seed=6)
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    weights = torch.randn(2, 4, 5, 4, dtype=torch.float64)
    grads = {}
    for impl in ("reference",) + FAST_IMPLS:
        stack.zero_grad()
        xi = x.clone().requires_grad_(True)
        (stack(xi, impl=impl) * weights).sum().backward()
        grads[impl] = [xi.grad.clone()] + [p.grad.clone() for p in stack.parameters()]
    for impl in FAST_IMPLS:
        for k, (a, b) in enumerate(zip(grads[impl], grads["reference"])):
            assert b.abs().max() > 0
            assert torch.allclose(a, b, atol=1e-10), (impl, k)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_float32_gradients_close_to_float64_reference(impl):
    stack = _randomise(SLSTMStack(3, 4, 2, True).double(), seed=12)
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    xi = x.clone().requires_grad_(True)
    stack(xi, impl="reference").square().sum().backward()
    ref = [xi.grad.clone()] + [p.grad.clone() for p in stack.parameters()]
    stack32 = stack.float()
    stack32.zero_grad()
    xf = x.float().requires_grad_(True)
    stack32(xf, impl=impl).square().sum().backward()
    got = [xf.grad] + [p.grad for p in stack32.parameters()]
    for a, b in zip(got, ref):
        assert torch.allclose(a.double(), b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", GRAD_IMPLS)
def test_backward_twice_with_retain_graph(impl):
    layer = _randomise(SpatialLSTM(2, 3, True).double(), seed=13)
    x = torch.randn(1, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    out = layer(x, impl=impl).sum()
    (g1,) = torch.autograd.grad(out, x, retain_graph=True)
    (g2,) = torch.autograd.grad(out, x)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("impl", ("reference",) + FAST_IMPLS)
@pytest.mark.parametrize("extended", [False, True])
def test_causality_by_perturbation(impl, extended):
    height, width = 4, 5
    stack = _randomise(SLSTMStack(3, 4, 2, extended).double(), seed=7)
    x = torch.randn(1, height, width, 3, dtype=torch.float64)
    with torch.no_grad():
        base = stack(x, impl=impl)
        for p, q in [(0, 0), (1, 3), (2, 1), (3, 4), (0, 4), (3, 0)]:
            x2 = x.clone()
            x2[0, p, q] += 1.0
            out = stack(x2, impl=impl)
            diff = (out - base).abs().amax(-1)[0]
            for i in range(height):
                for j in range(width):
                    if p > i or q > j:
                        # later raster position or outside the upper-left quadrant
                        assert diff[i, j] == 0, (p, q, i, j)
                    else:
                        assert diff[i, j] > 0, (p, q, i, j)


@pytest.mark.parametrize("impl", GRAD_IMPLS)
@pytest.mark.parametrize("extended", [False, True])
def test_causality_by_gradient(extended, impl):
    height, width = 3, 4
    stack = _randomise(SLSTMStack(2, 3, 2, extended).double(), seed=8)
    x = torch.randn(1, height, width, 2, dtype=torch.float64, requires_grad=True)
    out = stack(x, impl=impl)
    for i in range(height):
        for j in range(width):
            (grad,) = torch.autograd.grad(out[0, i, j].sum(), x, retain_graph=True)
            dep = grad[0].abs().amax(-1)
            allowed = torch.zeros(height, width, dtype=torch.bool)
            allowed[: i + 1, : j + 1] = True
            assert torch.all(dep[~allowed] == 0), (i, j)
            assert torch.all(dep[allowed] > 0), (i, j)


def test_border_states_are_zero():
    """The first cell sees zero neighbours: it equals one step with zero states."""
    layer = _randomise(SpatialLSTM(3, 4, True).double(), seed=9)
    x = torch.randn(2, 2, 2, 3, dtype=torch.float64)
    zero = torch.zeros(2, 4, dtype=torch.float64)
    with torch.no_grad():
        h00, _ = layer.step(x[:, 0, 0], zero, zero, zero, zero)
        for impl in ("reference",) + FAST_IMPLS:
            assert torch.allclose(layer(x, impl=impl)[:, 0, 0], h00, atol=1e-14), impl


@pytest.mark.parametrize("bad", ["cuda", "Wavefront", "", "fast"])
def test_unknown_impl_raises(bad):
    x = torch.randn(1, 2, 2, 2)
    with pytest.raises(ValueError, match=f"unknown SLSTM implementation {bad!r}"):
        SpatialLSTM(2, 3)(x, impl=bad)
    with pytest.raises(ValueError, match="unknown SLSTM implementation"):
        SLSTMStack(2, 3, 2)(x, impl=bad)
    with pytest.raises(ValueError, match="unknown SLSTM implementation"):
        SLSTMStack(2, 3, 0)(x, impl=bad)


def test_auto_resolution(monkeypatch):
    monkeypatch.delenv("RIDE_SLSTM_IMPL", raising=False)
    # Every implementation is tested against the reference: here on the CPU, except the Triton
    # sweeps (tests/test_slstm_fast.py in Triton's interpreter, tests/test_cuda.py on a GPU).
    assert set(FAST_IMPLS) | {"reference", "fused_triton"} == set(IMPLEMENTATIONS)
    assert resolve_impl("auto", torch.zeros(1)) == "fused"
    assert resolve_impl("auto", torch.zeros(1, dtype=torch.float16)) == "wavefront"
    assert resolve_impl("reference", torch.zeros(1)) == "reference"
    monkeypatch.setenv("RIDE_SLSTM_IMPL", "reference")
    assert resolve_impl("auto", torch.zeros(1)) == "reference"
    monkeypatch.setenv("RIDE_SLSTM_IMPL", "bogus")
    with pytest.raises(ValueError, match="RIDE_SLSTM_IMPL"):
        SpatialLSTM(2, 3)(torch.randn(1, 2, 2, 2))


@pytest.mark.parametrize("impl", ("reference",) + FAST_IMPLS)
@pytest.mark.parametrize("shape", [(1, 2, 2, 3), (2, 2, 3), (1, 2, 2, 2, 2)])
def test_wrong_input_shape_raises(impl, shape):
    with pytest.raises(ValueError, match="N x H x W x 2"):
        SpatialLSTM(2, 3)(torch.randn(shape), impl=impl)
    with pytest.raises(ValueError, match="N x H x W x 2"):
        SLSTMStack(2, 3, 2)(torch.randn(shape), impl=impl)


@pytest.mark.parametrize("extended", [False, True])
def test_fused_with_several_threads(extended):
    """The OpenMP path of the C kernels (several threads) agrees with the reference."""
    stack = _randomise(SLSTMStack(3, 4, 2, extended).double(), seed=14)
    x = torch.randn(3, 5, 6, 3, dtype=torch.float64)
    weights = torch.randn(3, 5, 6, 4, dtype=torch.float64)
    grads = {}
    previous = torch.get_num_threads()
    try:
        for impl, threads in (("reference", 1), ("fused", 2)):
            torch.set_num_threads(threads)
            stack.zero_grad()
            xi = x.clone().requires_grad_(True)
            out = stack(xi, impl=impl)
            (out * weights).sum().backward()
            grads[impl] = [out.detach(), xi.grad] + [p.grad.clone() for p in stack.parameters()]
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(grads["fused"], grads["reference"]):
        assert torch.allclose(a, b, atol=1e-10)
