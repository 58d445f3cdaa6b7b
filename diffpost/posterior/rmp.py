"""RMP: reverse mean propagation, the posterior mean in one run (Xue, Cai, Yuan, Gao, "Score-Based
Variational Inference for Inverse Problems", arXiv 2410.05646; METHODS §5). No public code; every
step below is derived here (the paper's natural-gradient equations carry a sign slip and an extra
``NΛ_k`` term, as its reviewers noted) and checked on the Gaussian oracle (tests/test_posterior_rmp.py).

Chain (VE, σ-space): levels ``σ_K > … > σ_0 = σ_min``, ``x_{k+1} = x_k + √δ_k n``, ``δ_k = σ_{k+1}² − σ_k²``.
1. Tower property: ``E[x_k | y] = E[m_k(x_{k+1}) | y]`` with ``m_k(x) = E[x_k | x_{k+1} = x, y]``. RMP
   plugs the mean in: ``μ_k = m_k(μ_{k+1})``. Exact when ``m_k`` is affine (Gaussian prior, linear A):
   there ``x_k | y ~ N(μ_post, P_k)``, ``P_k = Σ_post + σ_k² I``, and ``∂m_k/∂x = P_k P_{k+1}⁻¹``, so the
   start error ``μ_K − μ_post = −μ_post`` (``μ_K = 0``) reaches σ_min multiplied by
   ``(Σ_post + σ_min²)(Σ_post + σ_max²)⁻¹``, the only error left. In VE ``E[x_{σ_min} | y] = E[x0 | y]``:
   ``μ_0`` is returned as it is (no final denoising call).
2. ``m_k(μ_{k+1})`` is the mean of ``π_k(x) ∝ N(μ_{k+1}; x, δ_k) p_k(x) p(y | x_k = x)``. Gaussian VI,
   ``q = N(μ, Λ⁻¹)`` minimising ``KL(q‖π_k)``: ``∇_μ KL = −E_q[∇ log π_k]`` and ``∇_{Λ⁻¹} KL =
   ½(E_q[−∇² log π_k] − Λ)``, so the natural-gradient step (size ``s1`` ∈ (0, 1]) is
   ``Λ ← (1 − s1)Λ + s1 E_q[−∇² log π_k]``, then ``μ ← μ + s1 Λ⁻¹ E_q[∇ log π_k]`` (ascent on log π, the
   sign its reviewers found flipped in the paper's eq. 17; no other term), ``inner_steps`` times from
   ``μ = μ_{k+1}``. Its fixed point is ``E_q[∇ log π_k] = 0`` (for Gaussian π, its mean).
3. ``E_q[∇ log π_k] = Λ_t(μ_{k+1} − μ) + E_q[s(x, σ_k)] + E_q[∇ log p(y | x)]``, ``Λ_t = 1/δ_k``. The
   transition part is taken in closed form: a sampled ``(μ_{k+1} − x̃)/δ_k`` would add ``s1·√δ_k`` of fresh
   noise per step, i.e. turn the mean into a sample. ``E_q[s]`` is estimated at probes ``x̃ = μ ± Λ^(−½)ε``
   (``probe="antithetic"``: exact for affine scores, so the Gaussian oracle is exact), ``μ + Λ^(−½)ε``
   (``"single"``) or ``μ`` (``"mean"``). Prior score by Tweedie: ``s = (D(x̃, σ_k) − x̃)/σ_k²``.
4. Likelihood (DPS plug-in ``p(y | x_k) ≈ N(y; A x̂0(x_k), σ_y²)``, ``r = y − A x̂0``):
   ``weight="fixed"``: ``ζ (∂x̂0/∂x)ᵀAᵀr/σ_y²`` (ζ = 1: the plug-in itself; ζ = 0: none);
   ``weight="dps"``: ``Λ_t (ζ/‖r‖)(−∇‖r‖²)``, so that one step with ``Λ = Λ_t`` moves μ by DPS's
   ``s1·ζ/‖r‖·(−∇‖r‖²)``, whatever the grid. One VJP, one A and one Aᵀ per probe.
5. Precision. The curvature of the smoothed prior, ``−∇² log p_σ = (I − ∂D/∂x)/σ²``, lies in
   ``[0, 1/σ²]`` (``∂D/∂x = Cov(x0 | x_σ)/σ²``) where ``p_σ`` is log-concave, and equals ``1/(C + σ²)`` for
   a Gaussian. ``precision="fixed"`` ("Algorithm 2", no Hessian): ``Λ = Λ_t + 1/σ_k²``, the upper
   bound. The paper's ``Λ = Λ_t`` is its limit for ``δ_k ≪ σ_k²``; on coarse grids it is unstable (the
   inner step multiplies the error by ``1 − s1(1 + δ_k/(C + σ_k²))``, beyond −1 once
   ``δ_k/σ_k² > 2/s1 − 1``: 4 at the last step of a 30-step Karras grid), while the bound makes each
   inner step a contraction by at most ``δ/(δ + σ²)``. ``precision="learned"``: ``Λ = Λ_t + h`` with ``h``
   updated as in 2 from a Hutchinson estimate ``ĥ = (1 − vᵀ(∂D/∂x)ᵀv/d)/σ_k²`` (v Rademacher; one VJP
   of the denoiser, no second derivative), clipped to ``[0, 1/σ_k²]``, carried from step to step
   (start ``1/σ_max²``). The likelihood curvature is not in Λ (the ``dps`` weight bounds its step).
6. VP chain (the σ-space model through METHODS §0's adapter): state ``z = α x̄``, ``α = 1/√(1 + σ²)``,
   ``z_{k+1} = √a z_k + √β n`` with ``a = α_{k+1}²/α_k²``, ``β = 1 − a``: ``Λ_t = a/β``, transition
   gradient ``Λ_t(μ_{k+1}/√a − μ)``, score ``s(z/α, σ)/α``, Hessians divided by α², ``Λ = a/β + 1/s_k²``
   (fixed), each level started at the transition's mode ``μ_{k+1}/√a``, output ``μ_0/α_0``. Since ``β/α_{k+1}² = δ_k``, on one grid it is the VE chain in other
   coordinates (natural gradients are covariant), except that the ``dps`` step is taken in z (as DPS in
   VP). Its own grid (``grid="vp"``, the default for VP) is uniform in t of the linear-β schedule
   (``VPSchedule()``) between the model's σ_max and σ_min.

``num_steps`` = outer reverse steps (``num_steps + 1`` levels from σ_max to σ_min). Cost per chain, all
through ``run.denoise``/``run.denoise_vjp``: NFE = ``num_steps·inner_steps·p`` (p = 2 probes for
``antithetic``, else 1); VJPs = one per probe when ζ > 0 (the likelihood gradient) plus, for
``learned``, one per inner step (the Hutchinson product ``(∂D/∂x)ᵀv``, counted as a VJP: the Hessian of
log p_σ needs no second derivative); one A and one Aᵀ per probe when ζ > 0.
Paper settings: VE 30 outer × 20 inner, VP 400 × 1 (the defaults of ``inner_steps`` and
``default_num_steps`` follow ``chain``).
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from diffpost.posterior.base import PosteriorMethod, Run
from diffpost.posterior.steps import per_chain
from diffpost.samplers.errors import SamplerDivergedError
from diffpost.schedules import VPSchedule

#: a mean beyond this (data live in [-1, 1]; E[x_σ | y] = E[x0 | y] in σ-space) has exploded
EXPLODED = 1e4
PAPER = {"ve": (30, 20), "vp": (400, 1)}  # (outer steps, inner steps)


class RMP(PosteriorMethod):
    """Posterior-mean estimate by reverse mean propagation (see the module docstring for every formula).

    ``chain``: ``ve`` (σ-space) or ``vp`` (α-scaled states); ``precision``: ``fixed`` (Algorithm 2) or
    ``learned`` (Hutchinson); ``inner_steps`` natural-gradient steps per level (default: 20 VE, 1 VP);
    ``s1`` their size in (0, 1]; ``zeta``/``weight``: the likelihood term (``dps``: ζ/‖r‖ normalised,
    ``fixed``: ζ times the plug-in likelihood score; ζ = 0: none); ``probe``: how ``E_q[score]`` is
    estimated; ``grid``: ``karras`` (the model's) or ``vp`` (linear-β times), default by chain.
    """

    mean_estimator = True
    supports_noise_cov = False
    noise_cov_reason = ("the natural-gradient step and the isotropic (Hutchinson) precision are derived for white "
                        "diffusion noise; with a trace-class C the precision of q is not isotropic")
    default_num_steps = PAPER["ve"][0]
    tuning = {"zeta": (0.1, 0.3, 1.0, 3.0, 10.0)}

    def __init__(self, chain: Literal["ve", "vp"] = "ve", precision: Literal["fixed", "learned"] = "fixed",
                 inner_steps: int | None = None, s1: float = 1.0, zeta: float = 1.0,
                 weight: Literal["dps", "fixed"] = "dps", probe: Literal["antithetic", "single", "mean"] = "antithetic",
                 grid: Literal["karras", "vp"] | None = None):
        for name, value, allowed in (("chain", chain, ("ve", "vp")), ("precision", precision, ("fixed", "learned")),
                                     ("weight", weight, ("dps", "fixed")), ("probe", probe, ("antithetic", "single", "mean")),
                                     ("grid", grid, (None, "karras", "vp"))):
            if value not in allowed:
                raise ValueError(f"RMP: {name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
        if inner_steps is not None and (isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1):
            raise ValueError(f"RMP: inner_steps must be a positive integer (or None for the paper's), got {inner_steps!r}")
        for name, v, ok in (("s1", s1, "in (0, 1]"), ("zeta", zeta, ">= 0")):
            good = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            if not (good and (0 < v <= 1 if name == "s1" else v >= 0)):
                raise ValueError(f"RMP: {name} must be a finite number {ok}, got {v!r}")
        self.chain, self.precision, self.weight, self.probe = chain, precision, weight, probe
        self.grid = grid or ("karras" if chain == "ve" else "vp")
        self.inner_steps = PAPER[chain][1] if inner_steps is None else inner_steps
        self.s1, self.zeta = float(s1), float(zeta)
        self.default_num_steps = PAPER[chain][0]  # per instance: VE and VP have their own operating points

    # ------------------------------------------------------------------ grid
    def levels(self, run: Run) -> list[float]:
        """``num_steps + 1`` descending levels from σ_max to σ_min (no trailing 0)."""
        n, model = run.num_steps, run.model
        if self.grid == "karras":
            return run.sigmas(n + 1)[:-1]
        vp = VPSchedule()
        t_hi, t_lo = (float(vp.t_of_sigma(s)) for s in (model.sigma_max, model.sigma_min))
        t = torch.linspace(t_hi, t_lo, n + 1, dtype=torch.float64)
        return [float(s) for s in vp.sigma(t)]

    # ------------------------------------------------------------------ one probe
    def _probe(self, run: Run, z: torch.Tensor, sigma: float, alpha: float, lam_t: float, y: torch.Tensor,
               hutchinson: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``s + likelihood`` at the probe ``z`` (chain coordinates) and, if asked, ``ĥ`` (σ-space units)."""
        xbar = z / alpha
        need_vjp = self.zeta > 0 or hutchinson
        if need_vjp:
            x0, vjp = run.denoise_vjp(xbar, sigma)
        else:
            x0, vjp = run.denoise(xbar, sigma), None
        g = (x0 - xbar) / (alpha * sigma**2)  # ∇_z log p_k(z) = s(z/α, σ)/α
        h = None
        if hutchinson:
            v = torch.sign(run.white_noise(run.x_shape))  # Rademacher
            quad = (vjp(v, retain=self.zeta > 0) * v).flatten(1).sum(1)
            d = v[0].numel()
            h = ((1.0 - quad / d) / sigma**2).clamp(0.0, 1.0 / sigma**2)
        if self.zeta > 0:
            A = run.operator
            r = y - A.forward(x0)
            back = vjp(A.adjoint(r)) / alpha  # (∂x̂0/∂z)ᵀ Aᵀ r
            if self.weight == "fixed":
                g = g + (self.zeta / run.sigma_y**2) * back
            else:  # Λ_t·(ζ/‖r‖)·(−∇‖r‖²), −∇‖r‖² = 2(∂x̂0/∂z)ᵀAᵀr
                norm = r.flatten(1).norm(dim=1).clamp_min(1e-12)
                g = g + per_chain(2.0 * lam_t * self.zeta / norm, back) * back
        return g, h

    # ------------------------------------------------------------------ the chain
    def sample(self, run: Run) -> torch.Tensor:
        y = run.repeat(run.y)
        sig = self.levels(run)
        vp = self.chain == "vp"
        alphas = [1.0 / math.sqrt(1.0 + s * s) if vp else 1.0 for s in sig]
        mu = torch.zeros((run.batch, *run.x_shape), dtype=run.model.dtype, device=run.model.device)
        h = torch.full((run.batch,), 1.0 / sig[0] ** 2, dtype=mu.dtype, device=mu.device)  # learned σ-space curvature
        learned = self.precision == "learned"
        for i in range(len(sig) - 1):
            s_hi, s_lo, al_hi, al_lo = sig[i], sig[i + 1], alphas[i], alphas[i + 1]
            if vp:  # z_{k+1} = √a z_k + √β n
                a = (al_hi / al_lo) ** 2
                beta = -math.expm1(math.log1p(s_lo**2) - math.log1p(s_hi**2))  # 1 − a without cancellation
                lam_t, c = a / beta, math.sqrt(a)
            else:
                lam_t, c = 1.0 / ((s_hi - s_lo) * (s_hi + s_lo)), 1.0
            target = mu = mu / c  # the transition's mode μ_{k+1}/√a (VE: μ_{k+1}) pulls μ, and starts it
            if learned:
                h = h.clamp(0.0, 1.0 / s_lo**2)
            for _ in range(self.inner_steps):
                lam = lam_t + (h if learned else torch.full_like(h, 1.0 / s_lo**2)) / al_lo**2  # (N,)
                eps = None if self.probe == "mean" else run.noise() * per_chain(lam.rsqrt(), mu)
                probes = [mu] if eps is None else ([mu + eps, mu - eps] if self.probe == "antithetic" else [mu + eps])
                grads, h_new = [], None
                for j, z in enumerate(probes):
                    g, hj = self._probe(run, z, s_lo, al_lo, lam_t, y, hutchinson=learned and j == 0)
                    grads.append(g)
                    h_new = hj if hj is not None else h_new
                score = grads[0] if len(grads) == 1 else 0.5 * (grads[0] + grads[1])
                if learned:  # Λ ← (1 − s1)Λ + s1(Λ_t + ĥ/α²): the same affine step on h
                    h = (1.0 - self.s1) * h + self.s1 * h_new
                    lam = lam_t + h / al_lo**2
                mu = mu + per_chain(self.s1 / lam, mu) * (lam_t * (target - mu) + score)
            self._guard(run, i, mu / al_lo, s_hi, s_lo)
        if learned:
            run.extras["precision"] = ((lam_t + h / alphas[-1] ** 2) * alphas[-1] ** 2).detach()  # of x̄ = z/α
        return mu / alphas[-1]

    def _guard(self, run: Run, i: int, xbar: torch.Tensor, sigma: float, sigma_next: float) -> None:
        """The finite check (``run.emit``) and an explicit one for a mean that exploded while still finite."""
        run.emit(i, xbar, sigma, sigma_next, None)
        big = float(xbar.abs().amax())
        if big > EXPLODED:
            raise SamplerDivergedError(
                f"{self.name} diverged: the mean exploded (max |μ| = {big:.3g} > {EXPLODED:g}) after step {i} "
                f"(σ = {sigma_next:.4g}); lower zeta or s1, or use weight='dps' (the likelihood's curvature is not in Λ)")
