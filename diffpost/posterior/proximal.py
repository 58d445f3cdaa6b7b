"""The data-consistency pieces shared by the methods with a proximal or conjugate-gradient data step
(DiffPIR, DAPS, ΠGDM): the proximal map of the Gaussian likelihood and the conjugate-gradient settings.
"""
from __future__ import annotations

import torch

from diffpost.operators.base import LinearOperator, conjugate_gradient
from diffpost.posterior.base import check_positive
from diffpost.schedules import IdentityCovariance, NoiseCovariance


def data_prox(operator: LinearOperator, b: torch.Tensor, m: torch.Tensor, rho: float,
              noise_cov: NoiseCovariance | None = None, *, tol: float = 1e-6, max_iter: int = 100) -> torch.Tensor:
    """``argmin_z ‖b − Az‖²/2 + (ρ/2)‖z − m‖²_{C⁻¹} = m + (AᵀA + ρC⁻¹)⁻¹Aᵀ(b − Am)`` per row (``C = I``
    when ``noise_cov`` is None; ``ρ = 0``: ``m + A⁺(b − Am)``, the minimum-norm correction).

    The residual form keeps ``m`` exactly on the null space even when CG stops early (solving
    ``(AᵀA + ρI) z = Aᵀb + ρm`` directly would need CG to resolve the tiny eigenvalue ρ there)."""
    if isinstance(noise_cov, IdentityCovariance):
        noise_cov = None
    r = b - operator.forward(m)
    if noise_cov is None:
        if rho == 0:
            return m + operator.pinv(r, tol=tol, max_iter=max_iter)
        return m + operator.normal_solve(operator.adjoint(r), rho, tol=tol, max_iter=max_iter)
    half = noise_cov.sqrt_apply
    w = conjugate_gradient(lambda v: half(operator.gram(half(v))) + rho * v, half(operator.adjoint(r)),
                           tol=tol, max_iter=max_iter)
    return m + half(w)


def check_cg(owner: str, cg_tol: float | None, cg_max_iter: int) -> None:
    """``ValueError`` unless ``cg_tol`` is None or > 0 and ``cg_max_iter`` is a positive integer."""
    if cg_tol is not None:
        check_positive(owner, cg_tol=cg_tol)
    if isinstance(cg_max_iter, bool) or not isinstance(cg_max_iter, int) or cg_max_iter < 1:
        raise ValueError(f"{owner}: cg_max_iter must be a positive integer, got {cg_max_iter!r}")


def cg_tolerance(cg_tol: float | None, dtype: torch.dtype) -> float:
    """``cg_tol``, or by default 1e-10 in float64 and 1e-5 in lower precision (its rounding floor).

    A tight float64 default matters for batch invariance: where CG stops is decided by a threshold,
    and last-bit differences between batch sizes (BLAS) can move a stop by one iteration, a jump of
    the order of the tolerance."""
    if cg_tol is not None:
        return float(cg_tol)
    return 1e-10 if dtype == torch.float64 else 1e-5
