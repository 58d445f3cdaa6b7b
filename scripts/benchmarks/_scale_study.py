"""A real training study at 64² (part of ``benchmark.py scale``): UCoS against Tikhonov and DPS.

Sparse-view CT (32 angles, physical units, σ_y as in the CT tasks) on 64² ellipse phantoms. UCoS and
an unconditional prior (for DPS) are trained with the same network and the same wall-time budget on
this CPU; then on held-out measurements: Tikhonov (prior std tuned on validation data), the one-call
UCoS MMSE, the UCoS posterior mean (Heun) and the DPS posterior mean at the same NFE (ζ tuned on
validation data). With a few CPU minutes per model both networks are far from converged: the table
says what such a budget buys, not what the methods can reach.
"""
from __future__ import annotations

import os
import time

import torch

from .ucos import make_net, tikhonov_best, train

COLUMNS = ["method", "psnr", "psnr_std", "ssim", "nfe", "seconds_per_sample"]


def metrics(name: str, samples: torch.Tensor, x: torch.Tensor, nfe: int, seconds: float) -> dict:
    from diffpost.image_quality import psnr, ssim

    mean = samples.float().mean(1)
    p = psnr(mean, x)
    return {"method": name, "psnr": p.mean().item(), "psnr_std": p.std().item(), "ssim": ssim(mean, x).mean().item(),
            "nfe": nfe, "seconds_per_sample": seconds / (samples.shape[0] * samples.shape[1])}


def run(minutes: float, *, quick: bool, sigma_y: float, log=print, workdir: str = "runs/benchmark_scale",
        size: int = 64, n_angles: int = 32) -> dict:
    import lightning.pytorch as pl

    from datamodules import InverseProblemDataModule
    from datamodules.sources import Ellipses
    from diffpost.operators import CT
    from diffpost.posterior import PriorModel
    from diffpost.posterior.dps import DPS
    from diffpost.random import make_generator
    from lightning_modules.prior import ScorePriorModule
    from lightning_modules.ucos import UCoSModule

    os.makedirs(workdir, exist_ok=True)
    n_test, n_samples, steps = (4, 2, 4) if quick else (8, 4, 10)
    base = 16 if quick else 32
    op = CT((1, size, size), n_angles=n_angles)
    dm = InverseProblemDataModule(Ellipses(size=size, length=200_000, seed=0), op, sigma_y=sigma_y, batch_size=8,
                                  n_val=8, n_test=n_test)
    dm.setup("fit")
    pl.seed_everything(0, verbose=False)
    t = time.perf_counter()
    ucos = UCoSModule(make_net(base), operator=op, sigma_y=sigma_y)
    build_s = time.perf_counter() - t
    log(f"  preconditioner {type(ucos.aux.preconditioner).__name__}: {build_s:.0f} s")
    tr_ucos = train(ucos, dm, minutes, 10**7, workdir)
    pl.seed_everything(0, verbose=False)
    prior = ScorePriorModule(make_net(base))
    tr_prior = train(prior, dm, minutes, 10**7, workdir)
    ucos.eval(), prior.eval()
    log(f"  trained UCoS {tr_ucos['steps']} steps, prior {tr_prior['steps']} steps")

    test = dm.dataset("test")
    items = [test[i] for i in range(n_test)]
    x, y = torch.stack([d["x"] for d in items]), torch.stack([d["y"] for d in items])
    index = torch.stack([torch.as_tensor(d["index"]) for d in items])
    val = dm.val_subset(8)
    x_val, y_val = torch.stack([d["x"] for d in val]), torch.stack([d["y"] for d in val])
    tik = tikhonov_best(op, sigma_y, y_val, x_val, y, x)
    rows = [{"method": tik["method"], "psnr": tik["psnr"], "psnr_std": tik["psnr_std"], "ssim": tik["ssim"], "nfe": 0}]
    with torch.no_grad():
        t = time.perf_counter()
        mmse = ucos.mmse(y).unsqueeze(1)
        rows.append(metrics("UCoS MMSE (one call)", mmse, x, 1, time.perf_counter() - t))
        t = time.perf_counter()
        out = ucos.sample_posterior(y, index=index, n_samples=n_samples, num_steps=steps, sampler="heun")
        rows.append(metrics(f"UCoS posterior mean (Heun {steps} steps, {n_samples} samples)", out.samples, x, out.nfe,
                            time.perf_counter() - t))
    nfe = 2 * steps - 1
    model = PriorModel(x_shape=op.x_shape, denoiser=prior.denoiser)
    best = None
    for zeta in (0.3, 1.0, 3.0, 10.0):  # tuned on validation measurements
        o = DPS(zeta=zeta)(model, op, y_val[:2], sigma_y, num_steps=nfe, generator=make_generator(0))
        score = metrics("tune", o.samples, x_val[:2], nfe, 1.0)["psnr"]
        best = max(best or (score, zeta), (score, zeta))
    gens = [make_generator(1000 + i) for i in range(n_test * n_samples)]
    t = time.perf_counter()
    o = DPS(zeta=best[1])(model, op, y, sigma_y, num_steps=nfe, n_samples=n_samples, generator=gens)
    rows.append(metrics(f"DPS posterior mean ({nfe} steps, ζ={best[1]}, {n_samples} samples)", o.samples, x, o.nfe,
                        time.perf_counter() - t))
    return {"size": size, "n_angles": n_angles, "sigma_y": sigma_y, "minutes_per_model": minutes,
            "preconditioner": type(ucos.aux.preconditioner).__name__, "preconditioner_build_s": build_s,
            "ucos_training": tr_ucos, "prior_training": tr_prior, "n_test": n_test, "rows": rows}
