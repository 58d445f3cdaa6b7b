"""Denoising diffusion samplers trained from an unnormalised density ``π̃ = exp(−U) = Z π`` (METHODS §6.2).

Discrete path measures, time index ``k = 0 … K`` (the sampler's own time: ``k = 0`` is the simple
start, ``k = K`` should be ``π``).

Reference chain ``P``:  ``Y_0 ~ N(0, s_0² I)``, ``Y_{k+1} = a_k Y_k + σ_r β_k ε_k``.
  - DDS: ``s_0 = σ_r``, ``β_k = min(1, α √Δt_k)``, ``a_k = √(1 − β_k²)``. The chain is an AR(1) started
    in its invariant law ``N(0, σ_r² I)``, hence stationary (every ``P_k = N(0, σ_r² I)``) and reversible:
    its backward kernels are its forward kernels. This is the time reversal of the OU noising process
    ``π → N(0, σ_r² I)``: the sampler runs from noise (``k = 0``) to data (``k = K``).
  - PIS: ``s_0 = 0`` (Brownian motion from the point 0), ``a_k = 1``, ``β_k = α √Δt_k``; then
    ``P_K = N(0, σ_r² Σβ_k² I) = N(0, σ_r² α² T I)``.
  In both cases ``P_K = N(0, v_K I)`` with ``v_{k+1} = a_k² v_k + σ_r² β_k²``, ``v_0 = s_0²``.

Target path measure ``P^π = P · π(Y_K)/P_K(Y_K)``: a probability measure with terminal marginal ``π``.

Sampler ``Q^θ``: same start, ``Y_{k+1} = a_k Y_k + β_k² u_θ(Y_k, t_k) + σ_r β_k ε_k``. Both kernels
are Gaussian with covariance ``σ_r² β_k² I``; with ``Y_{k+1}`` written through ``ε_k``:
    ``log q_k − log p_k = −‖ε‖²/2 + ‖β_k² u + σ_r β_k ε‖²/(2σ_r²β_k²)
                       = β_k²‖u‖²/(2σ_r²) + β_k⟨u, ε_k⟩/σ_r``.
Summing, ``log dQ/dP^π = C + S + G + log Z`` with
    ``C = Σ β_k²‖u_k‖²/(2σ_r²)``, ``S = Σ β_k⟨u_k, ε_k⟩/σ_r``, ``G = log N(Y_K; 0, v_K I) + U(Y_K)``.
Hence (``E[S] = 0`` since ``ε_k`` is independent of ``u_k``):
  - ``KL(Q||P^π) = E_Q[C + G] + log Z ≥ KL(Q_K||π)``: train on ``mean(C + G)`` by backprop through the
    path; its value is an upper bound on ``−log Z``;
  - ``Z = E_Q[exp(−(C + S + G))]``: importance weights ``log w = −(C + S + G)`` (``S`` is needed here),
    ``log Ẑ = logsumexp(log w) − log N`` (Ẑ unbiased, log Ẑ biased low by about Var(w)/(2N Z²)).
With ``u ≡ 0`` and ``π = P_K``: ``C = S = 0``, ``G = −log Z``: every weight equals ``Z``.

Schrödinger-bridge refinement (``path_log_ratio``): replace the reference's backward kernels
``N(c_k y_{k+1}, w_k² I)`` (``backward_kernels``: DDS ``c_k = a_k``, ``w_k = σ_r β_k``; PIS a Brownian bridge
back to 0) by learned Gaussian ones ``B_φ(y_k | y_{k+1}) = N(c_k y_{k+1} + β_k² v_φ(y_{k+1}, t_{k+1}), w_k² I)``
and the target path measure by ``π(Y_K) Π_k B_φ``. Then ``log dQ/d(π × B_φ) = R + log Z`` with
    ``R = log N(Y_0; 0, s_0²) + Σ_k [log q_k − log B_φ,k] − log π̃(Y_K)``
(for PIS, ``Y_0 = 0`` under both measures: no start term and no kernel back to it), again
``E_Q[R] + log Z ≥ KL(Q_K||π)`` and ``log w = −R``. For ``v ≡ 0`` (the reference's own kernels)
``R = C + S + G`` exactly, for DDS and PIS alike. Minimising ``E_Q[R]`` over ``φ`` with paths held fixed is maximum likelihood
of the backward kernels (mean matching); over ``θ`` with ``φ`` fixed it is the forward half-bridge.
Alternating the two is iterative proportional fitting (IPF) as coordinate descent on one bound.

Everything here is pure torch; callers choose ``torch.no_grad()``. Randomness: all noise of a path is
drawn up front as ``(B, K + 1, d)`` from the given generator(s), so per-sample generators make results
independent of the batch size.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from diffpost.random import GeneratorLike, randn
from diffpost.samplers.errors import SamplerDivergedError, check_finite

__all__ = [
    "Control", "Discretisation", "Paths", "SamplerDivergedError", "backward_kernels", "dds_discretisation", "effective_sample_size",
    "gaussian_log_density", "log_evidence", "path_log_ratio", "pis_discretisation", "simulate", "target_log_prob",
    "target_score", "time_grid",
]

#: ``control(x, t, score) -> u``: ``x (B, d)``; ``t`` a 0-d tensor (``simulate``: one time per step) or
#: ``(B,)`` (``path_log_ratio``: all steps at once); ``score = ∇log π(x)`` detached ``(B, d)``
Control = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------- reference
@dataclass(frozen=True)
class Discretisation:
    """Reference chain ``Y_{k+1} = a_k Y_k + σ_r β_k ε_k``, ``Y_0 ~ N(0, init_std² I)`` on ``times``."""

    times: tuple[float, ...]
    a: tuple[float, ...]
    beta: tuple[float, ...]
    sigma_r: float
    init_std: float

    def __post_init__(self):
        K = len(self.a)
        if K < 1 or len(self.beta) != K or len(self.times) != K + 1:
            raise ValueError(f"Discretisation: need K >= 1 steps with len(times) = K + 1, got "
                             f"{len(self.times)} times, {len(self.a)} a, {len(self.beta)} beta")
        if not all(t1 > t0 for t0, t1 in zip(self.times[:-1], self.times[1:])):
            raise ValueError("Discretisation: times must be strictly increasing")
        if not all(0 < b and math.isfinite(b) for b in self.beta):
            raise ValueError(f"Discretisation: every beta_k must be positive and finite, got {self.beta}")
        if not (self.sigma_r > 0 and math.isfinite(self.sigma_r)):
            raise ValueError(f"Discretisation: sigma_r must be positive and finite, got {self.sigma_r}")
        if not (self.init_std >= 0 and math.isfinite(self.init_std)):
            raise ValueError(f"Discretisation: init_std must be >= 0 and finite, got {self.init_std}")

    @property
    def n_steps(self) -> int:
        return len(self.a)

    def marginal_vars(self) -> list[float]:
        """Per-coordinate variance of the reference ``P_k``, ``k = 0 … K``."""
        v = [self.init_std**2]
        for a, b in zip(self.a, self.beta):
            v.append(a * a * v[-1] + (self.sigma_r * b) ** 2)
        return v

    @property
    def terminal_var(self) -> float:
        return self.marginal_vars()[-1]


def time_grid(n_steps: int, T: float, power: float = 1.0) -> tuple[float, ...]:
    """``t_k = T (1 − (1 − k/K)^p)``: uniform for ``p = 1``; ``p > 1`` takes steps shrinking like
    ``(K − k)^(p−1)`` towards the target end, where the last step's noise ``σ_r β_{K−1}`` must be small
    against the target's smallest scale (``Σ β_k² = α² T`` is unchanged while no ``β_k`` is capped)."""
    if not (isinstance(n_steps, int) and n_steps >= 1):
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"T must be positive and finite, got {T}")
    if not (power >= 1 and math.isfinite(power)):
        raise ValueError(f"time grid power must be >= 1 and finite, got {power}")
    return tuple(T * (1.0 - (1.0 - k / n_steps) ** power) for k in range(n_steps + 1))


