"""UCoS identities against closed forms (METHODS §3.1–3.3), float64, no training of real networks."""
import math

import pytest
import torch

from diffpost.operators import CT, Blur, DenseOperator, Inpainting
from diffpost.priors import GaussianPrior
from diffpost.random import make_generator
from diffpost.samplers import heun
from diffpost.schedules import karras_sigmas
from diffpost.ucos import (
    DensePreconditioner,
    GaussianAuxiliaryDenoiser,
    RandomizedSVDPreconditioner,
    SpectralPreconditioner,
    auxiliary_sample,
    information_offset,
    information_vector,
    posterior_denoiser,
)

pytestmark = pytest.mark.usefixtures("no_global_rng")
D64 = torch.float64


def random_gaussian(shape, seed=0):
    g = make_generator(seed)
    d = math.prod(shape)
    L = torch.randn(d, d, generator=g, dtype=D64) / math.sqrt(d)
    cov = 0.2 * L @ L.T + 0.05 * torch.eye(d, dtype=D64)
    mean = 0.3 * torch.randn(d, generator=g, dtype=D64)
    return GaussianPrior(mean, cov, shape)


OPERATORS = {
    "ct": lambda: CT((1, 8, 8), n_angles=6).to(D64),
    "blur": lambda: Blur((1, 8, 8), kernel_size=3, blur_sigma=1.0).to(D64),
    "inpaint": lambda: Inpainting((1, 8, 8), keep_ratio=0.4, seed=3).to(D64),
}


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 50.0])
def test_exact_aux_denoiser_equals_posterior_denoiser(name, sigma):
    """D*(m_σ(x, y), σ) is the closed-form posterior denoiser of §1, to machine precision."""
    op, sigma_y = OPERATORS[name](), 0.1
    prior = random_gaussian(op.x_shape)
    g = make_generator(1)
    x0 = prior.sample(1, g)
    y = op(x0) + sigma_y * torch.randn((1, *op.y_shape), generator=g, dtype=D64)
    x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=D64)
    aux = GaussianAuxiliaryDenoiser(prior.mean, prior.cov, op, sigma_y)
    b = information_offset(y, op, sigma_y)
    ours = aux(information_vector(x, sigma, b), torch.tensor([sigma], dtype=D64))
    exact = prior.posterior(op, y, sigma_y).denoise(x, sigma)
    assert torch.allclose(ours, exact, atol=1e-10, rtol=0), (ours - exact).abs().max()


def test_auxiliary_variable_law_matches_information_vector_law():
    """Ỹ_σ | x0 ~ N(P_σ x0, P_σ) (two-term ξ, no square root), and marginally equals the law of
    m_σ(x_σ, y) that the sampler feeds the network: mean Pμ, covariance P Σ P + P."""
    op = DenseOperator(torch.randn(5, 6, generator=make_generator(2), dtype=D64), (1, 2, 3))
    sigma, sigma_y, n = 0.7, 0.2, 200_000
    prior = random_gaussian(op.x_shape, seed=4)
    A = op.to_dense()
    P = torch.eye(6, dtype=D64) / sigma**2 + A.T @ A / sigma_y**2
    g = make_generator(5)
    x0 = prior.sample(n, g)
    z = auxiliary_sample(x0, torch.full((n,), sigma, dtype=D64), op, sigma_y, g).flatten(1)
    xi = z - x0.flatten(1) @ P
    cov_xi = xi.T @ xi / n
    assert (cov_xi - P).norm() / P.norm() < 0.02
    assert xi.mean(0).abs().max() < 5 * P.diag().max().sqrt() / math.sqrt(n)
    expected = P @ prior.cov @ P + P
    emp = torch.cov(z.T)
    assert (emp - expected).norm() / expected.norm() < 0.02
    # the sampler's input for a simulated pair (x_σ, y), drawn independently
    g2 = make_generator(6)
    x0b = prior.sample(n, g2)
    xs = x0b + sigma * torch.randn(x0b.shape, generator=g2, dtype=D64)
    yb = op(x0b) + sigma_y * torch.randn((n, *op.y_shape), generator=g2, dtype=D64)
    m = information_vector(xs, sigma, information_offset(yb, op, sigma_y)).flatten(1)
    assert (torch.cov(m.T) - emp).norm() / expected.norm() < 0.03


