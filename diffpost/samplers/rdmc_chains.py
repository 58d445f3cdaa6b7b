"""rdMC's inner Markov chains (METHODS §6.1): ``n_chains`` chains per row on the regularised posterior

    q_s(z | Y) ∝ π(z) N(z; e^{s} Y, τ² I),   τ² = e^{2s} − 1,   ∇log q_s(z) = ∇log π(z) − (z − e^{s}Y)/τ²,

whose average over the second half of the run estimates ``E_{q_s}[z]``, checked after every block of
steps: done when the variance of that mean (block means' spread × their autocorrelation time) is
≤ ``var_max`` and split-R̂ < 1.1 (``_block_estimate``), or the cap.

- ``kind="mala"`` (a target with a log-density): Metropolis-adjusted Langevin. Each chain adapts its
  own step by Robbins–Monro on ``log h`` towards the acceptance rate 0.574 with a diminishing gain
  ``0.5/(k + 1)^0.6`` (diminishing adaptation keeps the chain ergodic; a chain started in a tail, where
  the bulk's step is rejected, still shrinks its own), so no Lipschitz constant is needed. The steps
  carry over to the next call, rescaled by ``τ²_new/τ²_old`` when ``q_s`` narrows (its Gaussian factor
  sets the scale at small ``s``). ``log π = −∞`` at a proposal is a rejection (bounded supports).
  Before: ULA with a step from an estimated curvature, which on targets without a Lipschitz constant
  (the funnel, BOD) was too small to mix within the budget.
- ``kind="ula"`` (a score without a density, e.g. a learned prior): unadjusted Langevin with step
  ``f/(L + 1/τ²)``, ``L`` the target's Lipschitz constant or a per-row curvature estimate (power
  iteration on the Hessian by gradient differences, then the running maximum of secants along the
  chains); its stationary bias is O(step).

Chains are warm-started from the previous call (``q_s`` moves little between outer steps) or, cold,
from ``init(rows, Y, s, m)`` (the caller resamples its importance pool). Every row draws only from its
own generator, in whole blocks, so its result does not depend on the batch it is in.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from diffpost.metrics import integrated_autocorrelation_time
from diffpost.random import GeneratorLike, rand, randn
from diffpost.samplers.errors import SamplerDivergedError, check_finite, log_prob_and_grad_checked
from diffpost.targets.base import EvalCounter

#: MALA's acceptance-rate target (optimal for smooth targets in high dimension)
TARGET_ACCEPT = 0.574
#: whole kept blocks before the variance of an inner mean is trusted (an autocorrelation needs a series)
MIN_BLOCKS = 4
#: split-R̂ below which an inner chain run counts as mixed (Gelman et al.'s customary 1.1)
RHAT_MAX = 1.1
#: an estimate stopped by the cap counts against ``rdmc``'s ``max_unconverged`` only when it misses its
#: target by more than this factor (variance / allowed, or R̂ / RHAT_MAX): a near miss (measured 1.07–1.16
#: on 31-D logistic regression) is a slightly larger step noise, not an unmixed chain (the funnel's are
#: far beyond it)
UNCONVERGED_RATIO = 2.0


def sub_generator(generator: GeneratorLike, rows: torch.Tensor) -> GeneratorLike:
    """The generators of ``rows`` (per-row lists), or the shared generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    return [gens[i] for i in rows.tolist()]


