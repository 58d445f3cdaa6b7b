"""rdMC against oracles: the linear-Gaussian posterior with exact inner means, the Monte Carlo inner
estimators against the closed-form regularised-posterior mean, per-mode masses on the four-mode
mixture (against ULA at the same gradient budget), batch-size independence, counts and errors."""
import math

import pytest
import torch

from diffpost.metrics import mode_masses
from diffpost.operators import Blur, DenseOperator
from diffpost.priors import GaussianPrior
from diffpost.random import make_generator, per_sample_generators, randn
from diffpost.samplers.errors import SamplerDivergedError
from diffpost.samplers.langevin import ula
from diffpost.samplers.rdmc import rdmc, rdmc_score_prior, rdmc_time_grid, regularised_mean_estimate
from diffpost.targets import FourMode2D, Funnel, LinearGaussianPosterior, Target

pytestmark = pytest.mark.usefixtures("no_global_rng")

F64 = torch.float64
TRUE_MASSES = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)


def _linear_gaussian(d=6, m=4, sigma_y=0.5, seed=0):
    g = make_generator(seed)
    A = randn((m, d), g, dtype=F64)
    M = randn((d, d), g, dtype=F64)
    cov = M @ M.T / d + 0.5 * torch.eye(d, dtype=F64)
    mean = randn((d,), g, dtype=F64)
    y = randn((m,), g, dtype=F64)
    return LinearGaussianPosterior(GaussianPrior(mean, cov), DenseOperator(A, (d,)), y, sigma_y)


def _moment_errors(x, t):
    """(largest |mean error| in standard errors, relative Frobenius error of the covariance)."""
    S, mu = t.posterior_cov, t.posterior_mean
    se = (torch.diagonal(S) / x.shape[0]).sqrt()
    mean_err = float(((x.mean(0) - mu) / se).abs().max())
    cov_err = float(torch.linalg.norm(torch.cov(x.T) - S) / torch.linalg.norm(S))
    return mean_err, cov_err


class _DensityOnly(Target):
    """The same law through log_prob alone (no closed-form oracles)."""

    def __init__(self, target):
        self.inner, self.dim, self.lipschitz = target, target.dim, target.lipschitz

    def log_prob(self, x):
        return self.inner.log_prob(x)


# ----------------------------------------------------------------------------- exactness
def test_exact_inner_means_reproduce_the_linear_gaussian_posterior():
    t = _linear_gaussian()
    x, info = rdmc(t, 20000, generator=make_generator(1), T=3.0, n_outer=200, inner="exact")
    mean_err, cov_err = _moment_errors(x, t)
    assert mean_err < 5 and cov_err < 0.05, (mean_err, cov_err)
    assert info["final_inner"] == "exact" and info["inner"] == ["exact"] * 200
    assert info["counts"] == {}  # closed-form inner means evaluate neither density nor gradient


def test_without_the_final_draw_the_early_stopped_state_is_visibly_biased():
    # Y at forward time δ has law p_δ: mean e^{−δ}μ, covariance e^{−2δ}Σ + (1 − e^{−2δ})I
    t = _linear_gaussian()
    x, _ = rdmc(t, 20000, generator=make_generator(1), T=3.0, n_outer=200, inner="exact", final_sample=False)
    assert _moment_errors(x, t)[1] > 0.1
    d = math.exp(-0.05)
    S_delta = d**2 * t.posterior_cov + (1 - d**2) * torch.eye(6, dtype=F64)
    assert float(torch.linalg.norm(torch.cov(x.T) - S_delta) / torch.linalg.norm(S_delta)) < 0.05


def test_user_given_exact_mean_with_an_approximate_final_draw():
    # a target without oracles: the inner means come from the caller, the final draw from ULA chains
    t = _linear_gaussian()
    bare = _DensityOnly(t)
    x, info = rdmc(bare, 4000, generator=make_generator(2), T=3.0, n_outer=200, inner="exact",
                   exact_mean=t.regularised_mean, n_inner_samples=1, ula_steps=100)
    assert info["final_inner"] == "ula" and info["counts"]["grad"] == 4000 * 100
    mean_err, cov_err = _moment_errors(x, t)
    assert mean_err < 5 and cov_err < 0.08, (mean_err, cov_err)


def test_monte_carlo_inner_estimators_converge_to_the_exact_mean():
    g = make_generator(3)
    t = LinearGaussianPosterior(GaussianPrior(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)),
                                DenseOperator(randn((2, 3), g, dtype=F64), (3,)), randn((2,), g, dtype=F64), 1.0)
    n = 300
    x0 = t.sample(n, make_generator(4))
    for method, s in (("ula", 0.1), ("is", 0.5)):
        # points distributed as the forward marginal p_s, where rdMC evaluates the estimator
        Y = math.exp(-s) * x0 + math.sqrt(-math.expm1(-2 * s)) * randn((n, 3), make_generator(5), dtype=F64)
        exact = t.regularised_mean(Y, s)
        rmse = []
        for m in (8, 256):
            est, info = regularised_mean_estimate(t, Y, s, method=method, n_inner_samples=m, generator=make_generator(6))
            rmse.append(float(((est - exact) ** 2).sum(1).mean().sqrt()))
        # Monte Carlo error ∝ m^{−1/2} once m·ESS ≫ 1: 32× the samples should give up to 5.7× less error
        assert rmse[1] < rmse[0] / 3, (method, rmse)


