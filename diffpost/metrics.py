"""Sample-quality metrics (METHODS §6.3, §7).

Sample-based distances and diagnostics for samplers of posteriors known up to a constant: sliced
Wasserstein-2, MMD, per-mode mass, log Z error, importance-sampling ESS and MCMC (autocorrelation) ESS.
All functions take ``(n, d)`` sample tensors and use no global RNG.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from diffpost.random import GeneratorLike, randn


def _samples(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a (n, d) tensor with n >= 2, got {getattr(x, 'shape', type(x).__name__)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has non-finite entries")
    return x


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _samples(x, "x"), _samples(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype=dtype, device=x.device)


def _quantiles(sorted_vals: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Linear-interpolated quantiles of each column of ``sorted_vals`` ``(n, P)`` at ``levels`` ``(L,)``:
    sample ``i`` sits at level ``(i + ½)/n``, so equal sizes reproduce the sorted samples exactly."""
    n = sorted_vals.shape[0]
    pos = (levels * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.to(pos.dtype))[:, None]
    return sorted_vals[lo] * (1 - frac) + sorted_vals[hi] * frac


def sliced_wasserstein2(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, generator: GeneratorLike = None) -> torch.Tensor:
    """Sliced Wasserstein-2 distance ``(E_θ W_2²(θᵀx, θᵀy))^{1/2}``, θ uniform on the unit sphere.

    1-D ``W_2`` between empirical laws compares quantile functions (sorted projections; unequal sample
    sizes are compared at ``max(n_x, n_y)`` quantile levels). For two laws that differ by a shift ``δ``
    it equals ``‖δ‖/√d`` (``E_θ (θᵀδ)² = ‖δ‖²/d``). Monte Carlo in θ: pass a generator to fix it.
    """
    x, y = _pair(x, y)
    if n_projections < 1:
        raise ValueError(f"n_projections must be positive, got {n_projections}")
    theta = randn((n_projections, x.shape[1]), generator, dtype=x.dtype, device=x.device)
    theta = theta / theta.norm(dim=1, keepdim=True)
    px, py = torch.sort(x @ theta.T, dim=0).values, torch.sort(y @ theta.T, dim=0).values
    if px.shape[0] != py.shape[0]:
        L = max(px.shape[0], py.shape[0])
        levels = (torch.arange(L, dtype=x.dtype, device=x.device) + 0.5) / L
        px, py = _quantiles(px, levels), _quantiles(py, levels)
    return ((px - py) ** 2).mean().sqrt()


def _median_distance(z: torch.Tensor, max_points: int = 2000) -> float:
    """Median pairwise Euclidean distance over (an evenly strided subset of) the rows of ``z``."""
    if z.shape[0] > max_points:
        z = z[torch.linspace(0, z.shape[0] - 1, max_points).long()]
    d = torch.cdist(z, z)
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1)
    return float(d[iu[0], iu[1]].median())


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, bandwidth: float, kernel: str, exclude_diagonal: bool) -> torch.Tensor:
    """``Σ_{i,j} k(a_i, b_j)`` in row blocks (``i ≠ j`` when ``a is b`` and ``exclude_diagonal``)."""
    total = torch.zeros((), dtype=a.dtype, device=a.device)
    for start in range(0, a.shape[0], 1024):
        d2 = torch.cdist(a[start : start + 1024], b) ** 2
        if kernel == "rbf":
            k = torch.exp(-d2 / (2 * bandwidth**2))
        else:  # inverse multiquadric
            k = (1 + d2 / bandwidth**2).rsqrt()
        total = total + k.sum()
    if exclude_diagonal:
        total = total - a.shape[0]  # k(a, a) = 1 for both kernels
    return total


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidth: float | None = None,
    kernel: Literal["rbf", "imq"] = "rbf",
) -> torch.Tensor:
    """Unbiased estimate of the squared maximum mean discrepancy ``MMD²(P, Q)`` (a U-statistic: zero
    in expectation for equal laws, so it can be slightly negative).

    ``kernel``: ``"rbf"`` ``exp(−‖a − b‖²/(2h²))`` or ``"imq"`` ``(1 + ‖a − b‖²/h²)^{−1/2}``;
    ``bandwidth`` ``h`` defaults to the median pairwise distance of the pooled sample.
    """
    x, y = _pair(x, y)
    if kernel not in ("rbf", "imq"):
        raise ValueError(f"kernel must be 'rbf' or 'imq', got {kernel!r}")
    h = _median_distance(torch.cat([x, y])) if bandwidth is None else float(bandwidth)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be positive and finite, got {h}")
    n, m = x.shape[0], y.shape[0]
    kxx = _kernel_sum(x, x, h, kernel, True) / (n * (n - 1))
    kyy = _kernel_sum(y, y, h, kernel, True) / (m * (m - 1))
    kxy = _kernel_sum(x, y, h, kernel, False) / (n * m)
    return kxx + kyy - 2 * kxy


