"""DDNM+ (diffpost/posterior/ddnm.py): the step's noise bookkeeping, its time-travel schedule against
the paper's, the noiseless range–null limit, and its bias on the exact Gaussian / Gaussian-mixture
posteriors (tests/posterior_oracle.py), pinned to measured bands. The spectral coordinates it uses are
tested against dense matrices in tests/test_posterior_ddrm.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from posterior_oracle import F64, GAUSS, OPERATORS, SHAPE, SIGMA_Y, check_bands, measure, prior_model

from diffpost.operators import MRI, DenseOperator, SuperResolution
from diffpost.posterior.base import OperatorMismatchError
from diffpost.posterior.ddnm import DDNM, ddnm_update, travel_path
from diffpost.posterior.ddrm import ddrm_update
from diffpost.posterior.spectral import SpectralMeasurement
from diffpost.random import make_generator
from diffpost.schedules import FourierCovariance

pytestmark = pytest.mark.usefixtures("no_global_rng")


def paper_schedule(T: int, length: int, repeat: int) -> list[int]:
    """``get_schedule_jump`` of the paper's code (from RePaint), in its own time indices ``T−1 … 0, −1``."""
    jumps = {j: repeat - 1 for j in range(0, T - length, length)}
    t, ts = T, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(length):
                t += 1
                ts.append(t)
    return ts + [-1]


@pytest.mark.parametrize("T,length,repeat", [(10, 1, 1), (10, 3, 2), (6, 2, 3), (20, 5, 4), (7, 3, 1)])
def test_time_travel_visits_the_papers_levels(T, length, repeat):
    """Level ``k`` of our grid is the paper's time ``T − 1 − k`` (−1 ↔ σ = 0); the paper walks back one
    level at a time, we jump straight to the top of the window, so we compare the visited levels with
    the paper's walks back collapsed. Catches jumps anchored at the first instead of the last level."""
    paper = [T - 1 - t for t in paper_schedule(T, length, repeat)]
    collapsed = [paper[0]] + [b for a, b, c in zip(paper, paper[1:], paper[2:] + [None]) if not (b < a and c is not None and c < b)]
    assert travel_path(T, length, repeat) == collapsed
    assert travel_path(T, length, 1) == list(range(T + 1))


def _perfect_denoiser_case(noiseless: bool, n: int = 40000):
    s = torch.tensor([0.0, 0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0], dtype=F64)
    obs = s > 0
    sy = 0.0 if noiseless else 0.1
    tau = torch.where(obs, sy / torch.where(obs, s, torch.ones_like(s)), torch.full_like(s, math.inf))
    g = make_generator(4)
    x0 = torch.randn(1, 8, generator=g, dtype=F64).expand(n, 8)
    ybar = torch.where(obs, x0 + torch.where(obs, tau, 0) * torch.randn(n, 8, generator=g, dtype=F64), 0)
    xbar = x0 + torch.randn(n, 8, generator=g, dtype=F64)
    return SpectralMeasurement(s, obs, ybar * s, ybar, tau), x0, xbar, torch.randn(n, 8, generator=g, dtype=F64)


@pytest.mark.parametrize("noiseless", [False, True])
@pytest.mark.parametrize("eta", [0.85, 0.3])
def test_the_noise_reduction_keeps_the_total_variance(noiseless, eta):
    """With a perfect denoiser (``x̄0 = x0``), ``x̄ = x0 + σ n`` and ``ȳ = x0 + τ n_y``, the corrected step's
    result is ``x0 + σ' n'`` in law on every coordinate (null space, σ' < τ, σ' ≥ τ, noiseless): the
    fresh noise gives up exactly the variance ``(λτ)²`` that ``ȳ`` carries. Broken variants tried, each
    failed: fresh noise ``√(σ'² − τ)`` on σ' ≥ τ; ``λ = σ'/τ`` without ``√(1−η²)`` on σ' < τ."""
    m, x0, xbar, eps = _perfect_denoiser_case(noiseless)
    out = ddnm_update(xbar, x0, m, 1.0, 0.3, eta, eps, noiseless) - x0
    assert (out.mean(0).abs() < 4 * 0.3 / math.sqrt(out.shape[0])).all()
    torch.testing.assert_close(out.var(0), torch.full((8,), 0.09, dtype=F64), rtol=0.04, atol=0)


