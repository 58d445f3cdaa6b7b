"""Steps shared by the methods that take their own steps on the σ grid (METHODS §4).

σ-space (``x_σ = x0 + σ n``): given ``x̂0``, the DDIM-η step from σ to σ' < σ is

    x' = x̂0 + sqrt(σ'² − c²) (x − x̂0)/σ + c ε,   c = η σ' sqrt(1 − σ'²/σ²)

``η = 0`` is the deterministic DDIM / probability-flow step, ``η = 1`` the ancestral step (the exact
Gaussian bridge ``x_σ' | x_σ, x̂0``: mean ``x̂0 + (σ'²/σ²)(x − x̂0)``, variance ``σ'²(σ² − σ'²)/σ²``).
A step to ``σ' = 0`` returns ``x̂0``.
"""
from __future__ import annotations

import math

import torch


def ddim_noise_scale(sigma: float, sigma_next: float, eta: float) -> float:
    """``c = η σ' sqrt(1 − σ'²/σ²)``: the standard deviation of the fresh noise of a DDIM-η step."""
    if sigma_next <= 0:
        return 0.0
    return eta * sigma_next * math.sqrt(max(0.0, 1.0 - (sigma_next / sigma) ** 2))


def ddim_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float, eta: float,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """The DDIM-η step from σ to σ' given ``x̂0``; ``noise`` (``N(0, C)``) is needed when ``η > 0``."""
    if sigma_next <= 0:
        return x0
    c = ddim_noise_scale(sigma, sigma_next, eta)
    out = x0 + (math.sqrt(max(0.0, sigma_next**2 - c**2)) / sigma) * (x - x0)
    if c > 0:
        if noise is None:
            raise ValueError("ddim_step: eta > 0 needs a noise draw")
        out = out + c * noise
    return out


def ancestral_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """The ancestral (η = 1) step: a draw of ``x_σ' | x_σ = x, x0 = x̂0``."""
    return ddim_step(x, x0, sigma, sigma_next, 1.0, noise)


def per_chain(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(N,)`` vector shaped to broadcast over ``(N, ...)``."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))
