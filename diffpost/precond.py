"""Denoisers ``D(x, σ) ≈ E[x0 | x_σ = x]`` built from raw networks ``net(x, c_noise)``.

``EDMDenoiser`` is the EDM preconditioning (METHODS §2); ``VPEpsAdapter`` turns an ε-predicting
VP network into a σ-space denoiser (METHODS §0), so every sampler sees one interface:
``denoiser(x, sigma)`` with ``sigma`` a ``(B,)`` tensor or a scalar.
"""
from __future__ import annotations

import torch
from torch import nn

from diffpost.schedules import VPSchedule, edm_coefficients


def sigma_batch(sigma: torch.Tensor | float, x: torch.Tensor, *, allow_zero: bool = False) -> torch.Tensor:
    """``sigma`` as a finite ``(B,)`` tensor in ``x``'s dtype/device (a scalar is broadcast).

    Raises ValueError for a wrong shape, non-finite values, or σ ≤ 0 (σ < 0 with ``allow_zero``).
    """
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    batch = x.shape[0]
    if s.dim() == 0:
        s = s.expand(batch)
    elif s.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},) to match x, got {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("sigma must be finite")
    if allow_zero:
        if bool((s < 0).any()):
            raise ValueError("sigma must be >= 0")
    elif bool((s <= 0).any()):
        raise ValueError("sigma must be > 0 (c_noise = ln(σ)/4 is undefined at σ = 0; D(x, 0) = x by definition)")
    return s


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` → ``(B, 1, …, 1)`` broadcasting against ``x``."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


class EDMDenoiser(nn.Module):
    """``D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ))`` with ``F = net``.

    The scalings make the network's input and its regression target ``(x0 − c_skip x)/c_out`` unit
    variance for data of variance ``sigma_data²`` at every σ. Requires σ > 0 (ValueError otherwise);
    at σ = 0 the denoiser is the identity and callers should not evaluate it.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = sigma_batch(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        f = self.net(_per_sample(c_in, x) * x, c_noise)
        if f.shape != x.shape:
            raise ValueError(f"network output shape {tuple(f.shape)} differs from input shape {tuple(x.shape)}")
        return _per_sample(c_skip, x) * x + _per_sample(c_out, x) * f


class VPEpsAdapter(nn.Module):
    """σ-space denoiser from an ε-prediction network of the linear-β VP SDE (METHODS §0).

    ``x_t = α_t x0 + s_t n`` with ``α_t = exp(−B(t)/2)``, ``s_t² = 1 − α_t²``,
    ``B(t) = β_min t + (β_max − β_min) t²/2`` is ``x_σ = x_t/α_t`` with ``σ = s_t/α_t``, hence
    ``α = 1/sqrt(1 + σ²)``, ``B(t) = ln(1 + σ²)`` and

        D(x, σ) = x − σ ε(α x, time_scale · t(σ)).

    ``eps_net(x_t, t)`` takes the continuous time ``t ∈ [0, 1]``; set ``time_scale`` (e.g. 999) for
    networks indexed by discrete DDPM steps. σ beyond ``σ(t=1)`` (≈ 152 for the defaults) maps to
    t > 1, outside what such a network was trained on. σ = 0 is allowed (t = 0, D = x).
    """

    def __init__(self, eps_net: nn.Module, beta_min: float = 0.1, beta_max: float = 20.0, time_scale: float = 1.0):
        super().__init__()
        self.eps_net = eps_net
        self.schedule = VPSchedule(beta_min, beta_max)  # validates the betas
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.time_scale = float(time_scale)

    def t_from_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """VP time of a noise level: ``B(t) = ln(1 + σ²)`` solved for t ≥ 0."""
        return self.schedule.t_of_sigma(sigma)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = sigma_batch(sigma, x, allow_zero=True)
        alpha = torch.rsqrt(1 + sigma**2)
        t = self.t_from_sigma(sigma)
        eps = self.eps_net(_per_sample(alpha, x) * x, self.time_scale * t)
        if eps.shape != x.shape:
            raise ValueError(f"eps_net output shape {tuple(eps.shape)} differs from input shape {tuple(x.shape)}")
        return x - _per_sample(sigma, x) * eps


__all__ = ["EDMDenoiser", "VPEpsAdapter", "sigma_batch"]
