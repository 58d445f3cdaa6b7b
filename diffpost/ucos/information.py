"""UCoS: the information vector, the auxiliary variable and the posterior denoiser (METHODS §3).

For linear ``A`` and Gaussian noise, ``E[x0 | x_σ = x, y]`` depends on ``(x, y)`` only through
``m_σ(x, y) = x/σ² + b`` with ``b = Aᵀy/σ_y²``. Training draws the auxiliary variable
``Ỹ_σ = P_σ x0 + ξ`` with ``ξ = ε1/σ + Aᵀε2/σ_y``; expanding,
``Ỹ_σ = (x0 + σ ε1)/σ² + Aᵀ(A x0 + σ_y ε2)/σ_y² = m_σ(x_σ, y)`` for a simulated pair
``(x_σ, y)``: the law of training inputs is exactly the law of sampling inputs, with one ``A`` and one
``Aᵀ`` per image and no matrix square root.
"""
from __future__ import annotations

from typing import Callable

import torch

from diffpost.operators.base import LinearOperator
from diffpost.random import GeneratorLike, randn
from diffpost.schedules import NoiseCovariance


def _col(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return s.reshape((-1,) + (1,) * (like.dim() - 1)) if s.dim() else s


def information_offset(y: torch.Tensor, operator: LinearOperator, sigma_y: float,
                       noise_cov: NoiseCovariance | None = None) -> torch.Tensor:
    """``b = Aᵀ y / σ_y²``: the ONLY use of the operator when sampling a UCoS posterior.

    With a trace-class diffusion-noise covariance ``C`` (METHODS §3.4) it returns ``C b`` instead, the
    offset of the bounded input ``C m = x/σ² + C b`` (see ``diffpost.ucos.function_space``).
    """
    if not torch.isfinite(y).all():
        raise ValueError("measurement contains NaN or Inf values")
    b = operator.adjoint(y) / sigma_y**2
    return b if noise_cov is None else noise_cov.apply(b)


def information_vector(x: torch.Tensor, sigma: torch.Tensor | float, b: torch.Tensor) -> torch.Tensor:
    """``m_σ(x, y) = x/σ² + b``."""
    return x / _col(sigma, x) ** 2 + b


def auxiliary_sample(x0: torch.Tensor, sigma: torch.Tensor, operator: LinearOperator, sigma_y: float,
                     generator: GeneratorLike = None, noise_cov: NoiseCovariance | None = None) -> torch.Tensor:
    """``Ỹ_σ = P_σ x0 + ξ``, ``ξ = ε1/σ + Aᵀ ε2/σ_y`` (``Γ = σ_y² I``: σ_y is a standard deviation).

    With ``noise_cov = C``: ``C Ỹ_σ = (σ⁻² I + C AᵀA/σ_y²) x0 + σ⁻¹ C^½ ε1 + C Aᵀ ε2/σ_y``, the law of
    ``C m_σ(x_σ, y)`` for ``x_σ = x0 + σ C^½ n`` (same random draws, in the same order).
    """
    eps1 = randn(x0.shape, generator, dtype=x0.dtype, device=x0.device)
    y_clean = operator.forward(x0)
    eps2 = randn(y_clean.shape, generator, dtype=x0.dtype, device=x0.device)
    s = _col(sigma, x0)
    if noise_cov is None:
        return (x0 + s * eps1) / s**2 + operator.adjoint(y_clean + sigma_y * eps2) / sigma_y**2
    return (x0 + s * noise_cov.sqrt_apply(eps1)) / s**2 + noise_cov.apply(operator.adjoint(y_clean + sigma_y * eps2)) / sigma_y**2


def posterior_denoiser(aux_denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], b: torch.Tensor) -> Callable:
    """``D_post(x, σ) = D_θ(x/σ² + b, σ)``: plug into ANY σ-space sampler; no ``A``, no backprop.

    ``b`` is ``(B, *x_shape)`` or ``(1, *x_shape)`` (broadcast over samples of one measurement).
    """

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return aux_denoiser(information_vector(x, sigma, b), sigma)

    return denoise
