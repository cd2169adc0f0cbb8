"""Tests of ancestral sampling (ride/sampling.py) and inpainting (ride/inpaint.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ride import inpaint as inp
from ride.checkpoint import load_verified, save_verified
from ride.cli import main
from ride.data import load_images
from ride.errors import ConfigError
from ride.model import RIDE
from ride.neighborhood import Neighborhood
from ride.synthetic import gaussian_ar_field

COEFFS, SIGMA = (0.6, 0.5, -0.3), 0.1


pytestmark = pytest.mark.usefixtures("single_thread")


def _model(num_layers=1, extended=False, nb_size=5, seed=0, dtype=torch.float64, hidden=4) -> RIDE:
    """A small RIDE with whitening fitted to smooth images and every parameter moved off its init."""
    torch.manual_seed(seed)
    model = RIDE(nb_size, hidden, num_layers, extended, num_components=3, num_scales=2, num_features=3).to(dtype)
    noise = torch.randn(20, 1, 14, 16, dtype=dtype)
    model.fit_whitening(F.avg_pool2d(noise, 3, stride=1)[:, 0] * 2 + 0.5)
    with torch.no_grad():
        for p in list(model.slstm.parameters()) + list(model.mcgsm.parameters()):
            p.add_(0.3 * torch.randn_like(p))
    return model


class GaussianAR(nn.Module):
    """The field of ride/synthetic.py as an exact model with RIDE's interface (n=5 scored grid).

    ``p(x_ij | past) = N(a x_{i,j-1} + b x_{i-1,j} + c x_{i-1,j-1}, sigma^2)`` for every scored pixel.
    """

    def __init__(self, coeffs=COEFFS, sigma=SIGMA) -> None:
        super().__init__()
        self.coeffs = nn.Parameter(torch.tensor(coeffs, dtype=torch.float64), requires_grad=False)
        self.sigma = sigma
        self.neighborhood = Neighborhood(5)

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.coeffs
        return a * x[:, 2:, 1:-3] + b * x[:, 1:-1, 2:-2] + c * x[:, 1:-1, 1:-3]

    def log_prob(self, images: torch.Tensor) -> torch.Tensor:
        resid = images[:, 2:, 2:-2] - self._mean(images)
        return -0.5 * (resid / self.sigma) ** 2 - math.log(self.sigma * math.sqrt(2 * math.pi))

    def sample(self, num, height, width, init=None, generator=None, mask=None, **_):
        """Anti-diagonal by anti-diagonal: each pixel's parents lie on the two previous diagonals."""
        images = init.clone()
        mask = mask.expand(num, height, width)
        a, b, c = self.coeffs
        rows, cols = mask.any(0).nonzero(as_tuple=True)
        for d in (rows + cols).unique().tolist():
            i, j = rows[rows + cols == d], cols[rows + cols == d]
            mean = a * images[:, i, j - 1] + b * images[:, i - 1, j] + c * images[:, i - 1, j - 1]
            draw = mean + self.sigma * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            images[:, i, j] = torch.where(mask[:, i, j], draw, images[:, i, j])
        return images


def _exact_conditional(model: GaussianAR, image: torch.Tensor, mask: torch.Tensor):
    """Mean and covariance of the hole given the rest: Gaussian conditioning of the joint density."""
    height, width = image.shape
    a, b, c = model.coeffs.tolist()
    rows = []
    for i in range(2, height):
        for j in range(2, width - 2):
            row = torch.zeros(height, width, dtype=torch.float64)
            row[i, j], row[i, j - 1], row[i - 1, j], row[i - 1, j - 1] = 1, -a, -b, -c
            rows.append(row.flatten())
    lin = torch.stack(rows)  # residuals = lin @ x, i.i.d. N(0, sigma^2) under the model
    hole = mask.flatten()
    lh, lo = lin[:, hole], lin[:, ~hole]
    gram = lh.T @ lh
    mean = -torch.linalg.solve(gram, lh.T @ (lo @ image.flatten()[~hole]))
    return mean, model.sigma**2 * torch.linalg.inv(gram)


# ----------------------------------------------------------------------------------------------
# Ancestral sampling


@pytest.mark.parametrize("num_layers, extended, nb_size", [(0, False, 5), (1, False, 5), (2, True, 5), (1, True, 3),
                                                           (1, False, 7)])
