"""Unconditional σ-space samplers (EDM / k-diffusion style) over any denoiser.

A denoiser is any callable ``D(x, sigma) -> x0_hat`` with ``sigma`` a ``(B,)`` tensor and
``D ≈ E[x0 | x_σ = x]`` for ``x_σ = x0 + σ C^½ n``. Tweedie gives ``C ∇log p_σ(x) = (D − x)/σ²``, so:

- probability-flow ODE ``dx/dσ = (x − D(x, σ))/σ`` (``heun``, ``euler``; independent of ``C``);
- reverse VE SDE (``euler_maruyama``): the forward process has ``d(Var)/dt = dσ²/dt · C``; its
  reverse step from σ to σ' < σ adds drift ``(σ² − σ'²) C ∇log p_σ = (1 − σ'²/σ²)(D − x)`` and noise
  of covariance ``(σ² − σ'²) C``;
- ``edm_stochastic``: EDM's Algorithm 2 (Karras et al. 2022), Heun steps with "churn": before each
  step raise the noise level from σ to σ̂ = (1 + γ)σ by adding noise of variance σ̂² − σ² (exact in
  distribution), then take one ODE step from σ̂ to σ'.

Posterior samplers reuse these loops by passing a posterior denoiser (UCoS, exact oracles) or by
wrapping a denoiser (guidance). ``sigmas`` is a strictly descending grid; a trailing ``0`` makes the
last step return the denoised mean ``D(x, σ_last)`` (no noise left). Noise with covariance ``C``
(function-space priors, METHODS §3.4) enters only through the ``noise`` callable and
``initial_noise``; the default is white noise.

Divergence: after every step the state is checked (one ``isfinite(x).all()``); a NaN/inf raises
``diffpost.samplers.errors.SamplerDivergedError`` naming the sampler, the step and σ.

No ``torch.no_grad`` here: guidance needs gradients and callers choose ``torch.no_grad()`` /
``torch.inference_mode()`` themselves.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

from diffpost.random import GeneratorLike, randn_like
from diffpost.samplers.errors import check_state

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``noise(x_like, generator) -> tensor`` with the shape of ``x_like``, drawn from ``N(0, C)``
NoiseFn = Callable[[torch.Tensor, GeneratorLike], torch.Tensor]
#: called once per step with ``dict(i, x, sigma, sigma_hat, sigma_next, denoised)``
Callback = Callable[[dict[str, Any]], None]
SigmaGrid = Union[torch.Tensor, Sequence[float]]


class CountingDenoiser:
    """Wraps a denoiser and counts network function evaluations (one per call, whatever the batch).

    ``nfe`` is what papers report as cost; ``reset()`` sets it back to zero between runs.
    """

    def __init__(self, denoiser: Denoiser):
        if not callable(denoiser):
            raise TypeError(f"CountingDenoiser: denoiser must be callable, got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.denoiser(x, sigma)

    def reset(self) -> None:
        self.nfe = 0

    def __repr__(self) -> str:
        return f"CountingDenoiser(nfe={self.nfe}, denoiser={self.denoiser!r})"


# --------------------------------------------------------------------------------------------- helpers
def _grid(sigmas: SigmaGrid) -> list[float]:
    """Validated grid as Python floats (one host sync; step coefficients then cost nothing)."""
    if torch.is_tensor(sigmas):
        if sigmas.dim() != 1:
            raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
        s = [float(v) for v in sigmas.detach().cpu().tolist()]
    else:
        try:
            s = [float(v) for v in sigmas]
        except TypeError as e:
            raise TypeError(f"sigmas must be a 1-D tensor or a sequence of numbers, got {type(sigmas).__name__}") from e
    if len(s) < 2:
        raise ValueError(f"sigmas needs at least 2 levels (one step), got {len(s)}")
    if not all(math.isfinite(v) for v in s):
        raise ValueError(f"sigmas must be finite, got {s}")
    if any(v <= 0 for v in s[:-1]) or s[-1] < 0:
        raise ValueError("sigmas must be positive (only the last level may be 0)")
    if any(b >= a for a, b in zip(s[:-1], s[1:])):
        raise ValueError("sigmas must be strictly descending")
    return s


def _denoise(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    sig = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    out = denoiser(x, sig)
    if not torch.is_tensor(out) or out.shape != x.shape:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"denoiser returned {got}, expected a tensor of the input's shape {tuple(x.shape)}")
    return out


def _draw(noise: NoiseFn | None, x: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
    z = randn_like(x, generator) if noise is None else noise(x, generator)
    if not torch.is_tensor(z) or z.shape != x.shape:
        got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
        raise ValueError(f"noise returned {got}, expected a tensor of shape {tuple(x.shape)}")
    return z


def _emit(callback: Callback | None, i: int, x, sigma: float, sigma_hat: float, sigma_next: float, denoised) -> None:
    if callback is not None:
        callback(dict(i=i, x=x, sigma=sigma, sigma_hat=sigma_hat, sigma_next=sigma_next, denoised=denoised))


def _check_x(x: torch.Tensor) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------- API
def initial_noise(
    shape: Sequence[int],
    sigma_max: float,
    generator: GeneratorLike = None,
    *,
    noise: NoiseFn | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``x_T = σ_max · C^½ n``: the start of every chain (its prior mean is ignored since σ_max² ≫ data
    variance; the start error shrinks like data variance / σ_max²)."""
    if not (math.isfinite(sigma_max) and sigma_max > 0):
        raise ValueError(f"sigma_max must be a positive finite number, got {sigma_max}")
    like = torch.empty(tuple(shape), dtype=dtype, device=device)
    return sigma_max * _draw(noise, like, generator)


