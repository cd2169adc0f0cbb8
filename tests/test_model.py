"""Tests of the full RIDE density (ride/model.py): causality, normalisation, sampling, checkpoints."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ride.model import RIDE, mcgsm_baseline


pytestmark = pytest.mark.usefixtures("single_thread")


# (num_layers, extended) of the architectures whose causality is checked.
ARCHS = [(0, False), (1, False), (1, True), (2, False), (3, True)]


def _smooth_images(num: int, height: int, width: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Random images with correlated neighbouring pixels and a non-zero mean."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(num, 1, height + 2, width + 2, generator=gen, dtype=dtype)
    return F.avg_pool2d(noise, 3, stride=1)[:, 0] * 2.0 + 0.5


def _perturb(model: RIDE, seed: int) -> RIDE:
    """Move every parameter away from its initialisation so the model is far from trivial."""
    gen = torch.Generator().manual_seed(seed)

    def rand(p, scale):
        return torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * scale

    with torch.no_grad():
        for layer in model.slstm.layers:
            layer.weight_in.copy_(rand(layer.weight_in, 0.3))
            layer.weight_rec.copy_(rand(layer.weight_rec, 0.3))
            layer.bias.copy_(rand(layer.bias, 0.7))
        m = model.mcgsm
        m.priors.copy_(rand(m.priors, 1.0))
        m.scales.copy_(rand(m.scales, 0.5))
        m.weights.add_(rand(m.weights, 0.3))
        m.features.copy_(rand(m.features, 0.5))
        m.predictors.copy_(rand(m.predictors, 0.5))
    return model


def _model(num_layers=1, extended=False, nb_size=5, seed=0, dtype=torch.float64, fit=True, hidden=4) -> RIDE:
    torch.manual_seed(seed)
    model = RIDE(nb_size, hidden, num_layers, extended, num_components=3, num_scales=2, num_features=3)
    model = model.to(dtype)
    if fit:
        model.fit_whitening(_smooth_images(20, 12, 14, seed=100 + seed, dtype=dtype))
    return _perturb(model, seed)


def _cell_position(model: RIDE, gi: int, gj: int) -> tuple[int, int]:
    nb = model.neighborhood
    return gi + nb.rows - 1, gj + (nb.n - 1) // 2


def test_log_prob_shape_and_finite():
    model = _model(2, seed=1, dtype=torch.float32)
    images = _smooth_images(3, 9, 11, seed=2, dtype=torch.float32)
    lp = model.log_prob(images)
    assert lp.shape == (3, 9 - 2, 11 - 4)
    assert lp.dtype == torch.float32
    assert torch.isfinite(lp).all()
    model3 = _model(1, nb_size=3, seed=1, dtype=torch.float32)
    assert model3.log_prob(images).shape == (3, 8, 9)


def test_cell_to_image_mapping():
    """Grid cell (gi, gj) scores image pixel (gi + rows - 1, gj + (n - 1) // 2)."""
    model = _model(1, seed=3)
    images = _smooth_images(1, 7, 9, seed=4)
    _, white = model.features(images)
    expected_x, _ = model.neighborhood.extract(images)
    for gi, gj in [(0, 0), (4, 4), (2, 3)]:
        a, b = _cell_position(model, gi, gj)
        assert (a, b) == (gi + 2, gj + 2)
        xw = model.whitening.whiten_inputs(expected_x[0, gi, gj])
        assert torch.allclose(white[0, gi, gj], model.whitening.whiten_targets(xw, images[0, a, b]), atol=1e-12)


@pytest.mark.parametrize("impl", ["wavefront", "fused"])
@pytest.mark.parametrize("num_layers, extended", ARCHS)
def test_causality_by_perturbation(num_layers, extended, impl):
    model = _model(num_layers, extended, seed=10 + num_layers)
    model.impl = impl
    height, width = 7, 9
    images = _smooth_images(1, height, width, seed=5)
    gh, gw = model.neighborhood.grid_shape(height, width)
    with torch.no_grad():
        lp0 = model.log_prob(images)
        h0, _ = model.features(images)
        # Border pixels (top rows, side columns) and scored pixels.
        for a, b in [(0, 0), (1, 7), (2, 0), (2, 2), (3, 5), (4, 8), (5, 4), (6, 6), (6, 1)]:
            changed = images.clone()
            changed[0, a, b] += 0.8
            lp1 = model.log_prob(changed)
            h1, _ = model.features(changed)
            later_hidden_changed = False
            for gi in range(gh):
                for gj in range(gw):
                    pi, pj = _cell_position(model, gi, gj)
                    rank, rank_ab = pi * width + pj, a * width + b
                    if rank < rank_ab:
                        assert torch.allclose(lp1[0, gi, gj], lp0[0, gi, gj], atol=1e-12, rtol=0), (a, b, gi, gj)
                    if rank == rank_ab:
                        assert abs(float(lp1[0, gi, gj] - lp0[0, gi, gj])) > 1e-6, (a, b)
                    if rank <= rank_ab:
                        # no cell up to and including (a, b) sees the value of (a, b) in its state
                        assert torch.allclose(h1[0, gi, gj], h0[0, gi, gj], atol=1e-12, rtol=0), (a, b, gi, gj)
                    elif (h1[0, gi, gj] - h0[0, gi, gj]).abs().max() > 1e-8:
                        later_hidden_changed = True
            # The change matters for some later cell unless nothing reads (a, b).
            if a < height - 1 or b < 2 + gw - 1:
                assert later_hidden_changed, (a, b)


@pytest.mark.parametrize("impl", ["wavefront", "fused"])
@pytest.mark.parametrize("num_layers, extended", [(0, False), (1, True), (2, False)])
def test_causality_by_gradient(num_layers, extended, impl):
    """d log p(x_ij | past) / d image is zero at every raster position after (i, j), and the
    conditional's parameters (the hidden state) do not depend on x_ij itself."""
    model = _model(num_layers, extended, nb_size=3, seed=20 + num_layers)
    model.impl = impl
    height, width = 4, 5
    images = _smooth_images(1, height, width, seed=6).requires_grad_(True)
    lp = model.log_prob(images)
    hidden, _ = model.features(images)
    gh, gw = lp.shape[1:]
    raster = torch.arange(height * width).reshape(height, width)
    for gi in range(gh):
        for gj in range(gw):
            a, b = _cell_position(model, gi, gj)
            (g_lp,) = torch.autograd.grad(lp[0, gi, gj], images, retain_graph=True)
            (g_h,) = torch.autograd.grad(hidden[0, gi, gj].square().sum(), images, retain_graph=True)
            after = raster > a * width + b
            assert torch.all(g_lp[0][after] == 0), (gi, gj)
            assert g_lp[0, a, b] != 0
            assert torch.all(g_h[0][raster >= a * width + b] == 0), (gi, gj)
            # The state does depend on the pixel just left of the target (always an input).
            assert g_h[0, a, b - 1] != 0


@pytest.mark.parametrize("impl", ["wavefront", "fused"])
def test_gradcheck_log_prob_wrt_image(impl):
    model = _model(1, extended=True, nb_size=3, seed=30, hidden=2)
    model.impl = impl
    assert model.mcgsm.predictors.dtype == torch.float64
    images = _smooth_images(1, 3, 4, seed=7).requires_grad_(True)
    assert torch.autograd.gradcheck(model.log_prob, (images,))


def test_double_converts_buffers():
    model = _model(1, seed=31, dtype=torch.float32).double()
    assert model.whitening.whiten_x.dtype == torch.float64
    assert model.whitening.log_jacobian.dtype == torch.float64
    assert model.log_prob(_smooth_images(1, 4, 6, seed=1)).dtype == torch.float64


@pytest.mark.parametrize("num_layers", [0, 2])
def test_batch_equals_one_by_one(num_layers):
    model = _model(num_layers, extended=True, seed=40, dtype=torch.float32)
    images = _smooth_images(4, 6, 8, seed=8, dtype=torch.float32)
    with torch.no_grad():
        batch = model.log_prob(images)
        single = torch.cat([model.log_prob(images[k : k + 1]) for k in range(4)])
    assert torch.allclose(batch, single, atol=1e-5, rtol=0)
    # Images really differ, so the comparison is not between copies of one value.
    assert (batch[0] - batch[1]).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["wavefront", "fused", "fused_torch", "auto"])