def test_monte_carlo_rdmc_output_improves_with_more_inner_samples():
    t = _linear_gaussian(d=2, m=1, seed=3)
    errs = []
    for m in (4, 64):
        x, info = rdmc(t, 2000, generator=make_generator(6), T=2.0, n_inner_samples=m, ula_steps=30)
        errs.append(_moment_errors(x, t))
    (m_small, c_small), (m_big, c_big) = errs
    assert m_big < m_small / 2 and c_big < c_small / 2, errs


# ----------------------------------------------------------------------------- multimodality
def _masses_rdmc_and_ula(radius, n, rdmc_kw, seed):
    t = FourMode2D(radius)
    x, info = rdmc(t, n, generator=make_generator(seed), T=3.0, **rdmc_kw)
    budget = int(info["counts_per_sample"]["grad"])
    xu, info_u = ula(t, n, step=0.1, n_steps=budget, generator=make_generator(seed + 1))
    assert info_u["counts_per_sample"]["grad"] == budget
    return mode_masses(x, t.modes), mode_masses(xu, t.modes)


def test_four_mode_masses_small():
    # radius 5 (neighbouring modes 10 apart): ULA from N(0, I) keeps the masses of its starting basins
    m_rd, m_ula = _masses_rdmc_and_ula(5.0, 2000, dict(n_inner_samples=10, n_is_samples=300, ula_steps=40), seed=7)
    assert float((m_rd - TRUE_MASSES).abs().max()) < 0.05, m_rd
    assert float((m_ula - TRUE_MASSES).abs().max()) > 0.08, m_ula


@pytest.mark.slow
def test_four_mode_masses_radius_8():
    # the METHODS setting: radius 8; ULA below s = 0.3 (2 outer steps × 100 chains × 100 steps + a 1-chain
    # final draw: 20.1k gradients per sample, ULA's budget), IS above
    m_rd, m_ula = _masses_rdmc_and_ula(8.0, 2000, dict(n_inner_samples=100, n_is_samples=5000, ula_steps=100), seed=8)
    assert float((m_rd - TRUE_MASSES).abs().max()) < 0.05, m_rd
    assert float((m_ula - TRUE_MASSES).abs().max()) > 0.1, m_ula


# ----------------------------------------------------------------------------- randomness and bookkeeping
def test_samples_do_not_depend_on_batch_size():
    t = FourMode2D(3.0)
    kw = dict(T=2.0, n_outer=6, is_threshold=1.0, n_inner_samples=3, n_is_samples=5, ula_steps=4)
    seeds = [21, 22, 23, 24, 25]
    full, info = rdmc(t, 5, generator=per_sample_generators(seeds), **kw)
    assert set(info["inner"]) == {"is", "ula"}
    parts = [rdmc(t, len(c), generator=per_sample_generators(c), **kw)[0] for c in (seeds[:1], seeds[1:4], seeds[4:])]
    assert torch.allclose(full, torch.cat(parts), rtol=0, atol=1e-12)
    again, _ = rdmc(t, 5, generator=per_sample_generators(seeds), **kw)
    assert torch.equal(full, again)


def test_evaluation_counts_and_time_grid():
    t = FourMode2D(3.0)
    n, chains, n_is, steps = 3, 4, 7, 5
    times = rdmc_time_grid(2.0, 10, 0.05)
    assert times[0] == 2.0 and times[-1] == 0.05 and len(times) == 11
    assert all(a > b for a, b in zip(times, times[1:]))
    geo = rdmc_time_grid(2.0, 10, 0.05, "geometric")
    assert geo[1] / geo[0] == pytest.approx(geo[-1] / geo[-2])
    x, info = rdmc(t, n, generator=make_generator(9), T=2.0, n_outer=10, n_inner_samples=chains, n_is_samples=n_is, ula_steps=steps)
    n_is_steps = sum(s > 0.3 for s in times[:-1])
    n_ula_steps = 10 - n_is_steps
    assert info["inner"] == ["is"] * n_is_steps + ["ula"] * n_ula_steps
    # ULA means use every chain; the final draw at δ = 0.05 runs one chain
    grads = n * steps * (chains * n_ula_steps + 1)
    assert info["counts"] == {"log_prob": n * n_is * n_is_steps, "grad": grads}
    assert info["evals_per_sample"] == n_is * n_is_steps + grads / n
    assert len(info["is_ess"]) == n_is_steps and all(1 / n_is <= e <= 1 for e in info["is_ess"])
    assert len(info["ula_step"]) == n_ula_steps + 1 and x.shape == (n, 2)


