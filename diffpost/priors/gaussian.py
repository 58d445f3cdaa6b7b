"""Dense Gaussian prior ``N(μ, Σ)`` with exact denoiser, score, marginals, posterior and evidence
(METHODS §1), plus the base class and input checks shared by every analytic prior.

Every prior answers, for diffusion noise ``x_σ = x0 + σ C^½ n`` (``C = I`` when ``noise_cov`` is
None): ``denoise(x, σ) = E[x0 | x_σ = x]``, ``score = ∇ log p_σ``, ``marginal(σ)`` = law of ``x_σ``,
and for ``y = A x0 + η``, ``η ~ N(0, σ_y² I)``: ``posterior(A, y, σ_y)`` (the same kind of prior) and
``log_evidence`` = ``log p(y)``.
"""
from __future__ import annotations

import copy
import math

import torch

from diffpost.random import GeneratorLike, randn
from diffpost.schedules import IdentityCovariance, NoiseCovariance

#: dense fallbacks (matrices d × d) are allowed up to this dimension
MAX_DENSE_DIM = 4096


class AnalyticPrior:
    """Base: shape bookkeeping, argument checks and ``.to``. Subclasses list their tensors in
    ``_tensor_fields`` and hold caches in attributes starting with ``_cache``."""

    _tensor_fields: tuple[str, ...] = ()
    shape: tuple[int, ...]

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self, self._tensor_fields[0]).dtype

    @property
    def device(self) -> torch.device:
        return getattr(self, self._tensor_fields[0]).device

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> "AnalyticPrior":
        """A copy with every tensor moved (caches are dropped and rebuilt on demand)."""
        new = copy.copy(self)
        for name in self._tensor_fields:
            setattr(new, name, getattr(self, name).to(dtype=dtype, device=device))
        for name in list(vars(new)):
            if name.startswith("_cache"):
                setattr(new, name, {})
        return new

    # ------------------------------------------------------------------ argument checks
    def _check_x(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"{type(self).__name__}: x must be a tensor, got {type(x).__name__}")
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != tuple(self.shape):
            raise ValueError(
                f"{type(self).__name__}: expected x of shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}"
            )

    def _sigma(self, sigma, x: torch.Tensor) -> torch.Tensor:
        """σ as a ``(B, 1)`` column in x's dtype; float, 0-dim or ``(B,)`` accepted, σ ≥ 0."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if s.dim() == 0:
            s = s.expand(x.shape[0])
        elif s.dim() != 1 or s.shape[0] != x.shape[0]:
            raise ValueError(f"{type(self).__name__}: sigma must be a float or a ({x.shape[0]},) tensor, got shape {tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ValueError(f"{type(self).__name__}: sigma must be finite and non-negative")
        return s.reshape(-1, 1)

    def _scalar_sigma(self, sigma) -> float:
        s = torch.as_tensor(sigma, dtype=sigma.dtype if torch.is_tensor(sigma) else torch.float64)  # float64: no rounding of floats
        if s.numel() != 1:
            raise ValueError(f"{type(self).__name__}.marginal: sigma must be a scalar, got shape {tuple(s.shape)}")
        s = float(s)
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"{type(self).__name__}.marginal: sigma must be finite and non-negative, got {s}")
        return s

    def _noise_cov(self, noise_cov: NoiseCovariance | None) -> NoiseCovariance | None:
        """None for white noise (an IdentityCovariance is the same thing), else the checked covariance."""
        if noise_cov is None:
            return None
        if not isinstance(noise_cov, NoiseCovariance):
            raise TypeError(
                f"{type(self).__name__}: noise_cov must be None, a FourierCovariance or an IdentityCovariance, "
                f"got {type(noise_cov).__name__}"
            )
        if tuple(noise_cov.shape) != tuple(self.shape):
            raise ValueError(f"{type(self).__name__}: noise_cov acts on shape {noise_cov.shape}, the prior on {self.shape}")
        return None if isinstance(noise_cov, IdentityCovariance) else noise_cov

    def _measurement(self, operator, y: torch.Tensor, sigma_y) -> tuple[torch.Tensor, float]:
        """Checks the operator and returns ``(y as (1, *y_shape), σ_y)``."""
        if tuple(operator.x_shape) != tuple(self.shape):
            raise ValueError(f"{type(self).__name__}: operator acts on x_shape {operator.x_shape}, the prior has shape {self.shape}")
        if not torch.is_tensor(y):
            raise TypeError(f"{type(self).__name__}: y must be a tensor, got {type(y).__name__}")
        y_shape = tuple(operator.y_shape)
        if tuple(y.shape) == y_shape:
            y = y.unsqueeze(0)
        elif tuple(y.shape) != (1, *y_shape):
            raise ValueError(
                f"{type(self).__name__}: y must be one measurement of shape {y_shape} or (1, *{y_shape}), got {tuple(y.shape)}"
            )
        sy = torch.as_tensor(sigma_y, dtype=sigma_y.dtype if torch.is_tensor(sigma_y) else torch.float64)
        if sy.numel() != 1:
            raise ValueError(f"{type(self).__name__}: sigma_y must be a scalar, got shape {tuple(sy.shape)}")
        sy = float(sy)
        if not (math.isfinite(sy) and sy > 0):
            raise ValueError(f"{type(self).__name__}: sigma_y must be a finite positive number, got {sy}")
        return y.to(dtype=self.dtype, device=self.device), sy

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return x.reshape(x.shape[0], -1)


def _psd_eigh(M: torch.Tensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric PSD matrix.

    Eigenvalues within round-off of zero (``|λ| ≤ d·eps·max λ``) are set to exactly 0: their square
    roots (≈ 1e-8 in float64) would otherwise leak into samples along null directions.
    """
    lam, Q = torch.linalg.eigh(M)
    scale = float(lam.abs().max().clamp_min(torch.finfo(M.dtype).tiny))
    eps = torch.finfo(M.dtype).eps
    if float(lam.min()) < -(M.shape[0] * 1e3 * eps) * scale:
        raise ValueError(f"{owner}: covariance is not positive semi-definite (smallest eigenvalue {float(lam.min()):.3e})")
    lam = torch.where(lam.abs() <= M.shape[0] * eps * scale, torch.zeros_like(lam), lam)
    return lam, Q