def test_wavefront_equals_raster_loop_and_log_prob(num_layers, extended, nb_size):
    """The skewed wavefront draws the per-pixel loop's sample, and its densities are log_prob's."""
    model = _model(num_layers, extended, nb_size, seed=1)
    height, width = 11, 13

    def draw(schedule):
        return model.sample(3, height, width, generator=torch.Generator().manual_seed(2), return_log_prob=True,
                            schedule=schedule)

    fast, fast_lp = draw("wavefront")
    slow, slow_lp = draw("raster")
    assert torch.allclose(fast, slow, rtol=0, atol=1e-12)
    assert torch.allclose(fast_lp, slow_lp, rtol=0, atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(model.log_prob(fast), fast_lp, rtol=0, atol=1e-10)
    # Without densities the same sample comes out.
    assert torch.equal(model.sample(3, height, width, generator=torch.Generator().manual_seed(2)), fast)


def test_masked_sampling_keeps_the_rest():
    model = _model(2, True, seed=3)
    init = torch.randn(2, 10, 12, dtype=torch.float64)
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[4:7, 3:9] = True
    out, lp = model.sample(2, 10, 12, init=init, mask=mask, generator=torch.Generator().manual_seed(4),
                           return_log_prob=True)
    assert torch.equal(out[:, ~mask], init[:, ~mask])
    assert (out[:, mask] != init[:, mask]).all()
    with torch.no_grad():
        assert torch.allclose(model.log_prob(out), lp, rtol=0, atol=1e-10)
    # The early stop after the last masked cell gives the same pixels.
    again = model.sample(2, 10, 12, init=init, mask=mask, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again, out)
    bad = torch.zeros(10, 12, dtype=torch.bool)
    bad[0, 5] = True
    with pytest.raises(ValueError, match="outside the scored grid"):
        model.sample(2, 10, 12, init=init, mask=bad)


# ----------------------------------------------------------------------------------------------
# The acceptance ratio (eq. 9)


@pytest.mark.parametrize("flip", inp.FLIPS)
def test_acceptance_ratio_equals_full_image_brute_force(flip):
    """log a from the pixels after the block (eq. 9) or the flipped proposal = full-image ratios."""
    model = _model(2, True, seed=5)
    height, width = 13, 14
    gen = torch.Generator().manual_seed(6)
    current = model.sample(1, height, width, generator=gen)
    blocks = torch.zeros(1, height, width, dtype=torch.bool)
    blocks[0, 5:10, 4:9] = True
    blocks[0, 9, 8] = False  # a block cut by the hole's edge
    proposed = inp._flip(model.sample(1, height, width, init=inp._flip(current, flip), mask=inp._flip(blocks, flip),
                                      generator=gen), flip)
    assert not torch.equal(proposed, current)
    with torch.no_grad():
        got = inp.log_acceptance(model, current, proposed, blocks, flip)

        def full(x):  # log p(x) of the whole image
            return model.log_prob(x).sum()

        def proposal(x):  # log q(x_B): the block's conditionals in the (flipped) scan order
            rs, cs = model.neighborhood.target_slices(height, width)
            return (model.log_prob(inp._flip(x, flip)) * inp._flip(blocks, flip)[:, rs, cs]).sum()

        want = full(proposed) - full(current) + proposal(current) - proposal(proposed)
    assert abs(float(got) - float(want)) < 1e-9 * max(1.0, abs(float(want)))
    assert abs(float(want)) > 1e-3  # a ratio that is not trivially 1


# ----------------------------------------------------------------------------------------------
# The chain on a model with a closed-form posterior


AR_CFG = dict(block=5, stride=3, window=11, candidates=3)


def _ar_problem():
    model = GaussianAR()
    image = torch.from_numpy(gaussian_ar_field(1, 20, COEFFS, SIGMA, seed=7)[0]).double()
    mask = inp.hole_mask(20, 20, size=8, top=6, left=6)
    mean, cov = _exact_conditional(model, image, mask)
    return model, image, mask, mean, cov


def _chain(model, image, mask, sweeps, seed, flip="proposal", start=None):
    holes = []
    cfg = inp.InpaintConfig(sweeps=sweeps, flip=flip, **AR_CFG)
    result = inp.inpaint(model, image, mask, cfg, seed=seed, start=start,
                         callback=lambda _, img: holes.append(img[mask].clone()))
    return result, torch.stack(holes)


def _chain_statistics(holes: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, batches: int = 10):
    """Batch-means t-statistics of the chain against the exact conditional.

    ``w = chol(cov)^-1 (x - mean)`` is standard normal under the exact posterior. Returns the mean
    over pixels of t^2 for the chain mean of x, the mean over all pairs of t^2 for the second
    moments E[w w^T] = I, and the mean variance of w. With independent batches each t has
    ``batches - 1`` degrees of freedom (E t^2 = 9/7 for 10 batches).
    """
    def t_squared(values: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        means = values.reshape(batches, -1, *values.shape[1:]).mean(1)
        return ((means.mean(0) - expected) / (means.std(0) / math.sqrt(batches))).square()

    white = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), (holes - mean).T, upper=False).T
    upper = torch.triu_indices(len(mean), len(mean))
    moments = (white[:, :, None] * white[:, None, :])[:, upper[0], upper[1]]
    identity = torch.eye(len(mean))[upper[0], upper[1]]
    return (float(t_squared(holes, mean).mean()), float(t_squared(moments, identity).mean()),
            float(white.square().mean()))


