"""Spectral coordinates shared by the SVD-based methods (DDRM, DDNM+, ΠGDM's closed form; METHODS §4).

For ``A = U diag(s) Vᵀ`` (``diffpost.operators.base.SVDOperator``: coordinates ``x_dim`` long, ``s = 0``
on the null space) the measurement in spectral coordinates is ``ȳ_j = (Uᵀy)_j / s_j`` with noise level
``τ_j = σ_y / s_j`` on the observed coordinates (``s_j`` above the operator's ``rcond`` times the
largest). ``Uᵀy`` is computed once per measurement (the only operator use of DDRM and DDNM); the
per-step transforms ``Vᵀ``/``V`` are orthonormal basis changes (FFTs, block DCTs, reshapes), not
``forward``/``adjoint`` calls, so the methods count them separately in ``run.extras``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffpost.operators.base import LinearOperator, SVDOperator
from diffpost.posterior.base import DiffusionModel, PosteriorMethod, Run, require_svd


@dataclass(frozen=True)
class SpectralMeasurement:
    """``s`` ``(x_dim,)`` (zeroed off ``observed``), ``observed`` the boolean range mask, ``ut_y =
    Uᵀy`` and ``ybar = Uᵀy / s`` ``(B, x_dim)`` (zero off the range), ``tau = σ_y / s`` ``(x_dim,)``
    (``inf`` off the range, ``0`` everywhere on it when noiseless)."""

    s: torch.Tensor
    observed: torch.Tensor
    ut_y: torch.Tensor
    ybar: torch.Tensor
    tau: torch.Tensor

    def repeat(self, run: Run) -> SpectralMeasurement:
        """The per-measurement rows repeated for the run's ``B·S`` chains."""
        return SpectralMeasurement(self.s, self.observed, run.repeat(self.ut_y), run.repeat(self.ybar), self.tau)


def spectral_measurement(operator: SVDOperator, y: torch.Tensor, sigma_y: float) -> SpectralMeasurement:
    """``ȳ = Uᵀy / s`` and ``τ = σ_y / s`` on the observed coordinates of ``operator`` (one ``Uᵀ`` per row of ``y``)."""
    s_all = operator.singular_values.to(dtype=y.dtype, device=y.device)
    observed = s_all > operator.rcond * s_all.abs().max()
    s = torch.where(observed, s_all, torch.zeros_like(s_all))
    safe = torch.where(observed, s, torch.ones_like(s))
    ut_y = torch.where(observed, operator.Ut(y), torch.zeros((), dtype=y.dtype, device=y.device))
    ybar = ut_y / safe
    tau = torch.where(observed, float(sigma_y) / safe, torch.full_like(s, math.inf))
    return SpectralMeasurement(s, observed, ut_y, ybar, tau)


def spectral_denoise(run: Run, operator: SVDOperator, xbar: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x = V x̄``, ``x̂0 = D(x, σ)`` (one NFE) and ``x̄0 = Vᵀ x̂0``; two basis changes counted in
    ``run.extras["spectral_transforms"]`` (per chain)."""
    x = operator.V(xbar)
    x0 = run.denoise(x, sigma)
    count_transforms(run, 2)
    return x, x0, operator.Vt(x0)


def count_transforms(run: Run, n: int) -> None:
    """Add ``n`` per-chain ``V``/``Vᵀ`` applications to ``run.extras["spectral_transforms"]``."""
    run.extras["spectral_transforms"] = run.extras.get("spectral_transforms", 0) + n


class SpectralMethod(PosteriorMethod):
    """Base of the methods that take their steps in the SVD basis of ``A`` (DDRM, DDNM+): they need a
    closed-form SVD, accept ``σ_y = 0`` and assume white diffusion noise."""

    allows_noiseless = True
    supports_noise_cov = False
    noise_cov_reason = ("its per-coordinate steps assume white diffusion noise in the operator's SVD basis "
                        "(x̄_σ = x̄0 + σ ε); a trace-class C is not diagonal there in general")

    def check(self, model: DiffusionModel, operator: LinearOperator, sigma_y: float) -> None:
        require_svd(self, operator)

    def spectral_setup(self, run: Run) -> tuple[SVDOperator, SpectralMeasurement, list[float]]:
        """The operator, its spectral measurement over the run's chains and the σ grid."""
        A = require_svd(self, run.operator)
        return A, spectral_measurement(A, run.y, run.sigma_y).repeat(run), run.sigmas()