@pytest.mark.parametrize("kind", ["spectral", "dense", "randomized"])
def test_preconditioners_equal_dense_inverse(kind):
    rho0, sigma_y = 0.5, 0.05
    if kind == "spectral":
        op = Blur((2, 6, 5), kernel_size=3, blur_sigma=1.0).to(D64)
        pre = SpectralPreconditioner(op, sigma_y, rho0)
    elif kind == "dense":
        op = CT((1, 8, 8), n_angles=5).to(D64)
        pre = DensePreconditioner(op, sigma_y, rho0)
    else:
        op = CT((1, 8, 8), n_angles=5).to(D64)
        pre = RandomizedSVDPreconditioner(op, sigma_y, rho0, rank=64, oversample=0)  # full rank: exact
    A, d = op.to_dense(), op.x_dim
    g = make_generator(7)
    z = torch.randn(3, *op.x_shape, generator=g, dtype=D64)
    sigma = torch.tensor([0.05, 1.0, 30.0], dtype=D64)
    got = pre.apply(z, sigma)
    for i in range(3):
        G = torch.linalg.inv(torch.eye(d, dtype=D64) * (sigma[i] ** -2 + rho0) + A.T @ A / sigma_y**2)
        assert torch.allclose(got[i].flatten(), G @ z[i].flatten(), atol=1e-9 * G.abs().max())


def test_randomized_preconditioner_truncated_is_close_on_top_subspace():
    op = CT((1, 16, 16), n_angles=12).to(D64)
    pre = RandomizedSVDPreconditioner(op, 0.05, 0.5, rank=120)
    A = op.to_dense()
    eig = torch.linalg.eigvalsh(A.T @ A).flip(0)[:120]
    assert torch.allclose(pre.eigenvalues[:10], eig[:10], rtol=1e-6)  # dominant part: converged
    assert torch.allclose(pre.eigenvalues[:40], eig[:40], rtol=1e-3)  # 2 power iterations


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_linear_network_trained_with_ucos_loss_converges_to_exact(sigma):
    """Minimising the empirical UCoS loss over affine maps z ↦ W z + c recovers D* (≤ 2%)."""
    op = Blur((1, 4, 4), kernel_size=3, blur_sigma=1.0).to(D64)
    sigma_y, n = 0.1, 60_000
    prior = random_gaussian(op.x_shape, seed=8)
    g = make_generator(9)
    x0 = prior.sample(n, g)
    z = auxiliary_sample(x0, torch.full((n,), sigma, dtype=D64), op, sigma_y, g).flatten(1)
    feats = torch.cat([z, torch.ones(n, 1, dtype=D64)], 1)
    sol = torch.linalg.lstsq(feats, x0.flatten(1)).solution  # exact minimiser of the MSE (the UCoS loss)
    exact = GaussianAuxiliaryDenoiser(prior.mean, prior.cov, op, sigma_y)
    zt = auxiliary_sample(prior.sample(2000, g), torch.full((2000,), sigma, dtype=D64), op, sigma_y, g)
    want = exact(zt, torch.full((2000,), sigma, dtype=D64)).flatten(1)
    got = torch.cat([zt.flatten(1), torch.ones(2000, 1, dtype=D64)], 1) @ sol
    rel = (got - want).norm() / want.norm()
    assert rel < 0.02, rel


@pytest.mark.parametrize("name", ["blur", "inpaint"])
def test_sampler_with_exact_aux_denoiser_reproduces_posterior(name):
    op = {"blur": lambda: Blur((1, 4, 4), kernel_size=3, blur_sigma=1.0),
          "inpaint": lambda: Inpainting((1, 4, 4), keep_ratio=0.5, seed=1)}[name]().to(D64)
    sigma_y, n = 0.1, 20_000
    prior = random_gaussian(op.x_shape, seed=10)
    g = make_generator(11)
    x_true = prior.sample(1, g)
    y = op(x_true) + sigma_y * torch.randn((1, *op.y_shape), generator=g, dtype=D64)
    post = prior.posterior(op, y, sigma_y)
    aux = GaussianAuxiliaryDenoiser(prior.mean, prior.cov, op, sigma_y)
    op.reset_counts()
    b = information_offset(y, op, sigma_y)
    assert dict(op.counts) == {"adjoint": 1}
    sigmas = karras_sigmas(64, 0.002, 80.0, 7.0, dtype=D64)
    x = sigmas[0] * torch.randn((n, *op.x_shape), generator=g, dtype=D64)
    samples = heun(posterior_denoiser(aux, b), x, sigmas).flatten(1)
    assert dict(op.counts) == {"adjoint": 1}, "the sampling loop must not call the operator"
    mu, cov = post.mean.flatten(), post.cov
    se = cov.diag().sqrt() / math.sqrt(n)
    assert ((samples.mean(0) - mu).abs() / se).max() < 5
    assert (torch.cov(samples.T) - cov).norm() / cov.norm() < 0.05