def dds_discretisation(n_steps: int, T: float, alpha: float, sigma_r: float, power: float = 1.0) -> Discretisation:
    """Time-reversed OU with invariant ``N(0, σ_r² I)``: ``β_k = min(1, α √Δt_k)``, ``a_k = √(1 − β_k²)``
    on ``time_grid(n_steps, T, power)``."""
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    t = time_grid(n_steps, T, power)
    beta = tuple(min(1.0, alpha * math.sqrt(t1 - t0)) for t0, t1 in zip(t[:-1], t[1:]))
    a = tuple(math.sqrt(max(0.0, 1.0 - b * b)) for b in beta)
    return Discretisation(t, a, beta, float(sigma_r), float(sigma_r))


def pis_discretisation(n_steps: int, T: float, alpha: float, sigma_r: float, power: float = 1.0) -> Discretisation:
    """Brownian motion from 0 with diffusion ``σ_r α``: ``a_k = 1``, ``β_k = α √Δt_k``, ``P_K = N(0, σ_r²α²T I)``,
    on ``time_grid(n_steps, T, power)``."""
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    t = time_grid(n_steps, T, power)
    beta = tuple(alpha * math.sqrt(t1 - t0) for t0, t1 in zip(t[:-1], t[1:]))
    return Discretisation(t, (1.0,) * n_steps, beta, float(sigma_r), 0.0)


