"""Oracle cases shared by the posterior-method tests (METHODS §1): float64 4×4 images (d = 16), the
EXACT prior denoiser, and the closed-form posterior to judge samples against.

- ``GAUSS``: ``N(0, Σ)`` with a squared-exponential ``Σ`` (the contract test's prior);
- ``gmm_for(op)``: two modes (weights 0.3/0.7) that differ along the direction ``op`` sees least, so the
  posterior keeps both and a sampler has to weigh them;
- ``oracle_run``: one measurement ``y = A x0 + η`` (``x0`` from the prior), ``S`` samples of a method,
  and its errors: ``mean_err = ‖m̂ − μ_post‖ / sqrt(tr Σ_post)``, ``cov_err = ‖Ĉ − Σ_post‖_F / ‖Σ_post‖_F``
  and, for a mixture, the samples' mean responsibilities against the exact posterior weights.
"""
from __future__ import annotations

import torch

from diffpost.operators import CT, Blur, Inpainting
from diffpost.oracle import exact_moments, least_visible_direction, squared_exponential_cov
from diffpost.posterior.base import PosteriorOutput, PriorModel
from diffpost.priors import GaussianPrior, GMMPrior
from diffpost.random import make_generator

F64 = torch.float64
SHAPE = (1, 4, 4)
SIGMA_Y = 0.1
GAUSS = GaussianPrior(torch.zeros(16, dtype=F64), squared_exponential_cov(SHAPE, 0.25, 1.0, nugget=0.01), SHAPE)
OPERATORS = {
    "blur": lambda: Blur(shape=SHAPE, kernel="gaussian", kernel_size=3, blur_sigma=0.8),
    "inpaint": lambda: Inpainting(shape=SHAPE, keep_ratio=0.5, seed=3),
    "ct": lambda: CT(shape=SHAPE, n_angles=5),
}


def gmm_for(op) -> GMMPrior:
    v = least_visible_direction([op])
    cov = squared_exponential_cov(SHAPE, 0.04, 1.0, nugget=0.01)
    return GMMPrior(torch.tensor([0.3, 0.7], dtype=F64), torch.stack([v, -v]), torch.stack([cov, cov]), SHAPE)


def prior_model(prior, **kw) -> PriorModel:
    noise_cov = kw.get("noise_cov")
    return PriorModel(denoiser=lambda x, s: prior.denoise(x, s, noise_cov=noise_cov), x_shape=SHAPE, dtype=F64,
                      sigma_max=kw.get("sigma_max", 40.0), noise_cov=noise_cov)


def measure(prior, op, seed: int = 1, sigma_y: float = SIGMA_Y) -> tuple[torch.Tensor, torch.Tensor]:
    g = make_generator(seed)
    x0 = prior.sample(1, g)
    return x0, op.forward(x0) + sigma_y * torch.randn(1, *op.y_shape, generator=g, dtype=F64)


def oracle_run(method, prior, op, num_steps: int, n_samples: int, seed: int = 1) -> tuple[dict, PosteriorOutput]:
    _, y = measure(prior, op, seed)
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
