"""rdMC's inner estimators (METHODS §6.1): the mean of, and one draw from, the regularised posterior

    q_s(z | Y) ∝ π(z) N(z; e^{s} Y, τ² I),   τ² = e^{2s} − 1,

for every row of ``Y`` ``(n, d)``, each to a Monte Carlo variance ``var_max`` that the caller derives
from its error tolerance, with the estimator and its sample size chosen per row from estimated
properties:

- importance sampling (IS). Proposals come from ``N(e^{s} Y, τ² I)``, whose density is the Gaussian
  factor of ``q_s``: for them the weight is ``π̃(z)`` alone (``log π = −∞`` is a zero weight). Each row
  keeps a pool of its last ``pool`` proposals with ``log π̃`` and the log-density ``log g`` of the
  proposal that drew each one, so a later ``(s', Y')`` reuses them without evaluating the target:
  ``w ∝ π̃(z) N(z; e^{s'} Y', τ'² I) / g(z)`` (each batch is an unbiased IS estimate on its own; pooling
  batches is consistent). Fresh proposals are added (doubling) until the effective sample size (ESS)
  is ≥ ``ess_min`` and the estimated variance is ≤ ``var_max``. The variance estimate is the delta method
  ``Σ w̃² ‖z − x̄‖²`` but at least the weighted spread of ``q_s`` over the ESS, with the spread shrunk
  towards ``d τ²`` (the Gaussian factor's) by a pseudo-count of ``SHRINK``: a few dominant weights say
  little about the spread. A row whose ESS or variance, extrapolated in the number of proposals, cannot
  meet its target within the cap is retried once with a second proposal component, the Laplace
  mixture at ``π``'s modes tilted to ``q_s`` (``diffpost.samplers.rdmc_modes``; searched once per run and
  shared by every row; targets with one mode do without), which keeps serving that row's later
  estimates; if that fails too it goes to
- Markov chains on ``q_s`` (``diffpost.samplers.rdmc_chains``: MALA with adapted steps when the target
  has a density, ULA for a score alone), ``n_chains`` per row, warm-started from the previous call or,
  cold, resampled from the pool's weights; after a burn-in they run in blocks until the between-chain
  variance of the mean is ≤ ``var_max``.

Every estimate is capped at ``max_evals`` density/gradient evaluations per row; rows stopped by the cap
short of their target are reported (``cap_hits``, ``worst_ratio``) for the caller's warning.

Randomness: each row draws only from its own generator (when given one per row), in amounts that
depend only on its own estimates, so a row's result does not depend on the batch it is in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from diffpost.random import GeneratorLike, rand, randn
from diffpost.samplers.errors import SamplerDivergedError, check_log_density
from diffpost.samplers.rdmc_chains import UNCONVERGED_RATIO, InnerChains, sub_generator
from diffpost.samplers.rdmc_modes import ModeMixture, log_gaussian
from diffpost.targets.base import EvalCounter

#: ``inner`` modes that use the chains alone (no importance sampling)
CHAIN_MODES = ("ula", "mala")

#: pseudo-count of the prior guess ``d τ²`` for the spread of ``q_s`` in the IS variance estimate
SHRINK = 4.0
#: weight of the Gaussian factor in the defensive mixture proposal (bounds the weights by 1/DEFENSIVE
#: times those of the plain proposal, so a poor fit costs efficiency, never consistency)
DEFENSIVE = 0.2
#: largest dimension with a full-covariance proposal fit (d² per row and proposal)
FIT_MAX_DIM = 32
#: bound on the pool's floats (n · pool · d) so that large batches or dimensions stay in memory
POOL_FLOATS = 1 << 24


@dataclass
class InnerSettings:
    """Per-estimate sample-size rules (module docstring; arguments of ``rdmc``)."""

    is_pilot: int = 64
    ess_min: float = 16.0
    n_chains: int = 4
    burn_warm: int = 10
    burn_cold: int = 100
    block: int = 10
    step_fraction: float = 0.25
    max_evals: int = 4096
    pool: int = 1024
    lipschitz: float | None = None
    chains: str = "mala"  #: inner chains: "mala" (a density) or "ula" (a score only)
    mode_search_s: float = 4.0  #: forward time whose plain-proposal law seeds the search for π's modes (rdmc: T)
    ula_step: float | None = None


@dataclass
class InnerStats:
    """What one estimate did, for ``info`` and the budget warning."""

    s: float
    n_is: int = 0
    n_mcmc: int = 0
    proposals: float = 0.0  #: mean fresh IS proposals per IS row (pooled ones are free)
    ess: float = float("nan")  #: median ESS of the IS rows
    mcmc_steps: float = 0.0  #: mean inner-chain steps per chain row
    cap_hits: int = 0
    worst_ratio: float = 0.0  #: largest (estimated variance / var_max, or ESS shortfall) at the cap
    extra: dict = field(default_factory=dict)


class _Pool:
    """Per-row ring buffer of IS proposals: ``z``, ``‖z‖²``, ``log π̃(z) − log g(z)`` (``g`` the density of
    the proposal that drew it); ``size`` is 0 until the first batch, then the capacity."""

    def __init__(self, n: int, cap: int, d: int, dtype, device):
        self.cap, self.size = cap, 0
        self.z = torch.zeros(n, cap, d, dtype=dtype, device=device)
        self.zz = torch.zeros(n, cap, dtype=dtype, device=device)
        self.logr = torch.full((n, cap), -math.inf, dtype=dtype, device=device)  # empty slots weigh 0
        self.head = torch.zeros(n, dtype=torch.long, device=device)

    def add(self, rows, z, zz, logr):
        m = min(z.shape[1], self.cap)
        if m == 0:
            return
        z, zz, logr = z[:, -m:], zz[:, -m:], logr[:, -m:]
        idx = (self.head[rows, None] + torch.arange(m, device=z.device)) % self.cap
        r = rows[:, None].expand_as(idx)
        self.z[r, idx], self.zz[r, idx], self.logr[r, idx] = z, zz, logr
        self.head[rows] = (self.head[rows] + m) % self.cap
        # the whole buffer once anything is in it (empty slots weigh 0): every row's sums then run over
        # the same length whatever the other rows hold, so results do not depend on the batch
        self.size = self.cap

    def log_weights(self, rows, Y, s):
        """``log π̃(z) + log N(z; e^{s}Y, τ²I) − log g(z)`` up to a per-row constant, ``(r, size)``."""
        k = self.size
        return weights_at(self.z[rows, :k], self.zz[rows, :k], self.logr[rows, :k], Y, s)


def weights_at(z, zz, logr, Y, s):
    """IS log-weights for ``q_s(· | Y)`` of particles ``z`` ``(r, m, d)`` with ``‖z‖²`` and ``log π̃ − log g``,
    dropping the per-row constant ``‖e^{s}Y‖²/(2τ²)`` (``‖z − c‖² = ‖z‖² − 2⟨z, c⟩ + ‖c‖²``)."""
    cz = torch.einsum("rmd,rd->rm", z, math.exp(s) * Y)
    return logr - (0.5 * zz - cz) / math.expm1(2 * s)



class _Sums:
    """Self-normalised IS sums of one estimate, accumulated over batches in a running log-scale ``M``,
    and a weighted reservoir: one particle per row drawn ∝ weight over all batches so far."""

    def __init__(self, n: int, d: int, dtype, device, second_moment: bool = False):
        zero = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        self.ZZ = zero(n, d, d) if second_moment else None
        self.M = torch.full((n,), -math.inf, dtype=dtype, device=device)
        self.S0, self.S1, self.S2, self.Q0, self.Q1, self.Q2 = zero(n), zero(n, d), zero(n), zero(n), zero(n, d), zero(n)
        self.pick = zero(n, d)

    def add(self, rows, z, lw, u):
        """Batch ``z`` ``(r, m, d)`` with log-weights ``(r, m)`` (−∞ allowed); ``u`` ``(r, 2)`` uniforms."""
        M_old = self.M[rows]
        M_new = torch.maximum(M_old, lw.max(1).values)
        safe = torch.where(torch.isfinite(M_new), M_new, torch.zeros_like(M_new))  # all −∞ so far: weights 0
        a, a2 = torch.exp(M_old - safe), torch.exp(2 * (M_old - safe))
        w = torch.exp(lw - safe[:, None])
        w2, zz = w * w, (z * z).sum(-1)
        mass = w.sum(1)
        self.S0[rows] = self.S0[rows] * a + mass
        self.S1[rows] = self.S1[rows] * a[:, None] + torch.einsum("rm,rmd->rd", w, z)
        self.S2[rows] = self.S2[rows] * a + (w * zz).sum(1)
        if self.ZZ is not None:
            self.ZZ[rows] = self.ZZ[rows] * a[:, None, None] + torch.einsum("rm,rmd,rme->rde", w, z, z)
        self.Q0[rows] = self.Q0[rows] * a2 + w2.sum(1)
        self.Q1[rows] = self.Q1[rows] * a2[:, None] + torch.einsum("rm,rmd->rd", w2, z)
        self.Q2[rows] = self.Q2[rows] * a2 + (w2 * zz).sum(1)
        self.M[rows] = M_new
        # reservoir: a candidate ∝ w within the batch, kept with probability (batch mass)/(total mass)
        cdf = torch.cumsum(w, 1)
        k = torch.clamp((u[:, :1] * cdf[:, -1:] > cdf).sum(1), max=z.shape[1] - 1)
        cand = z[torch.arange(len(rows), device=z.device), k]
        take = (u[:, 1] * self.S0[rows] < mass) & (mass > 0)
        self.pick[rows] = torch.where(take[:, None], cand, self.pick[rows])

    def moments(self, rows):
        """Weighted mean and covariance ``(r, d)``, ``(r, d, d)`` (needs ``second_moment``)."""
        S0 = self.S0[rows].clamp_min(torch.finfo(self.S0.dtype).tiny)
        mean = self.S1[rows] / S0[:, None]
        return mean, self.ZZ[rows] / S0[:, None, None] - mean[:, :, None] * mean[:, None, :]

    def stats(self, rows, bound: float):
        """Mean, ESS and variance estimate (module docstring) of the rows' estimates."""
        tiny = torch.finfo(self.S0.dtype).tiny
        S0 = self.S0[rows].clamp_min(tiny)
        mean = self.S1[rows] / S0[:, None]
        mm = (mean * mean).sum(1)
        ess = torch.where(self.S0[rows] > 0, self.S0[rows] ** 2 / self.Q0[rows].clamp_min(tiny), torch.zeros_like(S0))
        delta = (self.Q2[rows] - 2 * (mean * self.Q1[rows]).sum(1) + mm * self.Q0[rows]).clamp_min(0) / S0**2
        spread = (self.S2[rows] / S0 - mm).clamp_min(0)
        shrunk = (ess * spread + SHRINK * bound) / (ess + SHRINK)
        return mean, ess, torch.maximum(delta, shrunk / ess.clamp_min(tiny))


