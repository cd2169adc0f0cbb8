"""Tests of the factorized MCGSM (paper eqs. 3-5; ride/mcgsm.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.func import functional_call

from ride.mcgsm import MCGSM

PARAMS = ("priors", "scales", "weights", "features", "predictors")


def _perturbed(dim=4, k=3, s=2, f=3, seed=0, dtype=torch.float64, spread=1.0) -> MCGSM:
    """A model whose parameters are all moved well away from the initialisation."""
    torch.manual_seed(seed)
    model = MCGSM(dim, k, s, f).to(dtype)
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name in PARAMS:
            p = getattr(model, name)
            p.add_(spread * torch.randn(p.shape, generator=gen, dtype=dtype))
        model.scales.mul_(0.7)  # keep variances e^{-alpha} within a few orders of magnitude
    return model


def _naive_log_prob(model: MCGSM, h: list[float], y: float) -> float:
    """REFERENCE.md formula with explicit loops over components c and scales s (python floats)."""
    eta = model.priors.detach().double().tolist()
    alpha = model.scales.detach().double().tolist()
    beta = model.weights.detach().double().tolist()
    b = model.features.detach().double().tolist()
    a = model.predictors.detach().double().tolist()
    dim, k, s, f = model.dim_in, model.num_components, model.num_scales, model.num_features
    feats = [sum(b[d][n] * h[d] for d in range(dim)) for n in range(f)]
    logits, dens = [], []
    for c in range(k):
        energy = sum(beta[c][n] ** 2 * feats[n] ** 2 for n in range(f))
        mean = sum(a[d][c] * h[d] for d in range(dim))
        for sc in range(s):
            logits.append(eta[c][sc] - 0.5 * math.exp(alpha[c][sc]) * energy)
            var = math.exp(-alpha[c][sc])
            dens.append(math.exp(-0.5 * (y - mean) ** 2 / var) / math.sqrt(2 * math.pi * var))
    top = max(logits)
    weights = [math.exp(v - top) for v in logits]
    total = sum(weights)
    return math.log(sum(w / total * d for w, d in zip(weights, dens)))


def _mixture(model: MCGSM, h: torch.Tensor):
    """Mixture weights, means and variances over (c, s) for one input, computed from the parameters."""
    with torch.no_grad():
        feats = h.double() @ model.features.double()
        energy = (model.weights.double().square() * feats.square()).sum(-1)  # K
        alpha = model.scales.double()
        logits = model.priors.double() - 0.5 * alpha.exp() * energy[:, None]
        probs = torch.softmax(logits.flatten(), 0)
        means = (h.double() @ model.predictors.double())[:, None].expand_as(alpha).flatten()
        variances = (-alpha).exp().flatten()
    return probs, means, variances


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_normalised_over_outputs(seed):
    model = _perturbed(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(5, model.dim_in, generator=gen, dtype=torch.float64) * 1.5
    std_max = float((-0.5 * model.scales.detach()).exp().max())
    std_min = float((-0.5 * model.scales.detach()).exp().min())
    means = h @ model.predictors.detach()
    lo = float(means.min()) - 14 * std_max
    hi = float(means.max()) + 14 * std_max
    num = int((hi - lo) / (std_min / 10)) + 1
    grid = torch.linspace(lo, hi, num, dtype=torch.float64)
    with torch.no_grad():
        logp = model.log_prob(h[:, None, :].expand(-1, num, -1), grid[None, :].expand(h.shape[0], -1))
    totals = torch.trapezoid(logp.exp(), grid, dim=-1)
    assert torch.allclose(totals, torch.ones_like(totals), atol=1e-4), totals


def test_normalised_with_quad():
    model = _perturbed(seed=7)
    h = torch.randn(model.dim_in, dtype=torch.float64)

    def density(y: float) -> float:
        with torch.no_grad():
            return float(model.log_prob(h, torch.tensor(y, dtype=torch.float64)).exp())

    means = (h @ model.predictors.detach()).tolist()
    std_max = float((-0.5 * model.scales.detach()).exp().max())
    lo, hi = min(means) - 40 * std_max, max(means) + 40 * std_max
    # Break the range at the component means so quad sees every peak.
    total, _ = integrate.quad(density, lo, hi, points=sorted(means), limit=400, epsabs=1e-10)
    assert abs(total - 1.0) < 1e-4


def test_normalised_at_initialisation_float32():
    torch.manual_seed(5)
    model = MCGSM(6, 4, 3, 5)
    h = torch.randn(3, 6)
    grid = torch.linspace(-30, 30, 20001)
    with torch.no_grad():
        logp = model.log_prob(h[:, None].expand(-1, grid.numel(), -1), grid.expand(3, -1))
    totals = torch.trapezoid(logp.double().exp(), grid.double(), dim=-1)
    assert torch.allclose(totals, torch.ones_like(totals), atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_prob_matches_naive_formula(seed):
    model = _perturbed(dim=5, k=3, s=4, f=2, seed=seed, spread=0.5)
    gen = torch.Generator().manual_seed(50 + seed)
    h = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(6, generator=gen, dtype=torch.float64) * 2
    with torch.no_grad():
        got = model.log_prob(h, y)
    expected = torch.tensor([_naive_log_prob(model, h[i].tolist(), float(y[i])) for i in range(6)], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)


def test_log_prob_float32_matches_naive_formula():
    model = _perturbed(dim=3, k=2, s=3, f=4, seed=9, dtype=torch.float32, spread=0.5)
    h = torch.randn(4, 3)
    y = torch.randn(4)
    with torch.no_grad():
        got = model.log_prob(h, y).double()
    expected = torch.tensor([_naive_log_prob(model, h[i].double().tolist(), float(y[i])) for i in range(4)])
    assert torch.allclose(got, expected.double(), atol=1e-4)


def test_log_prob_batch_shapes():
    model = _perturbed(seed=3)
    h = torch.randn(2, 3, 4, model.dim_in, dtype=torch.float64)
    y = torch.randn(2, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        out = model.log_prob(h, y)
        flat = model.log_prob(h.reshape(-1, model.dim_in), y.reshape(-1))
    assert out.shape == (2, 3, 4)
    assert torch.allclose(out.reshape(-1), flat, atol=1e-12)


def test_log_prob_rejects_wrong_input_size():
    model = MCGSM(4, 2, 2, 2)
    with pytest.raises(ValueError, match="last dimension 4"):
        model.log_prob(torch.zeros(3, 5), torch.zeros(3))


@pytest.mark.parametrize("sizes", [(0, 2, 2, 2), (3, 0, 2, 2), (3, 2, 0, 2), (3, 2, 2, 0)])
def test_rejects_non_positive_sizes(sizes):
    with pytest.raises(ValueError):
        MCGSM(*sizes)


def test_initialisation_statistics():
    torch.manual_seed(0)
    model = MCGSM(64, 32, 4, 32)
    assert model.priors.shape == (32, 4)
    assert model.scales.shape == (32, 4)
    assert model.weights.shape == (32, 32)
    assert model.features.shape == (64, 32)
    assert model.predictors.shape == (64, 32)
    # eta = 0
    assert torch.all(model.priors == 0)
    # alpha ~ U[-1, 1]
    alpha = model.scales.detach()
    assert alpha.min() >= -1 and alpha.max() <= 1
    assert abs(float(alpha.mean())) < 0.15
    assert abs(float(alpha.std()) - 1 / math.sqrt(3)) < 0.08
    assert alpha.min() < -0.9 and alpha.max() > 0.9
    # beta = |U[-1, 1]| / 100 + 0.01, i.e. uniform on [0.01, 0.02]
    beta = model.weights.detach()
    assert beta.min() >= 0.01 and beta.max() <= 0.02
    assert abs(float(beta.mean()) - 0.015) < 0.0005
    assert abs(float(beta.std()) - 0.01 / math.sqrt(12)) < 0.0003
    # b ~ N(0, 1) / 100
    b = model.features.detach()
    assert abs(float(b.mean())) < 0.001
    assert abs(float(b.std()) - 0.01) < 0.0008
    # a ~ N(0, 1) / 10
    a = model.predictors.detach()
    assert abs(float(a.mean())) < 0.01
    assert abs(float(a.std()) - 0.1) < 0.008
    # Gaussian, not uniform: the kurtosis of a normal is 3 (uniform: 1.8).
    kurt = float(((a - a.mean()) ** 4).mean() / a.var() ** 2)
    assert 2.6 < kurt < 3.4


def test_reset_parameters_restores_initialisation():
    model = _perturbed(seed=2)
    model.reset_parameters()
    assert torch.all(model.priors == 0)
    assert model.weights.min() >= 0.01 and model.weights.max() <= 0.02
    assert model.scales.abs().max() <= 1


@pytest.mark.parametrize("seed", [0, 1])
def test_sample_moments_match_mixture(seed):
    model = _perturbed(dim=3, k=3, s=2, f=2, seed=seed, spread=0.8)
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(model.dim_in, generator=gen, dtype=torch.float64)
    probs, means, variances = _mixture(model, h)
    # Make sure the mixture is really a mixture (several components matter).
    assert (probs > 0.02).sum() >= 2
    mix_mean = float((probs * means).sum())
    mix_var = float((probs * (variances + means.square())).sum()) - mix_mean**2
    centred = means - mix_mean
    m4 = float((probs * (centred**4 + 6 * centred**2 * variances + 3 * variances**2)).sum())
    num = 100_000
    samples = model.sample(h.expand(num, -1), generator=torch.Generator().manual_seed(100 + seed))
    assert samples.shape == (num,)
    assert samples.dtype == torch.float64
    emp_mean = float(samples.mean())
    emp_var = float(samples.var())
    assert abs(emp_mean - mix_mean) < 5 * math.sqrt(mix_var / num)
    assert abs(emp_var - mix_var) < 5 * math.sqrt((m4 - mix_var**2) / num)
    # Whole distribution: Kolmogorov-Smirnov against the mixture CDF.
    p, mu, sd = probs.numpy(), means.numpy(), variances.sqrt().numpy()

    def cdf(v):
        return (p[None] * stats.norm.cdf((np.asarray(v)[:, None] - mu[None]) / sd[None])).sum(-1)

    assert stats.kstest(samples.numpy(), cdf).pvalue > 1e-3


def test_sample_per_input_and_shapes():
    """Different inputs in one batch get their own conditional (batched shapes kept)."""
    model = _perturbed(dim=3, k=2, s=2, f=2, seed=4, spread=0.8)
    h = torch.randn(2, model.dim_in, dtype=torch.float64) * 2
    num = 40_000
    inputs = h[:, None].expand(2, num, -1)
    samples = model.sample(inputs, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, num)
    for r in range(2):
        probs, means, variances = _mixture(model, h[r])
        mix_mean = float((probs * means).sum())
        mix_var = float((probs * (variances + means.square())).sum()) - mix_mean**2
        assert abs(float(samples[r].mean()) - mix_mean) < 5 * math.sqrt(mix_var / num)


def test_sample_reproducible_with_generator():
    model = _perturbed(seed=1)
    h = torch.randn(50, model.dim_in, dtype=torch.float64)
    a = model.sample(h, generator=torch.Generator().manual_seed(3))
    b = model.sample(h, generator=torch.Generator().manual_seed(3))
    c = model.sample(h, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


class _LogProb(torch.nn.Module):
    def __init__(self, model: MCGSM) -> None:
        super().__init__()
        self.m = model

    def forward(self, h, y):
        return self.m.log_prob(h, y)


def test_gradcheck_log_prob():
    model = _perturbed(dim=3, k=2, s=2, f=2, seed=0, spread=0.5)
    wrapper = _LogProb(model)
    names = [f"m.{n}" for n in PARAMS]
    values = [getattr(model, n).detach().clone().requires_grad_(True) for n in PARAMS]
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def fn(h, y, *vals):
        return functional_call(wrapper, dict(zip(names, vals)), (h, y), strict=True)

    assert torch.autograd.gradcheck(fn, (h, y, *values))
    # The gradient w.r.t. y is the score d/dy log p(y|h) of the mixture; check one value by hand.
    out = fn(h, y, *values)
    (grad_y,) = torch.autograd.grad(out.sum(), y)
    probs, means, variances = _mixture(model, h[0].detach())
    dens = probs * torch.exp(-0.5 * (y[0].detach() - means) ** 2 / variances) / variances.sqrt()
    score = float((dens * -(y[0].detach() - means) / variances).sum() / dens.sum())
    assert abs(float(grad_y[0]) - score) < 1e-10


def test_huge_log_precisions_stay_finite_and_normalised():
    # SGD at lr 1 drove alpha past 88 (e^alpha overflows float32; inf * 0 = NaN): the density
    # uses alpha clamped to +-LOG_PRECISION_BOUND and stays finite and normalised.
    from ride.mcgsm import LOG_PRECISION_BOUND

    torch.manual_seed(0)
    m = MCGSM(3, 2, 2, 2)
    with torch.no_grad():
        m.scales.copy_(torch.tensor([[100.0, 0.0], [-100.0, 1.0]]))
    h = torch.zeros(1, 3)  # zero energy and zero mean: exactly the inf * 0 case
    y = torch.zeros(1)
    lp = m.log_prob(h, y)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(m.scales.grad).all()
    assert m.log_precisions().abs().max().item() == LOG_PRECISION_BOUND
    # Normalised: integrate over y in float64 across the narrow and the wide components.
    m = m.double()
    ys = torch.cat([torch.linspace(-1e-5, 1e-5, 20001), torch.linspace(-50, 50, 200001),
                    torch.linspace(-1e8, 1e8, 200001)]).double()
    ys = ys.unique()
    dens = m.log_prob(torch.zeros(ys.numel(), 3, dtype=torch.float64), ys).exp()
    total = torch.trapezoid(dens, ys).item()
    assert abs(total - 1) < 1e-3