def test_callback_sees_every_outer_step():
    t = _linear_gaussian(d=3, m=2)
    seen = []
    rdmc(t, 4, generator=make_generator(10), n_outer=7, inner="exact", callback=seen.append)
    assert [c["step"] for c in seen] == list(range(7))
    for c in seen:
        assert torch.allclose(c["mean"], t.regularised_mean(c["state"], c["s"]))


# ----------------------------------------------------------------------------- errors
class _NaNBeyond(Target):
    """A broad Gaussian whose log-density is NaN for x1 > 4 and whose gradient is NaN for x1 < −4."""

    dim = 2
    lipschitz = 0.25

    def log_prob(self, x):
        lp = -0.125 * (x**2).sum(1)
        return torch.where(x[:, 0] > 4, torch.full_like(lp, float("nan")), lp)

    def grad_log_prob(self, x):
        g = -0.25 * x
        return torch.where(x[:, :1] < -4, torch.full_like(g, float("nan")), g)


def test_nan_densities_gradients_and_divergence_raise_naming_the_step():
    t = _NaNBeyond()
    with pytest.raises(SamplerDivergedError, match=r"rdmc outer step 0 \(forward time s=2, inner=is\).*log π.*NaN"):
        rdmc(t, 50, generator=make_generator(11), inner="is")
    with pytest.raises(SamplerDivergedError, match=r"rdmc outer step \d+ .*inner=ula\), inner ULA step \d+ \(step size [0-9.]+\): the gradient"):
        rdmc(t, 50, generator=make_generator(11), inner="ula")
    with pytest.raises(SamplerDivergedError, match=r"inner ULA step \d+ \(step size 50\)"):
        rdmc(FourMode2D(3.0), 4, generator=make_generator(12), inner="ula", ula_step=50.0, n_inner_samples=2)


def test_invalid_configurations_raise_value_errors():
    t = FourMode2D(3.0)
    with pytest.raises(ValueError, match="exact_mean"):
        rdmc(Funnel(3), 2, inner="exact")
    with pytest.raises(ValueError, match="Lipschitz"):
        rdmc(Funnel(3), 2, inner="ula")
    with pytest.raises(ValueError, match="early_stop"):
        rdmc(t, 2, T=0.01)
    with pytest.raises(ValueError, match="inner"):
        rdmc(t, 2, inner="mcmc")
    with pytest.raises(TypeError, match="Target"):
        rdmc(lambda x: x, 2)


# ----------------------------------------------------------------------------- learned (score-only) prior
def test_rdmc_with_a_score_prior_samples_the_smoothed_posterior():
    # the exact Gaussian denoiser stands in for a network; at σ_min the prior is N(μ, Σ + σ_min² I), so
    # the inner gradient must equal the score of that smoothed posterior, and rdMC on it (same draws)
    # gives the same samples
    g = make_generator(13)
    d, sigma_min, sy = 3, 0.1, 1.0
    cov = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.6]], dtype=F64)
    prior = GaussianPrior(torch.tensor([0.5, -0.5, 0.0], dtype=F64), cov)
    op = DenseOperator(randn((2, d), g, dtype=F64), (d,))
    y = randn((2,), g, dtype=F64)
    smoothed = LinearGaussianPosterior(GaussianPrior(prior.mean, cov + sigma_min**2 * torch.eye(d, dtype=F64)), op, y, sy)
    kw = dict(T=2.0, n_outer=60, n_inner_samples=2, ula_steps=60, lipschitz=smoothed.lipschitz)
    x, info = rdmc_score_prior(prior.denoise, op, y, sy, 2000, sigma_min=sigma_min, generator=make_generator(14), dtype=F64, **kw)
    ref, _ = rdmc(smoothed, 2000, generator=make_generator(14), inner="ula", **kw)
    assert x.shape == (2000, d)
    assert torch.allclose(x, ref, atol=1e-8)
    assert info["counts"] == {"grad": 2000 * 60 * (2 * 60 + 1)}  # 60 means from 2 chains, a 1-chain final draw
    # and it is a sampler of that posterior (up to ULA and time-discretisation bias)
    mean_err, cov_err = _moment_errors(x, smoothed)
    assert mean_err < 5 and cov_err < 0.25, (mean_err, cov_err)


def test_rdmc_score_prior_returns_images_and_estimates_its_step():
    op = Blur((1, 8, 8), kernel_size=3, blur_sigma=1.0).to(F64)
    prior = GaussianPrior(torch.zeros(64, dtype=F64), torch.eye(64, dtype=F64), (1, 8, 8))
    y = torch.zeros(1, 8, 8, dtype=F64)
    x, info = rdmc_score_prior(prior.denoise, op, y, 0.1, 3, generator=make_generator(15), n_outer=3,
                               n_inner_samples=2, ula_steps=3, dtype=F64)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    # default Lipschitz 1/σ_min² + ‖A‖²/σ_y² with ‖A‖ = 1 for a normalised blur: the smallest step
    expected = 0.25 / (1 / 0.002**2 + 1 / 0.1**2 + math.exp(-0.1) / -math.expm1(-0.1))
    assert min(info["ula_step"]) == pytest.approx(expected, rel=1e-3)
