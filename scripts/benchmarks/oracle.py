"""``python scripts/benchmark.py oracle``: every posterior method with the EXACT prior denoiser on
problems whose posterior is known in closed form (METHODS §1), against the number of steps.

Problems (float64, 4×4 images, d = 16, σ_y = 0.1): a Gaussian prior with a squared-exponential
covariance under Gaussian blur, sparse-view CT and 50 % random inpainting; a two-mode Gaussian
mixture under blur. ``M`` measurements ``y = A x0 + η`` with ``x0`` drawn from the prior; each method
draws ``S`` samples per measurement (mean estimators one estimate). Columns:

- ``mean err``: ``‖m̂ − μ_post‖ / sqrt(tr Σ_post)``, averaged over measurements (exact samples: ≈ 1/√S);
- ``cov err``: ``‖Ĉ − Σ_post‖_F / ‖Σ_post‖_F`` (exact samples: the Monte Carlo floor in the ``exact`` row);
- ``cov50``/``cov90``: the fraction of pixels of ``x0`` inside the central 50 %/90 % intervals of the
  samples (a calibrated sampler: 0.50/0.90 up to Monte Carlo error, since ``x0`` is a draw from the
  posterior of its own measurement);
- ``masses`` (mixture): the mean posterior responsibility of the samples against the exact weights;
- cost per sample: NFE, vector-Jacobian products, forward/adjoint calls; wall time.

UCoS runs with the exact auxiliary denoiser D* (Gaussian: ``GaussianAuxiliaryDenoiser``; mixture:
through the identity ``D*(x/σ² + b, σ) = E[x0 | x_σ = x, y]``); it is exact up to discretisation,
the prior-based methods are approximate and their biases are what this table publishes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
SHAPE, SIGMA_Y, F64 = (1, 4, 4), 0.1, torch.float64
LEVELS = (0.5, 0.9)


def _cov(scale: float = 0.25) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(4, dtype=F64), torch.arange(4, dtype=F64), indexing="ij")
    p = torch.stack([r.reshape(-1), c.reshape(-1)], 1)
    return scale * torch.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / 2.0) + 0.01 * torch.eye(16, dtype=F64)


def problems() -> dict[str, tuple]:
    from diffpost.operators import CT, Blur, Inpainting
    from diffpost.priors import GaussianPrior, GMMPrior

    gauss = GaussianPrior(torch.zeros(16, dtype=F64), _cov(), SHAPE)
    direction = torch.linspace(-1, 1, 16, dtype=F64).reshape(4, 4).T.reshape(-1)  # a left-right ramp
    gmm = GMMPrior(torch.tensor([0.3, 0.7], dtype=F64), torch.stack([0.6 * direction, -0.6 * direction]),
                   torch.stack([_cov(0.1), _cov(0.1)]), SHAPE)
    blur = lambda: Blur(shape=SHAPE, kernel="gaussian", kernel_size=3, blur_sigma=0.8)  # noqa: E731
    return {"gauss-blur": (gauss, blur), "gauss-ct": (gauss, lambda: CT(shape=SHAPE, n_angles=5)),
            "gauss-inpaint": (gauss, lambda: Inpainting(shape=SHAPE, keep_ratio=0.5, seed=3)), "gmm-blur": (gmm, blur)}


def method_specs(names: list[str] | None) -> dict[str, dict]:
    files = sorted((REPO / "configs" / "method").glob("*.yaml"))
    specs = {p.stem: yaml.safe_load(p.read_text()) for p in files}
    if names:
        missing = sorted(set(names) - set(specs))
        if missing:
            raise SystemExit(f"oracle: unknown methods {missing}; configs/method/ has {sorted(specs)}")
        specs = {k: specs[k] for k in names}
    return specs


def exact_moments(post) -> tuple[torch.Tensor, torch.Tensor]:
    from diffpost.priors import GaussianPrior

    if isinstance(post, GaussianPrior):
        return post.mean, post.cov
    w = post.weights
    mean = w @ post.means
    second = (w[:, None, None] * (post.covs + post.means[:, :, None] * post.means[:, None, :])).sum(0)
    return mean, second - torch.outer(mean, mean)


def _model(method, prior, op, posts, b, S: int):
    """The model each method runs on: the exact prior denoiser, or the exact UCoS auxiliary denoiser."""
    from diffpost.posterior.base import PriorModel, UCoSModel
    from diffpost.priors import GaussianPrior
    from diffpost.ucos.gaussian import GaussianAuxiliaryDenoiser

    common = dict(x_shape=SHAPE, dtype=F64, sigma_max=40.0)
    if not issubclass(method.model_type, UCoSModel):
        return PriorModel(denoiser=lambda x, s: prior.denoise(x, s), **common)
    if isinstance(prior, GaussianPrior):
        aux = GaussianAuxiliaryDenoiser(prior.mean, prior.cov, op, SIGMA_Y)
    else:
        def aux(z, s):  # D*(x/σ² + b, σ) = E[x0 | x_σ = x, y]: recover x = σ²(z − b) per measurement
            sig = s.reshape(-1, *([1] * (z.dim() - 1)))
            x = sig**2 * (z - b.repeat_interleave(z.shape[0] // b.shape[0], 0))
            rows = x.reshape(len(posts), -1, *SHAPE)
            srows = s.reshape(len(posts), -1)
            return torch.cat([post.denoise(r, sr) for post, r, sr in zip(posts, rows, srows)])
    return UCoSModel(aux=aux, operator=op, sigma_y=SIGMA_Y, **common)


def evaluate(samples: torch.Tensor, x0: torch.Tensor, moments, posts, mean_only: bool) -> dict:
    M, S = samples.shape[:2]
    flat = samples.reshape(M, S, -1)
    row: dict = {}
    mean_err, cov_err = [], []
    for m, (mu, cov) in enumerate(moments):
        mean_err.append(float((flat[m].mean(0) - mu).norm() / torch.sqrt(torch.trace(cov))))
        if S > 1:
            cov_err.append(float(torch.linalg.norm(torch.cov(flat[m].T) - cov) / torch.linalg.norm(cov)))
    row["mean_err"] = sum(mean_err) / M
    if S > 1 and not mean_only:
        row["cov_err"] = sum(cov_err) / M
        t = x0.reshape(M, 1, -1)
        for level in LEVELS:
            lo = torch.quantile(flat, (1 - level) / 2, dim=1, keepdim=True)
            hi = torch.quantile(flat, (1 + level) / 2, dim=1, keepdim=True)
            row[f"cov{round(100 * level)}"] = float(((t >= lo) & (t <= hi)).double().mean())
    if hasattr(posts[0], "weights") and not mean_only:
        resp = torch.stack([post.mode_probabilities(samples[m], 0.0).mean(0) for m, post in enumerate(posts)])
        row["masses"] = [round(v, 3) for v in resp.mean(0).tolist()]
        row["masses_exact"] = [round(v, 3) for v in torch.stack([p.weights for p in posts]).mean(0).tolist()]
        row["mass_err"] = float((resp - torch.stack([p.weights for p in posts])).abs().max(1).values.mean())
    return row


def run(args) -> list[dict]:
    from diffpost.config import build
    from diffpost.posterior.base import OperatorMismatchError, PosteriorMethod
    from diffpost.samplers.errors import SamplerDivergedError
    from diffpost.random import make_generator, seed_for

    rows = []
    for pi, (pname, (prior, make_op)) in enumerate(problems().items()):
        op = make_op()
        g = make_generator(seed_for(args.seed, 0, pi))
        x0 = prior.sample(args.measurements, g)
        y = op.forward(x0) + SIGMA_Y * torch.randn(args.measurements, *op.y_shape, generator=g, dtype=F64)
        posts = [prior.posterior(op, y[m], SIGMA_Y) for m in range(args.measurements)]
        moments = [exact_moments(p) for p in posts]
        b = op.adjoint(y) / SIGMA_Y**2
        exact = torch.stack([p.sample(args.samples, make_generator(seed_for(args.seed, 1, pi, m))) for m, p in enumerate(posts)])
        rows.append({"problem": pname, "method": "exact", "steps": 0, "nfe": 0, **evaluate(exact, x0, moments, posts, False)})
        for mi, (mname, spec) in enumerate(method_specs(args.methods).items()):
            method = build(spec, PosteriorMethod)
            seen = set()
            for steps in sorted(set(args.steps + ([method.default_num_steps] if args.paper and method.default_num_steps else []))):
                model = _model(method, prior, op, posts, b, args.samples)
                S = 1 if method.mean_estimator else args.samples
                gens = make_generator(seed_for(args.seed, 2, pi, mi, steps))
                op.reset_counts()
                t = time.perf_counter()
                try:
                    out = method(model, op, y, SIGMA_Y, num_steps=steps, n_samples=args.samples, generator=gens)
                except OperatorMismatchError as e:
                    rows.append({"problem": pname, "method": mname, "steps": steps, "note": str(e).split(":")[0] + ": not usable"})
                    break
                except SamplerDivergedError as e:  # a result of the method at its configured step size
                    rows.append({"problem": pname, "method": mname, "steps": steps, "note": str(e).split(";")[0]})
                    print(_line(rows[-1]), flush=True)
                    continue
                seconds = time.perf_counter() - t
                if (out.nfe, out.vjp) in seen:  # the step count does not change this method (e.g. one-call UCoS MMSE)
                    continue
                seen.add((out.nfe, out.vjp))
                n = args.measurements * S
                row = {"problem": pname, "method": mname, "steps": steps, "nfe": out.nfe, "vjp": out.vjp,
                       "forward": out.operator_calls["forward"] / n, "adjoint": out.operator_calls["adjoint"] / n,
                       "seconds": seconds, **evaluate(out.samples, x0, moments, posts, out.mean_only)}
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return "/".join(f"{u:.2f}" for u in v)
    return str(v)


def _line(row: dict) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in row.items())


COLUMNS = ["method", "steps", "nfe", "vjp", "forward", "adjoint", "mean_err", "cov_err", "cov50", "cov90", "masses", "seconds"]


def table(rows: list[dict], problem: str) -> str:
    sel = [r for r in rows if r["problem"] == problem]
    cols = [c for c in COLUMNS if any(c in r for r in sel)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sel:
        if "note" in r:
            lines.append(f"| {r['method']} | {r['note']} |" + " |" * (len(cols) - 2))
            continue
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="*", help="method names from configs/method/ (default: all)")
    p.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[10, 30, 100],
                   help="comma-separated step counts (default 10,30,100)")
    p.add_argument("--paper", action="store_true", help="also run each method at its paper step count")
    p.add_argument("--measurements", type=int, default=16, help="measurements per problem (default 16)")
    p.add_argument("--samples", type=int, default=256, help="samples per measurement (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="8 measurements × 64 samples, steps 10,30")
    p.add_argument("--out", default="outputs/benchmark_oracle.json")
    args = p.parse_args(argv)
    if args.quick:
        args.measurements, args.samples, args.steps = 8, 64, [10, 30]
    torch.set_num_threads(1)
    t0 = time.time()
    rows = run(args)
    print(f"\n# Oracle table ({args.measurements} measurements × {args.samples} samples; floor of mean err ≈ "
          f"{1 / args.samples ** 0.5:.3f}; {platform.processor() or platform.machine()}, {time.time() - t0:.0f} s)\n")
    for problem in problems():
        print(f"\n## {problem}\n\n{table(rows, problem)}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")
    return 0
