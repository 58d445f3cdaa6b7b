"""DAPS (diffpost/posterior/daps.py) against closed forms (tests/posterior_oracle.py: d = 16 Gaussian
prior, blur, random inpainting, CT through CG; a two-mode mixture), float64, exact prior denoiser.

Limits (derived, then measured): with the exact Gaussian draw, the level-to-level chain at small σ is
``x' ≈ x + σ²(∇log p̃ + ∇log p(y|x)) + √2 σ ε`` with ``σ²∇log p̃ = x̂0 − x``. For Tweedie's x̂0 (K = 1)
that is Langevin on the posterior, so with enough levels DAPS approaches the posterior. The ODE endpoint
(K → ∞) moves only HALF as far (``x − Φ_σ(x) ≈ (σ²/2)(−∇log p)``), so the limit is the tempered posterior
``∝ p(x)^{1/2} p(y|x)``: for ``N(0, Σ)`` the posterior of the prior ``N(0, 2Σ)``. The paper's K = 5 lies
between the two. Bands were recorded from runs; each was checked to fail for the bug its test names.
"""
from __future__ import annotations

import pytest
import torch

from diffpost.operators import DenseOperator
from diffpost.posterior.base import PriorModel
from diffpost.posterior.daps import POWER_ITERATIONS, DAPS
from diffpost.priors import GaussianPrior
from diffpost.random import make_generator
from diffpost.schedules import FourierCovariance
from posterior_oracle import F64, OPERATOR_NAMES, PRIOR, SHAPE, SIGMA_Y, draw, errors, measure, mode_masses, operator

pytestmark = pytest.mark.usefixtures("no_global_rng")


def blur_problem(prior=PRIOR):
    op = operator("blur")
    _, y = measure(op)
    return op, y, prior.posterior(op, y, SIGMA_Y)


def one_level(method, op, y, r, n, noise_cov=None):
    """One annealing level at σ = r with a denoiser that returns the fixed image ``m``: the output is
    exactly the level's draw ``x0 ~ N(x0; m, r² C) N(y; A x0, σ_y² I)``. Returns (samples, mean, cov)."""
    m = torch.linspace(-0.5, 0.5, 16, dtype=F64).reshape(1, *SHAPE)
    model = PriorModel(denoiser=lambda x, s: m.expand_as(x), x_shape=SHAPE, dtype=F64, sigma_max=r, noise_cov=noise_cov)
    out = method(model, op, y, SIGMA_Y, num_steps=1, n_samples=n, generator=make_generator(4))
    A = op.to_dense()
    prior_prec = torch.linalg.inv(torch.eye(16, dtype=F64) if noise_cov is None else noise_cov.to_dense()) / r**2
    cov = torch.linalg.inv(prior_prec + A.T @ A / SIGMA_Y**2)
    mean = cov @ (prior_prec @ m.reshape(-1) + A.T @ y.reshape(-1) / SIGMA_Y**2)
    return out.samples[0].reshape(n, -1), mean, cov


@pytest.mark.parametrize("opname,cov", [("blur", False), ("ct", False), ("blur", True)])
def test_exact_draw_is_exact(opname, cov):
    """Perturb-and-solve draws the level's Gaussian exactly (4000 draws: mean within 4.5 standard errors
    per pixel, covariance within Monte Carlo error ≈ 0.065), for the closed form, CG, and a trace-class C.
    Recorded: max z 2.5 / 1.7 / 2.9, covariance error 0.067 / 0.047 / 0.048 (blur, CT, blur with C).
    Caught (z | cov error, blur): ρ = σ_y²/r for σ_y²/r² (50 | 0.15); y not perturbed, σ_y ε1 dropped
    (2.4 | 0.22); x̂0 not perturbed, r ε2 dropped (0.8 | 0.92); with C, a white r ε2 (8.1 | 5.9)."""
    op = operator(opname)
    _, y = measure(op)
    C = FourierCovariance(SHAPE, tau=3.0, s=2.0) if cov else None
    s, mean, cov_ = one_level(DAPS(ode_steps=1, exact=True), op, y, 0.3, 4000, C)
    se = (cov_.diagonal() / 4000).sqrt()
    assert float(((s.mean(0) - mean).abs() / se).max()) < 4.5
    assert float(torch.linalg.norm(torch.cov(s.T) - cov_) / torch.linalg.norm(cov_)) < 0.11


