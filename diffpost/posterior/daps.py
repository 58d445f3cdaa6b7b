"""DAPS: decoupled annealing posterior sampling (Zhang et al., "Improving Diffusion Inverse Problem
Solving with Decoupled Noise Annealing", CVPR 2025; METHODS §4).

``num_steps`` is the number ``N_A`` of annealing levels ``σ_0 > … > σ_{N_A−1}`` (the model's Karras
grid, trailing 0). At each level:
1. ``x̂0``: the probability-flow ODE from ``x_{σ_i}`` to 0 by ``K = ode_steps`` Euler steps on the
   model's Karras sub-grid ``σ_i … σ_min, 0`` (K network calls; K = 1 is Tweedie's ``D(x, σ_i)``);
2. ``x0 ~ p(x0 | x̂0, y) ∝ N(x0; x̂0, r_i² I) N(y; A x0, σ_y² I)``, ``r_i = σ_i`` (paper, ``r_schedule =
   "sigma"``) or ``r_i² = σ_i² σ_d²/(σ_i² + σ_d²)`` (``"sigma_data"``: the spread of x0 | x_σ under a
   ``N(0, σ_d² I)`` data model, as in ΠGDM), drawn
   - ``exact=True``: by perturb-and-solve, exact for linear-Gaussian likelihoods,
     ``x0 = (AᵀA/σ_y² + I/r²)⁻¹(Aᵀ(y + σ_y ε1)/σ_y² + (x̂0 + r ε2)/r²)`` (``data_prox``: closed form for
     SVD operators, conjugate gradients otherwise);
   - ``exact=False`` (paper): ``N_L = langevin_steps`` unadjusted Langevin steps from ``x̂0``,
     ``x0 += η_i(−(x0 − x̂0)/r_i² + Aᵀ(y − A x0)/σ_y²) + √(2η_i) ε`` (one ``A`` and one ``Aᵀ`` each);
3. ``x_{σ_{i+1}} = x0 + σ_{i+1} ε`` (the last level, σ = 0, returns x0).

NFE = ``N_A·K`` (the last level, at σ_min, takes a single call: ``(N_A − 1)·K + 1``); "DAPS-1K" is
``N_A = 200``, ``K = 5``. Step size: the paper's absolute learning rate (decayed linearly) exceeds the
stability limit ``2/(1/r² + ‖A‖²/σ_y²)`` of the Langevin step once r falls below it (the paper stops the
annealing at σ = 0.1; our grids go to σ_min = 0.002), so ``langevin_step`` is the fraction of
``1/(1/r_i² + ‖A‖²/σ_y²)`` used at every level (``‖A‖²`` from the SVD, or 30 power iterations once per
call: 30 ``A`` and 30 ``Aᵀ`` on one image, counted).

Function-space noise ``x_σ = x0 + σ C^½ n``: ``Cov(x0 | x_σ)`` is then ``≈ r² C``, so the Gaussian factor is
``N(x0; x̂0, r² C)``; the exact draw uses ``x̂0 + r C^½ ε2`` and the ``C⁻¹`` proximal metric (``data_prox``),
the Langevin steps are preconditioned by ``C`` (drift ``−(x0 − x̂0)/r² + C Aᵀ(y − A x0)/σ_y²``, noise
``N(0, C)``, same target; C sets the mixing speed, ``‖AC^½‖²`` the step) and the re-noising draws
``N(0, C)``.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from diffpost.operators.base import SVDOperator
from diffpost.posterior.base import PosteriorMethod, Run, check_positive
from diffpost.posterior.proximal import cg_tolerance, check_cg, data_prox
from diffpost.posterior.steps import ddim_step
from diffpost.random import make_generator, randn
from diffpost.schedules import IdentityCovariance

#: power iterations for ‖A‖² (Langevin step size) on operators without an SVD
POWER_ITERATIONS = 30


class DAPS(PosteriorMethod):
    """``ode_steps`` K; ``exact``: perturb-and-solve draw instead of Langevin; ``langevin_steps`` N_L and
    ``langevin_step`` (fraction of the stability limit); ``r_schedule``; ``cg_tol`` (None: by dtype)/``cg_max_iter``."""

    default_num_steps = 200
    tuning = {"langevin_step": (0.03, 0.1, 0.3)}  # a fraction of the Langevin stability limit

    def __init__(self, ode_steps: int = 5, exact: bool = False, langevin_steps: int = 100, langevin_step: float = 0.1,
                 r_schedule: Literal["sigma", "sigma_data"] = "sigma", cg_tol: float | None = None, cg_max_iter: int = 100):
        for name, v in (("ode_steps", ode_steps), ("langevin_steps", langevin_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DAPS: {name} must be a positive integer, got {v!r}")
        if not isinstance(exact, bool):
            raise ValueError(f"DAPS: exact must be true or false, got {exact!r}")
        check_positive("DAPS", langevin_step=langevin_step)
        if langevin_step >= 2:
            raise ValueError(f"DAPS: langevin_step is a fraction of the stability limit and must be < 2, got {langevin_step}")
        if r_schedule not in ("sigma", "sigma_data"):
            raise ValueError(f"DAPS: r_schedule must be 'sigma' or 'sigma_data', got {r_schedule!r}")
        check_cg("DAPS", cg_tol, cg_max_iter)
        self.ode_steps, self.exact, self.langevin_steps = ode_steps, exact, langevin_steps
        self.langevin_step, self.r_schedule = float(langevin_step), r_schedule
        self.cg_tol, self.cg_max_iter = cg_tol, cg_max_iter

    def r(self, sigma: float, sigma_data: float) -> float:
        """The assumed spread ``r_i`` of ``x0 | x_σ``."""
        if self.r_schedule == "sigma":
            return sigma
        return sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)

    def sample(self, run: Run) -> torch.Tensor:
        y = run.repeat(run.y)
        sigmas = run.sigmas()
        lip = None if self.exact else self._gram_norm(run)
        x = run.initial(sigmas[0])
        for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            x0_hat = self._ode(run, x, s)
            r = self.r(s, float(run.model.sigma_data))
            x0 = self._exact(run, y, x0_hat, r) if self.exact else self._langevin(run, y, x0_hat, r, lip)
            x = x0 + s_next * run.noise() if s_next > 0 else x0
            run.emit(i, x, s, s_next, x0_hat)
        return x

    # ------------------------------------------------------------------ the three parts of a level
    def _ode(self, run: Run, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``x̂0``: K Euler steps of the probability-flow ODE from σ to 0 (one call at σ ≤ σ_min)."""
        single = self.ode_steps == 1 or sigma <= float(run.model.sigma_min) * (1 + 1e-6)
        grid = [sigma, 0.0] if single else run.sigmas(self.ode_steps, sigma_max=sigma)
        for a, b in zip(grid[:-1], grid[1:]):
            x = ddim_step(x, run.denoise(x, a), a, b, 0.0)
        return x

    def _exact(self, run: Run, y: torch.Tensor, x0_hat: torch.Tensor, r: float) -> torch.Tensor:
        """Perturb-and-solve: the MAP of the perturbed problem is an exact draw of the Gaussian."""
        y_pert = y + run.sigma_y * run.white_noise(run.operator.y_shape)
        m = x0_hat + r * run.noise()
        return data_prox(run.operator, y_pert, m, run.sigma_y**2 / r**2, run.model.noise_cov,
                         tol=cg_tolerance(self.cg_tol, run.model.dtype), max_iter=self.cg_max_iter)

    def _langevin(self, run: Run, y: torch.Tensor, x0_hat: torch.Tensor, r: float, lip: float) -> torch.Tensor:
        A, cov, sy2 = run.operator, run.model.noise_cov, run.sigma_y**2
        eta = self.langevin_step / (1.0 / r**2 + lip / sy2)
        x0 = x0_hat
        for _ in range(self.langevin_steps):
            g = A.adjoint(y - A.forward(x0))
            g = g if cov is None else cov.apply(g)
            x0 = x0 + eta * (g / sy2 - (x0 - x0_hat) / r**2) + math.sqrt(2 * eta) * run.noise()
        return x0

    def _gram_norm(self, run: Run) -> float:
        """``‖A C^½‖²``, the largest eigenvalue of the (preconditioned) normal operator."""
        A, cov = run.operator, run.model.noise_cov
        cov = None if isinstance(cov, IdentityCovariance) else cov
        if cov is None and isinstance(A, SVDOperator):
            return float(A.singular_values.abs().max()) ** 2
        half = (lambda v: v) if cov is None else cov.sqrt_apply
        # a fixed start (not the chains' generators): the estimate must not depend on the batch
        v = randn((1, *A.x_shape), make_generator(0), dtype=run.model.dtype, device=run.model.device)
        lam = 0.0
        for _ in range(POWER_ITERATIONS):
            v = v / v.norm()
            w = half(A.gram(half(v)))
            lam = float((v * w).sum())
            v = w
        return lam * 1.05  # power iteration approaches from below: a small margin keeps the step stable
