"""rdMC: reverse diffusion Monte Carlo for ``π(x) ∝ exp(−U(x))`` (METHODS §6.1), training-free.

Forward OU process ``dX = −X ds + sqrt(2) dB``: ``X_s | X_0 ~ N(e^{−s} X_0, (1 − e^{−2s}) I)``, so
``∇log p_s(x) = (e^{−s} E[X_0 | X_s = x] − x) / (1 − e^{−2s})``, the conditional law of ``X_0`` being the
regularised posterior ``q_s(x0 | x) ∝ exp(−U(x0) − ‖x − e^{−s} x0‖² / (2(1 − e^{−2s})))``.

Outer loop (reverse time, ``s`` from ``T`` down to ``early_stop = δ``). The reverse SDE is
``dY = (Y + 2 v) dt + sqrt(2) dB`` with ``v = ∇log p_s(Y)``; integrating the linear part exactly:

- ``scheme="euler"`` (METHODS' form, ``v`` frozen over the step):
  ``Y ← e^η Y + 2(e^η − 1) v(s, Y) + sqrt(e^{2η} − 1) ξ``;
- ``scheme="heun"`` (default): ``v`` linear in time between a predictor's ``v(s', Ŷ)`` and ``v(s, Y)``:
  ``Y ← e^η Y + w0 v(s, Y) + w1 v(s', Ŷ) + sqrt(e^{2η} − 1) ξ``, ``w1 = 2(e^η − 1 − η)/η``,
  ``w0 = 2(e^η − 1) − w1`` (``∫ e^{η−u} 2 v(u) du`` exactly), ``Ŷ`` the Euler step with the same ``ξ``.
  Measured with exact inner means (d = 10 Gaussian posterior, T = 4, geometric grid): 25 Heun steps
  give 1.7 % covariance error (the Monte Carlo floor at 4·10⁴ samples is 1.4 %), 50 Euler steps 5.3 %,
  100 Euler steps 2.3 %; four modes at radius 8: masses within 0.003.

Inner sample sizes come from a stated tolerance (``diffpost.samplers.rdmc_inner``): each mean estimate
``x̄`` enters the new state through ``c·x̄`` (``c = w e^{−s}/(1 − e^{−2s})``), so its Monte Carlo error
adds ``c² Var(x̄)`` to the state's variance, against ``(e^{2η} − 1)`` per coordinate injected by the step.
``tol`` bounds the ratio of the two standard deviations (rms over coordinates, split over the estimates
of a step): ``Var(x̄) ≤ var_max = tol² d (e^{2η} − 1) / (n_est c²)``. Monte Carlo errors then inflate the
step noise by at most ``tol²``. Bias is controlled separately: importance sampling (IS) is trusted only
at ESS ≥ ``ess_min`` (self-normalised IS is biased by O(1/ESS): with ESS ≈ 1 it returns one proposal and
the score forgets ``Y``), else Markov chains estimate the mean (``diffpost.samplers.rdmc_chains``:
MALA with per-chain adapted steps when the target has a density, ULA for a score alone; warm-started;
stopped on the autocorrelation-aware variance of the mean and split-R̂).
The final point is a draw from ``q_δ(· | Y_δ)`` (law ``π`` when ``Y ~ p_δ``): an IS particle resampled
by weight when the ESS is ≥ ``ess_final``, else the last state of one chain (ULA at a fifth of its step).
``T`` must leave ``p_T`` close to ``N(0, I)``: the start error decays as ``e^{−T}`` times the target's
distance from the origin (four modes at radius 8: T = 2 gives 0.05 mass error with exact means).

Where plain IS fails (ESS too low: separated modes in several dimensions, narrow posteriors at large
``s``) it is retried with a Laplace mixture at ``π``'s modes tilted to ``q_s`` (``rdmc_modes``; where the search
finds two or more), before the chains take over; chains alone keep the masses of the basins they start in.

Where it is accurate (measured: docs/benchmarks.md; d = 31 and 1024 by hand at 200 and 32 samples): on every
target of ``diffpost.targets`` but the funnel: the linear-Gaussian posterior (d = 4, 10), the four- and
forty-mode mixtures (four modes: every mass within 0.03), the 6-D GMM posterior (masses within Monte
Carlo error; 0.36 off before the mode mixture), logistic regression (d = 6, 31), the BOD posterior (no
Lipschitz constant; mean and standard deviations within Monte Carlo error of the quadrature) and the
1024-d image posterior. On one-mode targets it is costly (≈ 18 000–66 000 evaluations per sample, where
ULA/MALA at that budget do as well). Where it is not: on Neal's funnel the inner chains on ``q_s ≈ π`` do
not mix at large ``s``, IS sees only the slice ``x1 ≈ log τ²`` and the mode search finds no converged
mode (the density grows without bound down the neck): at the defaults that is an ``InnerBudgetError``
(``max_unconverged``), not wrong samples.
Bounded supports: IS gives ``log π = −∞`` weight 0 and MALA rejects such proposals (ULA has no gradient
outside).

Randomness: ``generator`` is None, one generator, or one per sample; each sample draws only from its own
generator, in amounts set by its own estimates, so with per-sample generators the samples do not
depend on the batch size. Errors: any non-finite density (``log π = −∞`` is allowed: zero weight, a
rejection), gradient, mean or state raises ``SamplerDivergedError`` naming the outer (and inner) step;
inner estimates that miss their tolerance for too many samples raise ``InnerBudgetError`` (a subclass).
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch

from diffpost.operators.base import LinearOperator
from diffpost.random import GeneratorLike, randn
from diffpost.samplers.errors import SamplerDivergedError, check_finite
from diffpost.samplers.langevin import NoiseStream
from diffpost.samplers.rdmc_chains import RHAT_MAX, UNCONVERGED_RATIO
from diffpost.samplers.rdmc_inner import InnerEstimator, InnerSettings, InnerStats
from diffpost.targets.base import EvalCounter, Target

__all__ = ["rdmc", "rdmc_score_prior", "rdmc_time_grid", "regularised_mean_estimate", "InnerBudgetError",
           "InnerBudgetWarning", "SamplerDivergedError"]

Inner = Literal["auto", "mala", "ula", "is", "exact"]


class InnerBudgetWarning(UserWarning):
    """rdMC's per-estimate evaluation cap stopped some inner estimates before their tolerance was met."""


