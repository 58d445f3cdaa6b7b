"""Reconstructors: how validation callbacks and scripts turn measurements into an estimate.

A reconstructor maps ``(module, y, operator, sigma_y, index)`` to ``(mean, samples_or_None)``. The
classical ones need no network; ``PosteriorSampling`` runs any ``diffpost.posterior`` method on the
module's ``posterior_model()`` (a prior being trained, a UCoS model, a ``PosteriorModule``), so
callbacks accept every posterior method without change.
"""
from __future__ import annotations

import torch

from diffpost.config import Configurable
from diffpost.operators import LinearOperator
from diffpost.posterior.base import PosteriorMethod
from lightning_modules.sampling import sample_posterior


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
    """Posterior mean over ``n_samples`` draws of ``method`` (default: the module's own, e.g. UCoS for
    a ``UCoSModule``); a mean estimator (RMP, UCoSMMSE) gives its one estimate and no samples.
    Metric names use the method's name (``val/dps/psnr``), or ``posterior`` for the module's default."""

    def __init__(self, method: PosteriorMethod | None = None, n_samples: int = 4, num_steps: int = 18, seed: int = 0):
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"PosteriorSampling: n_samples must be a positive integer, got {n_samples!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"PosteriorSampling: num_steps must be a positive integer, got {num_steps!r}")
        self.method, self.n_samples, self.num_steps, self.seed = method, n_samples, num_steps, seed
        self.name = "posterior" if method is None else method.name

    def __call__(self, module, y, operator, sigma_y, index):
        if not hasattr(module, "posterior_model"):
            raise TypeError(f"{type(module).__name__} has no posterior_model(); use Tikhonov or PseudoInverse")
        out = sample_posterior(module, y, method=self.method, operator=operator, sigma_y=sigma_y, index=index,
                               n_samples=self.n_samples, num_steps=self.num_steps, seed=self.seed)
        return out.mean, None if out.mean_only else out.samples