def gaussian_log_density(x: torch.Tensor, var: float) -> torch.Tensor:
    """``log N(x; 0, var I)`` per row of ``x (B, d)``."""
    d = x.shape[1]
    return -0.5 * x.square().sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)


# ---------------------------------------------------------------------------------------- target access
def _target_dtype(target: Any, x: torch.Tensor) -> torch.dtype:
    dt = getattr(target, "dtype", None)
    return dt if isinstance(dt, torch.dtype) else x.dtype


def target_log_prob(target: Any, x: torch.Tensor) -> torch.Tensor:
    """``log π̃(x)`` as ``(B,)`` in ``x``'s dtype, differentiable in ``x`` (the target may compute in its own dtype)."""
    lp = target.log_prob(x.to(_target_dtype(target, x)))
    if not torch.is_tensor(lp) or lp.shape != (x.shape[0],):
        got = tuple(lp.shape) if torch.is_tensor(lp) else type(lp).__name__
        raise ValueError(f"target.log_prob returned {got}, expected shape ({x.shape[0]},)")
    return lp.to(x.dtype)


def target_score(target: Any, x: torch.Tensor) -> torch.Tensor:
    """``∇ log π(x)`` detached, ``(B, d)``: ``target.grad_log_prob`` where it exists, else autograd."""
    xt = x.detach().to(_target_dtype(target, x))
    grad_fn = getattr(target, "grad_log_prob", None)
    if callable(grad_fn):
        g = grad_fn(xt)
    else:
        with torch.enable_grad():
            xr = xt.requires_grad_(True)
            (g,) = torch.autograd.grad(target.log_prob(xr).sum(), xr)
    if not torch.is_tensor(g) or g.shape != x.shape:
        got = tuple(g.shape) if torch.is_tensor(g) else type(g).__name__
        raise ValueError(f"target gradient has shape {got}, expected {tuple(x.shape)}")
    return g.detach().to(x.dtype)


def _where(k: int, disc: Discretisation) -> str:
    kind = "DDS" if disc.init_std > 0 else "PIS"  # Gaussian start (DDS, bridge) or a point (PIS)
    return f"{kind} diffusion sampler step {k}/{disc.n_steps} (t={disc.times[k]:.4g})"


