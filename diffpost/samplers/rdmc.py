"""rdMC: reverse diffusion Monte Carlo for ``π(x) ∝ exp(−U(x))`` (METHODS §6.1), training-free.

Forward OU process ``dX = −X ds + sqrt(2) dB``: ``X_s | X_0 ~ N(e^{−s} X_0, (1 − e^{−2s}) I)``, so
``∇log p_s(x) = (e^{−s} E[X_0 | X_s = x] − x) / (1 − e^{−2s})``, the conditional law of ``X_0`` being the
regularised posterior

    q_s(x0 | x) ∝ exp(−U(x0) − ‖x − e^{−s} x0‖² / (2(1 − e^{−2s}))).

Outer loop (reverse time): the reverse SDE is ``dY = (Y + 2 ∇log p_s(Y)) dt + sqrt(2) dB`` with
``s = T − t``. Freezing the score ``v`` over a step of length η and integrating the linear part exactly:

    Y ← e^η Y + 2(e^η − 1) v + sqrt(e^{2η} − 1) ξ          (the factor 2 comes from the drift ``Y + 2v``)

Inner estimate of ``x̄0 = E_{q_s}[x0 | Y]`` at each outer step:

- ULA chains on ``q_s``: ``∇log q_s(z) = −∇U(z) + e^{−s}(Y − e^{−s} z)/(1 − e^{−2s})``, started from
  ``N(e^{s} Y, (e^{2s} − 1) I)``, step ``≤ 1/(L + e^{−2s}/(1 − e^{−2s}))`` (the Lipschitz constant of
  ``∇log q_s``); the mean averages all chains over the second half of their steps.
- Self-normalised importance sampling: ``‖Y − e^{−s}z‖² = e^{−2s}‖z − e^{s}Y‖²`` and
  ``(1 − e^{−2s})/e^{−2s} = e^{2s} − 1``, so the Gaussian factor of ``q_s`` *is* the density of the
  proposal ``N(e^{s}Y, (e^{2s} − 1) I)`` up to a constant; in ``q_s/proposal`` it cancels and the weights
  are ``∝ exp(−U(z))`` only (subtracting the proposal log-density again is a known bug).
  Used for large s, where ``q_s`` is wide and multimodal and the proposal covers the modes.
- exact: a closed-form mean (Gaussian/GMM ``q_s``; ``exact_mean`` or the target's ``regularised_mean``).

Output: rdMC stops at forward time ``early_stop = δ``, where ``Y ~ p_δ ≠ π`` (variance inflated by
``≈ 2δ``, a large relative error for narrow posteriors). With ``final_sample`` (default) the returned
point is one draw from ``q_δ(· | Y)``, which has law ``π`` exactly when ``Y ~ p_δ``: the last state of one
ULA chain, one particle resampled by its IS weight, or the target's exact ``regularised_sample``.

Randomness: ``generator`` is None, one generator, or one per sample; every draw is one block per
sample whose size depends only on per-sample settings, so with per-sample generators the samples do
not depend on the batch size. Errors: any non-finite density, gradient, mean or state raises
``SamplerDivergedError`` naming the outer (and inner) step.

Accuracy notes (measured, see tests/test_rdmc.py): the outer scheme is first order in η; with the
default 25 uniform steps a Gaussian posterior of variance 0.2–0.6 comes out with ~20% covariance error
even with exact inner means (200 steps: < 1%). T = 2 leaves ``p_T`` visibly different from N(0, I) for
targets far from the origin (four modes at radius 8: 0.05 mass error with exact means; T = 3: 0.02).
IS needs the proposal ``N(e^s Y, (e^{2s} − 1) I)`` to overlap the target: fine for broad, low-dimensional
targets, hopeless for narrow posteriors in a few dimensions at large s.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

from diffpost.operators.base import LinearOperator
from diffpost.random import GeneratorLike, rand, randn
from diffpost.samplers.errors import SamplerDivergedError, check_finite
from diffpost.samplers.langevin import NoiseStream
from diffpost.targets.base import EvalCounter, Target

__all__ = ["rdmc", "rdmc_score_prior", "rdmc_time_grid", "regularised_mean_estimate", "SamplerDivergedError"]

#: ULA inner step = this / (L + e^{−2s}/(1 − e^{−2s})): stable (< 2/L_q), and ULA's stationary variance
#: inflation 1/(1 − hλ/2) stays ≤ 8/7 even in the stiffest direction, which matters for the final draw
#: (0.5 gave 2.8% covariance error on a d = 4 Gaussian where an exact draw gave 1.2%; 0.25 gave 1.7%)
ULA_STEP_FRACTION = 0.25

Inner = Literal["auto", "ula", "is", "exact"]


def rdmc_time_grid(T: float, n_outer: int, early_stop: float, grid: Literal["uniform", "geometric"] = "uniform") -> list[float]:
    """Forward times ``T = s_0 > s_1 > … > s_n = early_stop`` of the outer loop.

    ``uniform`` steps (as in the rdMC paper) or ``geometric`` (steps ∝ s, finer near δ where the
    score of a narrow target is stiff: much smaller discretisation error for small posterior variances).
    """
    if not (0 < early_stop < T and math.isfinite(T)):
        raise ValueError(f"rdmc: need 0 < early_stop < T, got early_stop={early_stop}, T={T}")
    if n_outer < 1:
        raise ValueError(f"rdmc: n_outer must be >= 1, got {n_outer}")
    if grid == "uniform":
        return [T - (T - early_stop) * k / n_outer for k in range(n_outer)] + [early_stop]
    if grid == "geometric":
        return [T * (early_stop / T) ** (k / n_outer) for k in range(n_outer)] + [early_stop]
    raise ValueError(f"rdmc: grid must be 'uniform' or 'geometric', got {grid!r}")


class _Inner:
    """Estimators of the mean of (and one draw from) ``q_s(· | Y)`` for a batch ``Y`` ``(n, d)``."""

    def __init__(self, target: EvalCounter, n: int, generator: GeneratorLike, *, n_chains: int, n_is: int, ula_steps: int,
                 ula_step: float | None, lipschitz: float | None, exact_mean: Callable | None):
        self.target, self.n, self.generator = target, n, generator
        self.d = target.dim
        self.n_chains, self.n_is, self.ula_steps = n_chains, n_is, ula_steps
        self.ula_step, self.lipschitz, self.exact_mean = ula_step, lipschitz, exact_mean

    def step_size(self, s: float) -> float:
        if self.ula_step is not None:
            return self.ula_step
        c = math.exp(-2 * s) / -math.expm1(-2 * s)  # curvature of the Gaussian factor of q_s
        return ULA_STEP_FRACTION / (self.lipschitz + c)

    def _proposal(self, Y: torch.Tensor, s: float, m: int) -> torch.Tensor:
        """``(n, m, d)`` draws of ``N(e^{s} Y, (e^{2s} − 1) I)`` (one block per sample)."""
        xi = randn((self.n, m, self.d), self.generator, dtype=Y.dtype, device=Y.device)
        return math.exp(s) * Y[:, None, :] + math.sqrt(math.expm1(2 * s)) * xi

    def ula(self, Y: torch.Tensor, s: float, where: str, want_sample: bool):
        # a draw needs one chain's last state, a mean all chains
        m = 1 if want_sample else self.n_chains
        h = self.step_size(s)
        z = self._proposal(Y, s, m)
        es, v = math.exp(-s), -math.expm1(-2 * s)
        noise = NoiseStream(self.generator, self.n, (m, self.d), Y.dtype, Y.device, n_calls=self.ula_steps)
        burn = self.ula_steps // 2
        acc = torch.zeros_like(z)
        scale = math.sqrt(2 * h)
        for j in range(self.ula_steps):
            at = f"{where}, inner ULA step {j} (step size {h:.3g})"
            g = self.target.grad_log_prob(z.reshape(-1, self.d)).reshape(z.shape)
            check_finite(g, "the gradient of log π", at)
            g = g + es * (Y[:, None, :] - es * z) / v
            z = z + h * g + scale * noise()
            check_finite(z, "the inner ULA state", at)
            if j >= burn:
                acc += z
        mean = acc.sum(1) / ((self.ula_steps - burn) * m)
        return mean, (z[:, 0] if want_sample else None), {"ula_step": h}

    def importance(self, Y: torch.Tensor, s: float, where: str, want_sample: bool):
        m = self.n_is
        z = self._proposal(Y, s, m)
        logw = self.target.log_prob(z.reshape(-1, self.d)).reshape(self.n, m)
        check_finite(logw, "log π at an importance-sampling proposal", where)
        w = torch.softmax(logw, dim=1)
        mean = torch.einsum("nm,nmd->nd", w, z)
        ess = float((1.0 / (w**2).sum(1)).mean()) / m
        sample = None
        if want_sample:
            u = rand((self.n, 1), self.generator, dtype=Y.dtype, device=Y.device)
            k = torch.clamp((u > torch.cumsum(w, 1)).sum(1), max=m - 1)
            sample = z[torch.arange(self.n, device=Y.device), k]
        return mean, sample, {"ess": ess}

    def exact(self, Y: torch.Tensor, s: float, where: str, want_sample: bool):
        mean = self.exact_mean(Y, s) if self.exact_mean is not None else self.target.regularised_mean(Y, s)
        sample = self.target.regularised_sample(Y, s, self.generator) if want_sample else None
        return mean, sample, {}


def rdmc(
    target: Target,
    n_samples: int,
    *,
    generator: GeneratorLike = None,
    T: float = 2.0,
    n_outer: int = 25,
    early_stop: float = 0.05,
    inner: Inner = "auto",
    is_threshold: float = 0.3,
    n_inner_samples: int = 100,
    n_is_samples: int | None = None,
    ula_steps: int = 100,
    ula_step: float | None = None,
    lipschitz: float | None = None,
    exact_mean: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    grid: Literal["uniform", "geometric"] = "uniform",
    final_sample: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draw ``n_samples`` points ``(n, d)`` from ``target`` by rdMC; returns ``(samples, info)``.

    ``inner``: ``"auto"`` = importance sampling for forward time ``s > is_threshold``, ULA below;
    ``"ula"``, ``"is"``; ``"exact"`` = ``exact_mean(Y, s)`` (or ``target.regularised_mean``).
    ``n_inner_samples``: ULA chains (and IS proposals unless ``n_is_samples`` is given: proposals cost
    one density evaluation each, chains ``ula_steps`` gradients, so IS can afford many more).
    ``ula_step=None`` ties the ULA step to the curvature of ``q_s`` using ``lipschitz`` (or the target's).
    ``final_sample``: return a draw from ``q_δ(· | Y_δ)`` rather than ``Y_δ`` itself (see module doc); with
    ``inner="exact"`` it needs the target's ``regularised_sample``, otherwise the auto rule's estimator
    draws it. ``callback`` gets ``dict(step, s, s_next, state, mean, x, inner)`` after every outer step
    (``mean`` estimated at ``state``, ``x`` the new state at ``s_next``).

    ``info``: ``counts`` (density/gradient evaluations, total rows), ``counts_per_sample``,
    ``evals_per_sample`` (both together), ``time_s``, ``times`` (the grid), ``inner`` (estimator per
    step), ``ula_step`` / ``is_ess`` (per step where used).
    """
    if not isinstance(target, Target):
        raise TypeError(f"rdmc: target must be a Target, got {type(target).__name__}")
    n_is_samples = n_inner_samples if n_is_samples is None else n_is_samples
    if min(n_samples, n_inner_samples, n_is_samples, ula_steps) < 1:
        raise ValueError("rdmc: n_samples, n_inner_samples, n_is_samples and ula_steps must be positive")
    if inner not in ("auto", "ula", "is", "exact"):
        raise ValueError(f"rdmc: inner must be 'auto', 'ula', 'is' or 'exact', got {inner!r}")
    if ula_step is not None and not (math.isfinite(ula_step) and ula_step > 0):
        raise ValueError(f"rdmc: ula_step must be positive, got {ula_step}")
    times = rdmc_time_grid(T, n_outer, early_stop, grid)

    def branch(s: float) -> str:
        if inner != "auto":
            return inner
        return "is" if s > is_threshold else "ula"

    branches = [branch(s) for s in times[:-1]]
    final_branch = None
    if final_sample:
        final_branch = branch(early_stop)
        if final_branch == "exact" and not target.has("regularised_sample"):
            final_branch = "is" if early_stop > is_threshold else "ula"
    used = set(branches) | ({final_branch} if final_branch else set())
    if inner == "exact" and exact_mean is None and not target.has("regularised_mean"):
        raise ValueError(f"rdmc: inner='exact' needs exact_mean or a target with regularised_mean ({type(target).__name__} has none)")
    L = lipschitz if lipschitz is not None else target.lipschitz
    if "ula" in used and ula_step is None:
        if L is None:
            raise ValueError(f"rdmc: ULA inner steps need ula_step or a Lipschitz estimate ({type(target).__name__} gives none)")
        if not (math.isfinite(L) and L >= 0):
            raise ValueError(f"rdmc: lipschitz must be finite and non-negative, got {L}")

    counter = EvalCounter(target)
    est = _Inner(counter, n_samples, generator, n_chains=n_inner_samples, n_is=n_is_samples, ula_steps=ula_steps,
                 ula_step=ula_step, lipschitz=L, exact_mean=exact_mean)
    run = {"ula": est.ula, "is": est.importance, "exact": est.exact}
    t0 = time.perf_counter()
    info: dict[str, Any] = {"times": times, "inner": branches, "ula_step": [], "is_ess": []}

    Y = randn((n_samples, target.dim), generator, dtype=target.dtype)
    xi = NoiseStream(generator, n_samples, (target.dim,), Y.dtype, Y.device, n_calls=n_outer)
    for k, (s, s_next) in enumerate(zip(times[:-1], times[1:])):
        where = f"rdmc outer step {k} (forward time s={s:.4g}, inner={branches[k]})"
        xbar, _, extra = run[branches[k]](Y, s, where, False)
        check_finite(xbar, "the estimated mean of q_s", where)
        _record(info, extra)
        eta = s - s_next
        v = (math.exp(-s) * xbar - Y) / -math.expm1(-2 * s)
        Y_new = math.exp(eta) * Y + 2 * math.expm1(eta) * v + math.sqrt(math.expm1(2 * eta)) * xi()
        check_finite(Y_new, "the reverse-diffusion state", where)
        if callback is not None:
            callback({"step": k, "s": s, "s_next": s_next, "state": Y, "mean": xbar, "x": Y_new, "inner": branches[k]})
        Y = Y_new
    if final_sample:
        where = f"rdmc final draw from q_s at s={early_stop:.4g} (inner={final_branch})"
        _, Y, extra = run[final_branch](Y, early_stop, where, True)
        check_finite(Y, "the final draw", where)
        _record(info, extra)
    info["final_inner"] = final_branch
    info["counts"] = dict(counter.counts)
    info["counts_per_sample"] = counter.per_sample(n_samples)
    info["evals_per_sample"] = sum(counter.counts.values()) / n_samples
    info["time_s"] = time.perf_counter() - t0
    return Y, info