def test_fast_impls_equal_reference(impl):
    model = _model(2, extended=True, seed=41, dtype=torch.float32)
    images = _smooth_images(2, 6, 7, seed=9, dtype=torch.float32)
    with torch.no_grad():
        model.impl = "reference"
        ref = model.log_prob(images)
        model.impl = impl
        fast = model.log_prob(images)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    model.impl = "nonsense"
    with pytest.raises(ValueError, match="unknown SLSTM implementation"):
        model.log_prob(images)


@pytest.mark.parametrize("num_layers, extended", [(1, False), (2, True)])
def test_training_in_image_groups(monkeypatch, num_layers, extended):
    """On 2 threads a training step sweeps one image group per thread (the default where torch's
    BLAS is in the C kernels): loss and every parameter gradient as with one group and as the
    per-pixel reference."""
    from ride.kernels import build, fused_slstm

    if build.c_kernels() is None or build.gemm_args(torch.float64)[0] is None:
        pytest.skip("image groups under autograd need the C kernels and torch's BLAS pointers")
    model = _model(num_layers, extended, seed=43)
    images = _smooth_images(16, 7, 8, seed=10)
    monkeypatch.delenv("RIDE_SLSTM_GROUPS", raising=False)
    threads = torch.get_num_threads()
    results = {}
    try:
        torch.set_num_threads(2)
        assert fused_slstm.num_groups(16, images.device, True, training=True) == 2
        for name, impl, groups in [("default", "fused", None), ("one", "fused", 1), ("reference", "reference", None)]:
            monkeypatch.setattr(fused_slstm, "GROUPS", groups)
            model.impl = impl
            model.zero_grad()
            loss = model.loss(images)
            loss.backward()
            results[name] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    finally:
        torch.set_num_threads(threads)
    loss, grads = results["default"]
    for other in ("one", "reference"):
        assert torch.allclose(loss, results[other][0], atol=1e-12, rtol=0)
        for a, b in zip(grads, results[other][1]):
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("num_layers, extended, cell", [(1, False, (2, 1)), (2, True, (1, 2)), (0, False, (3, 3))])
def test_conditional_is_normalised(num_layers, extended, cell):
    """Integrating exp(log p(x_ij | past)) over the value of x_ij gives 1 (fitted whitening)."""
    model = _model(num_layers, extended, seed=50 + num_layers)
    assert abs(float(model.whitening.log_jacobian)) > 0.1  # the Jacobian term matters
    image = _smooth_images(1, 6, 8, seed=10)
    gi, gj = cell
    a, b = _cell_position(model, gi, gj)
    with torch.no_grad():
        hidden, _ = model.features(image)
        h = hidden[0, gi, gj]
        m = model.mcgsm
        means = h @ m.predictors
        std = (-0.5 * m.scales).exp()
        lo = float(means.min() - 14 * std.max())
        hi = float(means.max() + 14 * std.max())
        num = int((hi - lo) / float(std.min() / 10)) + 1
        white_grid = torch.linspace(lo, hi, num, dtype=torch.float64)
        inputs, _ = model.neighborhood.extract(image)
        xw = model.whitening.whiten_inputs(inputs[0, gi, gj])
        values = model.whitening.unwhiten_targets(xw, white_grid)  # pixel values covering the density
        batch = image.repeat(num, 1, 1)
        batch[:, a, b] = values
        lp = model.log_prob(batch)[:, gi, gj]
        total = torch.trapezoid(lp.exp(), values)
    assert abs(float(total) - 1.0) < 1e-4, float(total)


