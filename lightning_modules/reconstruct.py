"""Reconstructors: how validation callbacks and scripts turn measurements into an estimate.

A reconstructor maps ``(module, y, operator, sigma_y, index)`` to ``(mean, samples_or_None)``. The
classical ones need no network; ``PosteriorSampling`` calls the module's ``sample_posterior`` (UCoS,
DPS, ... modules implement it), so callbacks accept every posterior sampler without change.
"""
from __future__ import annotations

import torch

from diffpost.config import Configurable
from diffpost.operators import LinearOperator
from lightning_modules.sampling import SamplerName


class Reconstructor(Configurable):
    #: shown in metric names, e.g. val/tikhonov/psnr
    name: str = "recon"

    def __call__(self, module, y: torch.Tensor, operator: LinearOperator, sigma_y: float, index: torch.Tensor):
        raise NotImplementedError


class Tikhonov(Reconstructor):
    """``argmin_x ‖y − Ax‖²/(2σ_y²) + ‖x‖²/(2τ²)``, i.e. ``(AᵀA + (σ_y/τ)² I) x = Aᵀy``.

    ``prior_std`` τ is the per-pixel prior scale (data in [-1, 1]: about 0.5).
    """

    name = "tikhonov"

    def __init__(self, prior_std: float = 0.5):
        if prior_std <= 0:
            raise ValueError("Tikhonov: prior_std must be positive")
        self.prior_std = prior_std

    def __call__(self, module, y, operator, sigma_y, index):
        rho = max(sigma_y, 1e-6) ** 2 / self.prior_std**2
        return operator.normal_solve(operator.adjoint(y), rho), None


class PseudoInverse(Reconstructor):
    name = "pinv"

    def __call__(self, module, y, operator, sigma_y, index):
        return operator.pinv(y), None


class PosteriorSampling(Reconstructor):
    """Posterior mean over ``n_samples`` draws of the module's own posterior sampler."""

    name = "posterior"

    def __init__(self, n_samples: int = 4, num_steps: int = 18, sampler: SamplerName = "heun", seed: int = 0):
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"PosteriorSampling: n_samples must be a positive integer, got {n_samples!r}")
        self.n_samples, self.num_steps, self.sampler, self.seed = n_samples, num_steps, sampler, seed

    def __call__(self, module, y, operator, sigma_y, index):
        if not hasattr(module, "sample_posterior"):
            raise TypeError(f"{type(module).__name__} has no sample_posterior(); use Tikhonov or PseudoInverse")
        samples = module.sample_posterior(y, operator=operator, sigma_y=sigma_y, index=index, n_samples=self.n_samples,
                                          num_steps=self.num_steps, sampler=self.sampler, seed=self.seed)["samples"]
        return samples.mean(1), samples
