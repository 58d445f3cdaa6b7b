"""The auxiliary x0-predictor ``D_θ(ỹ, σ) = u + c_out(σ) F_θ(u, c_noise(σ))``, ``u = G_σ ỹ`` (METHODS §3.1).

``u`` is the preconditioned (Tikhonov-like) estimate on the data scale; the network only learns the
residual. ``c_out = σσ_d/sqrt(σ² + σ_d²)`` and ``c_noise = ¼ ln σ`` follow EDM: the residual is O(σ) at
small σ and O(σ_d) once the measurement dominates.
"""
from __future__ import annotations

import torch
from torch import nn

from diffpost.precond import sigma_batch
from diffpost.schedules import edm_coefficients
from diffpost.ucos.preconditioners import Preconditioner


class UCoSDenoiser(nn.Module):
    def __init__(self, net: nn.Module, preconditioner: Preconditioner, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.preconditioner, self.sigma_data = net, preconditioner, float(sigma_data)

    def tikhonov(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``u = G_σ z``: the input estimate the network corrects."""
        return self.preconditioner.apply(z, sigma_batch(sigma, z))

    def forward(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = sigma_batch(sigma, z)
        u = self.preconditioner.apply(z, sigma)
        _, c_out, _, c_noise = edm_coefficients(sigma, self.sigma_data)
        return u + c_out.view(-1, *([1] * (z.dim() - 1))) * self.net(u, c_noise)