class InnerBudgetError(SamplerDivergedError):
    """Too many samples had an inner estimate stopped by the cap (chains that did not mix, importance
    weights that did not settle): their scores, hence the samples, cannot be trusted. A subclass of the
    divergence error, so scripts report it as one line and write nothing."""


def rdmc_time_grid(T: float, n_outer: int, early_stop: float, grid: Literal["uniform", "geometric"] = "geometric") -> list[float]:
    """Forward times ``T = s_0 > s_1 > … > s_n = early_stop`` of the outer loop: ``uniform`` steps (the
    rdMC paper) or ``geometric`` (steps ∝ s, finer near δ where the score of a narrow target is stiff)."""
    if not (0 < early_stop < T and math.isfinite(T)):
        raise ValueError(f"rdmc: need 0 < early_stop < T, got early_stop={early_stop}, T={T}")
    if n_outer < 1:
        raise ValueError(f"rdmc: n_outer must be >= 1, got {n_outer}")
    if grid == "uniform":
        return [T - (T - early_stop) * k / n_outer for k in range(n_outer)] + [early_stop]
    if grid == "geometric":
        return [T * (early_stop / T) ** (k / n_outer) for k in range(n_outer)] + [early_stop]
    raise ValueError(f"rdmc: grid must be 'uniform' or 'geometric', got {grid!r}")


def _coefficient(w: float, s: float) -> float:
    """How a mean estimate at forward time ``s`` enters the state: ``w e^{−s}/(1 − e^{−2s})``."""
    return w * math.exp(-s) / -math.expm1(-2 * s)


def _score(xbar: torch.Tensor, Y: torch.Tensor, s: float) -> torch.Tensor:
    return (math.exp(-s) * xbar - Y) / -math.expm1(-2 * s)