# ---------------------------------------------------------------------------------------- simulation
@dataclass
class Paths:
    """Simulated controlled paths and their costs (``C``, ``S``, ``G`` of the module docstring)."""

    x: torch.Tensor  #: terminal states ``Y_K`` ``(B, d)``
    control_cost: torch.Tensor  #: ``C`` ``(B,)``
    noise_cost: torch.Tensor  #: ``S`` ``(B,)``
    terminal_cost: torch.Tensor  #: ``G = log N(Y_K; 0, v_K) + U(Y_K)`` ``(B,)``
    log_prob: torch.Tensor  #: ``log π̃(Y_K)`` ``(B,)``
    noise: torch.Tensor  #: standard normal draws ``(B, K + 1, d)``: ``[:, 0]`` start, ``[:, k + 1]`` step k
    path: torch.Tensor | None = None  #: ``Y_0 … Y_K`` ``(B, K + 1, d)`` when ``keep_path``
    scores: torch.Tensor | None = None  #: ``∇log π(Y_k)`` detached ``(B, K + 1, d)`` when ``keep_path``

    @property
    def log_weights(self) -> torch.Tensor:
        """``log w = −(C + S + G)``: ``E_Q[w] = Z``."""
        return -(self.control_cost + self.noise_cost + self.terminal_cost)

    @property
    def kl_terms(self) -> torch.Tensor:
        """``C + G``: its mean is ``KL(Q||P^π) − log Z`` (the DDS training loss)."""
        return self.control_cost + self.terminal_cost