class _Whitened:
    """``Σ`` diagonalised relative to the noise covariance: ``C^(−½) Σ C^(−½) = Q Λ Qᵀ``.

    Then ``Σ + σ² C = C^½ Q (Λ + σ²) Qᵀ C^½`` for every σ at once, so batched σ costs matrix products
    only. ``P = Qᵀ C^(−½)`` maps x to whitened coordinates, ``F = C^½ Q`` maps back.
    """

    def __init__(self, cov: torch.Tensor, noise_cov: NoiseCovariance | None, shape, owner: str):
        d = cov.shape[0]
        if noise_cov is None:
            self.lam, Q = _psd_eigh(cov, owner)
            self.P, self.F = Q.T.contiguous(), Q
            self.logdet_c = torch.zeros((), dtype=cov.dtype, device=cov.device)
        else:
            eye = torch.eye(d, dtype=cov.dtype, device=cov.device).reshape(d, *shape)
            c_isqrt = noise_cov.inv_sqrt_apply(eye).reshape(d, d)
            c_sqrt = noise_cov.sqrt_apply(eye).reshape(d, d)
            M = c_isqrt @ cov @ c_isqrt
            self.lam, Q = _psd_eigh(0.5 * (M + M.T), owner)
            self.P, self.F = Q.T @ c_isqrt, c_sqrt @ Q
            self.logdet_c = noise_cov.logdet(cov.dtype, cov.device)

    def _var(self, s: torch.Tensor, like: torch.Tensor, need_positive: bool, owner: str) -> torch.Tensor:
        var = self.lam.to(like) + s**2
        if need_positive and bool((var <= 0).any()):
            raise ValueError(f"{owner}: covariance of x_σ is singular at sigma = 0; log-density and score are undefined")
        return var

    def denoise(self, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``Σ(Σ + σ²C)⁻¹ r`` for rows ``r = x − μ`` (directions with Λ = σ = 0 map to 0)."""
        z = r @ self.P.to(r).T
        var = self.lam.to(r) + s**2
        ratio = torch.where(var > 0, self.lam.to(r) / torch.where(var > 0, var, torch.ones_like(var)), torch.zeros_like(var))
        return (z * ratio) @ self.F.to(r).T

    def score(self, r: torch.Tensor, s: torch.Tensor, owner: str) -> torch.Tensor:
        """``−(Σ + σ²C)⁻¹ r``."""
        z = r @ self.P.to(r).T
        return -(z / self._var(s, r, True, owner)) @ self.P.to(r)

    def log_density(self, r: torch.Tensor, s: torch.Tensor, owner: str) -> torch.Tensor:
        """``log N(r; 0, Σ + σ²C)`` per row."""
        z = r @ self.P.to(r).T
        var = self._var(s, r, True, owner)
        d = r.shape[1]
        return -0.5 * ((z**2 / var).sum(1) + var.log().sum(1) + d * math.log(2 * math.pi) + self.logdet_c.to(r))


def _dense_posterior(mean, cov, A, y, sigma_y):
    """``(μ_post, Σ_post, log p(y))`` for ``N(μ, Σ)`` and ``y = A x + N(0, σ_y² I)`` (flat ``y``).

    Gain form ``K = ΣAᵀ(AΣAᵀ + σ_y²I)⁻¹`` (no Σ⁻¹, so singular priors work) and the Joseph update
    ``(I − KA)Σ(I − KA)ᵀ + σ_y² K Kᵀ``, which stays symmetric PSD under round-off.
    """
    m = A.shape[0]
    S = A @ cov @ A.T + sigma_y**2 * torch.eye(m, dtype=cov.dtype, device=cov.device)
    L = torch.linalg.cholesky(0.5 * (S + S.T))
    resid = y - A @ mean
    K = torch.cholesky_solve(A @ cov, L).T  # ΣAᵀS⁻¹ (Σ symmetric)
    mean_post = mean + K @ resid
    I_KA = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device) - K @ A
    cov_post = I_KA @ cov @ I_KA.T + sigma_y**2 * (K @ K.T)
    cov_post = 0.5 * (cov_post + cov_post.T)
    w = torch.linalg.solve_triangular(L, resid[:, None], upper=False)[:, 0]
    log_ev = -0.5 * (w @ w) - torch.log(torch.diagonal(L)).sum() - 0.5 * m * math.log(2 * math.pi)
    return mean_post, cov_post, log_ev


class GaussianPrior(AnalyticPrior):
    """``x0 ~ N(μ, Σ)`` with a dense ``Σ`` (``d`` up to a few thousand).

    ``mean`` has ``d`` entries (any shape); ``shape`` (the per-sample shape, e.g. ``(C, H, W)``)
    defaults to ``mean.shape``. ``cov`` is ``(d, d)``, symmetric PSD (singular is fine for sampling
    and denoising at σ > 0; ``log_prob`` needs it positive definite).
    """

    _tensor_fields = ("mean", "cov")

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, shape: tuple[int, ...] | None = None):
        mean, cov = torch.as_tensor(mean), torch.as_tensor(cov)
        if not mean.is_floating_point():
            mean = mean.to(torch.get_default_dtype())
        self.shape = tuple(int(v) for v in (mean.shape if shape is None else shape))
        if mean.dim() == 0 or mean.numel() != math.prod(self.shape):
            raise ValueError(f"GaussianPrior: mean has {mean.numel()} entries, shape {self.shape} needs {math.prod(self.shape)}")
        d = mean.numel()
        if cov.shape != (d, d):
            raise ValueError(f"GaussianPrior: cov must be ({d}, {d}), got {tuple(cov.shape)}")
        cov = cov.to(dtype=mean.dtype, device=mean.device)
        if not bool(torch.isfinite(cov).all()) or not bool(torch.isfinite(mean).all()):
            raise ValueError("GaussianPrior: mean and cov must be finite")
        tol = torch.finfo(cov.dtype).eps ** 0.5 * float(cov.abs().max().clamp_min(torch.finfo(cov.dtype).tiny))
        if float((cov - cov.T).abs().max()) > tol:
            raise ValueError("GaussianPrior: cov is not symmetric")
        self.mean = mean.reshape(d).clone()
        self.cov = 0.5 * (cov + cov.T)
        self._cache: dict = {}

    # ------------------------------------------------------------------ factorisations (cached)
    def _whitened(self, noise_cov: NoiseCovariance | None) -> _Whitened:
        key = None if noise_cov is None else noise_cov.key
        if key not in self._cache:
            self._cache[key] = _Whitened(self.cov, noise_cov, self.shape, type(self).__name__)
        return self._cache[key]

    # ------------------------------------------------------------------ interface
    def sample(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        """``(n, *shape)`` draws ``μ + Q Λ^½ z`` (works for singular Σ)."""
        wh = self._whitened(None)
        z = randn((n, self.dim), generator, dtype=self.dtype, device=self.device)
        x = self.mean + (z * wh.lam.sqrt()) @ wh.F.T
        return x.reshape(n, *self.shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        xf = self._flatten(x)
        s = torch.zeros(xf.shape[0], 1, dtype=xf.dtype, device=xf.device)
        return self._whitened(None).log_density(xf - self.mean.to(xf), s, "GaussianPrior.log_prob")

    def denoise(self, x: torch.Tensor, sigma, noise_cov: NoiseCovariance | None = None) -> torch.Tensor:
        """``E[x0 | x_σ = x] = μ + Σ(Σ + σ²C)⁻¹(x − μ)``; ``sigma`` a float or ``(B,)``."""
        xf = self._flatten(x)
        s = self._sigma(sigma, xf)
        mu = self.mean.to(xf)
        return (mu + self._whitened(self._noise_cov(noise_cov)).denoise(xf - mu, s)).reshape(x.shape)

    def score(self, x: torch.Tensor, sigma, noise_cov: NoiseCovariance | None = None) -> torch.Tensor:
        """``∇ log p_σ(x) = −(Σ + σ²C)⁻¹(x − μ)``."""
        xf = self._flatten(x)
        s = self._sigma(sigma, xf)
        wh = self._whitened(self._noise_cov(noise_cov))
        return wh.score(xf - self.mean.to(xf), s, "GaussianPrior.score").reshape(x.shape)

    def marginal(self, sigma, noise_cov: NoiseCovariance | None = None) -> "GaussianPrior":
        """Law of ``x_σ``: ``N(μ, Σ + σ²C)``."""
        s = self._scalar_sigma(sigma)
        nc = self._noise_cov(noise_cov)
        C = torch.eye(self.dim, dtype=self.dtype, device=self.device) if nc is None else nc.to_dense(self.dtype, self.device)
        return GaussianPrior(self.mean, self.cov + s**2 * C, self.shape)

    def posterior(self, operator, y: torch.Tensor, sigma_y: float) -> "GaussianPrior":
        """Law of ``x0 | y``: ``Σ_post = (Σ⁻¹ + AᵀA/σ_y²)⁻¹``, ``μ_post = Σ_post(Σ⁻¹μ + Aᵀy/σ_y²)``.

        ``posterior(...).denoise(x, σ)`` is then exactly the posterior denoiser
        ``E[x0 | x_σ = x, y] = (Σ⁻¹ + σ⁻²I + AᵀA/σ_y²)⁻¹(Σ⁻¹μ + x/σ² + Aᵀy/σ_y²)`` of METHODS §1,
        because the diffusion noise is independent of the measurement noise given x0.
        """
        y, sy = self._measurement(operator, y, sigma_y)
        A = operator.to_dense(dtype=self.dtype, device=self.device)
        mean, cov, _ = _dense_posterior(self.mean, self.cov, A, y.reshape(-1), sy)
        return GaussianPrior(mean, cov, self.shape)

    def log_evidence(self, operator, y: torch.Tensor, sigma_y: float) -> torch.Tensor:
        """``log p(y) = log N(y; Aμ, AΣAᵀ + σ_y²I)`` as a 0-dim tensor."""
        y, sy = self._measurement(operator, y, sigma_y)
        A = operator.to_dense(dtype=self.dtype, device=self.device)
        return _dense_posterior(self.mean, self.cov, A, y.reshape(-1), sy)[2]

    def __repr__(self) -> str:
        return f"GaussianPrior(shape={self.shape}, dtype={self.dtype})"
