"""``python scripts/benchmark.py rmp``: RMP (diffpost/posterior/rmp.py, METHODS §5) on the closed-form
oracles of ``benchmark.py oracle`` (float64, 4×4 images, d = 16, σ_y = 0.1; σ_max = 80, σ_min = 0.002).

1. **exact**: the model is the exact POSTERIOR denoiser of each measurement (METHODS §1) and ζ = 0, i.e.
   RMP with the exact conditional score of p(x_k | y): error of the mean against NFE (50–600 and the
   paper points) for VE/VP × fixed/learned precision, and the probe variants.
2. **plug-in**: the exact PRIOR denoiser with RMP's likelihood term: ``weight=fixed, ζ = 1`` (the DPS
   plug-in likelihood itself) against steps, and the shipped ``weight=dps`` against NFE with ζ chosen
   from ``RMP.tuning`` on separate validation measurements; next to it the mean of K DPS samples
   (exact prior denoiser, ζ from ``DPS.tuning`` the same way) at the same total NFE.
3. **mixtures**: the oracle's two-mode mixture under blur (one mode carries the posterior) and a mixture
   whose modes ±s·u lie in the null space of 50 % inpainting (both modes kept, weights 0.3/0.7).

Columns: ``rel err`` = mean over measurements of ‖m̂ − μ_post‖/‖μ_post‖; ``err/std`` = mean of
‖m̂ − μ_post‖/sqrt(tr Σ_post) (the oracle benchmark's ``mean err``); NFE and VJP per chain (per
estimate for RMP; per sample × K for DPS: the total cost of the estimate).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from .oracle import SHAPE, SIGMA_Y, exact_moments, problems
from .prior import machine

F64 = torch.float64
VE_POINTS = ((5, 5), (10, 5), (10, 10), (15, 10), (30, 10), (30, 20))  # (outer, inner); NFE = 2·outer·inner
VP_POINTS = ((25, 1), (50, 1), (100, 1), (200, 1), (300, 1), (400, 1))


def task(prior, op, n: int, seed: int):
    from diffpost.random import make_generator

    g = make_generator(seed)
    x0 = prior.sample(n, g)
    y = op.forward(x0) + SIGMA_Y * torch.randn(n, *op.y_shape, generator=g, dtype=F64)
    posts = [prior.posterior(op, y[m], SIGMA_Y) for m in range(n)]
    return y, posts


def models(prior, posts):
    """(exact prior model, exact conditional model: row m denoised by the posterior of measurement m)."""
    from diffpost.posterior.base import PriorModel

    common = dict(x_shape=SHAPE, dtype=F64, sigma_max=80.0)
    rows = lambda x, s: torch.cat([p.denoise(x[m:m + 1], s[m:m + 1]) for m, p in enumerate(posts)])  # noqa: E731
    return PriorModel(denoiser=lambda x, s: prior.denoise(x, s), **common), PriorModel(denoiser=rows, **common)


def score(out, posts) -> dict:
    n = len(posts)
    est = out.samples.mean(1).reshape(n, -1)
    moments = [exact_moments(p) for p in posts]
    d = torch.stack([(est[m] - mu).norm() for m, (mu, _) in enumerate(moments)])
    rel = d / torch.stack([mu.norm() for mu, _ in moments])
    std = d / torch.stack([torch.trace(c).sqrt() for _, c in moments])
    return {"rel_err": float(rel.mean()), "err_std": float(std.mean())}


def call(method, model, op, y, steps: int, K: int, seed: int):
    from diffpost.posterior.base import posterior_generators

    S = 1 if method.mean_estimator else K
    return method(model, op, y, SIGMA_Y, num_steps=steps, n_samples=K,
                  generator=posterior_generators(seed, range(y.shape[0]), S))


def tuned(make, grid, model, op, y_val, posts_val, steps: int, K: int):
    """The value of the method's key hyper-parameter with the smallest validation error (diverged: skipped),
    over its ``tuning`` grid widened by a decade at both ends (so that no winner sits on an edge unseen)."""
    from diffpost.samplers.errors import SamplerDivergedError

    best = (float("inf"), None)
    for v in sorted({*grid, round(min(grid) / 10, 6), round(min(grid) / 3, 6), 3 * max(grid), 10 * max(grid)}):
        try:
            err = score(call(make(v), model, op, y_val, steps, K, 1), posts_val)["rel_err"]
        except SamplerDivergedError:
            continue
        best = min(best, (err, v))
    return best[1]


def row(section: str, problem: str, label: str, out, posts, seconds: float, **extra) -> dict:
    r = {"section": section, "problem": problem, "method": label, "nfe": out.nfe * out.samples.shape[1],
         "vjp": out.vjp * out.samples.shape[1], "seconds": round(seconds, 2), **extra, **score(out, posts)}
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
    return r


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def exact_section(args, probs) -> list[dict]:
    from diffpost.posterior.rmp import RMP

    rows = []
    for pname in ("gauss-blur", "gauss-ct"):
        prior, make_op = probs[pname]
        op = make_op()
        y, posts = task(prior, op, args.measurements, 0)
        _, cond = models(prior, posts)
        for chain, points in (("ve", VE_POINTS), ("vp", VP_POINTS)):
            for precision in ("fixed", "learned"):
                for n, T in points[:3] if args.quick else points:
                    m = RMP(chain=chain, precision=precision, inner_steps=T, zeta=0.0)
                    out, sec = timed(lambda: call(m, cond, op, y, n, 1, 0))
                    rows.append(row("exact", pname, f"RMP {chain} {precision}", out, posts, sec, steps=f"{n}×{T}"))
            for probe in ("mean", "single"):
                n, T = points[-1]
                m = RMP(chain=chain, inner_steps=T, zeta=0.0, probe=probe)
                out, sec = timed(lambda: call(m, cond, op, y, n, 1, 0))
                rows.append(row("exact", pname, f"RMP {chain} fixed, probe={probe}", out, posts, sec, steps=f"{n}×{T}"))
    return rows


def plugin_section(args, probs) -> list[dict]:
    from diffpost.posterior.dps import DPS
    from diffpost.posterior.rmp import RMP
    from diffpost.samplers.errors import SamplerDivergedError

    rows = []
    names = ("gauss-blur", "gauss-ct") if args.quick else ("gauss-blur", "gauss-ct", "gauss-inpaint", "gmm-blur")
    for pname in names:
        prior, make_op = probs[pname]
        op = make_op()
        y, posts = task(prior, op, args.measurements, 0)
        y_val, posts_val = task(prior, op, args.validation, 1)
        exact_prior, _ = models(prior, posts)
        for chain, steps in (("vp", 25), ("vp", 100), ("vp", 400), ("vp", 1600), ("ve", 30)):
            if args.quick and steps > 100:
                continue
            m = RMP(chain=chain, weight="fixed", zeta=1.0, inner_steps=1 if chain == "vp" else 20)
            try:
                out, sec = timed(lambda: call(m, exact_prior, op, y, steps, 1, 0))
            except SamplerDivergedError as e:
                rows.append({"section": "plugin", "problem": pname, "method": f"RMP {chain} weight=fixed ζ=1",
                             "steps": f"{steps}×{m.inner_steps}", "note": str(e).split(";")[0]})
                print(rows[-1], flush=True)
                continue
            rows.append(row("plugin", pname, f"RMP {chain} weight=fixed ζ=1", out, posts, sec, steps=f"{steps}×{m.inner_steps}"))
        budgets = ((VE_POINTS[1], VP_POINTS[1]), (VE_POINTS[4], VP_POINTS[4])) if not args.quick else ((VE_POINTS[1], VP_POINTS[1]),)
        for (nv, Tv), (npp, Tp) in budgets:
            for chain, n, T in (("ve", nv, Tv), ("vp", npp, Tp)):
                z = tuned(lambda v: RMP(chain=chain, inner_steps=T, zeta=v), RMP.tuning["zeta"], exact_prior, op, y_val, posts_val, n, 1)
                out, sec = timed(lambda: call(RMP(chain=chain, inner_steps=T, zeta=z), exact_prior, op, y, n, 1, 0))
                rows.append(row("plugin", pname, f"RMP {chain} weight=dps ζ={z}", out, posts, sec, steps=f"{n}×{T}"))
            # DPS at the same total NFE and, after the small budget, at 10× it (the goal: RMP ≥ DPS at ≤ 1/10 NFE)
            for budget in (2 * nv * Tv, 20 * nv * Tv) if nv == VE_POINTS[1][0] and not args.quick else (2 * nv * Tv,):
                for K in (1, 4, 16):
                    z = tuned(lambda v: DPS(zeta=v), DPS.tuning["zeta"], exact_prior, op, y_val, posts_val, budget // K, K)
                    out, sec = timed(lambda: call(DPS(zeta=z), exact_prior, op, y, budget // K, K, 0))
                    rows.append(row("plugin", pname, f"DPS mean of {K} (ζ={z})", out, posts, sec, steps=f"{budget // K}"))
    return rows


def bimodal(sep: float, cov: torch.Tensor):
    """Modes ±sep·u (covariance ``cov`` each), u a unit ramp on the pixels 50 % inpainting does not see:
    the data cannot pick a mode."""
    from diffpost.operators import Inpainting
    from diffpost.priors import GMMPrior

    op = Inpainting(shape=SHAPE, keep_ratio=0.5, seed=3)
    unseen = 1.0 - op.adjoint(op.forward(torch.ones(1, *SHAPE, dtype=F64))).reshape(-1)
    ramp = torch.linspace(-1.0, 1.0, 16, dtype=F64).reshape(4, 4).T.reshape(-1) * unseen
    u = ramp / ramp.norm()
    means = torch.stack([sep * u, -sep * u])
    return GMMPrior(torch.tensor([0.3, 0.7], dtype=F64), means, torch.stack([cov, cov]), SHAPE), lambda: op


def mixture_section(args, probs) -> list[dict]:
    from diffpost.posterior.rmp import RMP

    rows = []
    gmm = probs["gmm-blur"][0]  # its components' covariance serves the null-space mixtures too
    cases = [("gmm-blur", *probs["gmm-blur"])] + [(f"bimodal-inpaint s={s}", *bimodal(s, gmm.covs[0])) for s in (0.3, 0.6, 1.0)]
    for pname, prior, make_op in cases:
        op = make_op()
        y, posts = task(prior, op, args.measurements, 0)
        exact_prior, cond = models(prior, posts)
        for label, model, kw in (("exact score", cond, dict(zeta=0.0)), ("plug-in fixed ζ=1", exact_prior, dict(weight="fixed", zeta=1.0))):
            for chain, n, T in (("ve", 30, 20), ("vp", 400, 1)):
                if label != "exact score" and chain == "ve":
                    continue  # stiff: the fixed plug-in weight needs one inner step a level (see section 2)
                out, sec = timed(lambda: call(RMP(chain=chain, inner_steps=T, **kw), model, op, y, n, 1, 0))
                rows.append(row("mixture", pname, f"RMP {chain} {label}", out, posts, sec, steps=f"{n}×{T}",
                                minor_weight=round(float(torch.stack([p.weights.min() for p in posts]).mean()), 3)))
    return rows


COLUMNS = ("method", "steps", "nfe", "vjp", "rel_err", "err_std", "seconds", "note")


def _md(head: list[str], body: list[list]) -> str:
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else ("–" if v is None else str(v))  # noqa: E731
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(cell, b)) + " |" for b in body])


def summary(rows: list[dict]) -> str:
    """The condensed tables of docs/benchmarks.md ("RMP"): relative errors of the mean."""
    def pick(section, problem, method, steps=None):
        hit = [r for r in rows if r["section"] == section and r["problem"] == problem and r["method"].startswith(method)
               and (steps is None or r.get("steps") == steps)]
        return hit[0] if hit else None

    def err(r):
        return None if r is None else r.get("rel_err", "diverged")

    out = []
    exact = [r for r in rows if r["section"] == "exact" and r["problem"] == "gauss-blur"]
    if exact:
        body = [[r["method"], r["steps"], r["nfe"], r["rel_err"], err(pick("exact", "gauss-ct", r["method"], r["steps"]))] for r in exact]
        out.append("exact conditional score (ζ = 0)\n\n" + _md(["RMP", "steps", "NFE", "blur", "CT"], body))
    problems_ = list(dict.fromkeys(r["problem"] for r in rows if r["section"] == "plugin"))
    if problems_:
        body = [[f"{n}×1", *[err(pick("plugin", p, "RMP vp weight=fixed", f"{n}×1")) for p in problems_]] for n in (25, 100, 400, 1600)]
        out.append("plug-in likelihood, weight=fixed ζ = 1, exact prior score, VP chain\n\n" + _md(["steps", *problems_], body))
        body = []
        for p in problems_:
            plug = [r for r in rows if r["section"] == "plugin" and r["problem"] == p and "nfe" in r]
            for budget in sorted({r["nfe"] for r in plug if r["method"].startswith("RMP") and "dps" in r["method"]}):
                rmp = {r["method"].split()[1]: r for r in plug if "dps" in r["method"] and r["nfe"] == budget}
                for b in (budget, 10 * budget):
                    dps = [r for r in plug if r["method"].startswith("DPS") and abs(r["nfe"] - b) <= b // 20]
                    best = min(dps, key=lambda r: r["rel_err"]) if dps else None
                    if b == budget or best is not None:
                        ours = [f"{rmp[c]['rel_err']:.3g} ({rmp[c]['method'].split()[-1]})" if b == budget and c in rmp else None
                                for c in ("ve", "vp")]
                        body.append([p, b, *ours, None if best is None else f"{best['rel_err']:.3g} ({best['method'][4:]})"])
        out.append("shipped likelihood (weight=dps, ζ tuned) against the mean of K DPS samples at equal total NFE\n\n"
                   + _md(["problem", "NFE", "RMP ve", "RMP vp", "best DPS mean of K"], body))
    mix = [r for r in rows if r["section"] == "mixture"]
    if mix:
        body = [[r["problem"], r.get("minor_weight"), r["method"][4:], r["steps"], r["rel_err"], r["err_std"]] for r in mix]
        out.append("two-mode mixtures\n\n" + _md(["problem", "minor weight", "RMP", "steps", "rel err", "err/std"], body))
    return "\n\n".join(out)


def table(rows: list[dict], section: str, problem: str) -> str:
    sel = [r for r in rows if r["section"] == section and r["problem"] == problem]
    cols = [c for c in COLUMNS if any(c in r for r in sel)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sel:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py rmp", description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="*", default=["exact", "plugin", "mixture"], choices=["exact", "plugin", "mixture"])
    p.add_argument("--measurements", type=int, default=8, help="test measurements per problem (default 8)")
    p.add_argument("--validation", type=int, default=4, help="validation measurements for choosing ζ (default 4)")
    p.add_argument("--quick", action="store_true", help="4 measurements, 2 validation, the smaller step counts only")
    p.add_argument("--out", default="outputs/benchmark_rmp.json")
    args = p.parse_args(argv)
    if args.quick:
        args.measurements, args.validation = 4, 2
    torch.set_num_threads(1)
    t0 = time.time()
    probs = problems()
    sections = {"exact": exact_section, "plugin": plugin_section, "mixture": mixture_section}
    rows = [r for name in args.sections for r in sections[name](args, probs)]
    info = machine(1)
    print(f"\n# RMP on the oracles ({args.measurements} measurements; {info.get('cpu_model')}, "
          f"{os.cpu_count()} cores, 1 thread; {time.time() - t0:.0f} s)")
    for section in args.sections:
        for problem in dict.fromkeys(r["problem"] for r in rows if r["section"] == section):
            print(f"\n## {section}: {problem}\n\n{table(rows, section, problem)}")
    print(f"\n# Summary\n\n{summary(rows)}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "machine": info, "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")
    return 0