def simulate(
    control: Control,
    target: Any,
    disc: Discretisation,
    n: int,
    *,
    generator: GeneratorLike = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    keep_path: bool = False,
) -> Paths:
    """Run the controlled chain ``n`` times from its start to ``k = K`` and accumulate the costs.

    ``target``: anything with ``dim`` and ``log_prob(x) -> (B,)`` (up to a constant), optionally
    ``grad_log_prob``. Gradients flow through the path into ``control``'s parameters and ``G`` (the
    score fed to the control is detached). Raises ``SamplerDivergedError`` naming the step where the
    target's gradient, the control, the state or the final log-density is NaN/inf.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"simulate: n must be a positive integer, got {n!r}")
    d = int(target.dim)
    K, sr = disc.n_steps, disc.sigma_r
    noise = randn((n, K + 1, d), generator, dtype=dtype, device=device)
    y = disc.init_std * noise[:, 0]
    C = torch.zeros(n, dtype=dtype, device=device)
    S = torch.zeros(n, dtype=dtype, device=device)
    states, scores = [y], []
    for k in range(K):
        t = disc.times[k]
        score = target_score(target, y)
        check_finite(score, "the target's gradient", _where(k, disc))
        u = control(y, torch.tensor(t, dtype=dtype, device=device), score)
        if not torch.is_tensor(u) or u.shape != y.shape:
            got = tuple(u.shape) if torch.is_tensor(u) else type(u).__name__
            raise ValueError(f"control returned {got}, expected {tuple(y.shape)}")
        check_finite(u, "the control", _where(k, disc))
        b, eps = disc.beta[k], noise[:, k + 1]
        C = C + (b * b / (2 * sr * sr)) * u.square().sum(1)
        S = S + (b / sr) * (u * eps).sum(1)
        y = disc.a[k] * y + (b * b) * u + (sr * b) * eps
        check_finite(y, "the state", _where(k, disc))
        if keep_path:
            scores.append(score)
            states.append(y)
    lp = target_log_prob(target, y)
    check_finite(lp, "the target's log_prob at the final state", _where(K, disc))
    G = gaussian_log_density(y, disc.terminal_var) - lp
    path = score_path = None
    if keep_path:
        last = target_score(target, y)
        check_finite(last, "the target's gradient at the final state", _where(K, disc))
        path, score_path = torch.stack(states, 1), torch.stack(scores + [last], 1)
    return Paths(y, C, S, G, lp, noise, path, score_path)


def backward_kernels(disc: Discretisation) -> tuple[list[float], list[float]]:
    """Mean factor ``c_k`` and std ``w_k`` of the reference's own backward kernels
    ``P(y_k | y_{k+1}) = N(c_k y_{k+1}, w_k² I)``: for ``Y_{k+1} = a_k Y_k + σ_r β_k ε`` with marginal
    variances ``v_k``, ``c_k = a_k v_k / v_{k+1}`` and ``w_k² = σ_r² β_k² v_k / v_{k+1}`` (Gaussian
    conditioning). DDS (stationary, ``v_k = σ_r²``): ``c_k = a_k``, ``w_k = σ_r β_k``; PIS: ``c_k = v_k/v_{k+1}``
    (a Brownian bridge back to 0) and ``w_0 = 0``: ``P(y_0 | y_1) = δ_0``."""
    v = disc.marginal_vars()
    c = [a * v[k] / v[k + 1] for k, a in enumerate(disc.a)]
    w = [disc.sigma_r * b * math.sqrt(v[k] / v[k + 1]) for k, b in enumerate(disc.beta)]
    return c, w


def path_log_ratio(paths: Paths, disc: Discretisation, backward: Control | None = None) -> torch.Tensor:
    """``R = log dQ/d(π̃ × B)`` per path ``(B,)`` for Gaussian backward kernels (module docstring).

    ``B_k(y_k | y_{k+1}) = N(c_k y_{k+1} + β_k² v(y_{k+1}, t_{k+1}), w_k² I)`` with the reference's own
    ``(c_k, w_k)`` (``backward_kernels``); ``backward(y_{k+1}, t_{k+1}, score_{k+1}) -> v`` is evaluated on
    all steps at once, ``(B·K, d)``; ``None`` is the reference's own kernel (``v = 0``), for which
    ``R = C + S + G``. ``E[R] + log Z ≥ KL(Q_K || π)`` and ``−R`` are importance log-weights. Needs
    ``keep_path=True`` paths. PIS starts from the point 0: its ``Y_0`` and the kernel back to it are the
    same point mass under ``Q`` and ``π × B``, so neither enters ``R`` (and ``v`` at step 0 is unused).
    """
    if paths.path is None or paths.scores is None:
        raise ValueError("path_log_ratio needs paths simulated with keep_path=True")
    Y, eps = paths.path, paths.noise
    B, K1, d = Y.shape
    K = K1 - 1
    if K != disc.n_steps:
        raise ValueError(f"paths have {K} steps but the discretisation has {disc.n_steps}")
    c_list, w_list = backward_kernels(disc)
    kw = dict(dtype=Y.dtype, device=Y.device)
    c = torch.tensor(c_list, **kw).view(1, K, 1)
    beta = torch.tensor(disc.beta, **kw).view(1, K, 1)
    mean = c * Y[:, 1:]
    if backward is not None:
        t = torch.tensor(disc.times[1:], **kw).expand(B, K).reshape(-1)
        v = backward(Y[:, 1:].reshape(B * K, d), t, paths.scores[:, 1:].reshape(B * K, d))
        if not torch.is_tensor(v) or v.shape != (B * K, d):
            got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"backward control returned {got}, expected {(B * K, d)}")
        mean = mean + beta.square() * v.view(B, K, d)
    e = eps[:, 1:]
    live = [k for k, w in enumerate(w_list) if w > 0]  # PIS: no kernel back to the start point
    w = torch.tensor([w_list[k] for k in live], **kw).view(1, -1, 1)
    r = (Y[:, live] - mean[:, live]) / w  # standardised backward residuals
    el = e[:, live]
    # log q_k − log B_k = (‖r_k‖² − ‖ε_k‖²)/2 + d log(w_k / (σ_r β_k)); the product form avoids cancelling two O(dK) sums
    steps = 0.5 * ((r - el) * (r + el)).sum((1, 2))
    steps = steps + d * sum(math.log(w_list[k] / (disc.sigma_r * disc.beta[k])) for k in live)
    for k in (k for k in range(K) if w_list[k] == 0):  # log q_k alone (its Gaussian density)
        steps = steps - 0.5 * e[:, k].square().sum(1) - d * math.log(disc.sigma_r * disc.beta[k]) - 0.5 * d * math.log(2 * math.pi)
    start = gaussian_log_density(Y[:, 0], disc.init_std**2) if disc.init_std > 0 else 0.0
    return start + steps - paths.log_prob


# ---------------------------------------------------------------------------------------- estimators
def log_evidence(log_w: torch.Tensor) -> torch.Tensor:
    """``log Ẑ = logsumexp(log w) − log N``."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """Kish ESS ``(Σw)²/Σw²`` (between 1 and N)."""
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