def test_with_measurement_noise_the_step_is_ddrm_at_eta_b_one():
    """The authors' DDNM+ code (``Lambda``/``Lambda_noise``) and DDRM with ``η_b = 1`` take the same step
    when ``σ_y > 0``; an independent formula (METHODS §4 DDRM) for the same inputs."""
    m, x0, xbar, eps = _perfect_denoiser_case(False, n=50)
    x0bar = x0 + 0.1 * xbar
    for s_next in (0.3, 0.05, 0.0):
        torch.testing.assert_close(ddnm_update(xbar, x0bar, m, 1.0, s_next, 0.85, eps, False),
                                   ddrm_update(xbar, x0bar, m, 1.0, s_next, 0.85, 1.0, eps), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["inpaint", "superres", "mri"])
def test_noiseless_range_null_decomposition_is_exact(name):
    """σ_y = 0: ``A x = y`` to 1e-5 for every sample (observed inpainting pixels equal the measurement),
    with and without time-travel. Catches a last step that adds noise or skips the correction."""
    op = {"inpaint": OPERATORS["inpaint"], "superres": lambda: SuperResolution(shape=SHAPE, factor=2),
          "mri": lambda: MRI(shape=SHAPE, acceleration=2, center_fraction=0.25, seed=0)}[name]()
    _, y = measure(op, GAUSS, seed=2, sigma_y=0.0)
    for method in (DDNM(), DDNM(travel_length=2, travel_repeat=2)):
        out = method(prior_model(GAUSS), op, y, 0.0, num_steps=8, n_samples=4, generator=make_generator(0))
        x = out.samples[0]
        assert (op.forward(x) - y).abs().max() < 1e-5
        assert (x[0] - x[1]).abs().max() > 1e-3
    assert out.nfe == len(travel_path(8, 2, 2)) - 1 - 3  # 3 jumps back make no network call


# DDNM+ at its paper operating point (100 steps), 1000 samples of one measurement (measured values in
# the comments). Like DDRM (the same step when σ_y > 0), its many steps pull the weakly observed
# coordinates toward ȳ = Uᵀy/s: on blur the bias is larger than at DDRM's 20 steps.
BANDS = {
    ("gauss", "blur"): dict(mean_err=(1.25, 1.60), cov_err=(0.74, 0.88)),  # measured 1.417 / 0.812
    ("gauss", "inpaint"): dict(mean_err=(0.10, 0.15), cov_err=(0.19, 0.27)),  # 0.123 / 0.227
    ("gmm", "blur"): dict(mean_err=(0.85, 1.08), cov_err=(0.86, 0.97), mass=(0.005, 0.03)),  # 0.962 / 0.920 / 0.016
    ("gmm", "inpaint"): dict(mean_err=(0.09, 0.13), cov_err=(0.065, 0.10), mass=(0.25, 0.29)),  # 0.109 / 0.081 / 0.268
}


@pytest.mark.parametrize("case", BANDS, ids=lambda c: "-".join(c))
def test_oracle_bias_is_in_its_recorded_band(case):
    """Broken variants tried, each left at least one band: ``λ = σ'/τ`` without ``√(1−η²)`` (METHODS §4
    read literally); the sign of the pull toward ``ȳ``; ``ε̂ = (x̄0 − x̄)/σ``; a null-space step of fresh
    noise only (no ``ε̂``)."""
    out = check_bands(DDNM(), case, BANDS[case], DDNM.default_num_steps)
    assert out.nfe == 100 and out.vjp == 0


def test_operators_without_svd_noise_covariance_and_bad_arguments_are_refused():
    for op in (OPERATORS["ct"](), DenseOperator(torch.eye(16, dtype=F64), SHAPE)):
        _, y = measure(op, GAUSS, seed=1)
        with pytest.raises(OperatorMismatchError, match=rf"DDNM needs .*SVD.*{type(op).__name__} has none"):
            DDNM()(prior_model(GAUSS), op, y, SIGMA_Y, num_steps=2)
    op = OPERATORS["blur"]()
    _, y = measure(op, GAUSS, seed=1)
    with pytest.raises(OperatorMismatchError, match="DDNM cannot use a function-space noise covariance"):
        DDNM()(prior_model(GAUSS, noise_cov=FourierCovariance(SHAPE)), op, y, SIGMA_Y, num_steps=2)
    for kw in (dict(eta=-0.5), dict(travel_length=0), dict(travel_repeat=1.5), dict(travel_repeat=True)):
        with pytest.raises(ValueError, match=f"DDNM: {next(iter(kw))}"):
            DDNM(**kw)
