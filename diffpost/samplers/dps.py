"""Diffusion posterior sampling (DPS, Chung et al. 2023) on an unconditional prior (METHODS §4).

Each step: ``x̂0 = D(x, σ)``; an unconditional reverse step from σ to σ' using ``x̂0``; then the
measurement correction ``x' ← x' − ζ_i ∇_x ‖y − A x̂0(x)‖²`` with ``ζ_i = ζ / ‖y − A x̂0(x)‖`` (the
paper's normalised step; equal to ``2ζ ∇_x‖y − A x̂0‖``, a step of length ~2ζ along the residual's
gradient direction). The gradient backpropagates through the network: one network forward and
backward, one ``A`` and one ``Aᵀ`` (inside autograd) per step. DPS is approximate: its bias on the
Gaussian oracle is measured in the benchmark, not asserted to vanish.
"""
from __future__ import annotations

from typing import Literal

import torch

from diffpost.operators.base import LinearOperator
from diffpost.random import GeneratorLike, randn_like
from diffpost.samplers.base import Callback, Denoiser


def dps(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    y: torch.Tensor,
    operator: LinearOperator,
    *,
    zeta: float = 1.0,
    step: Literal["ancestral", "euler"] = "ancestral",
    generator: GeneratorLike = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPS over the descending σ grid ``sigmas`` (trailing 0 returns the final ``x̂0``).

    ``y`` is ``(B, *y_shape)``, one measurement per chain (repeat it for several samples per
    measurement). ``step``: ``ancestral`` (the paper's stochastic DDPM-like step, written in σ-space
    as the exact Gaussian bridge from σ to σ' given x̂0) or ``euler`` (probability-flow ODE step).
    Needs gradients: runs under ``torch.enable_grad()`` internally even if the caller disabled them.
    """
    if not torch.isfinite(y).all():
        raise ValueError("DPS: measurement contains NaN or Inf values")
    sigmas = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        sigma_b = s.expand(x.shape[0])
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = denoiser(x_in, sigma_b)
            residual = (y - operator(x0)).flatten(1)
            norm = residual.norm(dim=1)
            grad = torch.autograd.grad((norm**2).sum(), x_in)[0]
        operator.counts["adjoint"] += x.shape[0]  # the Aᵀ inside the backward pass
        x0 = x0.detach()
        if s_next == 0:
            x_next = x0
        elif step == "euler":
            x_next = x0 + (s_next / s) * (x - x0)
        else:
            # ancestral VE step: sample x_σ' | x_σ, x̂0 exactly for the Gaussian bridge
            #   mean = x̂0 + (σ'²/σ²)(x − x̂0), var = σ'²(σ² − σ'²)/σ²
            mean = x0 + (s_next**2 / s**2) * (x - x0)
            x_next = mean + (s_next / s) * torch.sqrt(s**2 - s_next**2) * randn_like(x, generator)
        shape = (-1,) + (1,) * (x.dim() - 1)
        x_next = x_next - (zeta / norm.clamp_min(1e-12)).view(shape) * grad
        if not torch.isfinite(x_next).all():
            raise FloatingPointError(f"DPS diverged at step {i} (σ = {float(s):.4g}); lower zeta (now {zeta})")
        if callback is not None:
            callback({"i": i, "x": x_next, "sigma": s, "sigma_next": s_next, "denoised": x0})
        x = x_next.detach()
    return x
