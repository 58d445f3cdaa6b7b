"""DDRM: denoising diffusion restoration models (Kawar et al., "Denoising Diffusion Restoration
Models", NeurIPS 2022; METHODS §4).

Own steps in the spectral coordinates of ``A = U diag(s) Vᵀ``: ``x̄ = Vᵀx``, ``x̄0 = Vᵀ x̂0``,
``ȳ_j = (Uᵀy)_j / s_j``, ``τ_j = σ_y / s_j``. From ``σ`` to ``σ'``, per coordinate:

- ``s_j = 0``:      ``x̄0_j + √(1−η²) σ'(x̄_j − x̄0_j)/σ + η σ' ε_j``;
- ``σ' < τ_j``:     ``x̄0_j + √(1−η²) σ'(ȳ_j − x̄0_j)/τ_j + η σ' ε_j``;
- ``σ' ≥ τ_j``:     ``(1−η_b) x̄0_j + η_b ȳ_j + √(σ'² − η_b² τ_j²) ε_j``;

then ``x = V x̄``. The chains start as in the paper: ``x̄_j = ȳ_j + √(σ_0² − τ_j²) ε_j`` where
``σ_0 ≥ τ_j`` on the range, ``σ_0 ε_j`` elsewhere. Noiseless (``σ_y = 0``, ``η_b = 1``): the observed
coordinates of the result equal ``ȳ`` exactly. Paper: η = 0.85, η_b = 1, 20 steps. One network call
per step, no VJP; the only operator use is ``Uᵀy`` once per measurement.
"""
from __future__ import annotations

import math

import torch

from diffpost.posterior.base import Run, check_fraction
from diffpost.posterior.spectral import SpectralMeasurement, SpectralMethod, count_transforms, spectral_denoise


def ddrm_update(xbar: torch.Tensor, x0bar: torch.Tensor, m: SpectralMeasurement, sigma: float, sigma_next: float,
                eta: float, eta_b: float, eps: torch.Tensor) -> torch.Tensor:
    """One DDRM step in spectral coordinates (the three cases above); ``eps`` white ``(N, x_dim)``."""
    keep = math.sqrt(1.0 - eta**2)
    tau = m.tau
    free = x0bar + keep * sigma_next * (xbar - x0bar) / sigma + eta * sigma_next * eps
    safe_tau = torch.where(torch.isfinite(tau) & (tau > 0), tau, torch.ones_like(tau))
    below = x0bar + keep * sigma_next * (m.ybar - x0bar) / safe_tau + eta * sigma_next * eps
    above = (1.0 - eta_b) * x0bar + eta_b * m.ybar + torch.sqrt((sigma_next**2 - (eta_b * tau) ** 2).clamp_min(0.0)) * eps
    return torch.where(~m.observed, free, torch.where(sigma_next < tau, below, above))


class DDRM(SpectralMethod):
    """``eta``: η (noise share of the step); ``eta_b``: η_b (weight of ``ȳ`` where the diffusion noise
    exceeds the measurement noise). Needs an operator with a closed-form SVD."""

    default_num_steps = 20
    tuning = {"eta": (0.5, 0.7, 0.85, 1.0)}  # the noise share of the step; the paper's 0.85 is tuned for FFHQ/ImageNet

    def __init__(self, eta: float = 0.85, eta_b: float = 1.0):
        check_fraction("DDRM", eta=eta, eta_b=eta_b)
        self.eta, self.eta_b = float(eta), float(eta_b)

    def sample(self, run: Run) -> torch.Tensor:
        A, m, sigmas = self.spectral_setup(run)
        eps = run.white_noise((A.x_dim,))
        start = m.ybar + torch.sqrt((sigmas[0] ** 2 - m.tau**2).clamp_min(0.0)) * eps
        xbar = torch.where(m.observed & (m.tau <= sigmas[0]), start, sigmas[0] * eps)
        for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            _, x0, x0bar = spectral_denoise(run, A, xbar, s)
            noise = run.white_noise((A.x_dim,)) if s_next > 0 else torch.zeros_like(xbar)
            xbar = ddrm_update(xbar, x0bar, m, s, s_next, self.eta, self.eta_b, noise)
            x = A.V(xbar)
            run.emit(i, x, s, s_next, x0)
        count_transforms(run, len(sigmas) - 1)
        return x
