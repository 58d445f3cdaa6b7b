"""Gaussians diagonal in the 2-D Hartley basis: stationary Gaussian random fields at any resolution.

``Σ = H diag(e) H`` (``H = dht2``, orthonormal and self-inverse, per channel). Noise covariances of
``diffpost.schedules`` share the basis, so denoiser, score and marginals are elementwise there and cost
two transforms: no dense matrix at 256². Operators declaring ``spectral_basis == "hartley"`` (SVD
operators whose ``Vt(x) = dht2(x).flatten(1)``) keep the posterior in the family too.
"""
from __future__ import annotations

import math

import torch

from diffpost.fourier import dht2
from diffpost.priors.gaussian import MAX_DENSE_DIM, AnalyticPrior, GaussianPrior
from diffpost.random import GeneratorLike, randn
from diffpost.schedules import FourierCovariance, NoiseCovariance


class SpectralGaussian(AnalyticPrior):
    """``x0 ~ N(mean, H diag(eigenvalues) H)`` on ``(C, H, W)``.

    ``eigenvalues`` are laid out on the FFT grid like ``diffpost.fourier.matern_spectrum`` (they must be
    non-negative; ``log_prob`` needs them positive). Symmetric spectra (``e(k) = e(−k)``) give
    stationary fields; any non-negative array is a valid covariance in this basis.
    """

    _tensor_fields = ("mean", "eigenvalues")

    def __init__(self, mean: torch.Tensor, eigenvalues: torch.Tensor):
        eigenvalues = torch.as_tensor(eigenvalues)
        if not eigenvalues.is_floating_point():
            eigenvalues = eigenvalues.to(torch.get_default_dtype())
        if eigenvalues.dim() != 3:
            raise ValueError(f"{type(self).__name__}: eigenvalues must be (C, H, W), got shape {tuple(eigenvalues.shape)}")
        mean = torch.as_tensor(mean, dtype=eigenvalues.dtype, device=eigenvalues.device)
        if tuple(mean.shape) != tuple(eigenvalues.shape):
            raise ValueError(f"{type(self).__name__}: mean {tuple(mean.shape)} and eigenvalues {tuple(eigenvalues.shape)} differ in shape")
        if not bool(torch.isfinite(eigenvalues).all()) or bool((eigenvalues < 0).any()):
            raise ValueError(f"{type(self).__name__}: eigenvalues must be finite and non-negative")
        if not bool(torch.isfinite(mean).all()):
            raise ValueError(f"{type(self).__name__}: mean must be finite")
        self.shape = tuple(eigenvalues.shape)
        self.mean = mean.clone()
        self.eigenvalues = eigenvalues.clone()

    # ------------------------------------------------------------------ helpers
    def _noise_eig(self, noise_cov: NoiseCovariance | None, like: torch.Tensor) -> torch.Tensor | float:
        nc = self._noise_cov(noise_cov)
        return 1.0 if nc is None else nc.eigenvalues(like.dtype, like.device)

    def _batch_sigma(self, sigma, x: torch.Tensor) -> torch.Tensor:
        return self._sigma(sigma, x).reshape(-1, 1, 1, 1)

    def to_dense_prior(self) -> GaussianPrior:
        """The same law as a dense ``GaussianPrior`` (``d ≤ MAX_DENSE_DIM``)."""
        d = self.dim
        if d > MAX_DENSE_DIM:
            raise NotImplementedError(f"{type(self).__name__}: a dense covariance of dimension {d} > {MAX_DENSE_DIM} is too large")
        Hm = dht2(torch.eye(d, dtype=self.dtype, device=self.device).reshape(d, *self.shape)).reshape(d, d)
        cov = Hm @ (self.eigenvalues.reshape(d, 1) * Hm)  # H symmetric: H diag(e) H
        return GaussianPrior(self.mean, 0.5 * (cov + cov.T), self.shape)

    # ------------------------------------------------------------------ interface
    def sample(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        z = randn((n, *self.shape), generator, dtype=self.dtype, device=self.device)
        return self.mean + dht2(self.eigenvalues.sqrt() * z)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        e = self.eigenvalues.to(x)
        if bool((e <= 0).any()):
            raise ValueError(f"{type(self).__name__}.log_prob: covariance is singular (zero eigenvalues)")
        z = dht2(x - self.mean.to(x))
        return -0.5 * ((z**2 / e).flatten(1).sum(1) + e.log().sum() + self.dim * math.log(2 * math.pi))

    def denoise(self, x: torch.Tensor, sigma, noise_cov: NoiseCovariance | None = None) -> torch.Tensor:
        """``μ + H[e/(e + σ²c) · H(x − μ)]`` (``c`` the noise eigenvalues, 1 for white)."""
        self._check_x(x)
        s = self._batch_sigma(sigma, x)
        e, mu = self.eigenvalues.to(x), self.mean.to(x)
        var = e + s**2 * self._noise_eig(noise_cov, x)
        ratio = torch.where(var > 0, e / torch.where(var > 0, var, torch.ones_like(var)), torch.zeros_like(var))
        return mu + dht2(ratio * dht2(x - mu))

    def score(self, x: torch.Tensor, sigma, noise_cov: NoiseCovariance | None = None) -> torch.Tensor:
        """``−H[H(x − μ)/(e + σ²c)]``."""
        self._check_x(x)
        s = self._batch_sigma(sigma, x)
        var = self.eigenvalues.to(x) + s**2 * self._noise_eig(noise_cov, x)
        if bool((var <= 0).any()):
            raise ValueError(f"{type(self).__name__}.score: covariance of x_σ is singular; the score is undefined")
        return -dht2(dht2(x - self.mean.to(x)) / var)

    def marginal(self, sigma, noise_cov: NoiseCovariance | None = None) -> "SpectralGaussian":
        """``N(μ, H diag(e + σ²c) H)``."""
        s = self._scalar_sigma(sigma)
        return SpectralGaussian(self.mean, self.eigenvalues + s**2 * self._noise_eig(noise_cov, self.eigenvalues))

    def _hartley_parts(self, operator, y: torch.Tensor):
        """``(s², H Aᵀy)`` on the (C, H, W) grid for an operator diagonal in the Hartley basis."""
        s = operator.singular_values.to(dtype=self.dtype, device=self.device).reshape(self.shape)
        aty = dht2(operator.adjoint(y)[0].to(dtype=self.dtype, device=self.device))
        return s**2, aty

    def _is_hartley(self, operator) -> bool:
        return getattr(operator, "spectral_basis", None) == "hartley"

    def _dense_fallback(self, what: str) -> GaussianPrior:
        if self.dim > MAX_DENSE_DIM:
            raise NotImplementedError(
                f"{type(self).__name__}.{what}: closed form needs an operator with spectral_basis == 'hartley'; "
                f"the dense fallback is limited to dim <= {MAX_DENSE_DIM} (got {self.dim})"
            )
        return self.to_dense_prior()

    def posterior(self, operator, y: torch.Tensor, sigma_y: float) -> "SpectralGaussian | GaussianPrior":
        """Law of ``x0 | y``. For Hartley-diagonal operators (``AᵀA = H diag(s²) H``) a SpectralGaussian:
        ``e_post = e σ_y²/(σ_y² + e s²)``, ``Hμ_post = (σ_y² Hμ + e H Aᵀy)/(σ_y² + e s²)`` (no 1/e, so
        zero eigenvalues are fine). Otherwise the dense ``GaussianPrior`` posterior (``d ≤ 4096``).

        ``posterior(...).denoise(x, σ)`` is then exactly the posterior denoiser
        ``E[x0 | x_σ = x, y] = (Σ⁻¹ + σ⁻²I + AᵀA/σ_y²)⁻¹(Σ⁻¹μ + x/σ² + Aᵀy/σ_y²)`` of METHODS §1.
        """
        y, sy = self._measurement(operator, y, sigma_y)
        if not self._is_hartley(operator):
            return self._dense_fallback("posterior").posterior(operator, y, sy)
        s2, aty = self._hartley_parts(operator, y)
        e = self.eigenvalues
        denom = sy**2 + e * s2
        mean_hat = (sy**2 * dht2(self.mean) + e * aty) / denom
        return SpectralGaussian(dht2(mean_hat), e * sy**2 / denom)

    def log_evidence(self, operator, y: torch.Tensor, sigma_y: float) -> torch.Tensor:
        """``log N(y; Aμ, AΣAᵀ + σ_y²I)``. Hartley case without any y-space factorisation:
        ``‖r‖²/σ_y² − Σ_k e_k (H Aᵀr)_k² / (σ_y²(σ_y² + e_k s_k²))`` (Woodbury) and
        ``log det = m log σ_y² + Σ_k log(1 + e_k s_k²/σ_y²)`` (determinant lemma), ``r = y − Aμ``."""
        y, sy = self._measurement(operator, y, sigma_y)
        if not self._is_hartley(operator):
            return self._dense_fallback("log_evidence").log_evidence(operator, y, sy)
        r = y - operator.forward(self.mean.unsqueeze(0)).to(y)
        s2, atr = self._hartley_parts(operator, r)
        e = self.eigenvalues
        m = r[0].numel()
        quad = (r**2).sum() / sy**2 - (e * atr**2 / (sy**2 * (sy**2 + e * s2))).sum()
        logdet = m * math.log(sy**2) + torch.log1p(e * s2 / sy**2).sum()
        return -0.5 * (quad + logdet + m * math.log(2 * math.pi))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class GaussianRandomField(SpectralGaussian):
    """Stationary field ``N(mean, amplitude (τ²I − Δ)^(−s))`` on the periodic unit square.

    The spectrum is ``FourierCovariance``'s, so by default the pointwise variance is 1 at every
    resolution and ``at_resolution`` gives the same continuum field on another grid.
    """

    def __init__(
        self,
        shape: tuple[int, int, int] = (1, 32, 32),
        tau: float = 3.0,
        s: float = 2.0,
        amplitude: float | None = None,
        mean: float = 0.0,
    ):
        cov = FourierCovariance(shape, tau, s, amplitude)
        mean = float(mean)
        if not math.isfinite(mean):
            raise ValueError(f"GaussianRandomField: mean must be finite, got {mean}")
        eig = cov.eigenvalues(torch.float64)
        super().__init__(torch.full_like(eig, mean), eig)
        self.tau, self.s, self.amplitude, self.mean_value = cov.tau, cov.s, cov.amplitude, mean

    @property
    def covariance(self) -> FourierCovariance:
        return FourierCovariance(self.shape, self.tau, self.s, self.amplitude)

    def at_resolution(self, H: int, W: int) -> "GaussianRandomField":
        out = GaussianRandomField((self.shape[0], H, W), self.tau, self.s, self.amplitude, self.mean_value)
        return out.to(dtype=self.dtype, device=self.device)

    def config(self) -> dict:
        return {"shape": list(self.shape), "tau": self.tau, "s": self.s, "amplitude": self.amplitude, "mean": self.mean_value}
