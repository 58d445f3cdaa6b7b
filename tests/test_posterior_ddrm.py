"""DDRM (diffpost/posterior/ddrm.py) and the spectral coordinates it shares with DDNM+ and ΠGDM
(diffpost/posterior/spectral.py), against dense matrices, a law the step must keep, the exact
Gaussian / Gaussian-mixture posteriors (tests/posterior_oracle.py) and the noiseless limit.

Bands were measured first (fixed seeds, float64), then pinned with a margin; each oracle test names a
deliberately broken variant that was run and failed it.
"""
from __future__ import annotations

import math

import pytest
import torch
from posterior_oracle import F64, GAUSS, OPERATORS, SHAPE, SIGMA_Y, check_bands, measure, prior_model

from diffpost.operators import MRI, Blur, DenseOperator, Denoising, Inpainting, SuperResolution
from diffpost.posterior.base import OperatorMismatchError
from diffpost.posterior.ddrm import DDRM, ddrm_update
from diffpost.posterior.spectral import SpectralMeasurement, spectral_measurement
from diffpost.random import make_generator
from diffpost.schedules import FourierCovariance

pytestmark = pytest.mark.usefixtures("no_global_rng")

SVD_OPERATORS = {
    "blur": lambda: Blur(shape=SHAPE, kernel="gaussian", kernel_size=3, blur_sigma=0.8),
    "inpaint": lambda: Inpainting(shape=SHAPE, keep_ratio=0.5, seed=3),
    "superres": lambda: SuperResolution(shape=SHAPE, factor=2),
    "mri": lambda: MRI(shape=SHAPE, acceleration=2, center_fraction=0.25, seed=0),
    "denoise": lambda: Denoising(shape=SHAPE),
}


