"""EDM preconditioning, the VP/ε adapter and the denoising loss against Gaussian closed forms.

Oracle: for ``x0 ~ N(μ, Σ)``, ``D*(x, σ) = μ + Σ(Σ + σ²I)⁻¹(x − μ)`` and the posterior covariance of x0
given ``x_σ`` is ``Σ − Σ(Σ + σ²I)⁻¹Σ``. All formulas below are written out from METHODS §0/§2, not
taken from the code under test.
"""
import math

import pytest
import torch
from torch import nn

from diffpost.losses import edm_denoising_loss
from diffpost.precond import EDMDenoiser, VPEpsAdapter, sigma_batch
from diffpost.random import make_generator, randn

pytestmark = pytest.mark.usefixtures("no_global_rng")

SD = 0.5  # σ_data
D_DIM = 16  # 1×4×4 images
DT = torch.float64


def _gaussian(seed: int = 0):
    g = make_generator(seed)
    mu = 0.3 * randn((D_DIM,), g, dtype=DT)
    a = randn((D_DIM, D_DIM), g, dtype=DT)
    cov = 0.2 * a @ a.T / D_DIM + 0.05 * torch.eye(D_DIM, dtype=DT)
    return mu, cov


def _exact_denoiser(mu, cov):
    eye = torch.eye(D_DIM, dtype=DT)

    def denoise(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=DT).expand(x.shape[0])
        flat = x.reshape(x.shape[0], D_DIM)
        systems = cov + sigma[:, None, None] ** 2 * eye  # (B, d, d)
        sol = torch.linalg.solve(systems, (flat - mu).unsqueeze(-1)).squeeze(-1)
        return (mu + sol @ cov.T).reshape(x.shape)

    return denoise


def _posterior_variance_per_pixel(cov, sigma):
    eye = torch.eye(D_DIM, dtype=DT)
    post = cov - cov @ torch.linalg.solve(cov + sigma**2 * eye, cov)
    return torch.trace(post) / D_DIM


class OptimalF(nn.Module):
    """``F* = (D* − c_skip x)/c_out``, recovering σ and x from what the preconditioner passes in:
    ``σ = exp(4 c_noise)``, ``x = x_in · sqrt(σ² + σ_d²)``."""

    def __init__(self, denoise):
        super().__init__()
        self.denoise = denoise

    def forward(self, x_in, c_noise):
        sigma = torch.exp(4 * c_noise)
        shape = (-1,) + (1,) * (x_in.dim() - 1)
        total = (sigma**2 + SD**2).view(shape)
        x = x_in * total.sqrt()
        c_skip = SD**2 / total
        c_out = sigma.view(shape) * SD / total.sqrt()
        return (self.denoise(x, sigma) - c_skip * x) / c_out


class ZeroF(nn.Module):
    def forward(self, x_in, c_noise):
        return torch.zeros_like(x_in)


SIGMAS = torch.tensor([0.002, 0.05, 0.5, 3.0, 80.0], dtype=DT)


# ----------------------------------------------------------------------------- EDMDenoiser


@pytest.mark.parametrize("shape", [(5, 1, 4, 4), (5, D_DIM)])
def test_edm_with_optimal_F_is_the_exact_gaussian_denoiser(shape):
    mu, cov = _gaussian(0)
    exact = _exact_denoiser(mu, cov)
    x = 2.0 * randn(shape, make_generator(1), dtype=DT)
    den = EDMDenoiser(OptimalF(exact), sigma_data=SD)
    torch.testing.assert_close(den(x, SIGMAS), exact(x, SIGMAS), rtol=1e-10, atol=1e-12)


def test_edm_scalar_sigma_equals_batched_sigma():
    x = randn((3, 1, 4, 4), make_generator(2), dtype=DT)
    den = EDMDenoiser(OptimalF(_exact_denoiser(*_gaussian(0))), sigma_data=SD)
    torch.testing.assert_close(den(x, 0.7), den(x, torch.full((3,), 0.7, dtype=DT)))


