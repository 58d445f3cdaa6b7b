"""Quality of the CPU quickstart prior (slow: trains configs/experiments/quickstart_prior.yaml, a few
minutes on 2 cores). Set DIFFPOST_PRIOR_CKPT=<path to its last.ckpt> to evaluate an existing run.

1. Denoising at σ = 0.2 (data range [-1, 1]): the mean per-image PSNR of the EMA denoiser on the 64
   validation images must be ≥ 2 dB above a Gaussian-filter denoiser whose width is tuned on the
   same images and noise (``diffpost.image_quality.gaussian_filter_denoise``; the baseline's best).
2. Unconditional samples against the data, in the [0, 1] display range: with M(p) and S(p) the
   per-pixel mean and standard deviation over a set of images (M, S are 32 × 32 maps), compare
   their spatial averages: |avg M_samples − avg M_data| / avg M_data ≤ 10% and the same for S.
   256 samples (18 Heun steps, the configured sampler) against 1024 training images.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpost.image_quality import gaussian_filter_denoise, psnr, to_unit_range

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "experiments" / "quickstart_prior.yaml"
SIGMA = 0.2


def pixel_stats(x: torch.Tensor) -> tuple[float, float]:
    """Spatial averages of the per-pixel mean and std maps over the image set, in [0, 1]."""
    u = to_unit_range(x.double())
    return u.mean(0).mean().item(), u.std(0).mean().item()


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    given = os.environ.get("DIFFPOST_PRIOR_CKPT")
    if given:
        return Path(given), None
    run = tmp_path_factory.mktemp("quickstart")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "fit", "--config", str(CONFIG),
                           "--trainer.enable_progress_bar=false"], cwd=run, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    (last,) = list(run.rglob("last.ckpt"))
    return last, time.perf_counter() - t0


def test_quickstart_prior_quality(quickstart, tmp_path):
    from lightning_modules.checkpoint import load_module
    from lightning_modules.cli import DiffpostCLI

    path, train_seconds = quickstart
    module = load_module(path)
    dm = DiffpostCLI(args=["--config", str(CONFIG), "--trainer.logger=false"], run=False,
                     save_config_callback=None).datamodule
    val, train = dm.dataset("val"), dm.dataset("train")
    x = torch.stack([val[k]["x"] for k in range(len(val))])
    noisy = x + SIGMA * torch.randn(x.shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        learned = psnr(module.denoiser(noisy, torch.full((len(x),), SIGMA)), x).mean().item()
    widths = np.round(np.arange(0.25, 2.51, 0.05), 2)
    gauss = {float(w): psnr(gaussian_filter_denoise(noisy, float(w)), x).mean().item() for w in widths}
    best_width = max(gauss, key=gauss.get)
    assert widths[0] < best_width < widths[-1], "the tuned width sits on the edge of the grid: widen it"

    samples, nfe = module.sample(256)
    data = torch.stack([train[k]["x"] for k in range(1024)])
    (m_s, s_s), (m_d, s_d) = pixel_stats(samples), pixel_stats(data)
    report = {"checkpoint": str(path), "train_seconds": train_seconds, "denoise_psnr_sigma0.2": learned,
              "gaussian_filter_psnr": gauss[best_width], "gaussian_filter_width": best_width,
              "samples_nfe": nfe, "mean_samples": m_s, "mean_data": m_d, "mean_rel_err": (m_s - m_d) / m_d,
              "std_samples": s_s, "std_data": s_d, "std_rel_err": (s_s - s_d) / s_d,
              "sample_range": [samples.min().item(), samples.max().item()]}
    print(json.dumps(report, indent=1))
    from torchvision.utils import save_image

    save_image(to_unit_range(samples[:64]), tmp_path / "samples.png", nrow=8, padding=1)
    assert learned >= gauss[best_width] + 2.0, report
    assert abs(m_s - m_d) / m_d <= 0.10, report
    assert abs(s_s - s_d) / s_d <= 0.10, report