@pytest.mark.parametrize("name", SVD_OPERATORS)
def test_spectral_measurement_matches_the_dense_svd(name):
    """``ȳ = Uᵀy/s`` and ``τ = σ_y/s`` from the dense matrix: ``V`` built column by column, ``U = A V_r / s``
    on the observed coordinates. Checks the conventions the spectral methods rely on: ``V`` orthonormal,
    ``U`` orthonormal columns, ``A = U diag(s) V_rᵀ``, the observed set is the rank of ``A``, and a
    noiseless ``y = Ax`` gives ``ȳ = (Vᵀx)`` there. Catches ``ȳ = Uᵀy`` without ``/s`` and ``τ = σ_y/s²``
    (both tried; blur, super-resolution and MRI have s ≠ 1)."""
    op = SVD_OPERATORS[name]()
    d = op.x_dim
    A = op.to_dense()
    V = op.V(torch.eye(d, dtype=F64)).reshape(d, d).T  # column j = V e_j
    torch.testing.assert_close(V.T @ V, torch.eye(d, dtype=F64), atol=1e-12, rtol=0)
    g = make_generator(0)
    y = torch.randn(3, *op.y_shape, generator=g, dtype=F64)
    m = spectral_measurement(op, y, 0.2)
    obs = m.observed
    assert int(obs.sum()) == int(torch.linalg.matrix_rank(A))
    s = m.s[obs]
    U = A @ V[:, obs] / s
    torch.testing.assert_close(U.T @ U, torch.eye(len(s), dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(U @ torch.diag(s) @ V[:, obs].T, A, atol=1e-12, rtol=0)
    torch.testing.assert_close(m.ybar[:, obs], (y.reshape(3, -1) @ U) / s, atol=1e-12, rtol=1e-10)
    assert (m.ybar[:, ~obs] == 0).all() and (m.s[~obs] == 0).all() and torch.isinf(m.tau[~obs]).all()
    torch.testing.assert_close(m.tau[obs], 0.2 / s, atol=1e-12, rtol=0)
    x = torch.randn(2, *SHAPE, generator=g, dtype=F64)
    clean = spectral_measurement(op, op.forward(x), 0.0)
    torch.testing.assert_close(clean.ybar[:, obs], (x.reshape(2, -1) @ V)[:, obs], atol=1e-10, rtol=0)
    assert (clean.tau[obs] == 0).all()


def _law_case(n: int = 40000):
    """Coordinates in all three DDRM cases at σ = 1 → σ' = 0.3 with σ_y = 0.1: null space (s = 0), σ' < τ
    (τ = 2, 1, 0.5) and σ' ≥ τ (τ = 0.2, 0.1, 0.05)."""
    s = torch.tensor([0.0, 0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0], dtype=F64)
    obs = s > 0
    tau = torch.where(obs, 0.1 / torch.where(obs, s, torch.ones_like(s)), torch.full_like(s, math.inf))
    g = make_generator(3)
    x0 = torch.randn(1, 8, generator=g, dtype=F64).expand(n, 8)
    ybar = torch.where(obs, x0 + torch.where(obs, tau, 0) * torch.randn(n, 8, generator=g, dtype=F64), 0)
    xbar = x0 + 1.0 * torch.randn(n, 8, generator=g, dtype=F64)
    m = SpectralMeasurement(s, obs, ybar * s, ybar, tau)
    return m, x0, xbar, torch.randn(n, 8, generator=g, dtype=F64)


@pytest.mark.parametrize("eta,eta_b", [(0.85, 1.0), (0.5, 0.7), (1.0, 0.3)])
def test_the_step_keeps_the_noised_law_given_a_perfect_denoiser(eta, eta_b):
    """DDRM's design law: with ``x̄0 = x0`` (a perfect denoiser), ``x̄ = x0 + σ n`` and ``ȳ = x0 + τ n_y``,
    every coordinate of the step's result is ``x0 + σ' n'`` in law (mean 0, variance σ'² around x0),
    in each of the three cases. Broken variants tried, each failed: ``√(σ'² − η_b τ)`` (τ not squared) in
    the noise, a dropped ``√(1−η²)``, ``σ'²/σ²`` for ``σ'/σ`` in the null-space step, ``(ȳ − x̄0)/τ²``."""
    m, x0, xbar, eps = _law_case()
    out = ddrm_update(xbar, x0, m, 1.0, 0.3, eta, eta_b, eps) - x0
    n = out.shape[0]
    assert (out.mean(0).abs() < 4 * 0.3 / math.sqrt(n)).all()
    torch.testing.assert_close(out.var(0), torch.full((8,), 0.09, dtype=F64), rtol=0.04, atol=0)


@pytest.mark.parametrize("name", ["inpaint", "superres", "mri"])
def test_noiseless_keeps_the_observed_coordinates(name):
    """σ_y = 0, η_b = 1: the samples' observed spectral coordinates equal ``ȳ``, so ``A x = y`` (to 1e-5;
    for inpainting the observed pixels are the measurement). Catches a last step that skips the data."""
    op = SVD_OPERATORS[name]()
    _, y = measure(op, GAUSS, seed=2, sigma_y=0.0)
    out = DDRM()(prior_model(GAUSS), op, y, 0.0, num_steps=8, n_samples=4, generator=make_generator(0))
    x = out.samples[0]
    assert (op.forward(x) - y).abs().max() < 1e-5
    if name == "inpaint":
        assert ((x - y) * op.mask).abs().max() < 1e-5
    assert (x[0] - x[1]).abs().max() > 1e-3  # the unobserved part still varies


# DDRM at its paper operating point (20 steps), 1000 samples of one measurement: measured
# mean_err / cov_err (mixture: mass of the 0.3-weight mode, exact ≈ 0.30). DDRM is far from the
# posterior on blur: small singular values get ȳ = Uᵀy/s, whose noise σ_y/s the steps pull toward.
BANDS = {
    ("gauss", "blur"): dict(mean_err=(0.52, 0.66), cov_err=(0.66, 0.80)),  # measured 0.590 / 0.730
    ("gauss", "inpaint"): dict(mean_err=(0.27, 0.36), cov_err=(0.23, 0.31)),  # 0.312 / 0.271
    ("gmm", "blur"): dict(mean_err=(0.51, 0.65), cov_err=(0.70, 0.86), mass=(0.03, 0.07)),  # 0.577 / 0.781 / 0.048
    ("gmm", "inpaint"): dict(mean_err=(0.15, 0.20), cov_err=(0.15, 0.20), mass=(0.25, 0.29)),  # 0.174 / 0.176 / 0.268
}


@pytest.mark.parametrize("case", BANDS, ids=lambda c: "-".join(c))
def test_oracle_bias_is_in_its_recorded_band(case):
    """Broken variants tried, each left at least one band: ``ȳ = Uᵀy`` without ``/s``; ``τ = σ_y/s²``; the
    sign of the pull toward ``ȳ``; ``(ȳ − x̄0)/τ²``; ``σ'²/σ²`` in the null-space step; a dropped
    ``√(1−η²)``. A start at plain noise instead of the paper's is not caught (σ_0 = 40 dwarfs ȳ)."""
    out = check_bands(DDRM(), case, BANDS[case], DDRM.default_num_steps)
    assert out.nfe == 20 and out.vjp == 0


def test_operators_without_svd_and_noise_covariance_are_refused():
    """CT and a dense matrix have no closed-form SVD: one line naming DDRM and the operator; a trace-class
    diffusion noise covariance is refused with the reason; bad hyper-parameters name the argument."""
    for op in (OPERATORS["ct"](), DenseOperator(torch.eye(16, dtype=F64), SHAPE)):
        _, y = measure(op, GAUSS, seed=1)
        with pytest.raises(OperatorMismatchError, match=rf"DDRM needs .*SVD.*{type(op).__name__} has none"):
            DDRM()(prior_model(GAUSS), op, y, SIGMA_Y, num_steps=2)
    op = OPERATORS["blur"]()
    _, y = measure(op, GAUSS, seed=1)
    model = prior_model(GAUSS, noise_cov=FourierCovariance(SHAPE))
    with pytest.raises(OperatorMismatchError, match="DDRM cannot use a function-space noise covariance: .*white"):
        DDRM()(model, op, y, SIGMA_Y, num_steps=2)
    for kw in (dict(eta=1.5), dict(eta_b=-0.1), dict(eta=math.nan)):
        with pytest.raises(ValueError, match=f"DDRM: {next(iter(kw))}"):
            DDRM(**kw)
