"""Calibration (METHODS §7): coverage of central credible intervals at several levels and the
reliability curve, on the Gaussian oracle where the answer is known: with the truth drawn from the
prior and EXACT posterior samples (dense formula here), every level is covered at its nominal rate up to
Monte Carlo error; a sampler with the right mean but half the spread is not."""
import math

import pytest
import torch

from diffpost.image_quality import ReliabilityCurve, calibrated_coverage, coverage, coverage_at_levels, reliability_curve
from diffpost.operators import Blur
from diffpost.priors import GaussianPrior
from diffpost.random import make_generator

pytestmark = pytest.mark.usefixtures("no_global_rng")
F64 = torch.float64
LEVELS = (0.5, 0.8, 0.9, 0.95)


def _oracle(n_meas=200, n_samples=400, spread=1.0):
    """Truths x0 ~ prior, y = A x0 + σ_y ε, and posterior samples μ_post + spread · L ξ (exact for 1)."""
    op = Blur((1, 4, 4), kernel_size=3, blur_sigma=1.0).to(F64)
    g = make_generator(0)
    L = torch.randn(16, 16, generator=g, dtype=F64) / 4
    prior = GaussianPrior(torch.zeros(16, dtype=F64), 0.2 * L @ L.T + 0.05 * torch.eye(16, dtype=F64), (1, 4, 4))
    x0 = prior.sample(n_meas, g)
    y = op(x0) + 0.1 * torch.randn((n_meas, *op.y_shape), generator=g, dtype=F64)
    A = op.to_dense()
    cov = torch.linalg.inv(torch.linalg.inv(prior.cov) + A.T @ A / 0.01)
    mean = (y.reshape(n_meas, -1) @ A) @ cov / 0.01  # μ_post = Σ_post Aᵀy/σ_y² (prior mean 0)
    chol = torch.linalg.cholesky(cov)
    xi = torch.randn(n_meas, n_samples, 16, generator=g, dtype=F64)
    samples = mean[:, None] + spread * xi @ chol.T
    return samples.reshape(n_meas, n_samples, 1, 4, 4), x0


def test_exact_posterior_samples_cover_at_the_nominal_levels():
    samples, x0 = _oracle()
    curve = reliability_curve(samples, x0, LEVELS)
    assert isinstance(curve, ReliabilityCurve) and curve.levels == LEVELS and curve.n == 200
    for level, c, se in zip(curve.levels, curve.coverage, curve.stderr):
        # sample quantiles of S = 400 draws: O(1/S) below nominal; 4 standard errors across measurements
        assert abs(c - level) < 4 * se + 2 / 400, (level, c, se)
    assert curve.max_gap < 0.03
    d = curve.as_dict()
    assert d["levels"] == list(LEVELS) and len(d["coverage"]) == 4 and d["max_gap"] == curve.max_gap


def test_an_overconfident_sampler_is_caught():
    # right mean, half the spread: a N(0, 1/4)-wide interval covers P(|Z| < z_p/2) of a standard normal
    samples, x0 = _oracle(spread=0.5)
    curve = reliability_curve(samples, x0, LEVELS)
    for level, c in zip(LEVELS, curve.coverage):
        z = math.sqrt(2) * torch.erfinv(torch.tensor(level, dtype=F64))
        expected = float(torch.erf(z / 2 / math.sqrt(2)))
        assert abs(c - expected) < 0.03 and c < level - 0.1, (level, c, expected)


def test_levels_agree_with_the_single_level_coverage_and_validate():
    samples, x0 = _oracle(n_meas=5, n_samples=50)
    per = coverage_at_levels(samples, x0, LEVELS)
    assert per.shape == (5, 4)
    for k, level in enumerate(LEVELS):
        assert torch.equal(per[:, k], coverage(samples, x0, level))
    assert bool((per[:, 1:] >= per[:, :-1]).all())  # nested intervals: coverage grows with the level
    with pytest.raises(ValueError, match="levels"):
        coverage_at_levels(samples, x0, (0.5, 1.0))
    with pytest.raises(ValueError, match="agree"):
        coverage_at_levels(samples, x0[:3], LEVELS)
    with pytest.raises(ValueError, match="2 samples"):
        coverage_at_levels(samples[:, :1], x0, LEVELS)


@pytest.mark.parametrize(("n_samples", "level", "exact"), [(5, 0.5, 2 / 6), (11, 0.8, 8 / 12), (21, 0.9, 18 / 22), (4, 1 / 3, 1 / 5)])
def test_calibrated_coverage_matches_order_statistics(n_samples, level, exact):
    """Where the interval's ends fall on order statistics (0-based ranks j = (S − 1)(1 ∓ p)/2), the truth's
    rank among S + 1 exchangeable values is uniform, so a calibrated sampler covers with probability
    (j_hi − j_lo)/(S + 1), whatever the distribution. Catches a reference that uses the nominal
    level, another quantile rule, or S instead of S + 1."""
    assert calibrated_coverage(n_samples, (level,))[0] == pytest.approx(exact, abs=0.005)


def test_calibrated_coverage_is_far_below_nominal_for_few_samples_and_tends_to_it():
    few, many = calibrated_coverage(4, (0.9,))[0], calibrated_coverage(400, (0.9,))[0]
    assert 0.53 < few < 0.59 and abs(many - 0.9) < 0.01
    with pytest.raises(ValueError, match="n_samples"):
        calibrated_coverage(1)