def euler(denoiser: Denoiser, x: torch.Tensor, sigmas: SigmaGrid, *, callback: Callback | None = None) -> torch.Tensor:
    """First-order probability-flow ODE; NFE = number of steps."""
    _check_x(x)
    s = _grid(sigmas)
    for i in range(len(s) - 1):
        den = _denoise(denoiser, x, s[i])
        _emit(callback, i, x, s[i], s[i], s[i + 1], den)
        # x + (σ' − σ)(x − D)/σ; for σ' = 0 this is D exactly, written so to avoid rounding
        x = den if s[i + 1] == 0 else x + (s[i + 1] - s[i]) / s[i] * (x - den)
        check_state(x, "euler", i, s[i])
    return x


def heun(denoiser: Denoiser, x: torch.Tensor, sigmas: SigmaGrid, *, callback: Callback | None = None) -> torch.Tensor:
    """EDM's second-order (trapezoidal) probability-flow ODE solver (Algorithm 1).

    Steps to ``σ' = 0`` are Euler steps (the slope at 0 is undefined), which return the denoised mean.
    NFE = 2n − 1 for n steps ending at 0, 2n otherwise.
    """
    _check_x(x)
    s = _grid(sigmas)
    for i in range(len(s) - 1):
        x = _heun_step(denoiser, x, s[i], s[i + 1], i, s[i], callback)
        check_state(x, "heun", i, s[i])
    return x


def _heun_step(denoiser, x, sigma_hat, sigma_next, i, sigma, callback):
    den = _denoise(denoiser, x, sigma_hat)
    _emit(callback, i, x, sigma, sigma_hat, sigma_next, den)
    if sigma_next == 0:
        return den
    d = (x - den) / sigma_hat
    x_euler = x + (sigma_next - sigma_hat) * d
    d_next = (x_euler - _denoise(denoiser, x_euler, sigma_next)) / sigma_next
    return x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)


def euler_maruyama(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: SigmaGrid,
    *,
    generator: GeneratorLike = None,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler–Maruyama on the reverse variance-exploding SDE; NFE = number of steps.

    Step σ → σ' (δ = σ² − σ'²): ``x' = x + δ/σ² · (D(x, σ) − x) + √δ · C^½ z``. A step to 0
    returns ``D`` (the mean of x0 given the last state) instead of adding σ_last-sized noise.
    """
    _check_x(x)
    s = _grid(sigmas)
    for i in range(len(s) - 1):
        sig, nxt = s[i], s[i + 1]
        den = _denoise(denoiser, x, sig)
        _emit(callback, i, x, sig, sig, nxt, den)
        if nxt == 0:
            x = den
        else:
            delta = sig * sig - nxt * nxt
            x = x + (delta / (sig * sig)) * (den - x) + math.sqrt(delta) * _draw(noise, x, generator)
        check_state(x, "euler_maruyama", i, sig)
    return x


def edm_stochastic(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: SigmaGrid,
    *,
    generator: GeneratorLike = None,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """EDM's stochastic sampler (Algorithm 2).

    For σ_i in ``[s_tmin, s_tmax]``: γ = min(churn/n, √2 − 1), σ̂ = (1 + γ)σ_i,
    ``x̂ = x + s_noise·√(σ̂² − σ_i²)·C^½ z``; then one Heun step from σ̂ to σ_{i+1}. ``churn = 0`` is
    ``heun``. ``s_noise = 1`` keeps the sampler consistent; EDM's ``s_noise > 1`` is a heuristic that
    biases the variance. NFE = 2n − 1 (grid ending at 0). Callback ``x`` is x̂, evaluated at
    ``sigma_hat``.
    """
    _check_x(x)
    for name, v in (("churn", churn), ("s_noise", s_noise)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"edm_stochastic: {name} must be a finite non-negative number, got {v}")
    if math.isnan(s_tmin) or math.isnan(s_tmax) or s_tmin > s_tmax:
        raise ValueError(f"edm_stochastic: need s_tmin <= s_tmax, got {s_tmin}, {s_tmax}")
    s = _grid(sigmas)
    n = len(s) - 1
    gamma_max = min(churn / n, math.sqrt(2.0) - 1.0)
    for i in range(n):
        sig = s[i]
        gamma = gamma_max if s_tmin <= sig <= s_tmax else 0.0
        sig_hat = sig * (1.0 + gamma)
        if gamma > 0:
            x = x + (s_noise * math.sqrt(sig_hat * sig_hat - sig * sig)) * _draw(noise, x, generator)
        x = _heun_step(denoiser, x, sig_hat, s[i + 1], i, sig, callback)
        check_state(x, "edm_stochastic", i, sig)
    return x