def regularised_mean_estimate(
    target: Target,
    x: torch.Tensor,
    s: float,
    *,
    method: Literal["ula", "is"],
    n_inner_samples: int = 100,
    ula_steps: int = 100,
    ula_step: float | None = None,
    lipschitz: float | None = None,
    generator: GeneratorLike = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """rdMC's Monte Carlo estimate of ``E_{q_s}[x0 | x]`` for each row of ``x`` ``(n, d)`` (the inner step
    of ``rdmc``, exposed for diagnostics and tests). Returns ``(mean, info)`` with ``counts``."""
    if method not in ("ula", "is"):
        raise ValueError(f"method must be 'ula' or 'is', got {method!r}")
    if not s > 0:
        raise ValueError(f"forward time s must be positive, got {s}")
    L = lipschitz if lipschitz is not None else target.lipschitz
    if method == "ula" and ula_step is None and L is None:
        raise ValueError("ULA needs ula_step or a Lipschitz estimate")
    counter = EvalCounter(target)
    est = _Inner(counter, x.shape[0], generator, n_chains=n_inner_samples, n_is=n_inner_samples, ula_steps=ula_steps,
                 ula_step=ula_step, lipschitz=L, exact_mean=None)
    fn = est.ula if method == "ula" else est.importance
    mean, _, extra = fn(x, s, f"regularised_mean_estimate at s={s:.4g}", False)
    return mean, {"counts": dict(counter.counts), **extra}


def _record(info: dict[str, Any], extra: dict[str, float]) -> None:
    for key, name in (("ula_step", "ula_step"), ("ess", "is_ess")):
        if key in extra:
            info[name].append(extra[key])


# --------------------------------------------------------------------------- learned (score-only) prior


class _ScorePosterior(Target):
    """``∇log π(x) = s_φ(x, σ_min) + Aᵀ(y − A x)/σ_y²`` with ``s_φ = (D(x, σ_min) − x)/σ_min²`` (Tweedie,
    white noise); no density, so only gradient-based (ULA) inner chains can use it."""

    def __init__(self, denoiser, operator: LinearOperator, y: torch.Tensor, sigma_y: float, sigma_min: float, dtype):
        self.denoiser, self.operator = denoiser, operator
        self.y = y
        self.sigma_y, self.sigma_min = float(sigma_y), float(sigma_min)
        self.shape = operator.x_shape
        self.dim = operator.x_dim
        self.dtype = dtype

    def log_prob(self, x):
        raise NotImplementedError("a learned diffusion prior gives a score, not a log-density")

    def grad_log_prob(self, x):
        self.check_input(x)
        xs = x.reshape(x.shape[0], *self.shape)
        sigma = torch.full((x.shape[0],), self.sigma_min, dtype=x.dtype, device=x.device)
        score = (self.denoiser(xs, sigma) - xs) / self.sigma_min**2
        resid = self.y.to(xs).expand(x.shape[0], *self.y.shape[1:]) - self.operator.forward(xs)
        return (score + self.operator.adjoint(resid) / self.sigma_y**2).reshape(x.shape[0], -1)

    def log_prob_and_grad(self, x):
        raise NotImplementedError("a learned diffusion prior gives a score, not a log-density")


def _operator_norm_sq(operator: LinearOperator, dtype, n_iter: int = 50) -> float:
    """``‖A‖²`` by power iteration on ``AᵀA`` from a fixed, generic start vector (no RNG)."""
    d = operator.x_dim
    v = torch.cos(torch.arange(d, dtype=dtype) * 2.399963229728653) + 1.0  # golden-angle sequence
    v = (v / v.norm()).reshape(1, *operator.x_shape)
    lam = 0.0
    for _ in range(n_iter):
        w = operator.adjoint(operator.forward(v))
        lam = float(w.norm())
        if lam == 0:
            return 0.0
        v = w / lam
    return lam


def rdmc_score_prior(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    operator: LinearOperator,
    y: torch.Tensor,
    sigma_y: float,
    n_samples: int,
    *,
    sigma_min: float = 0.002,
    generator: GeneratorLike = None,
    T: float = 2.0,
    n_outer: int = 25,
    early_stop: float = 0.05,
    n_inner_samples: int = 100,
    ula_steps: int = 100,
    ula_step: float | None = None,
    lipschitz: float | None = None,
    grid: Literal["uniform", "geometric"] = "uniform",
    final_sample: bool = True,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """rdMC for ``π(x) ∝ p(x) N(y; A x, σ_y² I)`` with a learned diffusion prior (a denoiser
    ``D(x, σ)``, σ-space): ULA inner chains only, gradient
    ``s_φ(x0, σ_min) + Aᵀ(y − A x0)/σ_y² + e^{−s}(x − e^{−s}x0)/(1 − e^{−2s})``.

    ``lipschitz`` defaults to ``1/σ_min² + ‖A‖²/σ_y²`` (``‖A‖²`` by power iteration), which makes the
    ULA steps small: mixing within ``q_s`` is slow for a sharp prior. Returns ``(n, *x_shape)`` samples
    and ``info`` as ``rdmc`` (``counts['grad']`` = denoiser evaluations, one per row).
    """
    if not isinstance(operator, LinearOperator):
        raise TypeError(f"rdmc_score_prior: operator must be a LinearOperator, got {type(operator).__name__}")
    if not (sigma_min > 0 and sigma_y > 0):
        raise ValueError(f"rdmc_score_prior: sigma_min and sigma_y must be positive, got {sigma_min}, {sigma_y}")
    y = torch.as_tensor(y, dtype=dtype)
    if tuple(y.shape) == operator.y_shape:
        y = y[None]
    if tuple(y.shape) != (1,) + operator.y_shape:
        raise ValueError(f"rdmc_score_prior: y must have shape {operator.y_shape}, got {tuple(y.shape)}")
    target = _ScorePosterior(denoiser, operator, y, sigma_y, sigma_min, dtype)
    if lipschitz is None and ula_step is None:
        lipschitz = 1.0 / sigma_min**2 + _operator_norm_sq(operator, dtype) / sigma_y**2
    x, info = rdmc(target, n_samples, generator=generator, T=T, n_outer=n_outer, early_stop=early_stop, inner="ula",
                   n_inner_samples=n_inner_samples, ula_steps=ula_steps, ula_step=ula_step, lipschitz=lipschitz,
                   grid=grid, final_sample=final_sample, callback=callback)
    return x.reshape(n_samples, *operator.x_shape), info
