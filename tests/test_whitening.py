"""Tests of the conditional whitening (paper eq. 7; ride/whitening.py)."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from ride.whitening import ConditionalWhitening

DIM = 5


def _correlated_data(num: int, seed: int = 0, dtype=torch.float64):
    """Jointly Gaussian (x, y) with a non-trivial covariance and non-zero means."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(DIM + 1, DIM + 1, generator=gen, dtype=torch.float64)
    mix = mix + 2.0 * torch.eye(DIM + 1, dtype=torch.float64)
    shift = torch.randn(DIM + 1, generator=gen, dtype=torch.float64) * 3.0
    z = torch.randn(num, DIM + 1, generator=gen, dtype=torch.float64) @ mix.T + shift
    return z[:, :DIM].to(dtype), z[:, DIM].to(dtype), mix, shift


def _fitted(dtype=torch.float64, num: int = 4000, seed: int = 0):
    x, y, mix, shift = _correlated_data(num, seed)
    white = ConditionalWhitening(DIM).to(dtype).fit(x, y)
    return white, x.to(dtype), y.to(dtype), mix, shift


def _cov(a: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(0)
    return a.T @ a / a.shape[0]


def test_unfitted_is_identity():
    white = ConditionalWhitening(DIM)
    assert not bool(white.fitted)
    x = torch.randn(7, DIM)
    y = torch.randn(7)
    xw, yw = white(x, y)
    assert torch.equal(xw, x)
    assert torch.equal(yw, y)
    assert float(white.log_jacobian) == 0.0


def test_whitened_statistics_on_fit_data():
    white, x, y, _, _ = _fitted()
    assert bool(white.fitted)
    xw, yw = white(x, y)
    # Data are strongly correlated before.
    assert (_cov(x) - torch.eye(DIM, dtype=x.dtype)).abs().max() > 0.5
    joint = _cov(torch.cat([xw, yw[:, None]], 1))
    assert torch.allclose(joint, torch.eye(DIM + 1, dtype=joint.dtype), atol=1e-8)
    assert xw.mean(0).abs().max() < 1e-8
    assert yw.mean().abs() < 1e-8


def test_whitening_matrix_is_symmetric():
    white, *_ = _fitted()
    assert torch.allclose(white.whiten_x, white.whiten_x.T, atol=1e-12)


def test_whitened_statistics_generalise_to_fresh_samples():
    white, *_ = _fitted(dtype=torch.float32, num=20000, seed=1)
    assert white.whiten_x.dtype == torch.float32
    # Fresh samples of the same distribution (same mixing matrix and shift).
    gen = torch.Generator().manual_seed(123)
    _, _, mix, shift = _correlated_data(10, seed=1)
    z = torch.randn(20000, DIM + 1, generator=gen, dtype=torch.float64) @ mix.T + shift
    xw, yw = white(z[:, :DIM].float(), z[:, DIM].float())
    joint = _cov(torch.cat([xw, yw[:, None]], 1).double())
    assert torch.allclose(joint, torch.eye(DIM + 1, dtype=torch.float64), atol=0.06)
    assert abs(float(yw.var()) - 1.0) < 0.05


def test_against_closed_form():
    """The fitted transform equals eq. 7 evaluated with the (known) empirical moments."""
    white, x, y, _, _ = _fitted()
    xc, yc = x - x.mean(0), y - y.mean()
    n = x.shape[0]
    cxx, cxy, cyy = xc.T @ xc / n, xc.T @ yc / n, yc @ yc / n
    evals, evecs = torch.linalg.eigh(cxx)
    wx = evecs @ torch.diag(evals ** -0.5) @ evecs.T
    p = cxy @ wx  # P = C_yx C_xx^{-1/2}
    scale = (cyy - p @ p) ** -0.5
    assert torch.allclose(white.whiten_x, wx, atol=1e-10)
    assert torch.allclose(white.predictor, p, atol=1e-10)
    assert torch.allclose(white.scale_y, scale, atol=1e-10)
    xw = (x - x.mean(0)) @ wx
    yw = scale * (y - y.mean() - xw @ p)
    out_x, out_y = white(x, y)
    assert torch.allclose(out_x, xw, atol=1e-10)
    assert torch.allclose(out_y, yw, atol=1e-10)


def test_unwhiten_inverts_whiten():
    white, x, y, _, _ = _fitted()
    xw = white.whiten_inputs(x)
    yw = white.whiten_targets(xw, y)
    assert torch.allclose(white.unwhiten_targets(xw, yw), y, atol=1e-10)
    # and the other way round, for arbitrary whitened targets
    t = torch.randn(x.shape[0], dtype=x.dtype)
    assert torch.allclose(white.whiten_targets(xw, white.unwhiten_targets(xw, t)), t, atol=1e-10)


def test_log_jacobian_matches_autograd():
    white, x, y, _, _ = _fitted()
    x0 = x[:3]
    y0 = y[:3].clone()

    def f(targets):
        return white.whiten_targets(white.whiten_inputs(x0), targets)

    jac = jacobian(f, y0)  # 3 x 3, diagonal
    assert torch.allclose(jac, torch.diag(torch.diagonal(jac)), atol=1e-14)
    for k in range(3):
        assert torch.allclose(jac[k, k].abs().log(), white.log_jacobian, atol=1e-12)
    # The log-Jacobian is not trivially zero for this data.
    assert abs(float(white.log_jacobian)) > 0.1


def test_full_jacobian_is_block_triangular():
    white, x, y, _, _ = _fitted()
    z0 = torch.cat([x[7], y[7:8]])

    def f(z):
        xw, yw = white(z[:DIM][None], z[DIM:])
        return torch.cat([xw[0], yw])

    jac = jacobian(f, z0)
    assert jac.shape == (DIM + 1, DIM + 1)
    # x' does not depend on y.
    assert torch.all(jac[:DIM, DIM] == 0)
    # y' does depend on x (the conditional part).
    assert jac[DIM, :DIM].abs().max() > 1e-3
    assert torch.allclose(jac[:DIM, :DIM], white.whiten_x, atol=1e-12)
    _, logdet_full = torch.linalg.slogdet(jac)
    _, logdet_xx = torch.linalg.slogdet(white.whiten_x)
    assert torch.allclose(logdet_full, logdet_xx + white.log_jacobian, atol=1e-10)
    # log|det C_xx^{-1/2}| computed independently from the covariance.
    xc = x - x.mean(0)
    _, logdet_cov = torch.linalg.slogdet(xc.T @ xc / x.shape[0])
    assert torch.allclose(logdet_xx, -0.5 * logdet_cov, atol=1e-10)


def test_change_of_variables_density():
    """log N(y | x) = log N(y' ; 0, 1) + log_jacobian for the fitted Gaussian."""
    white, x, y, _, _ = _fitted()
    xw, yw = white(x[:10], y[:10])
    std_normal = torch.distributions.Normal(torch.tensor(0.0, dtype=x.dtype), torch.tensor(1.0, dtype=x.dtype))
    lhs = std_normal.log_prob(yw) + white.log_jacobian
    # Empirical Gaussian conditional p(y | x) from least squares.
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    coef = torch.linalg.lstsq(xa, y[:, None]).solution[:, 0]
    resid = y - xa @ coef
    var = resid.square().mean()
    cond = torch.distributions.Normal(xa[:10] @ coef, var.sqrt())
    assert torch.allclose(lhs, cond.log_prob(y[:10]), atol=1e-8)


def test_state_dict_round_trip():
    white, x, y, _, _ = _fitted(dtype=torch.float32)
    other = ConditionalWhitening(DIM)
    other.load_state_dict(white.state_dict())
    assert bool(other.fitted)
    a = white(x.float(), y.float())
    b = other(x.float(), y.float())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_degenerate_inputs_are_regularised():
    """A constant input dimension must not produce Inf/NaN."""
    x, y, _, _ = _correlated_data(500)
    x[:, 2] = 1.5
    white = ConditionalWhitening(DIM).double().fit(x, y)
    xw, yw = white(x, y)
    assert torch.isfinite(xw).all() and torch.isfinite(yw).all()
    assert torch.isfinite(white.log_jacobian)


@pytest.mark.parametrize(
    "x_shape, y_shape", [((100, DIM + 1), (100,)), ((100, DIM), (99,)), ((100,), (100,)), ((100, DIM), (100, 1))]
)
def test_fit_rejects_bad_shapes(x_shape, y_shape):
    with pytest.raises(ValueError, match="fit expects"):
        ConditionalWhitening(DIM).fit(torch.randn(x_shape), torch.randn(y_shape))


def test_fit_rejects_too_few_samples():
    with pytest.raises(ValueError, match="need more than"):
        ConditionalWhitening(DIM).fit(torch.randn(DIM + 1, DIM), torch.randn(DIM + 1))
