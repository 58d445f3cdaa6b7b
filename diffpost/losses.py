"""Training losses; each returns one value per sample ``(B,)`` and leaves reduction to the caller."""
from __future__ import annotations

from typing import Callable

import torch

from diffpost.precond import sigma_batch
from diffpost.schedules import edm_loss_weight

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def edm_denoising_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor | float,
    noise: torch.Tensor,
    sigma_data: float = 0.5,
) -> torch.Tensor:
    """``λ(σ) · mean_pixels (D(x0 + σ n, σ) − x0)²`` per sample, ``λ = (σ² + σ_d²)/(σ σ_d)²`` (METHODS §2).

    ``noise`` is the standardised draw ``n`` (white, or ``C^½``-coloured for function-space priors),
    passed in so the caller owns the randomness. ``sigma``: ``(B,)`` or a scalar, > 0. With
    ``D = EDMDenoiser(F, σ_d)`` this is the unit-weight regression ``‖F − (x0 − c_skip x)/c_out‖²``.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
    sigma = sigma_batch(sigma, x0)
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1)))
    denoised = denoiser(x0 + s * noise, sigma)
    if denoised.shape != x0.shape:
        raise ValueError(f"denoiser output shape {tuple(denoised.shape)} must equal x0 shape {tuple(x0.shape)}")
    return edm_loss_weight(sigma, sigma_data) * (denoised - x0).square().flatten(1).mean(1)
