"""σ grids, training density, EDM coefficients, VP adapter and trace-class covariances, checked
against closed forms, independent formulas and sample statistics."""
import math

import pytest
import torch

from diffpost.random import make_generator, per_sample_generators
from diffpost.schedules import (
    EDMTrainingDensity,
    FourierCovariance,
    IdentityCovariance,
    VPSchedule,
    ddpm_time,
    edm_coefficients,
    edm_loss_weight,
    karras_sigmas,
)

pytestmark = pytest.mark.usefixtures("no_global_rng")
f64 = torch.float64


# ------------------------------------------------------------------------------------ karras


@pytest.mark.parametrize("n", [1, 2, 18, 50])
def test_karras_grid(n):
    sig = karras_sigmas(n, 0.002, 80.0, 7.0)
    assert sig.shape == (n + 1,) and sig.dtype == f64
    assert sig[-1] == 0 and math.isclose(float(sig[0]), 80.0, rel_tol=1e-14)
    if n > 1:
        assert math.isclose(float(sig[-2]), 0.002, rel_tol=1e-12)
        # EDM eq. 5: σ^(1/ρ) is evenly spaced between the endpoints
        root = sig[:-1] ** (1 / 7.0)
        step = (0.002 ** (1 / 7) - 80.0 ** (1 / 7)) / (n - 1)
        torch.testing.assert_close(root.diff(), torch.full((n - 1,), step, dtype=f64), rtol=1e-10, atol=1e-12)
    assert bool((sig.diff() < 0).all())


def test_karras_dtype_and_errors():
    assert karras_sigmas(5, dtype=torch.float32).dtype == torch.float32
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="n_steps"):
            karras_sigmas(bad)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(10, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="rho"):
        karras_sigmas(10, rho=0.0)


# ------------------------------------------------------------------------------------ training density


def _normal_cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_training_density_lognormal_moments():
    n = 200_000
    ls = EDMTrainingDensity(-1.2, 1.2).sample(n, make_generator(0), dtype=f64).log()
    se_mean, se_std = 1.2 / math.sqrt(n), 1.2 / math.sqrt(2 * n)
    assert abs(float(ls.mean()) + 1.2) < 5 * se_mean
    assert abs(float(ls.std()) - 1.2) < 5 * se_std


def test_training_density_mixture_moments_and_tail():
    n, f = 200_000, 0.3
    dens = EDMTrainingDensity(-1.2, 1.2, log_uniform_fraction=f, sigma_min=0.002, sigma_max=80.0)
    ls = dens.sample(n, make_generator(1), dtype=f64).log()
    a, b = math.log(0.002), math.log(80.0)
    mean = (1 - f) * -1.2 + f * (a + b) / 2
    second = (1 - f) * (1.2**2 + 1.2**2) + f * ((b - a) ** 2 / 12 + ((a + b) / 2) ** 2)
    var = second - mean**2
    assert abs(float(ls.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(ls.var()) - var) < 0.02 * var
    # mass above σ = 20, where the log-normal alone has almost none
    p = (1 - f) * (1 - _normal_cdf((math.log(20) + 1.2) / 1.2)) + f * (b - math.log(20)) / (b - a)
    frac = float((ls > math.log(20)).double().mean())
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_training_density_pure_log_uniform_is_uniform():
    n = 50_000
    ls = EDMTrainingDensity(log_uniform_fraction=1.0, sigma_min=0.01, sigma_max=10.0).sample(n, make_generator(2), dtype=f64).log()
    a, b = math.log(0.01), math.log(10.0)
    assert float(ls.min()) >= a and float(ls.max()) <= b
    u = ((ls - a) / (b - a)).sort().values
    ks = float((u - torch.arange(1, n + 1, dtype=f64) / n).abs().max())
    assert ks < 1.8 / math.sqrt(n)  # KS 99.7 % quantile ≈ 1.73/√n


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_training_density_per_sample_generators_batch_independent(fraction):
    dens = EDMTrainingDensity(log_uniform_fraction=fraction)
    seeds = [11, 12, 13, 14]
    batch = dens.sample(4, per_sample_generators(seeds), dtype=f64)
    single = torch.cat([dens.sample(1, per_sample_generators([s]), dtype=f64) for s in seeds])
    assert torch.equal(batch, single)
    assert len(set(batch.tolist())) == 4


def test_training_density_validation():
    with pytest.raises(ValueError, match="log_uniform_fraction"):
        EDMTrainingDensity(log_uniform_fraction=1.5)
    with pytest.raises(ValueError, match="p_std"):
        EDMTrainingDensity(p_std=0.0)
    with pytest.raises(ValueError, match="generators"):
        EDMTrainingDensity().sample(3, per_sample_generators([1, 2]))


# ------------------------------------------------------------------------------------ EDM coefficients


def test_edm_coefficients_identities():
    sd = 0.5
    sigma = torch.logspace(-3, 2, 40, dtype=f64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd)
    # c_skip is the Wiener gain: for x0 ~ N(0, σ_d²), E[x0 | x0 + σn] = c_skip x exactly
    torch.testing.assert_close(c_skip, sd**2 / (sd**2 + sigma**2))
    # network input has unit variance: Var(c_in x_σ) = c_in²(σ_d² + σ²)
    torch.testing.assert_close(c_in**2 * (sd**2 + sigma**2), torch.ones_like(sigma))
    # effective training target (x0 − c_skip x)/c_out has unit variance
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(sigma))
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    torch.testing.assert_close(edm_loss_weight(sigma, sd) * c_out**2, torch.ones_like(sigma))
    # at σ = σ_d by hand
    cs, co, ci, cn = edm_coefficients(0.5, 0.5)
    assert math.isclose(float(cs), 0.5) and math.isclose(float(co), 0.5 / math.sqrt(2))
    assert math.isclose(float(ci), 1 / (0.5 * math.sqrt(2))) and math.isclose(float(cn), math.log(0.5) / 4)