def test_edm_zero_F_is_c_skip_times_x():
    x = randn((5, 1, 4, 4), make_generator(3), dtype=DT)
    expected = (SD**2 / (SIGMAS**2 + SD**2)).view(-1, 1, 1, 1) * x
    torch.testing.assert_close(EDMDenoiser(ZeroF(), SD)(x, SIGMAS), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    "sigma,match",
    [(0.0, "> 0"), (-1.0, "> 0"), (float("nan"), "finite"), (float("inf"), "finite"), (torch.ones(3), "shape")],
)
def test_edm_rejects_bad_sigma(sigma, match):
    den = EDMDenoiser(ZeroF(), SD)
    with pytest.raises(ValueError, match=match):
        den(torch.zeros(2, 1, 4, 4, dtype=DT), sigma)


def test_edm_rejects_bad_config_and_wrong_output_shape():
    with pytest.raises(ValueError, match="sigma_data"):
        EDMDenoiser(ZeroF(), sigma_data=0.0)

    class Bad(nn.Module):
        def forward(self, x, c):
            return x[:, :, :2]

    with pytest.raises(ValueError, match="output shape"):
        EDMDenoiser(Bad(), SD)(torch.zeros(2, 1, 4, 4), 1.0)


def test_sigma_batch():
    x = torch.zeros(3, 2, dtype=DT)
    assert sigma_batch(2.0, x).shape == (3,) and sigma_batch(2.0, x).dtype == DT
    assert torch.equal(sigma_batch(torch.zeros(3), x, allow_zero=True), torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match=">= 0"):
        sigma_batch(-0.1, x, allow_zero=True)


# ------------------------------------------------------------------------------ VP adapter


def _vp_quantities(t, beta_min, beta_max):
    """α_t and s_t of the linear-β VP SDE, straight from METHODS §0."""
    big_b = beta_min * t + (beta_max - beta_min) * t**2 / 2
    alpha = torch.exp(-big_b / 2)
    s = torch.sqrt(1 - torch.exp(-big_b))
    return alpha, s


class OptimalEps(nn.Module):
    """ε*(x_t, t) = E[n | x_t] = (x_t − α_t E[x0 | x_t]) / s_t, with E[x0 | x_t] = D*(x_t/α_t, s_t/α_t)."""

    def __init__(self, denoise, beta_min, beta_max, time_scale):
        super().__init__()
        self.denoise, self.beta_min, self.beta_max, self.time_scale = denoise, beta_min, beta_max, time_scale

    def forward(self, x_t, t_scaled):
        t = t_scaled / self.time_scale
        alpha, s = _vp_quantities(t, self.beta_min, self.beta_max)
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        x0_mean = self.denoise(x_t / alpha.view(shape), s / alpha)
        return (x_t - alpha.view(shape) * x0_mean) / s.view(shape)