def test_chain_matches_exact_gaussian_conditional():
    """500 sweeps of the default chain (flipped proposals) against Gaussian conditioning.

    Bounds: at ~15 % acceptance batches of 50 sweeps are not quite independent; seeds 8-10 of
    this chain and of its unflipped variant gave mean t^2 1.0-2.7 (means) and 1.3-1.5 (second
    moments), variance 0.95-1.0; without the acceptance step (next test) 16 and 2.7.
    """
    model, image, mask, mean, cov = _ar_problem()
    result, holes = _chain(model, image, mask, sweeps=520, seed=8)
    t2_mean, t2_moments, variance = _chain_statistics(holes[20:], mean, cov)  # 20 sweeps of burn-in
    assert t2_mean < 4.0 and t2_moments < 2.0 and abs(variance - 1) < 0.1, (t2_mean, t2_moments, variance)
    rates = [h["acceptance_rate"] for h in result.history]
    assert 0.05 < np.mean(rates) < 0.9
    assert {h["flip"] for h in result.history} == {"none", "vertical", "horizontal", "both"}


def test_chain_without_the_acceptance_step_fails_the_same_check(monkeypatch):
    """Power: accepting every proposal samples the causal conditionals, not the posterior."""
    model, image, mask, mean, cov = _ar_problem()
    monkeypatch.setattr(inp, "log_acceptance", lambda *a, **k: torch.full((len(a[1]),), math.inf))
    _, holes = _chain(model, image, mask, sweeps=220, seed=8, flip="none")
    t2_mean, t2_moments, _ = _chain_statistics(holes[20:], mean, cov)
    assert t2_mean > 8.0 and t2_moments > 2.0, (t2_mean, t2_moments)


def test_chain_started_far_away_converges():
    model, image, mask, mean, cov = _ar_problem()
    far = image.clone()
    far[mask] = mean + 2.0  # 2 grey levels off: about 30 conditional standard deviations
    result, holes = _chain(model, image, mask, sweeps=60, seed=9, start=far)
    start_log_p = float(model.log_prob(far[None]).sum())
    assert start_log_p < result.history[-1]["log_prob"] - 1000  # the likelihood climbs out of the far start
    sd = cov.diagonal().sqrt()
    assert float(((holes[30:].mean(0) - mean) / sd).abs().max()) < 2.0


def test_image_flip_mode_changes_only_the_hole():
    """The paper's flips of the whole image: the observed pixels stay, the hole is resampled."""
    model, image, mask, mean, _ = _ar_problem()
    result, holes = _chain(model, image, mask, sweeps=12, seed=10, flip="image")
    assert torch.equal(result.image[~mask], image[~mask])
    assert len({h["flip"] for h in result.history}) > 1
    assert len(holes.unique(dim=0)) > 1 and sum(h["acceptance_rate"] for h in result.history) > 0