def test_edm_coefficients_reject_bad_sigma():
    with pytest.raises(ValueError, match="positive"):
        edm_coefficients(torch.tensor([0.1, 0.0]))
    with pytest.raises(ValueError, match="sigma_data"):
        edm_loss_weight(1.0, sigma_data=-1.0)


# ------------------------------------------------------------------------------------ VP


def _B_quadrature(t, bmin, bmax, n=20001):
    """∫_0^t β(u) du by the trapezoid rule (β linear: exact up to round-off)."""
    u = torch.linspace(0, float(t), n, dtype=f64)
    return float(torch.trapezoid(bmin + (bmax - bmin) * u, u))


@pytest.mark.parametrize("bmin,bmax", [(0.1, 20.0), (1.0, 1.0)])
def test_vp_formulas_and_round_trip(bmin, bmax):
    vp = VPSchedule(bmin, bmax)
    for t in (1e-4, 0.01, 0.3, 0.77, 1.0):
        B = _B_quadrature(t, bmin, bmax)
        assert math.isclose(float(vp.alpha(t)), math.exp(-B / 2), rel_tol=1e-10)
        assert math.isclose(float(vp.s(t)), math.sqrt(1 - math.exp(-B)), rel_tol=1e-8)
        assert math.isclose(float(vp.sigma(t)), math.sqrt(math.exp(B) - 1), rel_tol=1e-8)
        assert math.isclose(float(vp.input_scale(t) * vp.alpha(t)), 1.0, rel_tol=1e-14)
        # OU time of a DDPM with ᾱ = α_t² is B(t)/2
        assert math.isclose(float(ddpm_time(vp.alpha(t) ** 2)), B / 2, rel_tol=1e-10)
    t = torch.linspace(0, 1, 101, dtype=f64)
    torch.testing.assert_close(vp.alpha(t) ** 2 + vp.s(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(vp.sigma(t), vp.s(t) / vp.alpha(t))
    torch.testing.assert_close(vp.t_of_sigma(vp.sigma(t)), t, rtol=1e-10, atol=1e-12)
    sig = torch.logspace(-3, 2, 30, dtype=f64)
    torch.testing.assert_close(vp.sigma(vp.t_of_sigma(sig)), sig, rtol=1e-10, atol=0)


def test_vp_validation():
    with pytest.raises(ValueError, match="beta_max >= beta_min"):
        VPSchedule(1.0, 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        VPSchedule().t_of_sigma(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="alpha_bar"):
        ddpm_time(0.0)


# ------------------------------------------------------------------------------------ covariances


def _stationary_dense(shape, tau, s, amp):
    """Independent oracle: C[p, q] = amp Σ_k (τ² + 4π²|k|²)^(−s) cos(2π k·(p − q)/N) over the grid's
    frequencies, block-diagonal over channels."""
    Cn, H, W = shape
    k1 = torch.fft.fftfreq(H, 1.0 / H, dtype=f64)
    k2 = torch.fft.fftfreq(W, 1.0 / W, dtype=f64)
    lam = (tau**2 + 4 * math.pi**2 * (k1[:, None] ** 2 + k2[None, :] ** 2)) ** (-s)
    pi_, pj = torch.meshgrid(torch.arange(H, dtype=f64), torch.arange(W, dtype=f64), indexing="ij")
    pi_, pj = pi_.reshape(-1), pj.reshape(-1)
    d1, d2 = pi_[:, None] - pi_[None, :], pj[:, None] - pj[None, :]
    phase = 2 * math.pi * (k1.reshape(-1, 1, 1, 1) * d1 / H + k2.reshape(1, -1, 1, 1) * d2 / W)
    block = amp * (lam.reshape(H, W, 1, 1) * torch.cos(phase)).sum((0, 1))
    return torch.block_diag(*[block] * Cn)


def test_fourier_covariance_matches_stationary_oracle():
    shape = (2, 6, 5)
    cov = FourierCovariance(shape, tau=2.0, s=1.5)
    dense = cov.to_dense()
    torch.testing.assert_close(dense, _stationary_dense(shape, 2.0, 1.5, cov.amplitude), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov.logdet(), torch.linalg.slogdet(dense)[1])
    assert float(torch.linalg.eigvalsh(dense).min()) > 0


def test_fourier_covariance_algebra():
    cov = FourierCovariance((2, 8, 6), tau=3.0, s=2.0)
    x = torch.randn(3, 2, 8, 6, dtype=f64, generator=make_generator(0))
    torch.testing.assert_close(cov.apply(cov.inv_apply(x)), x)
    torch.testing.assert_close(cov.inv_apply(cov.apply(x)), x)
    torch.testing.assert_close(cov.sqrt_apply(cov.sqrt_apply(x)), cov.apply(x))
    torch.testing.assert_close(cov.inv_sqrt_apply(cov.sqrt_apply(x)), x)
    y = torch.randn(3, 2, 8, 6, dtype=f64, generator=make_generator(1))
    # self-adjoint
    torch.testing.assert_close((cov.apply(x) * y).sum(), (x * cov.apply(y)).sum())


def test_fourier_covariance_sample_covariance():
    shape, n = (1, 4, 4), 40_000
    cov = FourierCovariance(shape, tau=2.0, s=1.5)
    x = cov.sample(n, make_generator(3), dtype=f64).reshape(n, -1)
    emp = x.T @ x / n
    C = cov.to_dense()
    se = torch.sqrt((torch.diag(C)[:, None] * torch.diag(C)[None, :] + C**2) / n)
    assert float(((emp - C) / se).abs().max()) < 5.0
    assert float(x.mean(0).abs().max() / torch.diag(C).sqrt().max()) < 5 / math.sqrt(n)


def test_fourier_covariance_resolution_consistency():
    pointwise = {}
    for N in (32, 64, 256):
        cov = FourierCovariance((1, N, N), tau=3.0, s=2.0)
        pointwise[N] = float(cov.eigenvalues().mean())  # trace/d
    assert abs(pointwise[32] - 1) < 1e-3 and abs(pointwise[64] - 1) < 2e-4 and abs(pointwise[256] - 1) < 1e-5
    assert abs(pointwise[32] - pointwise[64]) < 1e-3
    # the missing high-frequency tail shrinks like 1/N² for s = 2
    assert 3.0 < (1 - pointwise[32]) / (1 - pointwise[64]) < 5.0
    # rougher field (s close to 1) converges slower but to the same normalisation
    assert abs(float(FourierCovariance((1, 256, 256), 3.0, 1.3).eigenvalues().mean()) - 1) < 0.05
    # samples: pointwise variance near 1 at both resolutions
    for N in (32, 64):
        x = FourierCovariance((1, N, N)).sample(800, make_generator(N), dtype=f64)
        assert abs(float((x**2).mean()) - 1) < 0.1
    # at_resolution keeps the amplitude; coarse eigenvalues agree with fine ones on shared low frequencies
    c32 = FourierCovariance((1, 32, 32), 3.0, 2.0, amplitude=2.5)
    c64 = c32.at_resolution(64, 64)
    assert c64.shape == (1, 64, 64) and c64.amplitude == 2.5 and c64.key != c32.key
    e32, e64 = c32.eigenvalues()[0] / 32**2, c64.eigenvalues()[0] / 64**2
    torch.testing.assert_close(e32[:5, :5], e64[:5, :5])


def test_fourier_covariance_validation():
    with pytest.raises(ValueError, match="trace-class"):
        FourierCovariance((1, 8, 8), s=1.0)
    with pytest.raises(ValueError, match="tau"):
        FourierCovariance((1, 8, 8), tau=0.0)
    with pytest.raises(ValueError, match="shape"):
        FourierCovariance((8, 8))
    with pytest.raises(ValueError, match="expected shape"):
        FourierCovariance((1, 8, 8)).apply(torch.zeros(2, 1, 8, 7))


def test_identity_covariance_and_sampling_conventions():
    ident = IdentityCovariance((1, 4, 5))
    x = torch.randn(2, 1, 4, 5, dtype=f64, generator=make_generator(0))
    for fn in (ident.apply, ident.sqrt_apply, ident.inv_apply, ident.inv_sqrt_apply):
        assert torch.equal(fn(x), x)
    torch.testing.assert_close(ident.to_dense(), torch.eye(20, dtype=f64))
    assert float(ident.logdet()) == 0
    # sample = randn for identity; like-tensor copies batch, dtype and device
    s = ident.sample(x, make_generator(5))
    assert s.dtype == f64 and s.shape == x.shape
    assert torch.equal(s, torch.randn(2, 1, 4, 5, dtype=f64, generator=make_generator(5)))
    # per-sample generators: batch independent
    cov = FourierCovariance((1, 6, 6))
    a = cov.sample(3, per_sample_generators([7, 8, 9]), dtype=f64)
    b = torch.cat([cov.sample(1, per_sample_generators([s]), dtype=f64) for s in (7, 8, 9)])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    assert ident.at_resolution(8, 8).shape == (1, 8, 8)