def test_loss_and_bits_per_pixel():
    model = _model(1, seed=60, dtype=torch.float32)
    images = _smooth_images(2, 6, 8, seed=11, dtype=torch.float32)
    with torch.no_grad():
        lp = model.log_prob(images)
        assert torch.allclose(model.loss(images), -lp.mean())
        assert torch.allclose(model.bits_per_pixel(images), lp.mean() / math.log(2))


@pytest.mark.parametrize("num_layers, extended", [(0, False), (1, True), (3, False)])
def test_state_dict_round_trip(num_layers, extended):
    model = _model(num_layers, extended, nb_size=3, seed=70, dtype=torch.float32)
    images = _smooth_images(2, 5, 6, seed=12, dtype=torch.float32)
    clone = RIDE(**model.config)
    clone.load_state_dict(model.state_dict())
    assert bool(clone.whitening.fitted)
    with torch.no_grad():
        assert torch.equal(clone.log_prob(images), model.log_prob(images))
    # A fresh model of the same config differs before loading (the test is not vacuous).
    with torch.no_grad():
        assert not torch.allclose(RIDE(**model.config).log_prob(images), model.log_prob(images))


def test_config_after_add_layer():
    model = _model(1, extended=True, seed=71, dtype=torch.float32)
    model.add_layer()
    cfg = model.config
    assert cfg == {
        "nb_size": 5,
        "num_hidden": 4,
        "num_layers": 2,
        "extended": True,
        "num_components": 3,
        "num_scales": 2,
        "num_features": 3,
    }
    clone = RIDE(**cfg)
    clone.load_state_dict(model.state_dict())
    images = _smooth_images(1, 5, 7, seed=13, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(clone.log_prob(images), model.log_prob(images))


def test_mcgsm_baseline():
    model = mcgsm_baseline(nb_size=5, num_components=4, num_scales=2, num_features=3)
    assert model.slstm.num_layers == 0
    assert model.mcgsm.dim_in == 12
    assert model.config["num_layers"] == 0
    with pytest.raises(ValueError, match="cannot grow"):
        model.add_layer()
    with torch.no_grad():
        hidden, white = model.features(_smooth_images(1, 5, 7, seed=1, dtype=torch.float32))
    assert hidden.shape == (1, 3, 3, 12)


def test_negative_layers_rejected():
    with pytest.raises(ValueError, match="num_layers"):
        RIDE(num_layers=-1)


def test_fit_whitening_subsamples_reproducibly():
    images = _smooth_images(4, 10, 12, seed=14, dtype=torch.float32)
    a, b, c = (RIDE(5, 4, 1, num_components=2, num_scales=2, num_features=2) for _ in range(3))
    a.fit_whitening(images, max_samples=100, generator=torch.Generator().manual_seed(0))
    b.fit_whitening(images, max_samples=100, generator=torch.Generator().manual_seed(0))
    c.fit_whitening(images)
    assert torch.equal(a.whitening.whiten_x, b.whitening.whiten_x)
    assert not torch.allclose(a.whitening.whiten_x, c.whitening.whiten_x)


# ----------------------------------------------------------------------------------------------
# Sampling


def _init_images(num, height, width, seed, dtype=torch.float64):
    return _smooth_images(num, height, width, seed=seed, dtype=dtype)


@pytest.mark.parametrize("num_layers, extended", [(0, False), (1, False), (2, True)])
def test_sample_shape_border_reproducible(num_layers, extended):
    model = _model(num_layers, extended, seed=80, dtype=torch.float32)
    height, width = 6, 8
    init = _init_images(3, height, width, seed=15, dtype=torch.float32)
    out = model.sample(3, height, width, init=init, generator=torch.Generator().manual_seed(1))
    again = model.sample(3, height, width, init=init, generator=torch.Generator().manual_seed(1))
    other = model.sample(3, height, width, init=init, generator=torch.Generator().manual_seed(2))
    assert out.shape == (3, height, width)
    assert torch.isfinite(out).all()
    assert torch.equal(out, again)
    assert not torch.equal(out, other)
    rs, cs = model.neighborhood.target_slices(height, width)
    border = torch.ones(height, width, dtype=torch.bool)
    border[rs, cs] = False
    assert border.sum() == height * width - 4 * 4
    assert torch.equal(out[:, border], init[:, border])
    # every scored pixel was resampled
    assert torch.all(out[:, rs, cs] != init[:, rs, cs])
    # init is not modified in place
    assert torch.equal(init, _init_images(3, height, width, seed=15, dtype=torch.float32))


def test_sample_without_init():
    model = _model(1, seed=81, dtype=torch.float32)
    a = model.sample(2, 5, 7, generator=torch.Generator().manual_seed(3))
    b = model.sample(2, 5, 7, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 5, 7)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_sample_rejects_bad_arguments():
    model = _model(1, seed=82, dtype=torch.float32)
    with pytest.raises(ValueError, match="smaller than"):
        model.sample(1, 2, 7)
    with pytest.raises(ValueError, match="init must have shape"):
        model.sample(2, 5, 7, init=torch.zeros(1, 5, 7))
    bad = torch.zeros(1, 5, 7)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.sample(1, 5, 7, init=bad)


@pytest.mark.parametrize("num_layers, extended", [(0, False), (1, False), (2, True)])
def test_sampler_states_match_features(num_layers, extended, monkeypatch):
    """The sampler's incremental states equal the batched states of the finished image.

    White-box: records what the raster schedule of ``ride.sampling`` feeds to the MCGSM draw, one
    call per scored pixel in raster order (test_samples_follow_the_model checks the same property
    statistically).
    """
    import ride.sampling as sampling

    model = _model(num_layers, extended, seed=83)
    calls = []
    original = sampling._draw_mcgsm

    def recording(mcgsm, hidden, uniform, normal):
        out = original(mcgsm, hidden, uniform, normal)
        calls.append((hidden.reshape(-1, hidden.shape[-1]).clone(), out.reshape(-1).clone()))
        return out

    monkeypatch.setattr(sampling, "_draw_mcgsm", recording)
    height, width = 6, 8
    out = model.sample(2, height, width, init=_init_images(2, height, width, seed=16),
                       generator=torch.Generator().manual_seed(4), schedule="raster")
    gh, gw = model.neighborhood.grid_shape(height, width)
    assert len(calls) == gh * gw
    with torch.no_grad():
        hidden, white = model.features(out)
    for gi in range(gh):
        for gj in range(gw):
            h, y = calls[gi * gw + gj]
            assert torch.allclose(hidden[:, gi, gj], h, atol=1e-10), (gi, gj)
            assert torch.allclose(white[:, gi, gj], y, atol=1e-10), (gi, gj)


def _mixture_cdf(model: RIDE, hidden: torch.Tensor, white: torch.Tensor) -> torch.Tensor:
    """CDF of the MCGSM at the whitened targets, from the parameters (eqs. in REFERENCE.md)."""
    m = model.mcgsm
    energy = ((hidden @ m.features).square()[..., None, :] * m.weights.square()).sum(-1)  # ... x K
    logits = m.priors - 0.5 * m.scales.exp() * energy[..., None]
    probs = torch.softmax(logits.flatten(-2), -1).unflatten(-1, logits.shape[-2:])
    means = (hidden @ m.predictors)[..., None]
    z = (white[..., None, None] - means) * (0.5 * m.scales).exp()
    return (probs * torch.special.ndtr(z)).sum((-2, -1))


def test_samples_follow_the_model():
    """Rosenblatt transform: the conditional CDF at every sampled pixel is i.i.d. uniform."""
    model = _model(1, extended=True, nb_size=3, seed=84)
    num, height, width = 400, 4, 5
    init = _init_images(num, height, width, seed=17)
    out = model.sample(num, height, width, init=init, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hidden, white = model.features(out)
        u = _mixture_cdf(model, hidden, white).flatten().numpy()
    assert u.size == num * 3 * 3
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # The test has power: the CDF of the *unperturbed* targets (init) is far from uniform.
    with torch.no_grad():
        hidden0, white0 = model.features(init)
        u0 = _mixture_cdf(model, hidden0, white0).flatten().numpy()
    assert stats.kstest(u0, "uniform").pvalue < 1e-6


def test_sample_single_cell_matches_conditional_moments():
    """3x5 image, n=5: one scored pixel; its sample mean/variance match exp(log_prob) integrated."""
    model = _model(2, seed=85)
    num = 20000
    init = _init_images(1, 3, 5, seed=18).repeat(num, 1, 1)
    out = model.sample(num, 3, 5, init=init, generator=torch.Generator().manual_seed(6))
    samples = out[:, 2, 2]
    lo, hi = float(samples.min()) - 5, float(samples.max()) + 5
    grid = torch.linspace(lo, hi, 20001, dtype=torch.float64)
    batch = init[:1].repeat(grid.numel(), 1, 1)
    batch[:, 2, 2] = grid
    with torch.no_grad():
        dens = model.log_prob(batch)[:, 0, 0].exp()
    assert abs(float(torch.trapezoid(dens, grid)) - 1) < 1e-4
    mean = float(torch.trapezoid(dens * grid, grid))
    var = float(torch.trapezoid(dens * (grid - mean) ** 2, grid))
    m4 = float(torch.trapezoid(dens * (grid - mean) ** 4, grid))
    assert abs(float(samples.mean()) - mean) < 5 * math.sqrt(var / num)
    assert abs(float(samples.var()) - var) < 5 * math.sqrt((m4 - var**2) / num)
    assert np.isfinite(mean) and var > 0
