"""Function-space UCoS (METHODS §3.4): trace-class noise covariance C in training and sampling.

Closed forms in float64 (oracle, preconditioners, input laws, sampler moments), the UCoSModule wiring,
and the discretisation-invariance check: an FNO trained on 32² GRF data samples at 64².
"""
import math

import pytest
import torch

from diffpost.fourier import dht2
from diffpost.nets import FNO
from diffpost.operators import CT, Blur, DenseOperator, Inpainting
from diffpost.priors import GaussianPrior, GaussianRandomField
from diffpost.random import make_generator, randn
from diffpost.samplers import edm_stochastic, heun
from diffpost.schedules import EDMTrainingDensity, FourierCovariance, IdentityCovariance, edm_loss_weight, karras_sigmas
from diffpost.ucos import (
    DenseNoisePreconditioner,
    FourierNoisePreconditioner,
    FunctionSpaceGaussianDenoiser,
    GaussianAuxiliaryDenoiser,
    UCoSDenoiser,
    auxiliary_sample,
    continuum_blur,
    covariance_noise,
    function_space_preconditioner,
    information_offset,
    information_vector,
    pixel_sigma_y,
    posterior_denoiser,
)

pytestmark = pytest.mark.usefixtures("no_global_rng")
D64 = torch.float64


def dense_cov(C, dtype=D64):
    return C.to_dense(dtype)


def c_shaped_gaussian(shape, C, seed=0):
    """``N(μ, C^½ W C^½)`` with random SPD ``W`` and ``μ = 0.3 C^½ r``: a prior whose mean lies in the
    Cameron–Martin space of C (a white random mean would be a rough field that the sampler's start
    ``σ_max C^½ n`` cannot forget: its error is ``‖C^(−½)μ‖/σ_max``)."""
    g = make_generator(seed)
    d = math.prod(shape)
    L = torch.randn(d, d, generator=g, dtype=D64) / math.sqrt(d)
    W = 0.5 * L @ L.T + 0.2 * torch.eye(d, dtype=D64)
    Ch = C.sqrt_apply(torch.eye(d, dtype=D64).reshape(d, *shape)).reshape(d, d)
    mean = 0.3 * C.sqrt_apply(torch.randn((1, *shape), generator=g, dtype=D64)).reshape(d)
    cov = Ch @ W @ Ch
    return GaussianPrior(mean, 0.5 * (cov + cov.T), shape)


def measure(prior, op, sigma_y, seed):
    g = make_generator(seed)
    x0 = prior.sample(1, g)
    return x0, op(x0) + sigma_y * torch.randn((1, *op.y_shape), generator=g, dtype=D64)