@pytest.mark.parametrize("r,cov", [(0.3, False), (0.03, True)])
def test_langevin_draw_matches_the_level_gaussian(r, cov):
    """N_L = 400 Langevin steps at 0.1 of the stability limit reach the level's Gaussian up to the ULA
    bias (variance × 1/(1 − ηλ/2) ≤ 1.05): recorded mean | covariance error 0.017 | 0.130 (white, r = 0.3)
    and 0.017 | 0.105 (C, r = 0.03); Monte Carlo floor ≈ 0.03 | 0.13. With C the steps are
    preconditioned by C, whose spectrum (0.01-13) fits this posterior badly at r = 0.3 (condition number
    ~120: 8000 steps were needed there, measured 0.053 | 0.21 at 300 chains), so C is checked at r = 0.03.
    Caught: a flipped data-term sign (diverges), √η for √(2η) (cov error 0.49 | 0.45), (x0 − x̂0)/r for
    /r² (1.8 | 3.0), with C the data term not multiplied by C (mean error 3.1)."""
    op = operator("blur")
    _, y = measure(op)
    C = FourierCovariance(SHAPE, tau=3.0, s=2.0) if cov else None
    s, mean, cov_ = one_level(DAPS(ode_steps=1, langevin_steps=400, langevin_step=0.1), op, y, r, 1000, C)
    mean_err = float((s.mean(0) - mean).norm() / cov_.trace().sqrt())
    cov_err = float(torch.linalg.norm(torch.cov(s.T) - cov_) / torch.linalg.norm(cov_))
    assert mean_err < 0.1 and cov_err < 0.2, (mean_err, cov_err)


def test_exact_draw_with_tweedie_approaches_the_posterior():
    """K = 1, exact draw, 100 levels, 1000 chains: recorded (seeds 0-2) mean 0.024-0.045, cov 0.115-0.142
    (Monte Carlo floor 0.03 | 0.10). Caught (mean | cov error): ρ = σ_y²/r for σ_y²/r² (0.45 | 0.67); r ε2
    dropped (0.03 | 0.52); no re-noising, x_{σ'} = x0 (0.03 | 0.42). (Dropping σ_y ε1 moves this only to
    0.126: test_exact_draw_is_exact catches it.)"""
    op, y, post = blur_problem()
    out = draw(DAPS(ode_steps=1, exact=True), op, y, 100, 1000)
    mean_err, cov_err = errors(out.samples[0], post)
    assert mean_err < 0.07 and cov_err < 0.18, (mean_err, cov_err)
    assert out.nfe == 100 and out.operator_calls == {"forward": 100 * 1000, "adjoint": 100 * 1000}


@pytest.mark.slow
@pytest.mark.parametrize("opname", OPERATOR_NAMES)
def test_exact_draw_with_tweedie_converges_with_many_levels(opname):
    """1000 levels, 1000 chains: at the Monte Carlo floor on every operator (recorded with 2000 chains:
    blur 0.025 | 0.072, inpainting 0.061 | 0.040, CT 0.036 | 0.072; the floor is 0.024 | 0.05-0.08)."""
    op = operator(opname)
    _, y = measure(op)
    post = PRIOR.posterior(op, y, SIGMA_Y)
    mean_err, cov_err = errors(draw(DAPS(ode_steps=1, exact=True), op, y, 1000, 1000).samples[0], post)
    assert mean_err < 0.09 and cov_err < 0.13, (opname, mean_err, cov_err)


def test_ode_limit_is_the_tempered_posterior():
    """K = 10 Euler steps to x̂0, exact draw, 100 levels: the samples match the posterior of the prior
    N(0, 2Σ) (recorded, seeds 0-2: 0.034-0.041 | 0.107-0.116), not the posterior (0.13-0.16 | 0.7-0.8).
    Caught: the ODE sub-grid started at the model's σ_max instead of σ_i (1.02 | 1.00)."""
    hot = GaussianPrior(PRIOR.mean, 2 * PRIOR.cov, SHAPE)
    op, y, post = blur_problem()
    samples = draw(DAPS(ode_steps=10, exact=True), op, y, 100, 1000).samples[0]
    mean_err, cov_err = errors(samples, hot.posterior(op, y, SIGMA_Y))
    assert mean_err < 0.07 and cov_err < 0.17, (mean_err, cov_err)
    assert errors(samples, post)[1] > 0.5


