"""ALD: annealed Langevin dynamics for inverse problems (Jalal et al., "Robust Compressed Sensing MRI
with Deep Generative Priors", NeurIPS 2021; METHODS §4).

``num_steps`` is the number ``L`` of geometric levels ``σ_1 > … > σ_L`` from the model's ``σ_max`` to
``σ_min``; at each, ``T = steps_per_level`` unadjusted Langevin steps

    x += α_l (s(x, σ_l) + Aᵀ(y − Ax)/(σ_y² + σ_l²)) + √(2α_l) ε,   α_l = α σ_l²/σ_L²,  s = (D(x, σ_l) − x)/σ_l²

(one network call, one ``A`` and one ``Aᵀ`` each), started from ``σ_1 n``. Each level targets
``p_{σ_l}(x) N(y; Ax, (σ_y² + σ_l²) I)`` (the paper's annealed likelihood). The chain ends at ``σ_L``, so
the output is the final denoise ``D(x, σ_L)`` (one more call): NFE = ``L·T + 1``.

Step size: ``α`` is the step at ``σ_L`` (the paper's parametrisation). Per level the curvature is at most
``1/σ_l²`` (prior) plus ``‖A‖²/(σ_y² + σ_l²)`` (data), so the steps are stable at every level when
``α (1 + ‖A‖²)/σ_L² < 2``; tune α per task (lower it for operators with ``‖A‖ > 1`` such as CT).

Function-space noise ``x_σ = x0 + σ C^½ n``: ``s = (D − x)/σ² = C ∇log p_σ`` (METHODS §0), so the
natural version is Langevin preconditioned by ``C``, ``x += α_l (s + C Aᵀ(y − Ax)/(σ_y² + σ_l²)) +
√(2α_l) C^½ ε``, which has the same target at every level (a fixed positive-definite preconditioner
leaves a Langevin diffusion's stationary law unchanged). C then sets the mixing speed: it helps where
the prior is C-like and hurts where it is not (measured on the d = 16 oracle, tests/test_posterior_ald.py),
and the stability bound reads ``α (1 + ‖A C^½‖²)/σ_L² < 2``.

Paper: NCSNv2's 2311 geometric levels (from level 1155 on), T = 3; our grid is the model's, and the
default is ``L = 333``, ``T = 3`` (≈ 1000 NFE).
"""
from __future__ import annotations

import math

import torch

from diffpost.posterior.base import PosteriorMethod, Run, check_positive


class ALD(PosteriorMethod):
    """``alpha``: the Langevin step α at the smallest level σ_L; ``steps_per_level``: T."""

    default_num_steps = 333
    tuning = {"alpha": (2e-8, 2e-7, 2e-6)}  # stable while α(1 + ‖A‖²)/σ_min² < 2: the operator decides
    allows_noiseless = True  # σ_y² + σ_l² > 0 at every level

    def __init__(self, alpha: float = 2e-6, steps_per_level: int = 3):
        check_positive("ALD", alpha=alpha)
        if isinstance(steps_per_level, bool) or not isinstance(steps_per_level, int) or steps_per_level < 1:
            raise ValueError(f"ALD: steps_per_level must be a positive integer, got {steps_per_level!r}")
        self.alpha, self.steps_per_level = float(alpha), steps_per_level

    @staticmethod
    def levels(sigma_max: float, sigma_min: float, num_levels: int) -> list[float]:
        """``num_levels`` geometric levels from σ_max down to σ_min (``[σ_max]`` for one level)."""
        if num_levels == 1:
            return [float(sigma_max)]
        ratio = math.log(sigma_min / sigma_max) / (num_levels - 1)
        return [float(sigma_max * math.exp(ratio * k)) for k in range(num_levels)]

    def sample(self, run: Run) -> torch.Tensor:
        A, y, cov = run.operator, run.repeat(run.y), run.model.noise_cov
        levels = self.levels(float(run.model.sigma_max), float(run.model.sigma_min), run.num_steps)
        x = run.initial(levels[0])
        for l, s in enumerate(levels):
            step = self.alpha * (s / levels[-1]) ** 2
            for _ in range(self.steps_per_level):
                score = (run.denoise(x, s) - x) / s**2
                g = A.adjoint(y - A.forward(x))
                g = g if cov is None else cov.apply(g)
                x = x + step * (score + g / (run.sigma_y**2 + s**2)) + math.sqrt(2 * step) * run.noise()
            run.emit(l, x, s, levels[l + 1] if l + 1 < len(levels) else 0.0, None)
        return run.denoise(x, levels[-1])
