"""Classic low-dimensional targets (METHODS §6.3): 2-D mixtures with known mode masses, Neal's funnel."""
from __future__ import annotations

import math
from typing import Literal

import torch

from diffpost.random import GeneratorLike, make_generator, rand, randn
from diffpost.targets.base import Target
from diffpost.targets.gaussian import GaussianMixture

_LOG_2PI = math.log(2 * math.pi)


class FourMode2D(GaussianMixture):
    """Four unit-covariance modes with weights ``(0.1, 0.2, 0.3, 0.4)``, normalised (``log_Z = 0``).

    ``layout="corners"``: means ``radius · (1, 1), (−1, 1), (−1, −1), (1, −1)`` (neighbours ``2·radius``
    apart); ``"axes"``: ``radius · (1, 0), (0, 1), (−1, 0), (0, −1)`` (neighbours ``√2·radius`` apart).
    """

    def __init__(self, radius: float = 8.0, layout: Literal["corners", "axes"] = "corners"):
        if not (math.isfinite(radius) and radius > 0):
            raise ValueError(f"FourMode2D: radius must be positive and finite, got {radius}")
        if layout == "corners":
            unit = [[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]]
        elif layout == "axes":
            unit = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
        else:
            raise ValueError(f"FourMode2D: layout must be 'corners' or 'axes', got {layout!r}")
        super().__init__([0.1, 0.2, 0.3, 0.4], radius * torch.tensor(unit, dtype=torch.float64), 1.0)
        self.radius = float(radius)
        self.layout = layout


class FortyMode2D(GaussianMixture):
    """40 equally weighted modes with means uniform in ``[−40, 40]²`` (drawn from ``seed``), as in the
    flow-annealed-IS / diffusion-sampler literature; covariance ``std² I`` (unit by default; some papers
    use a slightly wider component scale, pass ``std`` to match). ``log_Z = 0``."""

    def __init__(self, seed: int = 0, std: float = 1.0, n_modes: int = 40, box: float = 40.0):
        if not (std > 0 and box > 0 and n_modes >= 1):
            raise ValueError("FortyMode2D: std, box must be positive and n_modes >= 1")
        means = (2 * rand((n_modes, 2), make_generator(seed), dtype=torch.float64) - 1) * box
        super().__init__(torch.full((n_modes,), 1.0 / n_modes, dtype=torch.float64), means, std**2)
        self.seed = int(seed)


class Funnel(Target):
    """Neal's funnel: ``x1 ~ N(0, 3²)``, ``x_{2..d} | x1 ~ N(0, e^{x1} I)``; normalised, ``log_Z = 0``.

    The score is not globally Lipschitz (curvature ``e^{−x1}`` in the neck), so ``lipschitz`` is ``None``.
    """

    def __init__(self, dim: int = 10, scale: float = 3.0):
        if dim < 2:
            raise ValueError(f"Funnel: dim must be at least 2, got {dim}")
        self.dim = int(dim)
        self.scale = float(scale)
        self.log_Z = 0.0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x1, rest = x[:, 0], x[:, 1:]
        n = self.dim - 1
        lp1 = -0.5 * x1**2 / self.scale**2 - math.log(self.scale) - 0.5 * _LOG_2PI
        lp2 = -0.5 * (rest**2).sum(1) * torch.exp(-x1) - 0.5 * n * x1 - 0.5 * n * _LOG_2PI
        return lp1 + lp2

    def log_prob_and_grad(self, x):
        lp = self.log_prob(x)
        x1, rest = x[:, 0], x[:, 1:]
        inv = torch.exp(-x1)
        g1 = -x1 / self.scale**2 + 0.5 * (rest**2).sum(1) * inv - 0.5 * (self.dim - 1)
        return lp, torch.cat([g1[:, None], -rest * inv[:, None]], dim=1)

    def grad_log_prob(self, x):
        return self.log_prob_and_grad(x)[1]

    def sample(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        z = randn((n, self.dim), generator, dtype=self.dtype)
        x1 = self.scale * z[:, :1]
        return torch.cat([x1, torch.exp(0.5 * x1) * z[:, 1:]], dim=1)
