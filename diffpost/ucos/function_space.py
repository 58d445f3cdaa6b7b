"""Function-space UCoS: diffusion noise with a trace-class covariance ``C`` (METHODS §3.4).

Derivation. With ``x_σ = x0 + σ C^½ n`` and ``y = A x0 + σ_y ε`` (``n``, ``ε`` white), as functions of x0

    log p(x_σ, y | x0) = ⟨x0, m⟩ − ½⟨x0, P_σ x0⟩ + const,
    m = C⁻¹x/σ² + b,   b = Aᵀy/σ_y²,   P_σ = C⁻¹/σ² + S/σ_y²,   S = AᵀA,

so ``E[x0 | x_σ, y]`` depends on ``(x_σ, y)`` only through ``m``, as in §3. ``C⁻¹`` is unbounded in the
continuum (its grid eigenvalues grow without limit as the grid refines), so multiply by ``C``, an
invertible map that leaves the conditional expectation unchanged:

    network input   z = C m = x/σ² + C b                       (C b computed once per measurement)
    training input  C Ỹ = (σ⁻² I + C S/σ_y²) x0 + ζ,   ζ = σ⁻¹ C^½ ε1 + C Aᵀ ε2/σ_y

``Cov ζ = σ⁻² C + C S C/σ_y² = C P_σ C`` with no ``C⁻¹`` and no square root of ``P_σ``. Expanding,
``C Ỹ = (x0 + σ C^½ ε1)/σ² + C Aᵀ(A x0 + σ_y ε2)/σ_y² = x_σ/σ² + C b(y)`` for a simulated pair: the
training input has exactly the law of the sampling input (``information.auxiliary_sample`` and
``information_offset`` take ``noise_cov``). Every term is a bounded field (``C^½ ε1`` has finite
pointwise variance because ``C`` is trace class). ``D_post(x, σ) = D_θ(x/σ² + C b, σ)`` is
``E[x0 | x_σ = x, y]`` under noise covariance ``C``; Tweedie reads ``C ∇log p_σ(x | y) = (D_post − x)/σ²``,
so every σ-space sampler runs unchanged once its injected noise is drawn from ``N(0, C)``
(``covariance_noise``) and the chain starts at ``σ_max C^½ n``. That start ignores the data; in Hartley
direction ``k`` its error is about ``|μ_k|/(σ_max √c_k)`` standard deviations, small only for data whose
mean lies in the Cameron–Martin space of ``C`` (smooth fields; a rough, white-noise-like mean is remembered).

Gaussian oracle (``x0 ~ N(μ, Σ)``): ``D*(z, σ) = (Σ⁻¹ + P_σ)⁻¹(Σ⁻¹μ + C⁻¹z)``. With
``M_σ = σ⁻² I + C S/σ_y²`` (so ``P_σ = C⁻¹M_σ``) and ``N_σ = C + M_σ Σ`` one has
``Σ⁻¹ + P_σ = C⁻¹ N_σ Σ⁻¹`` and ``Σ⁻¹μ + C⁻¹z = (Σ⁻¹ + P_σ)μ + C⁻¹(z − M_σ μ)``, hence, inverting
neither ``Σ`` nor ``C``:

    D*(z, σ) = μ + Σ N_σ⁻¹ (z − M_σ μ);   diagonal case: D*_k = μ_k + e_k (z_k − M_k μ_k)/(c_k + M_k e_k).

(The dense oracle evaluates the same map in ``C``-whitened coordinates, a symmetric positive definite
solve, because ``N_σ`` is badly conditioned for CT.)

Preconditioner. Any fixed invertible map of ``z`` keeps UCoS exact. We take the Tikhonov estimate for
the reference prior ``N(0, C/ρ0)`` (whose Cameron–Martin norm matches the noise, so the estimate is a
resolution-consistent field): ``u = (ρ0 C⁻¹ + P_σ)⁻¹ m = G_σ z`` with

    G_σ = ((σ⁻² + ρ0) I + C S/σ_y²)⁻¹.

It is not symmetric unless ``C`` and ``S`` commute, but it is invertible: ``C S`` is similar to
``C^½ S C^½ ⪰ 0``, so ``G_σ⁻¹`` has eigenvalues ``≥ σ⁻² + ρ0 > 0``. For Hartley-diagonal ``C`` and ``S``
(blur, denoising, MRI normal operators) ``G_σ = H diag(1/(σ⁻² + ρ0 + c_k s_k²/σ_y²)) H``
(``FourierNoisePreconditioner``). Otherwise (inpainting, CT; small ``d``), with ``C^½ S C^½ = Q Λ Qᵀ``
and ``a = σ⁻² + ρ0``: ``G_σ z = z/a − C^½ Q diag(1/(a(aσ_y² + λ))) Qᵀ C^½ S z`` (``DenseNoisePreconditioner``;
check: multiply by ``aI + CS/σ_y²`` and use ``C S C^½ Q = C^½ Q Λ``). With ``C`` normalised to unit
pointwise variance, ``ρ0 = 1`` makes the reference prior a unit-variance field. Training and sampling
both call ``apply`` (through ``UCoSDenoiser``).

Across resolutions. ``FourierCovariance.at_resolution`` keeps the amplitude, so ``C`` is one continuum
operator and σ means the same at every grid. A measurement problem is one continuum problem on every
grid when ``A`` discretises one continuum operator (``continuum_blur``: blur width in physical units)
and the pixel noise is ``σ_y = σ_c √(HW)`` (``pixel_sigma_y``: pixel averages of continuum white noise of
level ``σ_c``). Then ``C S/σ_y²``, ``C b``, ``u`` and the posterior are grid-independent fields, and a
resolution-agnostic network (``diffpost.nets.FNO``) trained on one grid samples on another: build the
preconditioner for the new grid and reuse the network, ``UCoSDenoiser(net, preconditioner_64, σ_d)``.
"""
from __future__ import annotations

