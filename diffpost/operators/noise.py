"""Measurement noise models. ``sigma_y`` is a standard deviation in the core's [-1, 1] data range."""
from __future__ import annotations

import math

import torch
from torch import nn

from diffpost.random import GeneratorLike, randn_like


class GaussianNoise(nn.Module):
    """``η ~ N(0, σ_y² I)``: ``Γ = σ_y² I`` everywhere (synthesis, training, sampling)."""

    def __init__(self, sigma_y: float = 0.05):
        super().__init__()
        if not (sigma_y >= 0 and math.isfinite(sigma_y)):
            raise ValueError(f"GaussianNoise: sigma_y must be a finite non-negative number, got {sigma_y}")
        self.sigma_y = float(sigma_y)

    def sample(self, y_clean: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
        if self.sigma_y == 0:
            return y_clean.clone()
        return y_clean + self.sigma_y * randn_like(y_clean, generator)

    forward = sample

    def log_likelihood(self, y: torch.Tensor, y_clean: torch.Tensor) -> torch.Tensor:
        """``log N(y; y_clean, σ_y² I)`` per sample, shape ``(B,)``."""
        if self.sigma_y == 0:
            raise ValueError("GaussianNoise: log-likelihood is undefined for sigma_y = 0")
        r = (y - y_clean).flatten(1)
        m = r.shape[1]
        return -0.5 * (r**2).sum(1) / self.sigma_y**2 - 0.5 * m * math.log(2 * math.pi * self.sigma_y**2)

    def config(self) -> dict:
        return {"sigma_y": self.sigma_y}

    def extra_repr(self) -> str:
        return f"sigma_y={self.sigma_y}"
