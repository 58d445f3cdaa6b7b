"""DPS: diffusion posterior sampling (Chung et al., "Diffusion Posterior Sampling for General Noisy
Inverse Problems", ICLR 2023; METHODS §4).

Each step: ``x̂0 = D(x, σ)``; an unconditional reverse step from σ to σ' using ``x̂0`` (ancestral, the
paper's stochastic step, or the probability-flow Euler step); then the measurement correction
``x' ← x' − ζ_i ∇_x ‖y − A x̂0(x)‖²`` with ``ζ_i = ζ/‖y − A x̂0(x)‖`` (the gradient of the SQUARED
residual scaled by the inverse residual norm, as in the paper's algorithm). The gradient is
``(∂x̂0/∂x)ᵀ (−2Aᵀ r)``: one network forward, one VJP, one ``A`` and one ``Aᵀ`` per step. σ_y never
enters the step (the normalisation absorbs it). DPS is approximate; its bias on the Gaussian oracle
is measured (tests/test_dps_oracle.py, docs/benchmarks.md), not assumed away. Paper: 1000 steps.
"""
from __future__ import annotations

from typing import Literal

import torch

from diffpost.posterior.base import PosteriorMethod, Run, check_positive
from diffpost.posterior.steps import ddim_step, per_chain


class DPS(PosteriorMethod):
    """``zeta``: the normalised guidance step ζ; ``step``: ``ancestral`` (paper) or ``euler`` (ODE)."""

    default_num_steps = 1000
    tuning = {"zeta": (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)}  # the right ζ scales with ‖A‖ (CT in physical units: ~16)

    def __init__(self, zeta: float = 1.0, step: Literal["ancestral", "euler"] = "ancestral"):
        check_positive("DPS", zeta=zeta)
        if step not in ("ancestral", "euler"):
            raise ValueError(f"DPS: step must be 'ancestral' or 'euler', got {step!r}")
        self.zeta, self.step = float(zeta), step

    def sample(self, run: Run) -> torch.Tensor:
        A, y = run.operator, run.repeat(run.y)
        sigmas = run.sigmas()
        x = run.initial(sigmas[0])
        eta = 1.0 if self.step == "ancestral" else 0.0
        for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            x0, vjp = run.denoise_vjp(x, s)
            r = y - A.forward(x0)
            norm = r.flatten(1).norm(dim=1)
            grad = vjp(-2.0 * A.adjoint(r))  # ∇_x ‖y − A x̂0(x)‖²
            x_next = ddim_step(x, x0, s, s_next, eta, run.noise() if eta > 0 and s_next > 0 else None)
            x = x_next - per_chain(self.zeta / norm.clamp_min(1e-12), grad) * grad
            run.emit(i, x, s, s_next, x0)
        return x
