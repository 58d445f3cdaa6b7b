"""Oracle demo: σ-space samplers with the exact posterior denoiser against closed-form posteriors.

For a Gaussian and a two-mode Gaussian-mixture prior on 8×8 images (d = 64), a sparse-view CT and a
Gaussian blur operator and ``y = A x0 + η`` (x0 drawn from the prior), the posterior is known exactly
(METHODS §1) and so is its denoiser ``E[x0 | x_σ = x, y]`` = ``prior.posterior(A, y, σ_y).denoise``.
Running any exact-in-theory sampler with it must reproduce the posterior's mean, covariance and mode
masses up to discretisation and Monte Carlo error. The "exact" row of each block draws the same
number of samples directly from the posterior and measures them the same way: it is the Monte Carlo
noise floor that the sampler rows are judged against.

    python -m diffpost.oracle [--n-samples N] [--steps K] [--em-steps M] [--churn C] [--seed S]

Columns: relative mean error ``‖m̂ − μ_post‖/‖μ_post‖``; the same error in Monte Carlo units
``‖m̂ − μ_post‖/√(tr Σ_post/N)`` (≈ 1 for exact samples); relative covariance error
``‖Ĉ − Σ_post‖_F/‖Σ_post‖_F``; the per-pixel std averaged over pixels; mode masses = the mean posterior
responsibilities of the samples (an unbiased estimate of the mixture weights even where components
overlap). Euler–Maruyama is first order and gets 4× the steps by default; its larger covariance error
at equal cost is the expected discretisation bias, not noise.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence

import torch

from diffpost.operators import CT, Blur, GaussianNoise, LinearOperator
from diffpost.priors import GaussianPrior, GMMPrior
from diffpost.random import make_generator, seed_for
from diffpost.samplers import CountingDenoiser, edm_stochastic, euler_maruyama, heun, initial_noise
from diffpost.schedules import karras_sigmas

SHAPE = (1, 8, 8)
PRIORS = ("gaussian", "gmm")
OPERATORS = ("ct", "blur")
SIGMA_Y = 0.05
DTYPE = torch.float64


# ------------------------------------------------------------------------------------ problem set
def squared_exponential_cov(
    shape: tuple[int, int, int], variance: float, length: float, nugget: float = 1e-4
) -> torch.Tensor:
    """``variance·exp(−|p − q|²/(2ℓ²)) + nugget·δ`` over pixel positions: a smooth image prior."""
    _, H, W = shape
    r, c = torch.meshgrid(torch.arange(H, dtype=DTYPE), torch.arange(W, dtype=DTYPE), indexing="ij")
    p = torch.stack([r.reshape(-1), c.reshape(-1)], 1)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    return variance * torch.exp(-d2 / (2 * length**2)) + nugget * torch.eye(H * W, dtype=DTYPE)


def build_operators() -> dict[str, LinearOperator]:
    return {
        "ct": CT(shape=SHAPE, n_angles=6),
        "blur": Blur(shape=SHAPE, kernel="gaussian", kernel_size=5, blur_sigma=1.0),
    }


def least_visible_direction(operators: Sequence[LinearOperator]) -> torch.Tensor:
    """Unit image direction that the operators see least: the bottom eigenvector of the sum of their
    normalised ``AᵀA`` (sign fixed so the result is deterministic)."""
    M = sum(G / torch.linalg.eigvalsh(G)[-1] for G in (A.T @ A for A in (op.to_dense(dtype=DTYPE) for op in operators)))
    v = torch.linalg.eigh(M)[1][:, 0]
    return v * torch.sign(v[v.abs().argmax()])


def build_priors(operators: Sequence[LinearOperator]) -> dict[str, GaussianPrior | GMMPrior]:
    """A smooth Gaussian prior, and a two-mode mixture whose modes differ along the direction the
    operators see least: the measurement can barely tell the modes apart, so the posterior keeps both
    (weights near the prior's 0.4/0.6) and a sampler has to find and weigh both."""
    _, H, W = SHAPE
    r, c = torch.meshgrid(torch.arange(H, dtype=DTYPE), torch.arange(W, dtype=DTYPE), indexing="ij")
    bump = torch.exp(-((r - 3.5) ** 2 + (c - 3.5) ** 2) / 8.0).reshape(-1)
    gauss = GaussianPrior(0.3 * bump, squared_exponential_cov(SHAPE, 0.25, 1.5), SHAPE)
    v = least_visible_direction(operators)
    means = torch.stack([0.2 * bump - 1.5 * v, 0.2 * bump + 1.5 * v])  # 7.5 within-mode stds apart along v
    cov = squared_exponential_cov(SHAPE, 0.04, 1.5)
    gmm = GMMPrior(torch.tensor([0.4, 0.6], dtype=DTYPE), means, torch.stack([cov, cov]), SHAPE)
    return {"gaussian": gauss, "gmm": gmm}


def exact_moments(post: GaussianPrior | GMMPrior) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the posterior; for a mixture ``Σ w_k(Σ_k + μ_kμ_kᵀ) − μμᵀ``."""
    if isinstance(post, GaussianPrior):
        return post.mean, post.cov
    w = post.weights
    mean = w @ post.means
    second = (w[:, None, None] * (post.covs + post.means[:, :, None] * post.means[:, None, :])).sum(0)
    return mean, second - torch.outer(mean, mean)


# ------------------------------------------------------------------------------------ measurement
def sample_errors(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> dict[str, float]:
    """Relative mean error, mean error in Monte Carlo standard errors, relative covariance error
    (Frobenius); also the per-pixel std averaged over pixels."""
    flat = samples.reshape(samples.shape[0], -1)
    n = flat.shape[0]
    err = flat.mean(0) - mean
    return {
        "rel_mean": float(err.norm() / mean.norm()),
        "mean_se": float(err.norm() / torch.sqrt(torch.trace(cov) / n)),
        "rel_cov": float(torch.linalg.norm(torch.cov(flat.T) - cov) / torch.linalg.norm(cov)),
        "std": float(flat.std(0).mean()),
    }


Sampler = Callable[[Callable, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def samplers(steps: int, em_steps: int, churn: float) -> dict[str, tuple[torch.Tensor, Sampler]]:
    grid = karras_sigmas(steps, dtype=DTYPE)
    return {
        "heun": (grid, lambda D, x, s, g: heun(D, x, s)),
        "euler_maruyama": (
            karras_sigmas(em_steps, dtype=DTYPE),
            lambda D, x, s, g: euler_maruyama(D, x, s, generator=g),
        ),
        "edm_stochastic": (
            grid,
            lambda D, x, s, g: edm_stochastic(D, x, s, generator=g, churn=churn, s_tmin=0.01, s_tmax=50.0),
        ),
    }


def run_oracle(
    n_samples: int = 2000,
    steps: int = 64,
    em_steps: int | None = None,
    churn: float = 10.0,
    seed: int = 0,
    priors: Sequence[str] = PRIORS,
    operators: Sequence[str] = OPERATORS,
) -> list[dict]:
    """One row per (prior, operator, sampler) plus an "exact" row per (prior, operator). Seeds depend
    on the names, not on which subset runs, so a subset reproduces the full run's rows."""
    if n_samples < 2 or steps < 1 or (em_steps is not None and em_steps < 1):
        raise ValueError(f"need n_samples >= 2 and steps, em_steps >= 1, got {n_samples}, {steps}, {em_steps}")
    unknown = sorted(set(priors) - set(PRIORS)) + sorted(set(operators) - set(OPERATORS))
    if unknown:
        raise ValueError(f"unknown prior/operator names {unknown}; choose from {PRIORS} and {OPERATORS}")
    em_steps = 4 * steps if em_steps is None else em_steps
    all_ops = build_operators()
    all_priors = build_priors(list(all_ops.values()))
    noise = GaussianNoise(SIGMA_Y)
    rows = []
    for pname in priors:
        prior, pi = all_priors[pname], PRIORS.index(pname)
        for oname in operators:
            op, oi = all_ops[oname], OPERATORS.index(oname)
            g = make_generator(seed_for(seed, 0, pi, oi))
            x0 = prior.sample(1, g)
            y = noise.sample(op(x0), g)
            post = prior.posterior(op, y[0], SIGMA_Y)
            mean, cov = exact_moments(post)
            base = {
                "prior": pname, "operator": oname, "n": n_samples, "mean_norm": float(mean.norm()),
                "post_std": float(torch.sqrt(torch.diagonal(cov)).mean()),
                "weights": post.weights.tolist() if isinstance(post, GMMPrior) else None,
            }

            def record(name: str, out: torch.Tensor, nfe: int, seconds: float) -> None:
                row = dict(base, sampler=name, nfe=nfe, seconds=seconds, **sample_errors(out, mean, cov))
                if isinstance(post, GMMPrior):
                    row["masses"] = post.mode_probabilities(out, 0.0).mean(0).tolist()
                rows.append(row)

            t = time.perf_counter()
            exact = post.sample(n_samples, make_generator(seed_for(seed, 1, pi, oi)))
            record("exact", exact, 0, time.perf_counter() - t)
            for si, (sname, (grid, run)) in enumerate(samplers(steps, em_steps, churn).items()):
                den = CountingDenoiser(post.denoise)
                gen = make_generator(seed_for(seed, 2, pi, oi, si))
                t = time.perf_counter()
                with torch.no_grad():
                    x = initial_noise((n_samples, *SHAPE), float(grid[0]), gen, dtype=DTYPE)
                    out = run(den, x, grid, gen)
                record(sname, out, den.nfe, time.perf_counter() - t)
    return rows


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'sampler':<15}{'NFE':>5}{'rel mean err':>14}{'mean err/se':>13}{'rel cov err':>13}{'pixel std':>11}"
        f"  {'mode masses':<16}{'time':>7}"
    )
    lines, key = [], None
    for r in rows:
        if (r["prior"], r["operator"]) != key:
            key = (r["prior"], r["operator"])
            w = "" if r["weights"] is None else "  weights " + ", ".join(f"{v:.3f}" for v in r["weights"]) + (
                f" (mass s.e. {math.sqrt(r['weights'][0] * (1 - r['weights'][0]) / r['n']):.3f})")
            lines += ["", f"{r['prior']} prior, {r['operator']} operator, sigma_y = {SIGMA_Y}: exact posterior "
                      f"|mean| {r['mean_norm']:.3f}  mean pixel std {r['post_std']:.4f}{w}", head, "-" * len(head)]
        masses = "" if r.get("masses") is None else ", ".join(f"{v:.3f}" for v in r["masses"])
        lines.append(
            f"{r['sampler']:<15}{r['nfe']:>5}{r['rel_mean']:>14.4f}{r['mean_se']:>13.2f}{r['rel_cov']:>13.4f}"
            f"{r['std']:>11.4f}  {masses:<16}{r['seconds']:>6.1f}s"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m diffpost.oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("--n-samples", type=int, default=2000, help="posterior samples per sampler")
    p.add_argument("--steps", type=int, default=64, help="steps of heun and edm_stochastic (Karras grid)")
    p.add_argument("--em-steps", type=int, default=None, help="steps of euler_maruyama (first order; default 4·steps)")
    p.add_argument("--churn", type=float, default=10.0, help="EDM churn of edm_stochastic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads; 64×64 matrices gain nothing from more, and on a busy "
                        "machine extra threads made the demo 20× slower")
    a = p.parse_args(argv)
    t = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, a.threads))
    try:
        rows = run_oracle(a.n_samples, a.steps, a.em_steps, a.churn, a.seed)
    finally:
        torch.set_num_threads(threads)
    print(f"Exact posterior vs sampling with the exact posterior denoiser ({a.n_samples} samples, 8x8 images, "
          f"float64). The 'exact' rows sample the posterior directly: their errors are the Monte Carlo floor.")
    print(format_table(rows))
    print(f"\ntotal {time.perf_counter() - t:.1f}s")
    return rows


if __name__ == "__main__":
    main()
