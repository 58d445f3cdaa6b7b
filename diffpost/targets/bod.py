"""The biochemical-oxygen-demand (BOD) posterior (METHODS §6.3), a 2-D banana-shaped benchmark of the
transport-map and diffusion-sampler literature (Marzouk et al.; "Diffusion Schrödinger Bridges for
Bayesian Computation").

Model: ``θ ~ N(0, I₂)``; ``A = 0.4 + 0.8 Φ(θ₁) ∈ (0.4, 1.2)``, ``B = 0.01 + 0.3 Φ(θ₂) ∈ (0.01, 0.31)``
(``Φ`` the standard normal CDF, i.e. uniform priors on A and B pushed to an unbounded space);
observations ``y_t = A (1 − e^{−B t}) + ε_t``, ``ε_t ~ N(0, σ²)``, ``σ² = 10⁻³``, at ``t = 1 … 5`` with the
data ``y = (0.18, 0.32, 0.42, 0.49, 0.54)``. ``log_prob`` is the normalised prior times the normalised
likelihood, so its normaliser is the evidence ``p(y)``: ``log_Z`` and the posterior mean and covariance
are computed once by quadrature on a fine grid (no closed form).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffpost.targets.base import Target

#: the data of the benchmark (times in days, demand)
BOD_TIMES = (1.0, 2.0, 3.0, 4.0, 5.0)
BOD_DATA = (0.18, 0.32, 0.42, 0.49, 0.54)


class BiochemicalOxygenDemand(Target):
    """``π(θ) ∝ N(θ; 0, I) Π_t N(y_t; A(θ₁)(1 − exp(−B(θ₂) t)), noise_var)`` on ``R²``.

    ``log_Z``, ``posterior_mean`` and ``posterior_cov`` come from a ``grid``²-point midpoint rule on
    ``[−box, box]²`` (the posterior's mass is well inside ``[−6, 6]²``; the default grid changes log Z by
    < 1e-6 when refined). No exact sampler and no global Lipschitz constant (``lipschitz = None``).
    """

    def __init__(self, data: Sequence[float] = BOD_DATA, times: Sequence[float] = BOD_TIMES, noise_var: float = 1e-3,
                 grid: int = 600, box: float = 6.0):
        t = torch.as_tensor(times, dtype=torch.float64)
        y = torch.as_tensor(data, dtype=torch.float64)
        if t.dim() != 1 or y.shape != t.shape or t.numel() == 0:
            raise ValueError(f"BiochemicalOxygenDemand: data and times must be equal-length 1-D sequences, got {tuple(y.shape)}, {tuple(t.shape)}")
        if not (math.isfinite(noise_var) and noise_var > 0):
            raise ValueError(f"BiochemicalOxygenDemand: noise_var must be positive, got {noise_var}")
        self.dim = 2
        self.times, self.data, self.noise_var = t, y, float(noise_var)
        self.log_Z, self.posterior_mean, self.posterior_cov = self._quadrature(int(grid), float(box))

    def forward_model(self, theta: torch.Tensor) -> torch.Tensor:
        """``A(θ₁)(1 − exp(−B(θ₂) t))`` for every time, ``(B, n_times)``."""
        cdf = 0.5 * torch.erfc(-theta / math.sqrt(2))  # Φ, accurate in both tails
        A = 0.4 + 0.8 * cdf[:, :1]
        B = 0.01 + 0.3 * cdf[:, 1:]
        return A * -torch.expm1(-B * self.times.to(theta))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        r = self.data.to(x) - self.forward_model(x)
        n = self.times.numel()
        loglik = -0.5 * (r * r).sum(1) / self.noise_var - 0.5 * n * math.log(2 * math.pi * self.noise_var)
        return loglik - 0.5 * (x * x).sum(1) - math.log(2 * math.pi)

    def _quadrature(self, n: int, box: float) -> tuple[float, torch.Tensor, torch.Tensor]:
        h = 2 * box / n
        g = -box + h * (torch.arange(n, dtype=torch.float64) + 0.5)
        X, Y = torch.meshgrid(g, g, indexing="ij")
        pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
        lp = torch.cat([self.log_prob(c) for c in pts.split(1 << 18)])
        log_Z = torch.logsumexp(lp, 0) + 2 * math.log(h)
        w = torch.softmax(lp, 0)
        mean = w @ pts
        d = pts - mean
        return float(log_Z), mean, (w[:, None] * d).T @ d

    def __repr__(self) -> str:
        return f"BiochemicalOxygenDemand(n_obs={self.times.numel()}, noise_var={self.noise_var})"