def mode_masses(x: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose nearest mode (Euclidean) is mode ``k``, shape ``(K,)``."""
    x = _samples(x, "x")
    modes = torch.as_tensor(modes, dtype=x.dtype, device=x.device)
    if modes.dim() != 2 or modes.shape[1] != x.shape[1]:
        raise ValueError(f"modes must be (K, {x.shape[1]}), got {tuple(modes.shape)}")
    nearest = torch.cdist(x, modes).argmin(1)
    return torch.bincount(nearest, minlength=modes.shape[0]).to(x.dtype) / x.shape[0]


def log_z_error(log_z_estimate: float | torch.Tensor, log_z_true: float) -> torch.Tensor:
    """Absolute error ``|log Ẑ − log Z|`` (elementwise for a tensor of estimates)."""
    est = torch.as_tensor(log_z_estimate, dtype=torch.float64)
    if not bool(torch.isfinite(est).all()) or not math.isfinite(float(log_z_true)):
        raise ValueError("log_z_error: estimates and the true log Z must be finite")
    return (est - float(log_z_true)).abs()


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """Normalised ESS of importance weights ``(Σw)² / (n Σw²)`` ∈ ``[1/n, 1]`` over the last axis.

    Computed from log-weights (``exp(2 lse(lw) − lse(2 lw)) / n``) so huge or tiny weights do not
    overflow; ``−inf`` (zero weight) is allowed, NaN and ``+inf`` are not.
    """
    lw = torch.as_tensor(log_weights)
    if not lw.is_floating_point():
        lw = lw.to(torch.float64)
    if lw.dim() == 0 or lw.shape[-1] < 1:
        raise ValueError("effective_sample_size: need at least one log-weight")
    if bool(torch.isnan(lw).any()) or bool((lw == float("inf")).any()):
        raise ValueError("effective_sample_size: log-weights contain NaN or +inf")
    if bool((lw == float("-inf")).all(-1).any()):
        raise ValueError("effective_sample_size: all weights are zero")
    return torch.exp(2 * torch.logsumexp(lw, -1) - torch.logsumexp(2 * lw, -1)) / lw.shape[-1]


def integrated_autocorrelation_time(chain: torch.Tensor) -> torch.Tensor:
    """Integrated autocorrelation time ``τ = −1 + 2 Σ_k P_k`` per coordinate of ``chain``
    ``(..., n_steps, n_chains, d)`` (any leading batch dimensions), from FFT autocovariances of each chain
    about its own mean, averaged over chains, with Geyer's initial monotone sequence of pair sums
    ``P_k = ρ_{2k} + ρ_{2k+1}``; floored at ``1/log10(n_steps · n_chains)``. Returns ``(..., d)``; a
    coordinate that is constant along every chain gives ``inf``. No input checks (see
    ``autocorrelation_ess``)."""
    n, m = chain.shape[-3], chain.shape[-2]
    z = chain - chain.mean(-3, keepdim=True)
    f = torch.fft.rfft(z, n=2 * n, dim=-3)
    acov = torch.fft.irfft(f * f.conj(), n=2 * n, dim=-3)[..., :n, :, :] / n  # biased estimator: positive definite
    acov = acov.mean(-2)  # (..., n, d)
    var0 = acov[..., :1, :]
    rho = acov / torch.where(var0 > 0, var0, torch.ones_like(var0))
    K = n // 2
    pairs = rho[..., : 2 * K : 2, :] + rho[..., 1 : 2 * K : 2, :]  # (..., K, d)
    positive = torch.cumprod((pairs > 0).to(rho.dtype), dim=-2)  # stop at the first non-positive pair
    monotone = torch.cummin(pairs, dim=-2).values
    tau = (-1 + 2 * (monotone * positive).sum(-2)).clamp_min(1.0 / math.log10(max(n * m, 10)))
    return torch.where(var0[..., 0, :] > 0, tau, torch.full_like(tau, math.inf))


def autocorrelation_ess(chain: torch.Tensor) -> torch.Tensor:
    """Effective sample size of MCMC output per coordinate, summed over chains.

    ``chain``: ``(n_steps,)``, ``(n_steps, d)`` or ``(n_steps, n_chains, d)``. Autocorrelations come from
    FFT autocovariances averaged over chains (each chain about its own mean, so between-chain
    disagreement is not detected: use several chains and compare); the integrated autocorrelation time
    ``τ = −1 + 2 Σ_k P_k`` uses Geyer's initial monotone sequence of pair sums
    ``P_k = ρ_{2k} + ρ_{2k+1}``; ESS = ``n_chains · n_steps / τ``. Returns ``(d,)`` (or a scalar).
    """
    c = torch.as_tensor(chain)
    squeeze = c.dim() == 1
    if c.dim() == 1:
        c = c[:, None, None]
    elif c.dim() == 2:
        c = c[:, None, :]
    if c.dim() != 3 or c.shape[0] < 4:
        raise ValueError(f"chain must be (n_steps[, n_chains], d) with n_steps >= 4, got {tuple(torch.as_tensor(chain).shape)}")
    if not bool(torch.isfinite(c).all()):
        raise ValueError("chain has non-finite entries")
    n, m, _ = c.shape
    tau = integrated_autocorrelation_time(c.to(torch.float64))
    if bool((tau == math.inf).any()):
        raise ValueError("autocorrelation_ess: a coordinate is constant along the chain")
    ess = n * m / tau
    return ess[0] if squeeze else ess