import math

import torch

from diffpost.fourier import dht2
from diffpost.operators.base import LinearOperator, SVDOperator
from diffpost.operators.blur import Blur
from diffpost.priors.gaussian import MAX_DENSE_DIM, AnalyticPrior, GaussianPrior
from diffpost.priors.spectral import SpectralGaussian
from diffpost.random import GeneratorLike, randn_like
from diffpost.schedules import IdentityCovariance, NoiseCovariance
from diffpost.ucos.preconditioners import Preconditioner, _sigma_col

__all__ = [
    "covariance_noise", "FunctionSpaceGaussianDenoiser", "FourierNoisePreconditioner", "DenseNoisePreconditioner",
    "function_space_preconditioner", "pixel_sigma_y", "continuum_blur",
]


def _check_cov(noise_cov, x_shape, owner: str) -> NoiseCovariance:
    if not isinstance(noise_cov, NoiseCovariance):
        raise TypeError(f"{owner}: noise_cov must be a FourierCovariance or IdentityCovariance, got {type(noise_cov).__name__}")
    if tuple(noise_cov.shape) != tuple(x_shape):
        raise ValueError(f"{owner}: noise_cov acts on shape {tuple(noise_cov.shape)}, the operator on {tuple(x_shape)}")
    return noise_cov


def _is_hartley(operator: LinearOperator) -> bool:
    return isinstance(operator, SVDOperator) and getattr(operator, "spectral_basis", None) == "hartley"


