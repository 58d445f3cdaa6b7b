"""An image posterior with an explicit Gaussian-random-field prior (METHODS §1, §6.3).

``π(x) ∝ N(x; μ, Σ_GRF) N(y; A x, σ_y² I)`` over images ``(C, H, W)`` flattened to ``d = C·H·W``
(``d ≥ 32² = 1024`` in use). The posterior is Gaussian, so its mean, covariance, evidence and samples are
exact (the prior's ``posterior``; dense at 32², which the mixture form needs anyway for the closed-form
score and rdMC's regularised-posterior oracles). A stiff target: the score's Lipschitz constant is the
largest posterior precision, ``≈ max(1/e_k) + ‖A‖²/σ_y²``.
"""
from __future__ import annotations

import torch

from diffpost.operators.base import LinearOperator
from diffpost.targets.gaussian import LinearGaussianPosterior


class ImagePosterior(LinearGaussianPosterior):
    """``grf_prior``: a ``diffpost.priors`` Gaussian over ``(C, H, W)`` (e.g. ``GaussianRandomField``);
    ``operator``: blur, CT or any ``LinearOperator`` on that shape; ``y``: one measurement."""

    def __init__(self, grf_prior, operator: LinearOperator, y: torch.Tensor, sigma_y: float):
        shape = tuple(getattr(grf_prior, "shape", ()))
        if len(shape) != 3:
            raise ValueError(f"ImagePosterior: the prior must be over images (C, H, W), got shape {shape}")
        super().__init__(grf_prior, operator, y, sigma_y)

    @property
    def image_mean(self) -> torch.Tensor:
        """Exact posterior mean as an image ``(C, H, W)``."""
        return self.posterior_mean.reshape(self.shape)

    @property
    def image_std(self) -> torch.Tensor:
        """Exact per-pixel posterior standard deviation ``(C, H, W)``."""
        return torch.diagonal(self.posterior_cov).sqrt().reshape(self.shape)