@pytest.mark.parametrize("betas,time_scale", [((0.1, 20.0), 1.0), ((0.1, 20.0), 999.0), ((1.0, 1.0), 1.0)])
def test_vp_adapter_with_optimal_eps_is_the_exact_gaussian_denoiser(betas, time_scale):
    mu, cov = _gaussian(4)
    exact = _exact_denoiser(mu, cov)
    eps = OptimalEps(exact, *betas, time_scale)
    adapter = VPEpsAdapter(eps, beta_min=betas[0], beta_max=betas[1], time_scale=time_scale)
    sigmas = torch.tensor([0.002, 0.05, 0.5, 3.0, 80.0], dtype=DT)
    x = 2.0 * randn((5, 1, 4, 4), make_generator(5), dtype=DT)
    torch.testing.assert_close(adapter(x, sigmas), exact(x, sigmas), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("betas", [(0.1, 20.0), (1.0, 1.0), (0.5, 3.0)])
def test_vp_adapter_time_inverts_sigma_of_t(betas):
    t = torch.tensor([1e-4, 0.01, 0.2, 0.5, 0.9, 1.0], dtype=DT)
    alpha, s = _vp_quantities(t, *betas)
    adapter = VPEpsAdapter(ZeroF(), *betas)
    torch.testing.assert_close(adapter.t_from_sigma(s / alpha), t, rtol=1e-9, atol=1e-12)


def test_vp_adapter_at_sigma_zero_is_identity():
    x = randn((2, 1, 4, 4), make_generator(6), dtype=DT)

    class Ones(nn.Module):
        def forward(self, x, t):
            return torch.ones_like(x)

    torch.testing.assert_close(VPEpsAdapter(Ones())(x, 0.0), x, rtol=0, atol=0)
    with pytest.raises(ValueError):
        VPEpsAdapter(Ones(), beta_min=2.0, beta_max=1.0)


# ---------------------------------------------------------------------------------- loss


def _lam(sigma):
    return (sigma**2 + SD**2) / (sigma * SD) ** 2


def test_loss_deterministic_cases():
    """D = 0 gives λ·mean(x0²); D = identity gives λ·σ²·mean(n²): weighting, noising and per-sample
    pixel averaging, checked exactly."""
    g = make_generator(7)
    x0 = randn((5, 1, 4, 4), g, dtype=DT)
    n = randn((5, 1, 4, 4), g, dtype=DT)
    zero = edm_denoising_loss(lambda x, s: torch.zeros_like(x), x0, SIGMAS, n, sigma_data=SD)
    torch.testing.assert_close(zero, _lam(SIGMAS) * x0.square().mean(dim=(1, 2, 3)), rtol=1e-14, atol=0)
    ident = edm_denoising_loss(lambda x, s: x, x0, SIGMAS, n, sigma_data=SD)
    torch.testing.assert_close(ident, _lam(SIGMAS) * SIGMAS**2 * n.square().mean(dim=(1, 2, 3)), rtol=1e-12, atol=0)
    assert zero.shape == (5,)


def test_loss_rejects_bad_input():
    x0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="noise shape"):
        edm_denoising_loss(lambda x, s: x, x0, 1.0, torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="> 0"):
        edm_denoising_loss(lambda x, s: x, x0, torch.tensor([1.0, 0.0]), torch.zeros_like(x0))


def _monte_carlo_loss(denoise, mu, chol, sigma, n_samples, seed):
    g = make_generator(seed)
    x0 = (mu + randn((n_samples, D_DIM), g, dtype=DT) @ chol.T).reshape(n_samples, 1, 4, 4)
    noise = randn((n_samples, 1, 4, 4), g, dtype=DT)
    loss = edm_denoising_loss(denoise, x0, torch.full((n_samples,), sigma, dtype=DT), noise, sigma_data=SD)
    return loss.mean(), loss.std() / math.sqrt(n_samples)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_loss_at_exact_denoiser_is_weighted_posterior_variance(sigma):
    """E[loss(D*)] = λ(σ) · tr(Cov[x0 | x_σ]) / d (the irreducible part of the loss)."""
    mu, cov = _gaussian(8)
    mean, se = _monte_carlo_loss(_exact_denoiser(mu, cov), mu, torch.linalg.cholesky(cov), sigma, 20000, seed=9)
    expected = _lam(torch.tensor(sigma, dtype=DT)) * _posterior_variance_per_pixel(cov, torch.tensor(sigma, dtype=DT))
    assert abs(mean - expected) < 4 * se, (mean.item(), expected.item(), se.item())
    assert se < 0.02 * expected  # the check has power


@pytest.mark.parametrize("sigma", [0.01, 0.5, 20.0])
def test_untrained_edm_loss_is_one_for_data_of_variance_sigma_data(sigma):
    """With F ≡ 0 and x0 ~ N(0, σ_d² I): λ E‖c_skip x_σ − x0‖²/d = λ σ²σ_d²/(σ² + σ_d²) = 1 for every σ
    (EDM's unit-loss design, METHODS §2)."""
    mu = torch.zeros(D_DIM, dtype=DT)
    chol = SD * torch.eye(D_DIM, dtype=DT)
    mean, se = _monte_carlo_loss(EDMDenoiser(ZeroF(), SD), mu, chol, sigma, 20000, seed=10)
    assert abs(mean - 1.0) < 4 * se and se < 0.02