class InnerChains:
    """Persistent inner chains for ``n`` rows (module docstring). ``step_fraction``: ULA's step as a
    fraction of ``1/(L + 1/τ²)`` (MALA starts at the full ``1/(L + 1/τ²)`` and adapts)."""

    def __init__(self, target: EvalCounter, n: int, generator: GeneratorLike, *, kind: Literal["mala", "ula"],
                 n_chains: int, burn_warm: int, burn_cold: int, block: int, max_evals: int, step_fraction: float,
                 lipschitz: float | None, ula_step: float | None, dtype, device):
        if kind not in ("mala", "ula"):
            raise ValueError(f"inner chains must be 'mala' or 'ula', got {kind!r}")
        self.target, self.n, self.generator, self.kind = target, n, generator, kind
        self.d, self.m = target.dim, n_chains
        self.burn_warm, self.burn_cold, self.block, self.max_evals = burn_warm, burn_cold, block, max_evals
        self.step_fraction, self.lipschitz, self.ula_step = step_fraction, lipschitz, ula_step
        self.dtype, self.device = dtype, device
        self.z = torch.zeros(n, n_chains, self.d, dtype=dtype, device=device)
        self.warm = torch.zeros(n, dtype=torch.bool, device=device)
        full = lambda v: torch.full((n,), v, dtype=dtype, device=device)  # noqa: E731
        self.L = full(math.nan if lipschitz is None else float(lipschitz))  # per-row curvature (ULA; MALA's first step)
        self.log_h = torch.full((n, n_chains), math.nan, dtype=dtype, device=device)  # MALA's per-chain steps, carried
        self.tau2 = full(math.nan)  # τ² of the call that set log_h
        self.capped = torch.zeros(n, dtype=torch.bool, device=device)  # rows with an estimate stopped by the cap

    # ------------------------------------------------------------------ target
    def _eval(self, z, centre, tau2, where):
        """``log q_s`` (MALA) and ``∇log π``, ``∇log q_s`` at ``z`` ``(r, m, d)``; ``log π = −∞`` is allowed
        for MALA (a rejected proposal; its gradient is set to 0)."""
        flat = z.reshape(-1, self.d)
        if self.kind == "ula":
            g = self.target.grad_log_prob(flat).reshape(z.shape)
            check_finite(g, "the gradient of log π", where)
            return None, g, g - (z - centre[:, None]) / tau2
        lp, g = log_prob_and_grad_checked(self.target, flat, where)
        lp, g = lp.reshape(z.shape[:2]), g.reshape(z.shape)
        lq = lp - 0.5 * ((z - centre[:, None]) ** 2).sum(-1) / tau2
        return lq, g, g - (z - centre[:, None]) / tau2

    def _curvature(self, rows, z, g, where, n_iter: int = 4):
        """Per-row largest curvature of ``log π`` at the chains' states (rows without a Lipschitz
        constant): power iteration on the Hessian by gradient differences, started along the gradient,
        maximum over chains. (Secants along the chains alone see the average curvature of random
        directions, not the largest: on the BOD posterior that gave ULA steps twice too large.)"""
        v = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        eps = 1e-4 * (1 + z.abs().amax(-1, keepdim=True))
        lam = torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)
        for _ in range(n_iter):
            gp = self.target.grad_log_prob((z + eps * v).reshape(-1, self.d)).reshape(z.shape)
            check_finite(gp, "the gradient of log π (curvature probe)", where)
            hv = (gp - g) / eps
            lam = hv.norm(dim=-1)
            v = hv / lam[..., None].clamp_min(1e-300)
        self.L[rows] = torch.fmax(self.L[rows], lam.amax(1))  # never lowered: one stiff region is enough

    def _steps(self, rows, z, g_pi, tau2, where):
        """Per-row step ``h`` at the start of a call: MALA's carried-over step (rescaled when ``q_s``
        narrows), else ``ula_step``, else ``fraction/(L + 1/τ²)`` with ``L`` estimated where unknown."""
        if self.ula_step is not None:
            h = torch.full((len(rows),), self.ula_step, dtype=self.dtype, device=self.device)
        else:
            unknown = torch.isnan(self.L[rows])
            if self.kind == "mala":
                unknown &= torch.isnan(self.log_h[rows]).all(1)
            if bool(unknown.any()):
                self._curvature(rows[unknown], z[unknown], g_pi[unknown], where)
            frac = self.step_fraction if self.kind == "ula" else 1.0
            h = frac / (self.L[rows] + 1 / tau2)
        h = h[:, None].expand(-1, self.m)
        if self.kind == "mala":
            known = torch.isfinite(self.log_h[rows])
            carried = self.log_h[rows] + torch.log(torch.clamp(tau2 / self.tau2[rows], max=1.0))[:, None]
            h = torch.where(known, carried.exp(), h)
        return h

    # ------------------------------------------------------------------ chains
    def run(self, rows, Y, s, var_max, where, init: Callable, *, burn: int | None = None, step_scale: float = 1.0):
        """Chains on ``q_s(· | Y)`` for ``rows`` until the variance of the mean is ≤ ``var_max`` or the
        cap: returns (mean ``(r, d)``, last state of chain 0, steps per row, cap-hit ratios).
        ``burn`` overrides the warm/cold burn-in; ``step_scale`` multiplies ULA's step."""
        tau2 = math.expm1(2 * s)
        centre = math.exp(s) * Y
        cold = ~self.warm[rows]
        if bool(cold.any()):
            self.z[rows[cold]] = init(rows[cold], Y[cold], s, self.m)
        z, m, r_all = self.z[rows].clone(), self.m, len(rows)
        lq, g_pi, g = self._eval(z, centre, tau2, f"{where}, inner {self.kind.upper()} chains' start")
        h = self._steps(rows, z, g_pi, tau2, where) * (step_scale if self.kind == "ula" else 1.0)
        log_h = h.log()
        if burn is None:
            n_burn = torch.where(cold, self.burn_cold, self.burn_warm).to(torch.long)
        else:
            n_burn = torch.full((r_all,), int(burn), dtype=torch.long, device=self.device)
        max_steps = max(self.burn_cold + self.block, self.max_evals // m)  # one (joint) evaluation per chain and step
        steps = torch.zeros(r_all, dtype=torch.long, device=self.device)
        n_blocks = -(-max_steps // self.block) + 1
        block_sums = torch.zeros(r_all, m, n_blocks, self.d, dtype=self.dtype, device=self.device)
        block_kept = torch.zeros(r_all, n_blocks, dtype=torch.long, device=self.device)
        active = torch.arange(r_all, device=self.device)
        ratios, var = [], torch.full((r_all,), math.inf, dtype=self.dtype, device=self.device)
        mean = torch.zeros(r_all, self.d, dtype=self.dtype, device=self.device)
        while active.numel():
            r = rows[active]
            gen = sub_generator(self.generator, r)
            noise = randn((len(r), self.block, m, self.d), gen, dtype=self.dtype, device=self.device)
            unif = rand((len(r), self.block, m), gen, dtype=self.dtype, device=self.device) if self.kind == "mala" else None
            za, ga, gpi, lqa, lha = z[active], g[active], g_pi[active], None if lq is None else lq[active], log_h[active]
            ca = centre[active]
            bsum = torch.zeros(len(r), m, self.d, dtype=self.dtype, device=self.device)
            bkept = torch.zeros(len(r), dtype=torch.long, device=self.device)
            for j in range(self.block):
                k = steps[active] + j  # this row's step index
                at = f"{where}, inner {self.kind.upper()} step {int(k.max())}"
                ha = lha.exp()[..., None]
                prop = za + ha * ga + torch.sqrt(2 * ha) * noise[:, j]
                check_finite(prop, f"the inner {self.kind.upper()} state", at)
                lq_p, gpi_p, g_p = self._eval(prop, ca, tau2, at)
                if self.kind == "ula":
                    if self.ula_step is None and self.lipschitz is None:  # follow the local curvature along the chains
                        sec = ((gpi_p - gpi).norm(dim=-1) / (prop - za).norm(dim=-1).clamp_min(1e-300)).amax(1)
                        self.L[r] = torch.maximum(sec, self.L[r])
                    za, ga, gpi = prop, g_p, gpi_p
                else:
                    fwd = ((prop - za - ha * ga) ** 2).sum(-1)
                    bwd = ((za - prop - ha * g_p) ** 2).sum(-1)
                    log_alpha = lq_p - lqa + (fwd - bwd) / (4 * ha[..., 0])
                    alpha = torch.exp(torch.clamp(torch.nan_to_num(log_alpha, nan=-math.inf), max=0.0))
                    acc = unif[:, j] < alpha
                    za = torch.where(acc[..., None], prop, za)
                    ga = torch.where(acc[..., None], g_p, ga)
                    gpi = torch.where(acc[..., None], gpi_p, gpi)
                    lqa = torch.where(acc, lq_p, lqa)
                    gain = 0.5 / (k.to(self.dtype) + 1) ** 0.6  # diminishing adaptation: a chain in a tail still adapts
                    lha = lha + gain[:, None] * (alpha - TARGET_ACCEPT)
                after = (k + 1) > n_burn[active]
                bsum += torch.where(after[:, None, None], za, torch.zeros_like(za))
                bkept += after.long()
            b = steps[active] // self.block
            block_sums[active, :, b], block_kept[active, b] = bsum, bkept
            z[active], g[active], g_pi[active], log_h[active] = za, ga, gpi, lha
            if lq is not None:
                lq[active] = lqa
            steps[active] += self.block
            mean[active], var[active], rhat, spread = _block_estimate(block_sums[active], block_kept[active],
                                                                      steps[active] // self.block, self.block)
            # R̂ matters only where the chains' own spread could exceed the allowed error: an estimate anywhere
            # among the states of chains that spread less than that is within it
            done = (var[active] <= var_max) & ((rhat < RHAT_MAX) | (spread <= var_max))
            cap = steps[active] + self.block > max_steps
            if bool((cap & ~done).any()):
                ratio = torch.maximum(var[active] / var_max, rhat / RHAT_MAX)
                ratios += ratio[cap & ~done].tolist()
                self.capped[r[cap & ~done & (ratio > UNCONVERGED_RATIO)]] = True
            active = active[~(done | cap)]
        self.z[rows] = z
        self.warm[rows] = True
        if self.kind == "mala":
            self.log_h[rows], self.tau2[rows] = log_h, tau2
        return mean, z[:, 0], steps, ratios


def _block_estimate(block_sums: torch.Tensor, block_kept: torch.Tensor, n_done: torch.Tensor, block: int):
    """Mean, variance (trace) of that mean, and split-R̂ of every row's chains, from the whole kept
    blocks of the second half of its run (``nb = min(kept blocks, ⌈run/2⌉)`` blocks, at least
    ``MIN_BLOCKS``: the first half of a run is burn-in, as in Stan's warm-up, because a fixed burn-in
    left chains started in a tail 2–6 posterior standard deviations away on the BOD posterior).

    Variance: the spread of the block means about the grand mean (over all chains, so chains in
    different places count) times their integrated autocorrelation time in blocks
    (``diffpost.metrics.integrated_autocorrelation_time``) over the number of blocks. R̂ (Gelman–Rubin on
    each chain's two halves, largest over coordinates) catches the drift every chain shares after a
    start away from the mass, which no variance of a stationary series sees. (Before: the between-chain
    variance of 4 chain means after a fixed burn-in, with one step per row; on BOD its inner means were
    off by 3–48 × the variance it allowed, chains 3–6 posterior standard deviations away counted as
    converged.)

    ``block_sums`` ``(r, m, n_blocks, d)`` sums of kept states per block, ``block_kept`` ``(r, n_blocks)``
    kept steps per block, ``n_done`` ``(r,)`` blocks run. Also returns the spread (trace) of the block
    means. Rows with too few blocks give ``inf``."""
    r, m, _, d = block_sums.shape
    inf = torch.full((r,), math.inf, dtype=block_sums.dtype, device=block_sums.device)
    mean, var, rhat, spread_tr = torch.zeros(r, d, dtype=inf.dtype, device=inf.device), inf.clone(), inf.clone(), inf.clone()
    full = block_kept == block
    first = torch.where(full.any(1), full.long().argmax(1), n_done)  # blocks before it hold burn-in
    nb_all = torch.minimum(n_done - first, (n_done + 1) // 2)
    key = n_done * (block_kept.shape[1] + 1) + nb_all
    for k in torch.unique(key).tolist():  # rows with the same run length and burn-in, batched together
        rows = (key == k).nonzero().squeeze(1)
        end, nb = int(n_done[rows[0]]), int(nb_all[rows[0]])
        if nb < 1:
            continue
        means = block_sums[rows][:, :, end - nb:end] / block  # (g, m, nb, d)
        mean[rows] = means.mean((1, 2))
        if nb < MIN_BLOCKS:
            continue
        spread = ((means - means.mean((1, 2), keepdim=True)) ** 2).mean((1, 2))  # (g, d)
        tau = integrated_autocorrelation_time(means.transpose(1, 2)).clamp_min(1.0)  # (g, d), in blocks
        var[rows] = (spread * tau).sum(1) / (m * nb)
        spread_tr[rows] = spread.sum(1)
        half = nb // 2
        seqs = means[:, :, nb - 2 * half:].reshape(len(rows), 2 * m, half, d)  # each chain's two halves
        W = seqs.var(2).mean(1)
        B_n = seqs.mean(2).var(1)
        pooled = (half - 1) / half * W + B_n
        r_hat = torch.sqrt(pooled / W.clamp_min(torch.finfo(W.dtype).tiny)).amax(1)
        rhat[rows] = torch.where((W > 0).all(1), r_hat, torch.where((B_n > 0).any(1), inf[rows], torch.ones_like(r_hat)))
    return mean, var, rhat, spread_tr


__all__ = ["InnerChains", "SamplerDivergedError", "TARGET_ACCEPT", "sub_generator"]