def covariance_noise(noise_cov: NoiseCovariance):
    """The samplers' ``noise(x_like, generator)`` callable drawing ``C^½ n`` (``n`` white, same draws as
    white noise, so a fixed seed gives the correlated version of the same stream)."""
    _check_cov(noise_cov, getattr(noise_cov, "shape", ()), "covariance_noise")

    def noise(x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        return noise_cov.sqrt_apply(randn_like(x, generator))

    return noise


# --------------------------------------------------------------------------------------- exact oracle
class FunctionSpaceGaussianDenoiser:
    """Exact ``D*(z, σ) = E[x0 | C m = z]`` for ``x0 ~ N(μ, Σ)`` (the function-space UCoS oracle).

    ``prior`` a ``SpectralGaussian``/``GaussianRandomField`` (elementwise in the Hartley basis when the
    operator is Hartley-diagonal: any resolution) or a ``GaussianPrior`` (dense, ``d ≤ 4096``).
    ``noise_cov = None`` is white noise, where this equals ``GaussianAuxiliaryDenoiser``.
    """

    def __init__(self, prior: AnalyticPrior, operator: LinearOperator, sigma_y: float,
                 noise_cov: NoiseCovariance | None = None):
        if not isinstance(prior, (SpectralGaussian, GaussianPrior)):
            raise TypeError("FunctionSpaceGaussianDenoiser: prior must be a SpectralGaussian or GaussianPrior, "
                            f"got {type(prior).__name__}")
        if tuple(prior.shape) != tuple(operator.x_shape):
            raise ValueError(f"FunctionSpaceGaussianDenoiser: prior shape {prior.shape} != operator x_shape {operator.x_shape}")
        if not (math.isfinite(sigma_y) and sigma_y > 0):
            raise ValueError(f"FunctionSpaceGaussianDenoiser: sigma_y must be positive and finite, got {sigma_y}")
        cov = (IdentityCovariance(operator.x_shape) if noise_cov is None
               else _check_cov(noise_cov, operator.x_shape, "FunctionSpaceGaussianDenoiser"))
        self.x_shape, self.sigma_y = tuple(operator.x_shape), float(sigma_y)
        self.spectral = isinstance(prior, SpectralGaussian) and _is_hartley(operator)
        if self.spectral:
            self.mean = prior.mean.double()
            self.e = prior.eigenvalues.double()
            self.c = cov.eigenvalues(torch.float64, self.e.device)
            self.s2 = operator.singular_values.double().reshape(self.x_shape).to(self.e.device) ** 2
            self.mean_hat = dht2(self.mean)
        else:
            dense = prior.to_dense_prior() if isinstance(prior, SpectralGaussian) else prior
            d = operator.x_dim
            if d > MAX_DENSE_DIM:
                raise ValueError(f"FunctionSpaceGaussianDenoiser: dense oracle limited to d <= {MAX_DENSE_DIM}, got {d}")
            dev = dense.cov.device
            eye = torch.eye(d, dtype=torch.float64, device=dev).reshape(d, *self.x_shape)
            self.c_half = cov.sqrt_apply(eye).reshape(d, d)
            self.c_ihalf = cov.inv_sqrt_apply(eye).reshape(d, d)
            A = operator.to_dense(dtype=torch.float64, device=dev)
            cs = self.c_half @ (A.T @ A) / self.sigma_y**2  # C^½ S/σ_y²
            # whitened prior C^(−½) Σ C^(−½) = F Fᵀ (F from eigh: singular priors are fine)
            white = self.c_ihalf @ dense.cov.double() @ self.c_ihalf
            omega, U = torch.linalg.eigh(0.5 * (white + white.T))
            self.F = U * omega.clamp_min(0).sqrt()
            self.FtF = self.F.T @ self.F
            self.FtKF = self.F.T @ (cs @ self.c_half) @ self.F
            self.mean = dense.mean.double().reshape(d)
            self.mean_white = self.c_ihalf @ self.mean  # C^(−½) μ
            self.cs_mean = cs @ self.mean  # C^½ S μ/σ_y²
            self.eye = torch.eye(d, dtype=torch.float64, device=dev)

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=z.device).reshape(-1).expand(z.shape[0])
        zd = z.double()
        if self.spectral:
            s = sigma.reshape(-1, 1, 1, 1)
            M = s**-2 + self.c * self.s2 / self.sigma_y**2
            out_hat = self.mean_hat + self.e * (dht2(zd) - M * self.mean_hat) / (self.c + M * self.e)
            return dht2(out_hat).to(z.dtype)
        # whitened form (x0 = C^½ ξ): D* = μ + C^½ F (I + Fᵀ P̃_σ F)⁻¹ Fᵀ C^(−½)(z − M_σ μ),
        # P̃_σ = σ⁻² I + C^½ S C^½/σ_y²: a symmetric positive definite solve (the N_σ form loses digits for CT)
        flat = zd.reshape(z.shape[0], -1)
        out = torch.empty_like(flat)
        for sv in torch.unique(sigma):  # samplers use one σ per step: one solve per distinct σ
            rows = sigma == sv
            K = self.eye + self.FtF / sv**2 + self.FtKF
            r = flat[rows] @ self.c_ihalf.T - self.mean_white / sv**2 - self.cs_mean
            w = torch.linalg.solve(0.5 * (K + K.T), (r @ self.F).T).T
            out[rows] = self.mean + w @ (self.c_half @ self.F).T
        return out.reshape(z.shape).to(z.dtype)


# --------------------------------------------------------------------------------------- preconditioners
class FourierNoisePreconditioner(Preconditioner):
    """``G_σ = H diag(1/(σ⁻² + ρ0 + c_k s_k²/σ_y²)) H`` for Hartley-diagonal ``C`` and ``S = AᵀA``.

    Stores only the products ``c_k s_k²`` (a buffer: saved with the checkpoint, part of the fingerprint).
    """

    def __init__(self, operator: SVDOperator, sigma_y: float, noise_cov: NoiseCovariance, rho0: float = 1.0):
        super().__init__(operator.x_shape, sigma_y, rho0)
        if not _is_hartley(operator):
            raise ValueError(f"FourierNoisePreconditioner: {type(operator).__name__} is not diagonal in the Hartley basis; "
                             "use DenseNoisePreconditioner")
        cov = _check_cov(noise_cov, operator.x_shape, "FourierNoisePreconditioner")
        c = cov.eigenvalues(torch.float64).reshape(-1).cpu()
        self.register_buffer("eigenvalues", c * operator.singular_values.detach().double().cpu() ** 2)

    def apply(self, z, sigma):
        c = dht2(z).flatten(1)
        return dht2((c * self._diag(self.eigenvalues, sigma, c)).reshape(z.shape))