class InnerEstimator:
    """Mean and draw estimates of ``q_s(· | Y)`` for a batch of ``n`` rows (persistent pool and chains)."""

    def __init__(self, target: EvalCounter, n: int, generator: GeneratorLike, settings: InnerSettings, *, dtype, device):
        self.target, self.n, self.generator, self.cfg = target, n, generator, settings
        self.d = target.dim
        self.dtype, self.device = dtype, device
        cap = min(settings.pool, POOL_FLOATS // max(1, n * self.d)) if settings.pool > 0 else 0
        self.pool = _Pool(n, cap, self.d, dtype, device)
        self.chains = InnerChains(target, n, generator, kind=settings.chains, n_chains=settings.n_chains,
                                  burn_warm=settings.burn_warm, burn_cold=settings.burn_cold, block=settings.block,
                                  max_evals=settings.max_evals, step_fraction=settings.step_fraction,
                                  lipschitz=settings.lipschitz, ula_step=settings.ula_step, dtype=dtype, device=device)
        self.fit = self.d <= FIT_MAX_DIM
        self.fit_mean = torch.zeros(n, self.d, dtype=dtype, device=device)
        self.fit_chol = torch.eye(self.d, dtype=dtype, device=device).repeat(n, 1, 1) if self.fit else None
        self.has_fit = torch.zeros(n, dtype=torch.bool, device=device)
        self.modes = ModeMixture(n, self.d, dtype, device) if self.fit and settings.chains == "mala" else None
        self.is_failed = torch.zeros(n, dtype=torch.bool, device=device)
        self._capped = torch.zeros(n, dtype=torch.bool, device=device)

    @property
    def capped(self) -> torch.Tensor:
        """Rows (samples) with at least one estimate stopped by the cap short of its tolerance."""
        return self._capped | self.chains.capped

    def _proposals(self, rows, Y, s, m):
        """``m`` proposals per row and ``log g`` of the density that drew them: the Gaussian factor
        ``N(e^{s}Y, τ²I)`` alone, or the defensive mixture ``DEFENSIVE · N(e^{s}Y, τ²I) + (1 − DEFENSIVE) · g₁``,
        ``g₁`` the Laplace mixture at ``π``'s modes tilted to ``q_s`` (``rdmc_modes``) where the row has one,
        else the Gaussian fit of ``q_s`` where it has one."""
        gen = sub_generator(self.generator, rows)
        xi = randn((len(rows), m, self.d), gen, dtype=self.dtype, device=self.device)
        tau2 = math.expm1(2 * s)
        centre = math.exp(s) * Y
        z = centre[:, None, :] + math.sqrt(tau2) * xi
        log_factor = lambda z: -0.5 * ((z - centre[:, None]) ** 2).sum(-1) / tau2 - 0.5 * self.d * math.log(2 * math.pi * tau2)  # noqa: E731
        modal = self.modes.has[rows] if self.modes is not None else torch.zeros_like(self.has_fit[rows])
        fit = self.has_fit[rows] & ~modal  # where both exist the modes serve alone (measured: both in equal
        # shares biased the BOD posterior's mean by 5 standard errors at 2000 samples)
        aux = fit | modal
        if not bool(aux.any()):
            return z, log_factor(z)
        # only the rows with a second component draw its uniforms, each from its own generator: a row's
        # draws never depend on what the other rows of the batch hold
        u = torch.zeros((len(rows), m), dtype=self.dtype, device=self.device)
        u[aux] = rand((int(aux.sum()), m), sub_generator(self.generator, rows[aux]), dtype=self.dtype, device=self.device)
        share = torch.where(fit & modal, 0.5, 1.0).to(self.dtype)[:, None] * (1 - DEFENSIVE)  # of each second component
        use_fit = fit[:, None] & (u >= DEFENSIVE) & (u < DEFENSIVE + share)
        use_mode = modal[:, None] & (u >= 1 - share)
        if bool(fit.any()):
            mu, L = self.fit_mean[rows], self.fit_chol[rows]
            z = torch.where(use_fit[:, :, None], mu[:, None, :] + torch.einsum("rde,rme->rmd", L, xi), z)
        if bool(modal.any()):
            q = modal.nonzero().squeeze(1)
            mk, Lk, logw = self.modes.components(rows[q], Y[q], s)
            v = rand((len(q), m), sub_generator(self.generator, rows[q]), dtype=self.dtype, device=self.device)
            k = torch.clamp((v[:, :, None] > torch.cumsum(logw.exp(), 1)[:, None, :]).sum(-1), max=self.modes.K - 1)
            k = torch.minimum(k, torch.isfinite(logw).sum(1, keepdim=True) - 1)  # never an empty slot
            pick = lambda t: torch.gather(t, 1, k.reshape(len(q), m, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))  # noqa: E731
            z_mode = pick(mk) + torch.einsum("rmde,rme->rmd", pick(Lk), xi[q])
            z = z.index_put((q,), torch.where(use_mode[q][:, :, None], z_mode, z[q]))
        terms = [math.log(DEFENSIVE) + log_factor(z)]
        log_share = torch.log(share)
        if bool(fit.any()):
            lf = log_gaussian(z, mu[:, None], L[:, None])
            terms.append(torch.where(fit[:, None], log_share + lf, torch.full_like(lf, -math.inf)))
        if bool(modal.any()):
            lm = torch.logsumexp(logw[:, None, :] + log_gaussian(z[q][:, :, None, :], mk[:, None], Lk[:, None]), -1)
            terms.append(torch.full_like(terms[0], -math.inf).index_put((q,), log_share[q] + lm))
        mix = torch.logsumexp(torch.stack(terms), 0)
        return z, torch.where(aux[:, None], mix, log_factor(z))

    def _update_fit(self, rows, sums, local, ess):
        """Proposal fit from the IS sums (``local`` indexes ``sums`` like ``rows``) where the ESS supports
        a covariance."""
        ok = ess >= 2 * self.d + 2
        if sums.ZZ is not None and bool(ok.any()):
            self._set_fit(rows[ok], *sums.moments(local[ok]), torch.ones_like(ok[ok]))

    def _set_fit(self, rows, mean, cov, ok):
        """The next batches' proposal ``N(mean, 2 cov)``: doubled so the fit stays wider than ``q_s`` as
        ``(s, Y)`` moves (the defensive component covers what it misses)."""
        eye = torch.eye(self.d, dtype=self.dtype, device=self.device)
        cov = 2 * cov + (1e-3 * torch.diagonal(cov, dim1=1, dim2=2).mean(1).clamp_min(0) + 1e-12)[:, None, None] * eye
        L, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.transpose(1, 2)))
        good = ok & (info == 0)
        r = rows[good]
        self.fit_mean[r], self.fit_chol[r], self.has_fit[r] = mean[good], L[good], True

    def _log_prob(self, z, where):
        lp = self.target.log_prob(z.reshape(-1, self.d)).reshape(z.shape[:2])
        check_log_density(lp, "log π at an importance-sampling proposal", where)  # −∞: outside the support, weight 0
        return lp

    # ------------------------------------------------------------------ IS
    def importance(self, rows, Y, s, var_max, ess_target, where, *, force: bool):
        """IS for ``rows``: the pool's particles, then fresh proposals (doubling). Returns the sums, the
        fresh proposals drawn, the rows handed to the chains (none when ``force``) and the ratios of rows
        stopped by the cap."""
        cfg, bound = self.cfg, self.d * math.expm1(2 * s)
        sums = _Sums(len(rows), self.d, self.dtype, self.device, second_moment=self.fit)
        local = torch.arange(len(rows), device=self.device)
        uniforms = lambda r: rand((len(r), 2), sub_generator(self.generator, r), dtype=self.dtype, device=self.device)  # noqa: E731
        if self.pool.size:
            k = self.pool.size
            sums.add(local, self.pool.z[rows, :k], self.pool.log_weights(rows, Y, s), uniforms(rows))
        mean, ess, var = sums.stats(local, bound)
        fresh = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        active, m, to_chains, ratios, first = local, cfg.is_pilot, [], [], True
        while True:
            done = (ess[active] >= ess_target) & (var[active] <= var_max)
            n_f = fresh[active].clamp_min(1)
            # ESS ∝ and variance ∝ 1/(number of proposals): rows that cannot meet both within the cap go to the chains
            short = (ess[active] * cfg.max_evals < ess_target * n_f) | (var[active] * n_f > var_max * cfg.max_evals)
            # an ESS of 1–3 is too noisy to extrapolate from: keep doubling until there is evidence
            full = fresh[active] + m > cfg.max_evals
            # rows whose IS failed last time get a pilot only: without evidence for IS they go to the chains
            evidence = (ess[active] >= 4) | self.is_failed[rows[active]]
            hopeless = ~done & ((short & evidence) | full) & (not first) & (not force)
            at_cap = ~done & ~hopeless & full  # only when forced: IS is then the estimate, short of its target
            ratio = torch.maximum(var[active] / var_max, ess_target / ess[active].clamp_min(1e-300))
            ratios += ratio[at_cap].tolist()
            self._capped[rows[active[at_cap & (ratio > UNCONVERGED_RATIO)]]] = True
            to_chains.append(active[hopeless])
            active = active[~(done | hopeless | at_cap)]
            if not active.numel():
                break
            r = rows[active]
            z, logg = self._proposals(r, Y[active], s, m)
            logr = self._log_prob(z, where) - logg
            zz = (z * z).sum(-1)
            sums.add(active, z, weights_at(z, zz, logr, Y[active], s), uniforms(r))
            self.pool.add(r, z, zz, logr)
            fresh[active] += m
            mean[active], ess[active], var[active] = sums.stats(active, bound)
            self._update_fit(r, sums, active, ess[active])  # later batches of this estimate use the fit
            m, first = int(fresh[active[0]]), False  # doubling
        failed = torch.cat(to_chains)
        self.is_failed[rows] = False
        self.is_failed[rows[failed]] = True
        if force and bool((ess == 0).any()):
            raise SamplerDivergedError(
                f"{where}: no importance proposal has positive density (log π = −∞ at all {int(fresh.max())} proposals) "
                f"in {int((ess == 0).sum())} of {len(rows)} rows; the proposal N(e^s Y, (e^(2s) − 1) I) misses the "
                "support: use inner='auto' or 'mala', or raise max_inner_evals")
        return sums, mean, ess, fresh, failed, ratios

    # ------------------------------------------------------------------ chains
    def _init_chains(self, rows, Y, s, m):
        """Cold chains: resampled from the pool by their weights at ``(s, Y)``, else fresh proposals."""
        z0 = self._proposals(rows, Y, s, m)[0]
        if not self.pool.size:
            return z0
        lw = self.pool.log_weights(rows, Y, s)
        ok = torch.isfinite(lw.max(1).values)
        if bool(ok.any()):
            w = torch.softmax(torch.where(ok[:, None], lw, torch.zeros_like(lw)), 1)
            u = rand((len(rows), m), sub_generator(self.generator, rows), dtype=self.dtype, device=self.device)
            k = torch.clamp((u[:, :, None] > torch.cumsum(w, 1)[:, None, :]).sum(-1), max=w.shape[1] - 1)
            pick = torch.gather(self.pool.z[rows], 1, k[:, :, None].expand(-1, -1, self.d))
            z0 = torch.where(ok[:, None, None], pick, z0)
        return z0

    def mcmc(self, rows, Y, s, var_max, where, **kw):
        """The inner chains on ``q_s`` for ``rows``: (mean, last state of chain 0, steps per row, cap-hit ratios)."""
        return self.chains.run(rows, Y, s, var_max, where, self._init_chains, **kw)

    # ------------------------------------------------------------------ public
    def estimate(self, Y, s, var_max, where, mode: str):
        """Mean of ``q_s(· | Y)`` for every row, and the estimate's ``InnerStats``."""
        rows = torch.arange(self.n, device=self.device)
        stats, ratios = InnerStats(s), []
        mean = torch.empty_like(Y)
        mc_rows = rows
        if mode not in CHAIN_MODES:
            _, m_is, ess, fresh, mc_rows, ratios = self.importance(rows, Y, s, var_max, self.cfg.ess_min, where, force=mode == "is")
            new = mc_rows[~self.modes.used[mc_rows]] if self.modes is not None else mc_rows[:0]
            if len(new):  # plain IS failed: retry with the Laplace mixture at π's modes (searched once per run)
                if not self.modes.searched:
                    self.modes.search_shared(self.target, self.cfg.mode_search_s, f"{where}, mode search")
                self.modes.used[new] = True
                retry = new[self.modes.has[new]]
                if len(retry):
                    self.is_failed[retry] = False
                    _, m2, ess2, fresh2, failed2, r2 = self.importance(retry, Y[retry], s, var_max, self.cfg.ess_min, where, force=False)
                    ok = torch.ones(len(retry), dtype=torch.bool, device=self.device)
                    ok[failed2] = False  # importance() returns its failures as positions in its rows
                    m_is[retry[ok]], ess[retry[ok]], fresh[retry[ok]] = m2[ok], ess2[ok], fresh[retry[ok]] + fresh2[ok]
                    mc_rows = mc_rows[~torch.isin(mc_rows, retry[ok])]
                    ratios += r2
            is_rows = rows[~torch.isin(rows, mc_rows)]
            mean[is_rows] = m_is[is_rows]
            if len(is_rows):
                stats.n_is, stats.proposals = len(is_rows), float(fresh[is_rows].double().mean())
                stats.ess = float(ess[is_rows].median())
            self.chains.warm[is_rows] = False  # their chains go stale; if needed again they restart from the pool
        if len(mc_rows):
            m_mc, _, steps, r2 = self.mcmc(mc_rows, Y[mc_rows], s, var_max, where)
            mean[mc_rows] = m_mc
            stats.n_mcmc, stats.mcmc_steps = len(mc_rows), float(steps.double().mean())
            ratios += r2
        stats.cap_hits, stats.worst_ratio = len(ratios), max(ratios, default=0.0)
        return mean, stats

    def draw(self, Y, s, ess_final, where, mode: str):
        """One draw per row from ``q_s(· | Y)``: a pool particle resampled by weight when the ESS is
        ≥ ``ess_final``, else the last state of one inner chain after a cold-start burn-in (ULA at a fifth
        of its step: its stationary bias is ∝ step; MALA at its adapted step, exact)."""
        rows = torch.arange(self.n, device=self.device)
        out = torch.empty_like(Y)
        mc_rows = rows
        if mode not in CHAIN_MODES:
            sums, _, ess, _, _, _ = self.importance(rows, Y, s, math.inf, ess_final, where, force=mode == "is")
            good = ess >= (ess_final if mode != "is" else 0.0)
            out[good] = sums.pick[good]
            mc_rows = rows[~good]
        if len(mc_rows):
            _, last, _, _ = self.mcmc(mc_rows, Y[mc_rows], s, math.inf, where, step_scale=0.2, burn=self.cfg.burn_cold)
            out[mc_rows] = last
        return out
