"""Shared oracle set-up for the posterior-method tests (tests/test_posterior_<method>.py):
the Gaussian prior ``N(0, Σ)`` on 4×4 images (d = 16; squared-exponential Σ as in the contract test),
``y = A x0 + η`` with σ_y = 0.1, its closed-form posterior (METHODS §1), a two-mode mixture, and the
method call with the exact prior denoiser in float64.

``operator(name)``: CT enters as its dense matrix (``DenseOperator``): the same ``A`` through the
conjugate-gradient path, without the cost of ``grid_sample`` on thousands of chains. ``OPERATORS`` holds
the real operators (matrix-free CT) for ``check_bands``, the band checks of ΠGDM, DDRM and DDNM.
"""
from __future__ import annotations

import torch

from diffpost.operators import CT, Blur, DenseOperator, Inpainting, LinearOperator
from diffpost.oracle import exact_moments, least_visible_direction, sample_errors, squared_exponential_cov
from diffpost.posterior.base import PosteriorMethod, PosteriorOutput, PriorModel
from diffpost.priors import GaussianPrior, GMMPrior
from diffpost.random import make_generator
from diffpost.schedules import NoiseCovariance

SHAPE = (1, 4, 4)
F64 = torch.float64
SIGMA_Y = 0.1
PRIOR = GaussianPrior(torch.zeros(16, dtype=F64), squared_exponential_cov(SHAPE, 0.25, 1.0, 0.01), SHAPE)
OPERATOR_NAMES = ("blur", "inpaint", "ct")


def operator(name: str) -> LinearOperator:
    if name == "blur":
        return Blur(shape=SHAPE, kernel="gaussian", kernel_size=3, blur_sigma=0.8)
    if name == "inpaint":
        return Inpainting(shape=SHAPE, keep_ratio=0.5, seed=3)
    ct = CT(shape=SHAPE, n_angles=5)
    return DenseOperator(ct.to_dense(), ct.x_shape, ct.y_shape)


def measure(op: LinearOperator, prior=PRIOR, sigma_y: float = SIGMA_Y, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, y)`` with ``x0`` drawn from ``prior``."""
    g = make_generator(seed)
    x = prior.sample(1, g)
    return x, op.forward(x) + sigma_y * torch.randn(1, *op.y_shape, generator=g, dtype=F64)


def draw(method: PosteriorMethod, op: LinearOperator, y: torch.Tensor, num_steps: int, n: int, prior=PRIOR,
         noise_cov: NoiseCovariance | None = None, sigma_y: float = SIGMA_Y, seed: int = 0, **model_kw) -> PosteriorOutput:
    """``n`` posterior samples of one measurement with the exact prior denoiser (for ``noise_cov``)."""
    model = PriorModel(denoiser=lambda x, s: prior.denoise(x, s, noise_cov=noise_cov), x_shape=SHAPE, dtype=F64,
                       noise_cov=noise_cov, **model_kw)
    return method(model, op, y, sigma_y, num_steps=num_steps, n_samples=n, generator=make_generator(seed))


def errors(samples: torch.Tensor, post: GaussianPrior) -> tuple[float, float]:
    """Mean error in posterior standard deviations ``‖m̂ − μ‖/√tr Σ`` and relative covariance error."""
    e = sample_errors(samples.reshape(samples.shape[0], -1), post.mean, post.cov)
    return e["mean_se"] / samples.shape[0] ** 0.5, e["rel_cov"]


def two_mode_prior(op: LinearOperator) -> GMMPrior:
    """Two modes 7.5 within-mode stds apart along the direction ``op`` sees least, weights 0.4/0.6:
    the measurement barely tells them apart, so the posterior keeps both."""
    v = least_visible_direction([op])
    cov = squared_exponential_cov(SHAPE, 0.04, 1.5)
    return GMMPrior(torch.tensor([0.4, 0.6], dtype=F64), torch.stack([-1.5 * v, 1.5 * v]), torch.stack([cov, cov]), SHAPE)


def mode_masses(method: PosteriorMethod, op: LinearOperator, num_steps: int, n: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(sampled mode masses = mean posterior responsibilities, exact posterior weights) on ``two_mode_prior``."""
    gmm = two_mode_prior(op)
    _, y = measure(op, gmm)
    post = gmm.posterior(op, y, SIGMA_Y)
    out = draw(method, op, y, num_steps, n, prior=gmm, **kw)
    return post.mode_probabilities(out.samples[0]).mean(0), post.weights


# ---------------------------------------------------------------- the spectral methods' band checks (ΠGDM, DDRM, DDNM)
GAUSS = PRIOR
#: the real operators (CT matrix-free: conjugate gradients run through grid_sample)
OPERATORS = {
    "blur": lambda: Blur(shape=SHAPE, kernel="gaussian", kernel_size=3, blur_sigma=0.8),
    "inpaint": lambda: Inpainting(shape=SHAPE, keep_ratio=0.5, seed=3),
    "ct": lambda: CT(shape=SHAPE, n_angles=5),
}


def gmm_for(op) -> GMMPrior:
    """Two modes (weights 0.3/0.7) that differ along the direction ``op`` sees least."""
    v = least_visible_direction([op])
    cov = squared_exponential_cov(SHAPE, 0.04, 1.0, nugget=0.01)
    return GMMPrior(torch.tensor([0.3, 0.7], dtype=F64), torch.stack([v, -v]), torch.stack([cov, cov]), SHAPE)


def prior_model(prior, **kw) -> PriorModel:
    noise_cov = kw.get("noise_cov")
    return PriorModel(denoiser=lambda x, s: prior.denoise(x, s, noise_cov=noise_cov), x_shape=SHAPE, dtype=F64,
                      sigma_max=kw.get("sigma_max", 40.0), noise_cov=noise_cov)


def oracle_run(method, prior, op, num_steps: int, n_samples: int, seed: int = 1) -> tuple[dict, PosteriorOutput]:
    """One measurement, ``n_samples`` samples, and ``mean_err``/``cov_err`` (and mode mass for a mixture)."""
    _, y = measure(op, prior, seed=seed)
    post = prior.posterior(op, y[0], SIGMA_Y)
    mu, cov = exact_moments(post)
    out = method(prior_model(prior), op, y, SIGMA_Y, num_steps=num_steps, n_samples=n_samples,
                 generator=make_generator(seed + 100))
    s = out.samples[0].reshape(n_samples, -1)
    res = {"mean_err": float((s.mean(0) - mu).norm() / cov.trace().sqrt()),
           "cov_err": float(torch.linalg.norm(torch.cov(s.T) - cov) / torch.linalg.norm(cov))}
    if isinstance(prior, GMMPrior):
        res["mass"] = float(post.mode_probabilities(out.samples[0], 0.0).mean(0)[0])
        res["exact_mass"] = float(post.weights[0])
    return res, out


def check_bands(method, case: tuple[str, str], bands: dict, num_steps: int, n_samples: int = 1000) -> PosteriorOutput:
    """``oracle_run`` on ``case = (prior, operator)`` (``"gauss"``/``"gmm"``, a key of ``OPERATORS``) and
    an assertion that every measured error lies in its ``(lo, hi)`` band."""
    pname, opname = case
    op = OPERATORS[opname]()
    res, out = oracle_run(method, GAUSS if pname == "gauss" else gmm_for(op), op, num_steps, n_samples)
    for key, (lo, hi) in bands.items():
        assert lo <= res[key] <= hi, f"{key} = {res[key]:.4f} outside [{lo}, {hi}] ({res})"
    return out