class DenseNoisePreconditioner(Preconditioner):
    """``G_σ = ((σ⁻² + ρ0) I + C S/σ_y²)⁻¹`` for any operator by dense factors (small images).

    ``C^½ S C^½ = Q Λ Qᵀ``; ``G_σ z = z/a − L diag(1/(a(aσ_y² + λ))) R z`` with ``L = C^½ Q``,
    ``R = Qᵀ C^½ S`` and ``a = σ⁻² + ρ0``: no inverse of ``C`` anywhere.
    """

    def __init__(self, operator: LinearOperator, sigma_y: float, noise_cov: NoiseCovariance, rho0: float = 1.0,
                 max_dim: int = 64 * 64):
        super().__init__(operator.x_shape, sigma_y, rho0)
        d = operator.x_dim
        if d > max_dim:
            raise ValueError(f"DenseNoisePreconditioner: d = {d} > {max_dim}; "
                             "a Hartley-diagonal operator can use FourierNoisePreconditioner")
        cov = _check_cov(noise_cov, operator.x_shape, "DenseNoisePreconditioner")
        A = operator.to_dense(dtype=torch.float64).cpu()
        S = A.T @ A
        eye = torch.eye(d, dtype=torch.float64).reshape(d, *operator.x_shape)
        c_half = cov.sqrt_apply(eye).reshape(d, d)  # symmetric
        K = c_half @ S @ c_half
        lam, Q = torch.linalg.eigh(0.5 * (K + K.T))
        self.register_buffer("eigenvalues", lam.clamp_min(0))
        self.register_buffer("left", c_half @ Q)
        self.register_buffer("right", Q.T @ c_half @ S)

    def apply(self, z, sigma):
        flat = z.flatten(1)
        a = _sigma_col(sigma, flat) ** -2 + self.rho0
        coef = (flat @ self.right.to(flat).T) / (a * (a * self.sigma_y**2 + self.eigenvalues.to(flat)))
        return (flat / a - coef @ self.left.to(flat).T).reshape(z.shape)


def function_space_preconditioner(operator: LinearOperator, sigma_y: float, noise_cov: NoiseCovariance,
                                  rho0: float = 1.0) -> Preconditioner:
    """Closed form (FFTs) for Hartley-diagonal operators, dense factors up to 64², else a clear error."""
    if _is_hartley(operator):
        return FourierNoisePreconditioner(operator, sigma_y, noise_cov, rho0)
    if operator.x_dim <= 64 * 64:
        return DenseNoisePreconditioner(operator, sigma_y, noise_cov, rho0)
    raise ValueError(f"function_space_preconditioner: no function-space preconditioner for {type(operator).__name__} "
                     f"at d = {operator.x_dim} > 4096 (needs a Hartley-diagonal operator or a small grid)")


# --------------------------------------------------------------------------------------- one continuum problem on every grid
def pixel_sigma_y(continuum_sigma_y: float, shape: tuple[int, int, int]) -> float:
    """``σ_y = σ_c √(HW)``: the pixel-average noise of continuum white noise of level ``σ_c`` on the unit
    square, which keeps ``AᵀA/σ_y²`` (and so the posterior) the same continuum object on every grid."""
    if not (math.isfinite(continuum_sigma_y) and continuum_sigma_y > 0):
        raise ValueError(f"pixel_sigma_y: continuum_sigma_y must be positive and finite, got {continuum_sigma_y}")
    return float(continuum_sigma_y) * math.sqrt(shape[-2] * shape[-1])


def continuum_blur(shape: tuple[int, int, int], width: float, truncate: float = 4.0) -> Blur:
    """Gaussian blur of standard deviation ``width`` in physical units of the unit square: ``width·H``
    pixels (square grids), kernel cut at ``truncate`` standard deviations."""
    C, H, W = shape
    if H != W:
        raise ValueError(f"continuum_blur: needs a square grid, got {H}x{W}")
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"continuum_blur: width must be positive and finite, got {width}")
    px = width * H
    radius = max(1, math.ceil(truncate * px))
    if 2 * radius + 1 > H:
        raise ValueError(f"continuum_blur: width {width} needs a {2 * radius + 1}-pixel kernel, larger than the {H}x{W} grid")
    return Blur((C, H, W), kernel="gaussian", kernel_size=2 * radius + 1, blur_sigma=px)