def test_blocks_of_one_colour_do_not_read_each_other():
    mask = inp.hole_mask(64, 64, size=40)
    cfg = inp.InpaintConfig(window=19)
    (wh, ww), colours = inp.plan_blocks(mask, cfg)
    covered = torch.zeros_like(mask)
    for group in colours:
        for a in group:
            covered[a.top : a.top + 5, a.left : a.left + 5] = True
            for b in group:
                if a is not b:
                    window = torch.zeros_like(mask)
                    window[a.win_top : a.win_top + wh, a.win_left : a.win_left + ww] = True
                    assert not window[b.top : b.top + 5, b.left : b.left + 5].any()
    assert covered[mask].all()
    assert len(colours) < sum(len(g) for g in colours)  # some blocks do update together


# ----------------------------------------------------------------------------------------------
# Seeds, resuming, the command


def _tiny_run(tmp_path, seed=0, method=False, **kw):
    model = _model(1, seed=10, dtype=torch.float32)
    image = model.sample(1, 16, 16, generator=torch.Generator().manual_seed(11))[0]
    cfg = inp.InpaintConfig(sweeps=3, window=11, candidates=2)
    run = model.inpaint if method else lambda *a, **k: inp.inpaint(model, *a, **k)
    return run(image, inp.hole_mask(16, 16, size=6), config=cfg, seed=seed, **kw)


def _strip(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "cpu_seconds")} for h in history]


def test_seeded_and_resumed_runs_are_identical(tmp_path):
    full = _tiny_run(tmp_path)
    again = _tiny_run(tmp_path, method=True)  # RIDE.inpaint
    other = _tiny_run(tmp_path, seed=1)
    assert torch.equal(full.image, again.image) and _strip(full.history) == _strip(again.history)
    assert not torch.equal(full.image, other.image)

    class Interrupt(Exception):
        pass

    def stop(sweep, _):
        if sweep == 2:
            raise Interrupt

    state = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        _tiny_run(tmp_path, state_path=state, callback=stop)
    assert load_verified(state, "inpaint-state")["sweep"] == 2
    resumed = _tiny_run(tmp_path, state_path=state, resume=True)
    assert torch.equal(resumed.image, full.image)
    assert _strip(resumed.history) == _strip(full.history)
    assert len(resumed.history) == 3 and 0 <= resumed.history[-1]["acceptance_rate"] <= 1
    with pytest.raises(ConfigError, match="another model, image"):
        _tiny_run(tmp_path, seed=3, state_path=state, resume=True)


def test_inpaint_command(tmp_path, capsys):
    model = _model(1, seed=12, dtype=torch.float32)
    save_verified(tmp_path / "model.pt", {"config": model.config, "state_dict": model.state_dict()}, "model")
    image = model.sample(1, 20, 20, generator=torch.Generator().manual_seed(13))[0].numpy()
    np.save(tmp_path / "image.npy", image)
    args = ["inpaint", "--model", str(tmp_path / "model.pt"), "--image", str(tmp_path / "image.npy"),
            "--window", "11", "--no-progress", "--device", "cpu"]
    assert main(args + ["--sweeps", "2", "--hole", "6", "7", "8", "--out", str(tmp_path / "out.h5"),
                        "--json", str(tmp_path / "out.json")]) == 0
    out = load_images(tmp_path / "out.h5")[0]
    hole = np.zeros_like(image, dtype=bool)
    hole[7:15, 6:14] = True
    assert np.array_equal(out[~hole], image[~hole]) and not np.allclose(out[hole], image[hole])
    record = json.loads((tmp_path / "out.json").read_text())
    assert [s["sweep"] for s in record["sweeps"]] == [1, 2]
    assert record["hole"] == {"top": 7, "left": 6, "size": 8} and record["hole_pixels"] == 64
    assert not (tmp_path / "out.h5.state.pt").exists()
    # A mask file and a PNG output; 0 sweeps is the ancestral initialisation alone.
    np.save(tmp_path / "mask.npy", hole)
    assert main(args + ["--sweeps", "0", "--mask", str(tmp_path / "mask.npy"), "--out", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"
    # A hole in the conditioned border is refused before any work, naming the fix.
    assert main(args + ["--hole", "0", "0", "8", "--out", str(tmp_path / "bad.h5")]) == 2
    assert "must keep 2 rows" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()