# ------------------------------------------------------------------------------------------ exact oracle
CASES = {
    "blur-grf": lambda: (Blur((1, 8, 8), kernel_size=3, blur_sigma=1.0).to(D64), "grf"),
    "blur-dense": lambda: (Blur((1, 8, 8), kernel_size=3, blur_sigma=1.0).to(D64), "dense"),
    "ct": lambda: (CT((1, 8, 8), n_angles=6).to(D64), "dense"),
    "inpaint": lambda: (Inpainting((1, 8, 8), keep_ratio=0.4, seed=3).to(D64), "grf"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exact_oracle_of_C_information_equals_posterior_denoiser_under_C(case):
    """D*(C m_σ(x, y), σ) = E[x0 | x_σ = x, y] for x_σ = x0 + σ C^½ n, to 1e-10 (float64)."""
    op, kind = CASES[case]()
    C = FourierCovariance(op.x_shape, tau=3.0, s=2.0)
    prior = GaussianRandomField(op.x_shape, tau=4.0, s=2.5, mean=0.2).to(D64) if kind == "grf" else c_shaped_gaussian(op.x_shape, C, 1)
    sigma_y = 0.1
    x0, y = measure(prior, op, sigma_y, 2)
    aux = FunctionSpaceGaussianDenoiser(prior, op, sigma_y, C)
    assert aux.spectral == (case == "blur-grf")  # both code paths are exercised
    post = prior.posterior(op, y, sigma_y)
    op.reset_counts()
    cb = information_offset(y, op, sigma_y, noise_cov=C)
    assert dict(op.counts) == {"adjoint": 1}
    assert torch.allclose(cb, C.apply(op.adjoint(y)) / sigma_y**2, rtol=1e-13, atol=0)
    g = make_generator(3)
    for sigma in (0.01, 0.3, 2.0, 50.0):
        x = x0 + sigma * C.sample(x0, g)
        ours = aux(information_vector(x, sigma, cb), torch.tensor([sigma], dtype=D64))
        exact = post.denoise(x, sigma, noise_cov=C)
        assert torch.allclose(ours, exact, atol=1e-10, rtol=0), (sigma, (ours - exact).abs().max())
        # white-noise oracle of §3 would be wrong here: the test separates the two
        white = post.denoise(x, sigma)
        assert (white - exact).abs().max() > 1e-4


def test_oracle_without_C_is_the_white_noise_oracle():
    op = CT((1, 6, 6), n_angles=5).to(D64)
    prior = c_shaped_gaussian(op.x_shape, IdentityCovariance(op.x_shape), 4)
    z = randn((3, *op.x_shape), make_generator(5), dtype=D64)
    sigma = torch.tensor([0.05, 1.0, 20.0], dtype=D64)
    ours = FunctionSpaceGaussianDenoiser(prior, op, 0.1, None)(z, sigma)
    ref = GaussianAuxiliaryDenoiser(prior.mean, prior.cov, op, 0.1)(z, sigma)
    assert torch.allclose(ours, ref, atol=1e-9, rtol=0)


# ------------------------------------------------------------------------------------------ preconditioners
@pytest.mark.parametrize("kind", ["fourier", "dense-blur", "dense-ct", "dense-inpaint"])
def test_preconditioners_equal_the_dense_inverse(kind):
    """G_σ z = ((σ⁻² + ρ0) I + C AᵀA/σ_y²)⁻¹ z, the Tikhonov estimate for the reference prior N(0, C/ρ0)."""
    rho0, sigma_y = 0.7, 0.05
    op = {"fourier": lambda: Blur((2, 6, 5), kernel_size=3, blur_sigma=1.0),
          "dense-blur": lambda: Blur((2, 6, 5), kernel_size=3, blur_sigma=1.0),
          "dense-ct": lambda: CT((1, 8, 8), n_angles=5),
          "dense-inpaint": lambda: Inpainting((1, 8, 8), keep_ratio=0.4, seed=0)}[kind]().to(D64)
    C = FourierCovariance(op.x_shape, tau=3.0, s=2.0)
    pre = (FourierNoisePreconditioner if kind == "fourier" else DenseNoisePreconditioner)(op, sigma_y, C, rho0)
    A, d = op.to_dense(), op.x_dim
    M = dense_cov(C) @ A.T @ A / sigma_y**2
    z = randn((3, *op.x_shape), make_generator(7), dtype=D64)
    sigma = torch.tensor([0.01, 1.0, 30.0], dtype=D64)
    got = pre.apply(z, sigma)
    for i in range(3):
        want = torch.linalg.solve(torch.eye(d, dtype=D64) * (sigma[i] ** -2 + rho0) + M, z[i].flatten())
        assert torch.allclose(got[i].flatten(), want, atol=1e-10 * want.abs().max(), rtol=0)


def test_preconditioner_factory_and_errors():
    blur, ct = Blur((1, 8, 8), kernel_size=3), CT((1, 8, 8), n_angles=4)
    C = FourierCovariance((1, 8, 8))
    assert isinstance(function_space_preconditioner(blur, 0.1, C), FourierNoisePreconditioner)
    assert isinstance(function_space_preconditioner(ct, 0.1, C), DenseNoisePreconditioner)
    with pytest.raises(ValueError, match="Hartley"):
        FourierNoisePreconditioner(Inpainting((1, 8, 8)), 0.1, C)
    with pytest.raises(ValueError, match="shape"):
        FourierNoisePreconditioner(blur, 0.1, FourierCovariance((1, 16, 16)))
    with pytest.raises(TypeError, match="noise_cov"):
        DenseNoisePreconditioner(ct, 0.1, torch.eye(64))
    with pytest.raises(ValueError, match="d = 16384"):
        function_space_preconditioner(CT((1, 128, 128), n_angles=4), 0.1, FourierCovariance((1, 128, 128)))
    # the covariance enters the fingerprint: another C is another preconditioner
    assert (function_space_preconditioner(blur, 0.1, C).fingerprint()
            != function_space_preconditioner(blur, 0.1, FourierCovariance((1, 8, 8), tau=5.0)).fingerprint())


# ------------------------------------------------------------------------------------------ input laws
def test_training_input_law_equals_sampling_input_law_under_C():
    """C Ỹ = M x0 + ζ with Cov ζ = σ⁻²C + C S C/σ_y² (no C⁻¹, no square root), and marginally the law of
    C m_σ(x_σ, y) = x_σ/σ² + C b for x_σ = x0 + σ C^½ n: mean Mμ, covariance M Σ Mᵀ + Cov ζ.
    Checked after whitening with the closed-form covariance, so small-eigenvalue directions count."""
    shape = (1, 3, 4)
    op = DenseOperator(torch.randn(5, 12, generator=make_generator(2), dtype=D64), shape)
    C = FourierCovariance(shape, tau=2.0, s=2.0)
    prior = c_shaped_gaussian(shape, C, 4)
    sigma, sigma_y, n = 0.7, 0.2, 200_000
    A, Cd = op.to_dense(), dense_cov(C)
    M = torch.eye(12, dtype=D64) / sigma**2 + Cd @ A.T @ A / sigma_y**2
    K = Cd / sigma**2 + Cd @ A.T @ A @ Cd / sigma_y**2
    tol = 5 * math.sqrt(2 / n)

    def whitened_cov(samples, mean, cov):
        Linv = torch.linalg.inv(torch.linalg.cholesky(cov))
        w = (samples - mean) @ Linv.T
        return w.mean(0), w.T @ w / n

    g = make_generator(5)
    x0 = prior.sample(n, g)
    z = auxiliary_sample(x0, torch.full((n,), sigma, dtype=D64), op, sigma_y, g, noise_cov=C).flatten(1)
    m, c = whitened_cov(z - x0.flatten(1) @ M.T, torch.zeros(12, dtype=D64), K)
    assert m.abs().max() < 5 / math.sqrt(n) and (c - torch.eye(12, dtype=D64)).abs().max() < tol
    marg = M @ prior.cov @ M.T + K
    m, c = whitened_cov(z, M @ prior.mean, marg)
    assert m.abs().max() < 5 / math.sqrt(n) and (c - torch.eye(12, dtype=D64)).abs().max() < tol
    # the sampler's input for independently simulated pairs (x_σ, y)
    g2 = make_generator(6)
    x0b = prior.sample(n, g2)
    xs = x0b + sigma * C.sample(x0b, g2)
    yb = op(x0b) + sigma_y * torch.randn((n, *op.y_shape), generator=g2, dtype=D64)
    zs = information_vector(xs, sigma, information_offset(yb, op, sigma_y, noise_cov=C)).flatten(1)
    m, c = whitened_cov(zs, M @ prior.mean, marg)
    assert m.abs().max() < 5 / math.sqrt(n) and (c - torch.eye(12, dtype=D64)).abs().max() < tol


# ------------------------------------------------------------------------------------------ sampler moments
@pytest.mark.parametrize("name", ["blur", "inpaint"])
@pytest.mark.parametrize("sampler", ["heun", "edm"])
def test_sampler_with_exact_oracle_and_C_noise_reproduces_posterior(name, sampler):
    """Start σ_max C^½ n, inject N(0, C) noise (EDM churn): posterior mean within 5 SE, covariance
    within 5% (Frobenius) and within 0.1 after whitening by Σ_post. White noise here fails by far."""
    shape = (1, 4, 4)
    C = FourierCovariance(shape, tau=3.0, s=2.0)
    if name == "blur":
        op, prior = Blur(shape, kernel_size=3, blur_sigma=1.0).to(D64), GaussianRandomField(shape, 4.0, 2.5, mean=0.2).to(D64)
    else:
        op = Inpainting(shape, keep_ratio=0.5, seed=1).to(D64)
        prior = c_shaped_gaussian(shape, C, 3)
    sigma_y, n = 0.1, 12_000
    _, y = measure(prior, op, sigma_y, 11)
    post = prior.posterior(op, y, sigma_y)
    post = post.to_dense_prior() if hasattr(post, "to_dense_prior") else post
    mu, cov = post.mean.flatten(), post.cov
    dense_prior = prior.to_dense_prior() if hasattr(prior, "to_dense_prior") else prior  # matrix products: fast on 4×4
    den = posterior_denoiser(FunctionSpaceGaussianDenoiser(dense_prior, op, sigma_y, C), information_offset(y, op, sigma_y, noise_cov=C))
    sigmas = karras_sigmas(64, dtype=D64)
    lam, Q = torch.linalg.eigh(cov)

    def run(noise, n=n):
        g = make_generator(5)
        x = sigmas[0] * (noise or (lambda like, gen: randn(like.shape, gen, dtype=D64)))(torch.empty((n, *shape), dtype=D64), g)
        if sampler == "heun":
            return heun(den, x, sigmas).flatten(1)
        return edm_stochastic(den, x, sigmas, generator=g, churn=10.0, noise=noise).flatten(1)

    s = run(covariance_noise(C))
    se = cov.diag().sqrt() / math.sqrt(n)
    assert ((s.mean(0) - mu).abs() / se).max() < 5
    assert (torch.cov(s.T) - cov).norm() / cov.norm() < 0.05
    white = (s - mu) @ (Q / lam.sqrt())
    assert (torch.cov(white.T) - torch.eye(16, dtype=D64)).abs().max() < 0.1
    wrong = run(None, 2000)  # white start (and white churn): the law of x_σ is not the one D* was derived for
    assert (torch.cov(wrong.T) - cov).norm() / cov.norm() > 1.0


# ------------------------------------------------------------------------------------------ UCoSModule wiring
class _OracleAux(torch.nn.Module):
    """Stands in for the auxiliary network inside UCoSModule (``net`` only tells the module its dtype)."""

    def __init__(self, oracle):
        super().__init__()
        self.oracle, self.net = oracle, torch.nn.Module()
        self.net.weight = torch.nn.Parameter(torch.zeros(1, dtype=D64))

    def forward(self, z, sigma):
        return self.oracle(z, sigma)


def _module(noise_tau, op, sigma_y):
    from lightning_modules.ucos import UCoSModule

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = FNO(1, 1, width=4, modes=2, n_layers=1)
    return UCoSModule(net, operator=op, sigma_y=sigma_y, noise_tau=noise_tau, noise_s=2.0)


def test_module_trains_and_samples_under_C_exactly():
    """UCoSModule(noise_tau=...) threads C through the loss (auxiliary variable), b ↦ C b, the chain start
    and the sampler noise: with the exact oracle as its network, its loss is the Bayes error under C and
    its samples have the posterior's moments."""
    shape, sigma_y = (1, 4, 4), 0.1
    op = Blur(shape, kernel_size=3, blur_sigma=1.0).to(D64)
    model = _module(3.0, op, sigma_y).to(D64)
    C = model.noise_cov
    assert isinstance(C, FourierCovariance) and (C.tau, C.s) == (3.0, 2.0)
    assert isinstance(model.aux.preconditioner, FourierNoisePreconditioner)
    assert model.task_fingerprint()["noise_cov"] == C.config()
    prior = GaussianRandomField(shape, 4.0, 2.5, mean=0.2).to(D64)
    model.aux = _OracleAux(FunctionSpaceGaussianDenoiser(prior, op, sigma_y, C))
    # loss at the oracle = E‖E[x0|C Ỹ] − x0‖² = tr((Σ⁻¹ + C⁻¹/σ² + S/σ_y²)⁻¹)/d (closed form)
    n, sigma = 40_000, 0.4
    g = make_generator(0)
    x0 = prior.sample(n, g)
    loss = model.ucos_loss(x0, torch.full((n,), sigma, dtype=D64), g) / edm_loss_weight(torch.tensor(sigma, dtype=D64), 0.5)
    S = op.to_dense().T @ op.to_dense()
    Sigma = prior.to_dense_prior().cov
    post_cov = torch.linalg.inv(torch.linalg.inv(Sigma) + torch.linalg.inv(dense_cov(C)) / sigma**2 + S / sigma_y**2)
    assert abs(loss.mean() - post_cov.trace() / 16) < 5 * loss.std() / math.sqrt(n)
    # samples through the module's own sampling path (EDM with churn uses the injected noise)
    _, y = measure(prior, op, sigma_y, 12)
    post = prior.posterior(op, y, sigma_y).to_dense_prior()
    op.reset_counts()
    out = model.sample_posterior(y, n_samples=3000, num_steps=64, sampler="edm", churn=4.0)
    assert out["operator_calls"] == {"forward": 0, "adjoint": 1}
    s = out["samples"][0].flatten(1)
    se = post.cov.diag().sqrt() / math.sqrt(3000)
    assert ((s.mean(0) - post.mean).abs() / se).max() < 5
    assert (torch.cov(s.T) - post.cov).norm() / post.cov.norm() < 0.12  # measured 0.065 (Monte Carlo: 0.028 at 20k)


def test_module_without_noise_tau_is_white_noise_ucos():
    """Default ``noise_tau=None``: white preconditioner, no covariance in metadata, and sampling equals the
    white-noise sampler run by hand with the same per-sample seeds (bit for bit)."""
    from diffpost.random import per_sample_generators, seed_for
    from diffpost.ucos import SpectralPreconditioner

    op = Blur((1, 8, 8), kernel_size=3)
    model = _module(None, op, 0.1)
    assert model.noise_cov is None and "noise_cov" not in model.task_fingerprint()
    assert type(model.aux.preconditioner) is SpectralPreconditioner
    y = op(randn((1, 1, 8, 8), make_generator(0)))
    with torch.no_grad():
        out = model.sample_posterior(y, n_samples=2, num_steps=3, sampler="edm", churn=5.0, seed=4)["samples"][0]
        gens = per_sample_generators([seed_for(4, 3, 0, s) for s in range(2)])
        sig = karras_sigmas(3, dtype=torch.float32)
        b = information_offset(y, op, 0.1).repeat_interleave(2, 0)
        ref = edm_stochastic(posterior_denoiser(model.aux, b), sig[0] * randn(b.shape, gens), sig, generator=gens, churn=5.0)
    assert torch.equal(out, ref)


def test_module_checkpoint_records_C_and_rebuilds_it(tmp_path):
    import lightning.pytorch as pl

    from datamodules import GaussianRandomField as GRFImages
    from datamodules import InverseProblemDataModule
    from lightning_modules.checkpoint import load_module, safe_load
    from lightning_modules.ucos import UCoSModule

    op = continuum_blur((1, 16, 16), 1 / 16)
    with torch.random.fork_rng():  # Lightning's loaders draw base seeds from the global RNG
        torch.manual_seed(0)
        dm = InverseProblemDataModule(GRFImages(size=16, length=16), op, sigma_y=0.2, batch_size=8, n_val=4, n_test=4)
        model = _module(3.0, op, 0.2)
        trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0)
        trainer.fit(model, dm)
        trainer.save_checkpoint(tmp_path / "fs.ckpt")
    ckpt = safe_load(tmp_path / "fs.ckpt")
    assert ckpt["diffpost"]["noise_cov"] == FourierCovariance((1, 16, 16), 3.0, 2.0).config()
    assert ckpt["hyper_parameters"]["noise_tau"] == 3.0
    with torch.random.fork_rng():  # rebuilding the network initialises it from the global RNG first
        loaded = load_module(tmp_path / "fs.ckpt", expected=UCoSModule)
    assert loaded.noise_cov.config() == model.noise_cov.config()
    assert torch.equal(loaded.aux.preconditioner.eigenvalues, model.aux.preconditioner.eigenvalues)
    with torch.random.fork_rng(), pytest.raises(ValueError, match="randomized"):
        UCoSModule(FNO(1, 1, width=2, modes=2, n_layers=1), operator=op, sigma_y=0.2, noise_tau=3.0, preconditioner="randomized")


# ------------------------------------------------------------------------------------------ discretisation invariance
# One continuum problem on every grid: GRF prior N(0, (9I − Δ)^(−2)) (unit pointwise variance), Gaussian
# blur of width 1/32 in physical units (1 px at 32², 2 px at 64²), pixel noise σ_y = σ_c √(HW)
# (0.2 at 32², 0.4 at 64²), diffusion noise covariance C = FourierCovariance(τ=6, s=1.5): rougher than
# the prior, so the input estimate G_σ z (Tikhonov for N(0, C)) is ~20% off and the network must learn.
# Truth, measurement noise and sampler noise at 32² and 64² share their continuum Fourier (Hartley)
# coefficients (common random numbers), so the two errors differ only through the model and the grid.
FINE = 64


def _restrict(z, N):
    """Hartley coefficients on the FINE grid → those of the same continuum frequencies on an N grid."""
    lab = torch.fft.fftfreq(N, 1.0 / N).long() % FINE
    return z[..., lab[:, None], lab[None, :]]


def _problem(N, white=False):
    shape = (1, N, N)
    C = IdentityCovariance(shape) if white else FourierCovariance(shape, tau=6.0, s=1.5)
    op = continuum_blur(shape, 1 / 32)
    sigma_y = pixel_sigma_y(0.2 / 32, shape)
    return GaussianRandomField(shape, 3.0, 2.0), C, op, sigma_y, function_space_preconditioner(op, sigma_y, C, rho0=1.0)


def _train_fno(steps, batch, width, modes, layers, lr=5e-3, white=False):
    """Plain torch loop on the UCoS loss under C at 32² (fresh GRF draws every step)."""
    prior, C, op, sigma_y, pre = _problem(32, white)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = FNO(1, 1, width=width, modes=modes, n_layers=layers)
    model = UCoSDenoiser(net, pre, sigma_data=1.0)
    density = EDMTrainingDensity(log_uniform_fraction=0.3)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g, prior32 = make_generator(1), prior.to(dtype=torch.float32)
    for _ in range(steps):
        x0 = prior32.sample(batch, g)
        sigma = density.sample(batch, g)
        z = auxiliary_sample(x0, sigma, op, sigma_y, g, noise_cov=C)
        loss = (edm_loss_weight(sigma, 1.0) * ((model(z, sigma) - x0) ** 2).flatten(1).mean(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net


def _posterior_mean_errors(net, N, n_meas=4, n_samples=16, n_steps=10, white=False):
    """Relative L2 errors (pooled over measurements) against the exact GRF posterior mean at grid N."""
    prior, C, op, sigma_y, pre = _problem(N, white)
    model = UCoSDenoiser(net, pre, sigma_data=1.0)
    g = make_generator(7)
    zx, zy = randn((n_meas, 1, FINE, FINE), g, dtype=D64), randn((n_meas, 1, FINE, FINE), g, dtype=D64)
    zn = randn((n_meas * n_samples, 1, FINE, FINE), g, dtype=D64)
    x = prior.mean + dht2(prior.eigenvalues.sqrt() * _restrict(zx, N))
    y = op(x) + sigma_y * dht2(_restrict(zy, N))
    mu = torch.cat([prior.posterior(op, y[i : i + 1], sigma_y).mean[None] for i in range(n_meas)])
    cb = information_offset(y.float(), op, sigma_y, noise_cov=C)
    smax = torch.full((n_meas,), 80.0)

    def rel(est):
        return float((est.double() - mu).norm() / mu.norm())

    x_start = 80.0 * C.sqrt_apply(dht2(_restrict(zn, N))).float()
    cbs = cb.repeat_interleave(n_samples, 0)
    with torch.no_grad():
        samples = heun(posterior_denoiser(model, cbs), x_start, karras_sigmas(n_steps, dtype=torch.float32))
        exact = FunctionSpaceGaussianDenoiser(prior, op, sigma_y, C)  # same noise, exact D*: Monte Carlo error only
        oracle = heun(posterior_denoiser(exact, cbs.double()), x_start.double(), karras_sigmas(n_steps))
        return {"samples": rel(samples.reshape(n_meas, n_samples, *op.x_shape).mean(1)),
                "mmse": rel(model(cb, smax)),
                "input_estimate": rel(pre.apply(cb, smax)),
                "oracle_samples": rel(oracle.reshape(n_meas, n_samples, *op.x_shape).mean(1))}


def _check_invariance(errors):
    e32, e64 = errors[32], errors[64]
    print(f"\nposterior-mean relative L2 errors: 32² {e32}\n                                  64² {e64}")
    # the model learned: far better than its own input estimate, near the Monte Carlo floor
    assert e32["mmse"] < 0.5 * e32["input_estimate"]
    assert e32["samples"] < 1.5 * e32["oracle_samples"]
    # discretisation invariance (the requirement)
    assert e64["samples"] <= 1.5 * e32["samples"]
    assert e64["mmse"] <= 1.5 * e32["mmse"]


def test_fno_trained_at_32_samples_at_64_fast():
    net = _train_fno(steps=200, batch=16, width=12, modes=6, layers=2)
    _check_invariance({N: _posterior_mean_errors(net, N) for N in (32, 64)})


@pytest.mark.slow
def test_fno_trained_at_32_samples_at_64_longer_and_white_noise_control():
    net = _train_fno(steps=800, batch=16, width=16, modes=8, layers=3)
    _check_invariance({N: _posterior_mean_errors(net, N, n_meas=6, n_samples=32, n_steps=16) for N in (32, 64)})
    # control: the same recipe with white diffusion noise (C = I) is not a continuum model and does not transfer
    white = _train_fno(steps=200, batch=16, width=12, modes=6, layers=2, white=True)
    errors = {N: _posterior_mean_errors(white, N, white=True) for N in (32, 64)}
    print(f"white-noise control: 32² {errors[32]}\n                     64² {errors[64]}")
    assert errors[64]["samples"] > 1.5 * errors[32]["samples"]
