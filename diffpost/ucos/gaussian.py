"""The exact auxiliary denoiser for a Gaussian prior (METHODS §3.3), the UCoS test oracle.

For ``x0 ~ N(μ, Σ)`` and ``Ỹ = P_σ x0 + ξ``, ``ξ ~ N(0, P_σ)``:
``D*(z, σ) = E[x0 | Ỹ = z] = (Σ⁻¹ + P_σ)⁻¹(Σ⁻¹μ + z)`` with ``P_σ = σ⁻² I + AᵀA/σ_y²``.
"""
from __future__ import annotations

import torch

from diffpost.operators.base import LinearOperator


class GaussianAuxiliaryDenoiser:
    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, operator: LinearOperator, sigma_y: float):
        self.x_shape = operator.x_shape
        d = operator.x_dim
        self.mean = mean.reshape(d).double()
        self.prec = torch.linalg.inv(cov.double())
        A = operator.to_dense(dtype=torch.float64)
        self.ata = A.T @ A / sigma_y**2
        self.eye = torch.eye(d, dtype=torch.float64)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(z.shape[0])
        rhs = (self.prec @ self.mean).unsqueeze(0) + z.reshape(z.shape[0], -1).double()
        out = torch.empty_like(rhs)
        for s in torch.unique(sigma):  # samplers use one σ per step: one solve per distinct σ
            rows = sigma == s
            out[rows] = torch.linalg.solve(self.prec + self.eye / s**2 + self.ata, rhs[rows].T).T
        return out.reshape(z.shape).to(z.dtype)
