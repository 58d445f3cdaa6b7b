"""σ grids, training densities, EDM preconditioning, the VP adapter and trace-class noise covariances.

Everything here works in σ-space (METHODS §0): ``x_σ = x0 + σ n`` with ``n ~ N(0, C)``. VP/OU
models enter through ``VPSchedule`` (``σ = s_t/α_t``, input scale ``1/α_t``). ``FourierCovariance``
is the trace-class ``C`` of METHODS §3.4; ``IdentityCovariance`` is white noise with the same methods,
so callers never branch on which one they hold.
"""
from __future__ import annotations

import functools
import math

import torch

from diffpost.fourier import dht2, matern_spectrum
from diffpost.random import GeneratorLike, rand, randn

# --------------------------------------------------------------------------------------- helpers


def _as_tensor(v, dtype=None, device=None) -> torch.Tensor:
    if torch.is_tensor(v):
        return v.to(dtype=dtype or v.dtype, device=device or v.device)
    return torch.as_tensor(v, dtype=dtype or torch.float64, device=device)


def _positive(name: str, value: float, owner: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: {name} must be a finite positive number, got {value}")
    return value


# --------------------------------------------------------------------------------------- σ grids


def karras_sigmas(
    n_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """EDM's grid (Karras et al. eq. 5): ``σ_i^(1/ρ)`` evenly spaced from ``σ_max`` down to ``σ_min``.

    Returns ``(n_steps + 1,)``, descending, with a trailing 0 so the last step lands on the clean
    sample. ``n_steps = 1`` gives ``[σ_max, 0]``.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"karras_sigmas: n_steps must be an integer >= 1, got {n_steps!r}")
    sigma_min = _positive("sigma_min", sigma_min, "karras_sigmas")
    sigma_max = _positive("sigma_max", sigma_max, "karras_sigmas")
    rho = _positive("rho", rho, "karras_sigmas")
    if sigma_min >= sigma_max:
        raise ValueError(f"karras_sigmas: need sigma_min < sigma_max, got {sigma_min} >= {sigma_max}")
    # computed in float64 whatever the output dtype, so float32 grids are correctly rounded
    i = torch.arange(n_steps, dtype=torch.float64)
    frac = i / max(n_steps - 1, 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + frac * (lo - hi)) ** rho
    sig = torch.cat([sig, sig.new_zeros(1)])
    return sig.to(dtype=dtype, device=device)


class EDMTrainingDensity:
    """Training σ density: ``ln σ ~ N(p_mean, p_std²)``, mixed with log-uniform draws on
    ``[σ_min, σ_max]`` at ``log_uniform_fraction``.

    The log-normal alone almost never draws σ near σ_max; UCoS needs its network trained over the
    whole sampling range (METHODS §3.1 training notes), hence the mixture.
    """

    def __init__(
        self,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        log_uniform_fraction: float = 0.0,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
    ):
        if not math.isfinite(float(p_mean)):
            raise ValueError(f"EDMTrainingDensity: p_mean must be finite, got {p_mean}")
        self.p_mean = float(p_mean)
        self.p_std = _positive("p_std", p_std, "EDMTrainingDensity")
        f = float(log_uniform_fraction)
        if not (0.0 <= f <= 1.0):
            raise ValueError(f"EDMTrainingDensity: log_uniform_fraction must lie in [0, 1], got {log_uniform_fraction}")
        self.log_uniform_fraction = f
        self.sigma_min = _positive("sigma_min", sigma_min, "EDMTrainingDensity")
        self.sigma_max = _positive("sigma_max", sigma_max, "EDMTrainingDensity")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"EDMTrainingDensity: need sigma_min < sigma_max, got {sigma_min} >= {sigma_max}")

    def sample(
        self,
        n: int,
        generator: GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """``(n,)`` noise levels. With a list of generators, sample ``i`` uses only generator ``i``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"EDMTrainingDensity.sample: n must be a non-negative integer, got {n!r}")
        z = randn((n,), generator, dtype=torch.float64)
        log_sigma = self.p_mean + self.p_std * z
        if self.log_uniform_fraction > 0:
            # per sample: one uniform picks the branch, one places the log-uniform draw
            u = rand((n, 2), generator, dtype=torch.float64)
            lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
            log_uniform = lo + (hi - lo) * u[:, 1]
            log_sigma = torch.where(u[:, 0] < self.log_uniform_fraction, log_uniform, log_sigma)
        return log_sigma.exp().to(dtype=dtype, device=device)

    def config(self) -> dict:
        return {
            "p_mean": self.p_mean,
            "p_std": self.p_std,
            "log_uniform_fraction": self.log_uniform_fraction,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
        }

    def __repr__(self) -> str:
        return f"EDMTrainingDensity({', '.join(f'{k}={v}' for k, v in self.config().items())})"


# --------------------------------------------------------------------------------------- EDM


def edm_coefficients(sigma, sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` of ``D(x, σ) = c_skip x + c_out F(c_in x, c_noise)`` (METHODS §2).

    Chosen so that network input and training target have unit variance when data have std σ_d.
    ``sigma`` a float or tensor (any shape); outputs have its shape.
    """
    sigma_data = _positive("sigma_data", sigma_data, "edm_coefficients")
    sigma = _as_tensor(sigma)
    if bool((sigma <= 0).any()) or not bool(torch.isfinite(sigma).all()):
        raise ValueError("edm_coefficients: sigma must be finite and positive (c_noise = ln(σ)/4)")
    sd2 = sigma_data**2
    total = sigma**2 + sd2
    c_skip = sd2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1.0 / total.sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma, sigma_data: float = 0.5) -> torch.Tensor:
    """``λ(σ) = (σ² + σ_d²)/(σ σ_d)² = 1/c_out²``: equalises the loss across noise levels."""
    sigma_data = _positive("sigma_data", sigma_data, "edm_loss_weight")
    sigma = _as_tensor(sigma)
    if bool((sigma <= 0).any()) or not bool(torch.isfinite(sigma).all()):
        raise ValueError("edm_loss_weight: sigma must be finite and positive")
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


# --------------------------------------------------------------------------------------- VP adapter


def ddpm_time(alpha_bar) -> torch.Tensor:
    """OU time ``t = −½ log ᾱ`` of a DDPM step with cumulative ``ᾱ`` (so that ``α = e^(−t)``)."""
    alpha_bar = _as_tensor(alpha_bar)
    if bool(((alpha_bar <= 0) | (alpha_bar > 1)).any()):
        raise ValueError("ddpm_time: alpha_bar must lie in (0, 1]")
    return -0.5 * alpha_bar.log()


class VPSchedule:
    """Linear-β VP: ``x_t = α_t x0 + s_t n``, ``α_t = exp(−B(t)/2)``, ``s_t² = 1 − exp(−B(t))``,
    ``B(t) = β_min t + (β_max − β_min) t²/2``.

    In σ-space ``x_t/α_t = x0 + σ n`` with ``σ = s_t/α_t = sqrt(e^B − 1)``: a VP state times
    ``input_scale(t) = 1/α_t`` is the σ-space state (and a σ-space state is fed to a VP network as
    ``x/input_scale``). ``t`` floats or tensors.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = _positive("beta_min", beta_min, "VPSchedule")
        self.beta_max = _positive("beta_max", beta_max, "VPSchedule")
        if self.beta_max < self.beta_min:
            raise ValueError(f"VPSchedule: need beta_max >= beta_min, got {beta_max} < {beta_min}")

    def integrated_beta(self, t) -> torch.Tensor:
        t = _as_tensor(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def beta(self, t) -> torch.Tensor:
        t = _as_tensor(t)
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(-0.5 * self.integrated_beta(t))

    def s(self, t) -> torch.Tensor:
        """Standard deviation of the noise, ``sqrt(1 − e^(−B))`` (expm1 keeps small t accurate)."""
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def sigma(self, t) -> torch.Tensor:
        """``s_t/α_t = sqrt(e^B − 1)``."""
        return torch.sqrt(torch.expm1(self.integrated_beta(t)))

    def t_of_sigma(self, sigma) -> torch.Tensor:
        """Inverse of ``sigma``: solve ``B(t) = log(1 + σ²)`` for ``t ≥ 0``.

        Written as ``2B / (β_min + sqrt(β_min² + 2(β_max − β_min)B))`` (the root without cancellation,
        also valid for constant β).
        """
        sigma = _as_tensor(sigma)
        if bool((sigma < 0).any()):
            raise ValueError("VPSchedule.t_of_sigma: sigma must be non-negative")
        B = torch.log1p(sigma**2)
        d = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * B))

    def input_scale(self, t) -> torch.Tensor:
        """``1/α_t``: a VP state ``x_t`` times this is the σ-space state ``x0 + σ n``."""
        return 1.0 / self.alpha(t)

    def config(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def __repr__(self) -> str:
        return f"VPSchedule(beta_min={self.beta_min}, beta_max={self.beta_max})"


# --------------------------------------------------------------------------------------- covariances


@functools.lru_cache(maxsize=64)
def _continuum_pointwise_variance(tau: float, s: float) -> float:
    """``Σ_{k ∈ Z²} (τ² + 4π²|k|²)^(−s)``: the pointwise variance of the continuum field.

    Exact lattice sum over the disk ``|k| ≤ R`` plus the integral of the tail outside the disk of the
    same area (matching the lattice count makes the boundary error tiny).
    """
    R = 400
    k = torch.arange(-R, R + 1, dtype=torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    inside = k2 <= R * R
    lam = (tau**2 + 4 * math.pi**2 * k2[inside]) ** (-s)
    r_eff2 = float(inside.sum()) / math.pi
    tail = (tau**2 + 4 * math.pi**2 * r_eff2) ** (1 - s) / (4 * math.pi * (s - 1))
    return float(lam.sum()) + tail


class NoiseCovariance:
    """Common base of covariances diagonal in the 2-D Hartley basis (per channel), acting on
    ``(B, C, H, W)`` tensors. Subclasses define ``eigenvalues``."""

    shape: tuple[int, int, int]

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def eigenvalues(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
        raise NotImplementedError

    def _check(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"{type(self).__name__}: expected a tensor, got {type(x).__name__}")
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{type(self).__name__}: expected shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")

    def _multiply(self, x: torch.Tensor, power: float) -> torch.Tensor:
        self._check(x)
        lam = self.eigenvalues(x.dtype, x.device)
        return dht2(lam**power * dht2(x))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._multiply(x, 1.0)

    def sqrt_apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._multiply(x, 0.5)

    def inv_apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._multiply(x, -1.0)

    def inv_sqrt_apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._multiply(x, -0.5)

    def logdet(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
        return self.eigenvalues(dtype, device).log().sum()

    def sample(
        self,
        n: int | torch.Tensor,
        generator: GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """``C^½ n``, ``n`` white. ``n`` an int (batch size) or a tensor whose batch size, dtype and
        device are copied."""
        if torch.is_tensor(n):
            batch, dtype, device = n.shape[0], n.dtype, n.device
        elif isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            batch = n
        else:
            raise ValueError(f"{type(self).__name__}.sample: n must be a non-negative int or a tensor, got {n!r}")
        return self.sqrt_apply(randn((batch, *self.shape), generator, dtype=dtype, device=device))

    def to_dense(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
        """The ``(d, d)`` matrix (small grids and tests only)."""
        d = self.dim
        eye = torch.eye(d, dtype=dtype, device=device).reshape(d, *self.shape)
        return self.apply(eye).reshape(d, d)

    def at_resolution(self, H: int, W: int) -> "NoiseCovariance":
        raise NotImplementedError

    @property
    def key(self) -> tuple:
        """Hashable identity (used by priors to cache factorisations)."""
        raise NotImplementedError


def _check_shape(shape, owner: str) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{owner}: shape must be (C, H, W) with positive entries, got {shape}")
    return shape


class FourierCovariance(NoiseCovariance):
    """Trace-class ``C = amplitude · (τ² I − Δ)^(−s)`` on the periodic unit square, per channel.

    Diagonal in the Hartley basis with eigenvalues from ``matern_spectrum``. By default ``amplitude``
    makes the continuum pointwise variance ``trace(C)/d`` equal to 1, so a field means the same thing at
    every resolution; ``at_resolution`` keeps that amplitude. Trace class in 2-D needs ``s > 1``.
    """

    def __init__(
        self,
        shape: tuple[int, int, int] = (1, 32, 32),
        tau: float = 3.0,
        s: float = 2.0,
        amplitude: float | None = None,
    ):
        self.shape = _check_shape(shape, "FourierCovariance")
        self.tau = _positive("tau", tau, "FourierCovariance")
        s = float(s)
        if not (math.isfinite(s) and s > 1):
            raise ValueError(f"FourierCovariance: s must be > 1 for a trace-class covariance in 2-D, got {s}")
        self.s = s
        if amplitude is None:
            amplitude = 1.0 / _continuum_pointwise_variance(self.tau, self.s)
        self.amplitude = _positive("amplitude", amplitude, "FourierCovariance")
        self._eig_cache: dict = {}

    def eigenvalues(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
        """Grid-matrix eigenvalues, ``(C, H, W)`` on the FFT layout (the same for every channel)."""
        key = (dtype, str(device))
        if key not in self._eig_cache:
            C, H, W = self.shape
            lam = self.amplitude * matern_spectrum(H, W, self.tau, self.s, dtype=torch.float64)
            self._eig_cache[key] = lam.expand(C, H, W).to(dtype=dtype, device=device).contiguous()
        return self._eig_cache[key]

    def at_resolution(self, H: int, W: int) -> "FourierCovariance":
        return FourierCovariance((self.shape[0], H, W), self.tau, self.s, self.amplitude)

    @property
    def key(self) -> tuple:
        return ("fourier", self.shape, self.tau, self.s, self.amplitude)

    def config(self) -> dict:
        return {"shape": list(self.shape), "tau": self.tau, "s": self.s, "amplitude": self.amplitude}

    def __repr__(self) -> str:
        return f"FourierCovariance(shape={self.shape}, tau={self.tau}, s={self.s}, amplitude={self.amplitude:.6g})"


class IdentityCovariance(NoiseCovariance):
    """White noise ``C = I`` with the same methods as ``FourierCovariance``."""

    def __init__(self, shape: tuple[int, int, int] = (1, 32, 32)):
        self.shape = _check_shape(shape, "IdentityCovariance")

    def eigenvalues(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.ones(self.shape, dtype=dtype, device=device)

    def _multiply(self, x: torch.Tensor, power: float) -> torch.Tensor:
        self._check(x)
        return x.clone()

    def logdet(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.zeros((), dtype=dtype, device=device)

    def to_dense(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.eye(self.dim, dtype=dtype, device=device)

    def at_resolution(self, H: int, W: int) -> "IdentityCovariance":
        return IdentityCovariance((self.shape[0], H, W))

    @property
    def key(self) -> tuple:
        return ("identity", self.shape)

    def config(self) -> dict:
        return {"shape": list(self.shape)}

    def __repr__(self) -> str:
        return f"IdentityCovariance(shape={self.shape})"
