"""DiffPIR: plug-and-play restoration with a diffusion prior (Zhu et al., "Denoising Diffusion Models
for Plug-and-Play Image Restoration", CVPRW 2023; METHODS §4).

Each step from ``σ_i`` to ``σ_{i+1}``: ``x̂0 = D(x_i, σ_i)``; the data (proximal) step

    z = argmin ‖y − Az‖²/(2σ_y²) + (λ/(2σ_i²))‖z − x̂0‖² = (AᵀA + ρ_i I)⁻¹(Aᵀy + ρ_i x̂0),  ρ_i = λ σ_y²/σ_i²

computed as ``x̂0 + (AᵀA + ρ_i I)⁻¹Aᵀ(y − A x̂0)`` through ``operator.normal_solve`` (``data_prox``);
then ``ε̂ = (x_i − z)/σ_i`` and ``x_{i+1} = z + σ_{i+1}(√(1−ζ) ε̂ + √ζ ε)``. The last step (σ = 0)
returns ``z``. Cost per step: one network call, one ``A`` and one ``Aᵀ`` for the residual, plus the
solve: none for SVD operators (closed form in spectral coordinates, no ``forward``/``adjoint`` call),
one ``A`` and one ``Aᵀ`` per conjugate-gradient iteration otherwise (CT); all counted by the operator.
Noiseless (σ_y = 0, ρ = 0): the limit ``z = x̂0 + A⁺(y − A x̂0)``, so ``A z = y`` exactly.

Function-space noise ``x_σ = x0 + σ C^½ n``: for small σ, ``Cov(x0 | x_σ) ≈ σ² C``, so the quadratic that
stands for ``p(x0 | x_σ)`` is ``(λ/(2σ²))‖z − x̂0‖²_{C⁻¹}`` and the data step becomes
``z = x̂0 + (AᵀA + ρ C⁻¹)⁻¹Aᵀ(y − A x̂0) = x̂0 + C^½(C^½AᵀAC^½ + ρI)⁻¹C^½Aᵀ(y − A x̂0)``: conjugate
gradients on the preconditioned normal operator (needs ``C^½`` only, never ``C⁻¹``); ``ε̂`` and ``ε`` are
then both ``N(0, C)``-shaped. With ``C = I`` this is the formula above.

Paper: 100 NFE, ``λ`` and ``ζ`` per task (ζ ≈ 0.3 for deblurring, ≈ 1 for inpainting). Approximate: its
bias on the Gaussian oracle is measured in tests/test_posterior_diffpir.py.
"""
from __future__ import annotations

import math

import torch

from diffpost.posterior.base import PosteriorMethod, Run, check_fraction, check_positive
from diffpost.posterior.proximal import cg_tolerance, check_cg, data_prox


class DiffPIR(PosteriorMethod):
    """``lam``: the weight λ of the prior quadratic (ρ_i = λ σ_y²/σ_i²); ``zeta``: the share ζ ∈ [0, 1] of
    fresh noise when re-noising; ``cg_tol`` (None: by dtype, ``cg_tolerance``)/``cg_max_iter``: the
    solve for operators without an SVD."""

    default_num_steps = 100
    tuning = {"lam": (1.0, 7.0, 30.0), "zeta": (0.3, 1.0)}  # the paper tunes both per task
    allows_noiseless = True

    def __init__(self, lam: float = 1.0, zeta: float = 0.3, cg_tol: float | None = None, cg_max_iter: int = 100):
        check_positive("DiffPIR", lam=lam)
        check_fraction("DiffPIR", zeta=zeta)
        check_cg("DiffPIR", cg_tol, cg_max_iter)
        self.lam, self.zeta, self.cg_tol, self.cg_max_iter = float(lam), float(zeta), cg_tol, cg_max_iter

    def sample(self, run: Run) -> torch.Tensor:
        A, y, cov = run.operator, run.repeat(run.y), run.model.noise_cov
        sigmas = run.sigmas()
        x = run.initial(sigmas[0])
        keep, fresh = math.sqrt(1.0 - self.zeta), math.sqrt(self.zeta)
        tol = cg_tolerance(self.cg_tol, run.model.dtype)
        for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            x0 = run.denoise(x, s)
            z = data_prox(A, y, x0, self.lam * run.sigma_y**2 / s**2, cov, tol=tol, max_iter=self.cg_max_iter)
            if s_next > 0:
                eps_hat = (x - z) / s
                x = z + s_next * (keep * eps_hat + (fresh * run.noise() if fresh > 0 else 0.0))
            else:
                x = z
            run.emit(i, x, s, s_next, x0)
        return x
