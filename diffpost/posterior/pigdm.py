"""ΠGDM: pseudoinverse-guided diffusion models (Song, Vahdat, Mardani & Kautz, "Pseudoinverse-Guided
Diffusion Models for Inverse Problems", ICLR 2023; METHODS §4).

A denoiser correction: with ``x̂0 = D(x, σ)`` and ``x0 | x_σ ≈ N(x̂0, r² I)``, ``r² = σ² σ_d²/(σ² + σ_d²)``
(the posterior variance under a ``N(0, σ_d² I)`` data model),

    g = (∂x̂0/∂x)ᵀ Aᵀ (r² AAᵀ + σ_y² I)⁻¹ (y − A x̂0),   D_post(x, σ) = x̂0 + σ² g

(Tweedie with the likelihood score ``g``), handed to a σ-space sampler. One network call and one VJP
per evaluation. The inverse is closed form for SVD operators, ``Aᵀ(r²AAᵀ + σ_y²)⁻¹v = V diag(s/(r²s² +
σ_y²)) Uᵀv`` on the range (σ_y = 0 allowed: the range part is inverted exactly), and conjugate
gradients in measurement space otherwise (``A`` and ``Aᵀ`` per iteration, counted as operator calls;
iterations in ``extras["cg_iterations"]``, per chain batch). CG runs a fixed ``cg_max_iter`` iterations by
default (``cg_tol = 0``): the result is then a smooth function of ``x``, so rounding-level differences
(e.g. a batched matmul in the network) stay rounding-level; a tolerance stops each chain early, which
is cheaper but makes the iteration count, hence the sample, jump with such differences.

The paper's sampler is deterministic DDIM (η = 0), which in σ-space is exactly the Euler step of the
probability-flow ODE, ``x' = D + (σ'/σ)(x − D)``: hence ``sampler="euler"`` by default, 100 steps.

Function-space noise ``x_σ = x0 + σ C^½ n`` (Hartley-diagonal ``C``, METHODS §3.4): the same data model
gives ``Cov(x0 | x_σ) ≈ R = σ_d² σ² C (σ² C + σ_d² I)⁻¹`` in place of ``r² I`` and Tweedie gives
``D_post = x̂0 + σ² C g`` with ``(A R Aᵀ + σ_y² I)⁻¹``; closed form where ``V`` is the Hartley basis
(blur, MRI, denoising), conjugate gradients otherwise.
"""
from __future__ import annotations

import math

import torch

from diffpost.fourier import dht2
from diffpost.operators.base import LinearOperator, SVDOperator, conjugate_gradient
from diffpost.posterior.base import DiffusionModel, OperatorMismatchError, PosteriorMethod, Run
from diffpost.posterior.proximal import check_cg
from diffpost.posterior.spectral import count_transforms, spectral_measurement
from diffpost.posterior.steps import per_chain
from diffpost.samplers.base import Denoiser
from diffpost.samplers.select import SAMPLER_NAMES, SamplerName, run_sampler


class PiGDM(PosteriorMethod):
    """``sampler``/``churn``: the σ-space sampler run on ``D_post`` (``euler`` = the paper's DDIM η = 0);
    ``cg_max_iter``/``cg_tol``: the conjugate-gradient solve for operators without an SVD (at most
    ``cg_max_iter`` iterations; ``cg_tol > 0`` stops a chain once its relative residual is below it)."""

    default_num_steps = 100
    allows_noiseless = True

    def __init__(self, sampler: SamplerName = "euler", churn: float = 0.0, cg_max_iter: int = 50, cg_tol: float = 0.0):
        if sampler not in SAMPLER_NAMES:
            raise ValueError(f"PiGDM: sampler must be one of {', '.join(SAMPLER_NAMES)}, got {sampler!r}")
        for name, v in (("churn", churn), ("cg_tol", cg_tol)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"PiGDM: {name} must be a finite number >= 0, got {v!r}")
        check_cg("PiGDM", cg_tol or None, cg_max_iter)
        self.sampler, self.churn, self.cg_max_iter, self.cg_tol = sampler, float(churn), cg_max_iter, float(cg_tol)

    @staticmethod
    def closed_form(model: DiffusionModel, operator: LinearOperator) -> bool:
        """Whether ``(r²AAᵀ + σ_y²)⁻¹`` (or ``(ARAᵀ + σ_y²)⁻¹``) is diagonal in the operator's SVD."""
        return isinstance(operator, SVDOperator) and (
            model.noise_cov is None or getattr(operator, "spectral_basis", None) == "hartley")

    def check(self, model: DiffusionModel, operator: LinearOperator, sigma_y: float) -> None:
        if sigma_y == 0 and not self.closed_form(model, operator):
            raise OperatorMismatchError(
                f"PiGDM: sigma_y = 0 needs an operator whose SVD diagonalises r² A Aᵀ (the range part is then inverted "
                f"exactly); {type(operator).__name__} would need conjugate gradients on a singular system: give sigma_y > 0")

    def sample(self, run: Run) -> torch.Tensor:
        sigmas = run.sigmas()
        return run_sampler(self.sampler, self.posterior_denoiser(run), run.initial(sigmas[0]), sigmas,
                           generator=run.generator, noise=run.noise_fn, callback=run.callback, churn=self.churn)

    # ------------------------------------------------------------------ D_post
    def posterior_denoiser(self, run: Run) -> Denoiser:
        """``D_post(x, σ)`` over the run's ``B·S`` chains (counted: one NFE and one VJP per call)."""
        A, cov = run.operator, run.model.noise_cov
        sd2, sy2 = float(run.model.sigma_data) ** 2, run.sigma_y**2
        lam = None if cov is None else cov.eigenvalues(run.model.dtype, run.model.device)

        def rho(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            """Eigenvalues of ``R`` per chain (``r²`` for white noise), broadcast like ``like``."""
            s2 = per_chain(sigma, like) ** 2
            if lam is None:
                return s2 * sd2 / (s2 + sd2)
            lam_b = lam.reshape(like.shape[1:])
            return sd2 * s2 * lam_b / (s2 * lam_b + sd2)

        if self.closed_form(run.model, A):
            m = spectral_measurement(A, run.y, run.sigma_y).repeat(run)

            def scaled_guidance(x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                x0bar = A.Vt(x0)  # σ² Aᵀ(A R Aᵀ + σ_y²)⁻¹(y − A x̂0) = V(σ² s/(s²ρ + σ_y²) ⊙ (Uᵀy − s x̄0))
                w = m.s * per_chain(sigma, x0bar) ** 2 / (m.s**2 * rho(sigma, x0bar) + sy2)
                w = torch.where(m.observed, w, torch.zeros_like(w))
                count_transforms(run, 2)
                return A.V(w * (m.ut_y - m.s * x0bar))
        else:
            y = run.repeat(run.y)

            def scaled_guidance(x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                r = rho(sigma, x0)

                def apply_k(z: torch.Tensor) -> torch.Tensor:  # (A R Aᵀ + σ_y² I) z
                    run.extras["cg_iterations"] = run.extras.get("cg_iterations", 0) + 1
                    v = A.adjoint(z)
                    return A.forward(r * v if lam is None else dht2(r * dht2(v))) + sy2 * z

                u = conjugate_gradient(apply_k, y - A.forward(x0), tol=self.cg_tol, max_iter=self.cg_max_iter)
                return per_chain(sigma, x0) ** 2 * A.adjoint(u)

        def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            x0, vjp = run.denoise_vjp(x, sigma)
            g = vjp(scaled_guidance(x0, sigma))
            return x0 + (g if cov is None else cov.apply(g))

        return denoiser