def rdmc(
    target: Target,
    n_samples: int,
    *,
    generator: GeneratorLike = None,
    T: float = 4.0,
    n_outer: int = 25,
    early_stop: float = 0.05,
    grid: Literal["uniform", "geometric"] = "geometric",
    scheme: Literal["heun", "euler"] = "heun",
    inner: Inner = "auto",
    tol: float = 0.2,
    ess_min: float = 16.0,
    ess_final: float = 100.0,
    is_pilot: int = 64,
    n_chains: int = 4,
    burn_in: tuple[int, int] = (10, 100),
    max_inner_evals: int = 4096,
    max_unconverged: float = 0.1,
    pool: int = 1024,
    ula_step: float | None = None,
    lipschitz: float | None = None,
    exact_mean: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    final_sample: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draw ``n_samples`` points ``(n, d)`` from ``target`` by rdMC; returns ``(samples, info)``.

    ``inner``: ``"auto"`` chooses per sample and step between IS and MALA chains from the IS pilot's ESS
    (module docstring); ``"is"``/``"mala"``/``"ula"`` force one estimator (still sized by ``tol``; ULA needs
    only gradients); ``"exact"`` uses
    ``exact_mean(Y, s)`` or the target's ``regularised_mean`` (and ``regularised_sample`` for the draw).
    ``tol``: Monte Carlo error of the drift relative to the step's injected noise. ``ess_min``: smallest
    ESS at which an IS mean is used; ``ess_final``: the same for the final IS draw. ``is_pilot``: first IS
    batch (then doubling). ``n_chains``: inner chains per sample; ``burn_in``: steps after a warm / cold
    start. ``max_inner_evals``: cap on density/gradient evaluations per sample per inner estimate; where
    it stops an estimate short of ``tol`` an ``InnerBudgetWarning`` says how often and by how much; once
    more than a fraction ``max_unconverged`` of the samples has had an estimate stopped more than 2× short
    (``rdmc_chains.UNCONVERGED_RATIO``; at any outer step), ``InnerBudgetError`` stops the run: on Neal's funnel the inner chains on ``q_s ≈ π`` do not mix
    at large ``s`` and the samples would be wrong (SW2 41 against 4.2 for MALA), so it is an error, not
    an answer. ``max_unconverged=1`` only warns.
    ``lipschitz``: the target's (default ``target.lipschitz``; without one a per-sample curvature estimate
    is used): ULA's step, and MALA's first step before it adapts; ``ula_step`` fixes the ULA step instead.
    ``final_sample=False`` returns ``Y_δ`` (law ``p_δ``).
    ``callback`` gets ``dict(step, s, s_next, state, mean, x)`` after each outer step.

    ``info``: ``counts``, ``counts_per_sample``, ``evals_per_sample``, ``time_s``, ``times`` (the grid),
    ``inner`` (per outer step: "is", "mcmc", "mixed" or "exact"), ``estimates`` (per inner estimate: rows
    on IS/chains, mean proposals, median ESS, mean chain steps, cap hits), ``cap_hits``, ``n_estimates``,
    ``unconverged`` (samples with an estimate stopped by the cap). ``evals_per_sample`` counts a density
    with its gradient from one call once (one pass, as MALA's in the benchmark).
    """
    if not isinstance(target, Target):
        raise TypeError(f"rdmc: target must be a Target, got {type(target).__name__}")
    if inner not in ("auto", "mala", "ula", "is", "exact"):
        raise ValueError(f"rdmc: inner must be 'auto', 'mala', 'ula', 'is' or 'exact', got {inner!r}")
    if scheme not in ("heun", "euler"):
        raise ValueError(f"rdmc: scheme must be 'heun' or 'euler', got {scheme!r}")
    if min(n_samples, is_pilot, max_inner_evals, min(burn_in)) < 1 or n_chains < 2:
        raise ValueError("rdmc: n_samples, is_pilot, max_inner_evals, burn_in must be positive and n_chains >= 2")
    if not 0 <= max_unconverged <= 1:
        raise ValueError(f"rdmc: max_unconverged must be in [0, 1], got {max_unconverged}")
    for name, v in (("tol", tol), ("ess_min", ess_min), ("ess_final", ess_final)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"rdmc: {name} must be positive and finite, got {v}")
    if ula_step is not None and not (math.isfinite(ula_step) and ula_step > 0):
        raise ValueError(f"rdmc: ula_step must be positive, got {ula_step}")
    if inner == "exact" and exact_mean is None and not target.has("regularised_mean"):
        raise ValueError(f"rdmc: inner='exact' needs exact_mean or a target with regularised_mean ({type(target).__name__} has none)")
    L = lipschitz if lipschitz is not None else target.lipschitz
    if L is not None and not (math.isfinite(L) and L >= 0):
        raise ValueError(f"rdmc: lipschitz must be finite and non-negative, got {L}")
    times = rdmc_time_grid(T, n_outer, early_stop, grid)
    counter = EvalCounter(target)
    cfg = InnerSettings(is_pilot=is_pilot, ess_min=ess_min, n_chains=n_chains, burn_warm=burn_in[0], burn_cold=burn_in[1],
                        max_evals=max_inner_evals, pool=pool, lipschitz=L, ula_step=ula_step,
                        chains="ula" if inner == "ula" else "mala", mode_search_s=T)
    Y = randn((n_samples, target.dim), generator, dtype=target.dtype)
    est = InnerEstimator(counter, n_samples, generator, cfg, dtype=Y.dtype, device=Y.device)
    info: dict[str, Any] = {"times": times, "inner": [], "estimates": []}
    t0 = time.perf_counter()

    def mean(Yk: torch.Tensor, s: float, c: float, n_est: int, eta: float, where: str) -> torch.Tensor:
        if inner == "exact":
            xbar = exact_mean(Yk, s) if exact_mean is not None else counter.regularised_mean(Yk, s)
            info["estimates"].append(InnerStats(s, extra={"exact": True}))
        else:
            var_max = tol**2 * target.dim * math.expm1(2 * eta) / (n_est * c * c)
            xbar, stats = est.estimate(Yk, s, var_max, where, inner)
            info["estimates"].append(stats)
        check_finite(xbar, "the estimated mean of q_s", where)
        return xbar

    xi = NoiseStream(generator, n_samples, (target.dim,), Y.dtype, Y.device, n_calls=n_outer)
    for k, (s, s1) in enumerate(zip(times[:-1], times[1:])):
        where = f"rdmc outer step {k} (forward time s={s:.4g})"
        eta = s - s1
        E, noise = math.exp(eta), math.sqrt(math.expm1(2 * eta)) * xi()
        n_est = 2 if scheme == "heun" else 1
        w1 = 2 * (E - 1 - eta) / eta if scheme == "heun" else 0.0
        w0 = 2 * (E - 1) - w1
        x0 = mean(Y, s, _coefficient(w0, s), n_est, eta, where)
        v0 = _score(x0, Y, s)
        Y_new = E * Y + 2 * (E - 1) * v0 + noise
        if scheme == "heun":
            check_finite(Y_new, "the predicted reverse-diffusion state", where)
            x1 = mean(Y_new, s1, _coefficient(w1, s1), n_est, eta, where + " corrector")
            Y_new = E * Y + w0 * v0 + w1 * _score(x1, Y_new, s1) + noise
        check_finite(Y_new, "the reverse-diffusion state", where)
        info["inner"].append(_branch(info["estimates"][-n_est:]))
        n_capped = int(est.capped.sum())  # none with exact means
        if n_capped > max_unconverged * n_samples:
            raise InnerBudgetError(
                f"{where}: the inner estimates of {n_capped} of {n_samples} samples did not converge within "
                f"max_inner_evals={max_inner_evals} (missed by more than {UNCONVERGED_RATIO:g}×: chains not mixed, R̂ ≥ "
                f"{UNCONVERGED_RATIO * RHAT_MAX:g}, or a variance above {UNCONVERGED_RATIO:g}× that of tol={tol}), "
                f"more than max_unconverged={max_unconverged}: rdMC cannot sample this target at these settings "
                "(e.g. Neal's funnel); raise max_inner_evals, use another sampler, or pass max_unconverged=1 to "
                "get the samples with a warning")
        if callback is not None:
            callback({"step": k, "s": s, "s_next": s1, "state": Y, "mean": x0, "x": Y_new})
        Y = Y_new
    if final_sample:
        where = f"rdmc final draw from q_s at s={early_stop:.4g}"
        if inner == "exact" and target.has("regularised_sample"):
            Y = counter.regularised_sample(Y, early_stop, generator)
        else:
            Y = est.draw(Y, early_stop, ess_final, where, "auto" if inner == "exact" else inner)
        check_finite(Y, "the final draw", where)
    hits = sum(e.cap_hits for e in info["estimates"])
    info.update(counts=dict(counter.counts), counts_per_sample=counter.per_sample(n_samples),
                evals_per_sample=counter.passes() / n_samples, time_s=time.perf_counter() - t0,
                cap_hits=hits, n_estimates=len(info["estimates"]) * n_samples,
                unconverged=int(est.capped.sum()),
                estimates=[vars(e) for e in info["estimates"]])
    if hits:
        worst = max(e["worst_ratio"] for e in info["estimates"])
        warnings.warn(
            f"rdmc: the inner budget cap (max_inner_evals={max_inner_evals}) stopped {hits} of {info['n_estimates']} "
            f"inner estimates before the tolerance tol={tol} was met (worst: estimated variance or 1/ESS {worst:.3g}× "
            "the allowed value); raise max_inner_evals, or accept a looser tol", InnerBudgetWarning, stacklevel=2)
    return Y, info


def _branch(stats: list[InnerStats]) -> str:
    if any(s.extra.get("exact") for s in stats):
        return "exact"
    is_rows, mc_rows = sum(s.n_is for s in stats), sum(s.n_mcmc for s in stats)
    return "is" if mc_rows == 0 else "mcmc" if is_rows == 0 else "mixed"


def regularised_mean_estimate(
    target: Target,
    x: torch.Tensor,
    s: float,
    *,
    method: Literal["mala", "ula", "is"],
    var_max: float,
    max_inner_evals: int = 1 << 16,
    lipschitz: float | None = None,
    generator: GeneratorLike = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """rdMC's Monte Carlo estimate of ``E_{q_s}[x0 | x]`` for each row of ``x`` ``(n, d)`` to a variance
    ``var_max`` (trace), by IS, MALA or ULA alone (the inner step of ``rdmc``, exposed for diagnostics and
    tests). Returns ``(mean, info)`` with ``counts`` and the call's statistics."""
    if method not in ("mala", "ula", "is"):
        raise ValueError(f"method must be 'mala', 'ula' or 'is', got {method!r}")
    if not s > 0:
        raise ValueError(f"forward time s must be positive, got {s}")
    counter = EvalCounter(target)
    cfg = InnerSettings(max_evals=max_inner_evals, lipschitz=lipschitz if lipschitz is not None else target.lipschitz,
                        chains="ula" if method == "ula" else "mala")
    est = InnerEstimator(counter, x.shape[0], generator, cfg, dtype=x.dtype, device=x.device)
    mean, stats = est.estimate(x, s, var_max, f"regularised_mean_estimate at s={s:.4g}", method)
    return mean, {"counts": dict(counter.counts), **vars(stats)}


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
    T: float = 4.0,
    n_outer: int = 25,
    early_stop: float = 0.05,
    tol: float = 0.2,
    n_chains: int = 4,
    max_inner_evals: int = 4096,
    max_unconverged: float = 1.0,
    ula_step: float | None = None,
    lipschitz: float | None = None,
    grid: Literal["uniform", "geometric"] = "geometric",
    final_sample: bool = True,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """rdMC for ``π(x) ∝ p(x) N(y; A x, σ_y² I)`` with a learned diffusion prior (a denoiser
    ``D(x, σ)``, σ-space): ULA inner chains only (no density for IS weights), gradient
    ``s_φ(x0, σ_min) + Aᵀ(y − A x0)/σ_y² + e^{−s}(x − e^{−s}x0)/(1 − e^{−2s})``.

    ``lipschitz`` defaults to ``1/σ_min² + ‖A‖²/σ_y²`` (``‖A‖²`` by power iteration), which makes the
    ULA steps small: mixing within ``q_s`` is slow for a sharp prior, so by default
    (``max_unconverged=1``) capped estimates only warn (``rdmc``'s default 0.1 raises). Returns ``(n, *x_shape)`` samples
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
                   tol=tol, n_chains=n_chains, max_inner_evals=max_inner_evals, max_unconverged=max_unconverged,
                   ula_step=ula_step, lipschitz=lipschitz,
                   grid=grid, final_sample=final_sample, callback=callback)
    return x.reshape(n_samples, *operator.x_shape), info
