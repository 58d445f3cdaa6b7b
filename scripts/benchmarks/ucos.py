"""``python scripts/benchmark.py ucos``: UCoS vs DPS vs Tikhonov on ellipse phantoms, plus the
exactness table on the Gaussian oracle. Everything in one run so ratios are side by side.

Same prior data (Ellipses 32²), same network (U-Net), same training wall-time budget per model, same
NFE per posterior sample for UCoS (Heun) and DPS. Prints markdown tables and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import torch


def _peak_mem_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tasks(size: int):
    from diffpost.operators import CT, Blur

    return {
        "ct_sparse": (lambda: CT((1, size, size), n_angles=16), 0.03125),
        "ct_limited": (lambda: CT((1, size, size), n_angles=60, angle_range=90.0), 0.03125),
        "blur": (lambda: Blur((1, size, size), kernel_size=13, blur_sigma=2.0), 0.05),
    }


def make_net(base_channels: int):
    from diffpost.nets import UNet

    return UNet(base_channels=base_channels, channel_mult=[1, 2, 2], attn_levels=[], num_res_blocks=1)


def train(module, dm, minutes: float, max_steps: int, workdir: str):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EMAWeightAveraging

    trainer = pl.Trainer(accelerator="auto", devices=1, max_steps=max_steps, max_time={"minutes": minutes},
                         logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[EMAWeightAveraging(decay=0.995)], enable_model_summary=False,
                         gradient_clip_val=1.0, default_root_dir=workdir, enable_progress_bar=True)
    t = time.time()
    trainer.fit(module, dm)
    return {"steps": trainer.global_step, "seconds": time.time() - t}


def evaluate(name, fn, x, n_samples):
    """fn() -> dict(samples (B,S,...), nfe, operator_calls); metrics of the posterior mean."""
    from diffpost.image_quality import bias_squared, coverage, psnr, ssim, summed_variance

    t = time.time()
    out = fn()
    secs = time.time() - t
    s = out["samples"].float()
    mean = s.mean(1)
    row = {"method": name, "psnr": psnr(mean, x).mean().item(), "psnr_std": psnr(mean, x).std().item(),
           "ssim": ssim(mean, x).mean().item(), "bias2": bias_squared(s, x).mean().item(),
           "seconds_per_sample": secs / (s.shape[0] * s.shape[1]), "nfe_per_sample": out.get("nfe"),
           "operator_calls": out.get("operator_calls"), "peak_mem_mb": _peak_mem_mb()}
    if s.shape[1] > 1:
        row["variance"] = summed_variance(s).mean().item()
        row["coverage90"] = coverage(s, x, 0.9).mean().item()
        row["psnr_one_sample"] = psnr(s[:, 0], x).mean().item()
    return row


def tikhonov_best(op, sigma_y, y_val, x_val, y, x):
    from diffpost.image_quality import psnr, ssim

    best = None
    for prior_std in [0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0]:
        rho = sigma_y**2 / prior_std**2
        p = psnr(op.normal_solve(op.adjoint(y_val), rho, tol=1e-6, max_iter=300), x_val).mean().item()
        if best is None or p > best[0]:
            best = (p, rho, prior_std)
    t = time.time()
    xh = op.normal_solve(op.adjoint(y), best[1], tol=1e-6, max_iter=300)
    return {"method": f"Tikhonov (prior std {best[2]}, tuned on val)", "psnr": psnr(xh, x).mean().item(),
            "psnr_std": psnr(xh, x).std().item(), "ssim": ssim(xh, x).mean().item(),
            "seconds_per_sample": (time.time() - t) / len(x), "nfe_per_sample": 0}


def exactness_table(steps_list, n: int, seed: int = 0):
    """Posterior mean/cov error vs steps: UCoS with exact D* (Heun) and DPS with the exact prior denoiser."""
    from diffpost.operators import Blur
    from diffpost.priors import GaussianPrior
    from diffpost.random import make_generator
    from diffpost.samplers import heun
    from diffpost.posterior.base import PriorModel
    from diffpost.posterior.dps import DPS
    from diffpost.schedules import karras_sigmas
    from diffpost.ucos import GaussianAuxiliaryDenoiser, information_offset, posterior_denoiser

    D = torch.float64
    op = Blur((1, 4, 4), kernel_size=3, blur_sigma=1.0).to(D)
    g = make_generator(seed)
    L = torch.randn(16, 16, generator=g, dtype=D) / 4
    prior = GaussianPrior(0.2 * torch.randn(16, generator=g, dtype=D), 0.2 * L @ L.T + 0.05 * torch.eye(16, dtype=D), (1, 4, 4))
    sigma_y = 0.1
    x_true = prior.sample(1, g)
    y = op(x_true) + sigma_y * torch.randn((1, *op.y_shape), generator=g, dtype=D)
    post = prior.posterior(op, y, sigma_y)
    mu, cov = post.mean.flatten(), post.cov
    aux = GaussianAuxiliaryDenoiser(prior.mean, prior.cov, op, sigma_y)
    b = information_offset(y, op, sigma_y)
    rows = []
    for k in steps_list:
        sig = karras_sigmas(k, 0.002, 80.0, 7.0, dtype=D)
        x = sig[0] * torch.randn((n, 1, 4, 4), generator=g, dtype=D)
        ucos = heun(posterior_denoiser(aux, b), x, sig).flatten(1)
        model = PriorModel(denoiser=lambda z, s: prior.denoise(z, s), x_shape=(1, 4, 4), sigma_min=0.002, sigma_max=80.0,
                           rho=7.0, dtype=D)
        zeta_err = {}
        for zeta in (0.05, 0.2, 1.0):
            d = DPS(zeta=zeta)(model, op, y, sigma_y, num_steps=k, n_samples=n, generator=g).samples.reshape(n, -1)
            zeta_err[zeta] = ((d.mean(0) - mu).norm() / mu.norm()).item(), ((torch.cov(d.T) - cov).norm() / cov.norm()).item()
        best_zeta = min(zeta_err, key=lambda z: zeta_err[z][0])
        rows.append({"steps": k, "nfe_ucos": 2 * k - 1, "ucos_mean_err": ((ucos.mean(0) - mu).norm() / mu.norm()).item(),
                     "ucos_cov_err": ((torch.cov(ucos.T) - cov).norm() / cov.norm()).item(),
                     "dps_zeta": best_zeta, "dps_mean_err": zeta_err[best_zeta][0], "dps_cov_err": zeta_err[best_zeta][1]})
    mc = {"mean_se_rel": (cov.diag().sum() / n).sqrt().item() / mu.norm().item()}
    return rows, mc


def md_table(rows, cols):
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return head + "".join("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |\n" for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py ucos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["ct_sparse", "ct_limited", "blur"])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--minutes", type=float, default=4.0, help="training wall-time budget per model")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-test", type=int, default=16)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="Heun steps for UCoS; DPS gets the same NFE (2·steps − 1)")
    p.add_argument("--exactness-only", action="store_true")
    p.add_argument("--exactness-n", type=int, default=20000)
    p.add_argument("--out", default="runs/benchmark_ucos.json")
    p.add_argument("--workdir", default="runs/benchmark_ucos")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    report = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}, "args": vars(args)}

    ex_rows, mc = exactness_table([4, 8, 16, 32, 64], args.exactness_n)
    report["exactness"] = {"rows": ex_rows, **mc}
    print("\n## Exactness on the Gaussian oracle (d = 16, blur, N = %d samples)\n" % args.exactness_n)
    print(md_table(ex_rows, ["steps", "nfe_ucos", "ucos_mean_err", "ucos_cov_err", "dps_zeta", "dps_mean_err", "dps_cov_err"]))
    print(f"(Monte-Carlo floor of the relative mean error ≈ {mc['mean_se_rel']:.3g})")
    if args.exactness_only:
        _write(args.out, report)
        return 0

    import lightning.pytorch as pl

    from datamodules import InverseProblemDataModule
    from datamodules.sources import Ellipses
    from diffpost.posterior.dps import DPS
    from lightning_modules.posterior import PosteriorModule
    from lightning_modules.prior import ScorePriorModule
    from lightning_modules.ucos import UCoSModule

    os.makedirs(args.workdir, exist_ok=True)
    images = Ellipses(size=args.size, length=200_000, seed=0)
    pl.seed_everything(0, verbose=False)
    any_op, any_sy = tasks(args.size)["ct_sparse"]
    dm_prior = InverseProblemDataModule(images, any_op(), sigma_y=any_sy, batch_size=args.batch_size, n_val=16, n_test=args.n_test)
    prior = ScorePriorModule(make_net(args.base_channels))
    report["prior_training"] = train(prior, dm_prior, args.minutes, args.max_steps, args.workdir)
    prior_ckpt = os.path.join(args.workdir, "prior.ckpt")
    prior.trainer.save_checkpoint(prior_ckpt)

    report["tasks"] = {}
    for name in args.tasks:
        make_op, sigma_y = tasks(args.size)[name]
        op = make_op()
        dm = InverseProblemDataModule(images, op, sigma_y=sigma_y, batch_size=args.batch_size, n_val=16, n_test=args.n_test)
        dm.setup("fit")
        pl.seed_everything(0, verbose=False)
        ucos = UCoSModule(make_net(args.base_channels), operator=op, sigma_y=sigma_y)
        tr = train(ucos, dm, args.minutes, args.max_steps, args.workdir)
        ucos.eval()
        test = dm.dataset("test")
        items = [test[i] for i in range(args.n_test)]
        x = torch.stack([d["x"] for d in items])
        y = torch.stack([d["y"] for d in items])
        index = torch.stack([torch.as_tensor(d["index"]) for d in items])
        val = dm.val_subset(16)
        x_val, y_val = torch.stack([d["x"] for d in val]), torch.stack([d["y"] for d in val])
        rows = [tikhonov_best(op, sigma_y, y_val, x_val, y, x)]
        with torch.no_grad():
            rows.append(evaluate("UCoS MMSE (1 call)", lambda: {"samples": ucos.mmse(y).unsqueeze(1), "nfe": 1,
                                                                "operator_calls": {"forward": 0, "adjoint": len(y)}}, x, 1))
            rows.append(evaluate(f"UCoS Heun {args.steps} steps", lambda: ucos.sample_posterior(
                y, index=index, n_samples=args.n_samples, num_steps=args.steps, sampler="heun"), x, args.n_samples))
        nfe = 2 * args.steps - 1
        best = None
        for zeta in (0.3, 1.0, 3.0, 10.0):  # tuned on 4 validation measurements (DPS's step ∝ ‖A‖)
            dps_mod = PosteriorModule(prior_ckpt, DPS(zeta=zeta), op, sigma_y, num_steps=nfe)
            r = evaluate("tune", lambda: dps_mod.sample_posterior(y_val[:4], n_samples=1), x_val[:4], 1)
            if best is None or r["psnr"] > best[0]:
                best = (r["psnr"], zeta)
        dps_mod = PosteriorModule(prior_ckpt, DPS(zeta=best[1]), op, sigma_y, num_steps=nfe)
        rows.append(evaluate(f"DPS {nfe} steps (ζ={best[1]})", lambda: dps_mod.sample_posterior(
            y, index=index, n_samples=args.n_samples), x, args.n_samples))
        ratio = rows[2]["seconds_per_sample"] / rows[3]["seconds_per_sample"]
        report["tasks"][name] = {"sigma_y": sigma_y, "operator": op.config(), "ucos_training": tr, "rows": rows,
                                 "time_ratio_ucos_over_dps": ratio}
        print(f"\n## {name} (σ_y = {sigma_y}, {args.n_test} test measurements, {args.n_samples} samples each; "
              f"UCoS trained {tr['steps']} steps / {tr['seconds']:.0f} s, prior {report['prior_training']['steps']} steps)\n")
        print(md_table(rows, ["method", "psnr", "psnr_std", "ssim", "bias2", "variance", "coverage90", "psnr_one_sample",
                              "nfe_per_sample", "seconds_per_sample", "operator_calls"]))
        print(f"UCoS / DPS wall time per sample: {ratio:.3f}")
    _write(args.out, report)
    return 0


def _write(path, report):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(tmp, path)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