def test_langevin_operating_point_band():
    """The paper's inner sampler (K = 5, Langevin) at 20 levels × 20 steps, 500 chains: recorded (seeds
    0-2) mean 0.386-0.431, cov 0.562-0.628 — biased (K = 5 and too few Langevin steps to spread x0 by r
    at large σ). Caught: a flipped data-term sign (diverges), √η for √(2η) (cov 0.36), (x0 − x̂0)/r
    for /r² (cov 0.76)."""
    op, y, post = blur_problem()
    out = draw(DAPS(ode_steps=5, langevin_steps=20, langevin_step=0.1), op, y, 20, 500)
    mean_err, cov_err = errors(out.samples[0], post)
    assert 0.33 < mean_err < 0.49 and 0.48 < cov_err < 0.72, (mean_err, cov_err)
    assert out.nfe == 19 * 5 + 1  # the last level (σ_min) takes one call
    assert out.operator_calls == {"forward": 20 * 20 * 500, "adjoint": 20 * 20 * 500}  # SVD: ‖A‖ for free


def test_langevin_step_size_from_power_iteration_is_counted():
    """Without an SVD, ‖A‖² comes from power iteration on one image (counted); the run stays stable."""
    svd = operator("blur")
    op = DenseOperator(svd.to_dense(), SHAPE, svd.y_shape)
    _, y = measure(op)
    out = draw(DAPS(ode_steps=1, langevin_steps=3), op, y, 4, 2)
    assert out.operator_calls["forward"] == 4 * 3 * 2 + POWER_ITERATIONS
    assert torch.isfinite(out.samples).all()


def test_function_space_noise_covariance_exact_draw():
    """With a trace-class C (draw from N(x̂0, r²C)·likelihood, N(0, C) re-noising) K = 1 still approaches
    the posterior: recorded with 100 levels, 300 chains (seeds 0-2) mean 0.052-0.059, cov 0.211-0.221
    (Monte Carlo floor 0.06 | 0.21). Caught: the white proximal metric with C-coloured noise (data_prox
    without C: 0.96 | 0.72)."""
    C = FourierCovariance(SHAPE, tau=3.0, s=2.0)
    op, y, post = blur_problem()
    mean_err, cov_err = errors(draw(DAPS(ode_steps=1, exact=True), op, y, 100, 300, noise_cov=C).samples[0], post)
    assert mean_err < 0.11 and cov_err < 0.32, (mean_err, cov_err)


def test_two_mode_mixture_mode_masses():
    """Mode masses against the exact posterior weights 0.426 / 0.574 (Monte Carlo std 0.016 at 1000
    chains). Recorded: K = 1 exact, 100 levels 0.428-0.453 (seeds 0-3; at 200 levels 0.419-0.461); K = 5
    Langevin, 20 levels × 20 steps 0.349-0.372 (seeds 0-4: the heavier mode gains). Caught: ρ = σ_y²/r
    in the exact draw (mass 0.50)."""
    masses, weights = mode_masses(DAPS(ode_steps=1, exact=True), operator("blur"), 100, 1000)
    assert float(weights[0]) == pytest.approx(0.426, abs=0.001)
    assert 0.38 < float(masses[0]) < 0.49, masses
    masses, _ = mode_masses(DAPS(ode_steps=5, langevin_steps=20), operator("blur"), 20, 1000)
    assert 0.30 < float(masses[0]) < 0.41, masses


@pytest.mark.parametrize("kw,match", [(dict(ode_steps=0), "ode_steps"), (dict(langevin_steps=1.5), "langevin_steps"),
                                      (dict(langevin_step=0.0), "langevin_step"), (dict(langevin_step=2.0), "langevin_step"),
                                      (dict(exact="yes"), "exact"), (dict(r_schedule="tweedie"), "r_schedule"),
                                      (dict(cg_max_iter=-1), "cg_max_iter")])
def test_bad_hyper_parameters_are_one_clear_error(kw, match):
    with pytest.raises(ValueError, match=f"DAPS: {match}"):
        DAPS(**kw)


def test_sigma_data_schedule_caps_r():
    """``r_schedule="sigma_data"``: r² = σ²σ_d²/(σ² + σ_d²) → σ_d at large σ, → σ at small σ."""
    d = DAPS(r_schedule="sigma_data")
    assert d.r(1e4, 0.5) == pytest.approx(0.5, rel=1e-6) and d.r(1e-4, 0.5) == pytest.approx(1e-4, rel=1e-6)
    assert DAPS().r(3.0, 0.5) == 3.0
