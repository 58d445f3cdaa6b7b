"""PNG figures for ``scripts/sample.py``: one per measurement (truth, back-projection, posterior mean,
std map, error map, a few samples, titled with PSNR/SSIM) and a calibration (reliability) plot.

Uses matplotlib's object API on the Agg canvas (no pyplot): no global figure state and no display
backend, so writers on several ranks (or threads) can draw at once and headless machines work.
"""
from __future__ import annotations

import os

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diffpost.image_quality import psnr, ssim, to_unit_range

#: samples shown per figure
MAX_SAMPLES_SHOWN = 4


def _as_image(x: torch.Tensor):
    """(C, H, W) in [-1, 1] → an array imshow draws: (H, W) for one channel, (H, W, 3) for RGB."""
    x = x.detach().float().cpu()
    if x.shape[0] == 1:
        return x[0].numpy()
    if x.shape[0] == 3:
        return to_unit_range(x).permute(1, 2, 0).numpy()
    return x.mean(0).numpy()  # other channel counts: their mean, on the same [-1, 1] scale


def _quality(x: torch.Tensor, truth: torch.Tensor | None) -> str:
    if truth is None:
        return ""
    p = float(psnr(x[None].float(), truth[None].float()))
    s = float(ssim(x[None].float(), truth[None].float()))
    return f"\n{p:.2f} dB, SSIM {s:.3f}"


def measurement_figure(path: str | os.PathLike, *, index: int, mean: torch.Tensor, std: torch.Tensor | None,
                       samples: torch.Tensor, backprojection: torch.Tensor, truth: torch.Tensor | None = None) -> None:
    """Write one figure for a measurement. Images are ``(C, H, W)`` in [-1, 1], ``samples`` ``(S, C, H, W)``.

    The back-projection ``Aᵀy`` has the operator's own scale, so it is drawn min–max rescaled; images
    share the data range [-1, 1]; the std and error maps (channel means) have their own colour bars.
    ``std = None`` (a mean estimator, or one sample) drops the std map and the samples.
    """
    shown = samples[:MAX_SAMPLES_SHOWN] if std is not None else samples[:0]
    panels = ((["truth"] if truth is not None else []) + ["backprojection", "mean"] + (["std"] if std is not None else [])
              + (["error"] if truth is not None else []) + [f"s{k}" for k in range(len(shown))])
    fig = Figure(figsize=(2.3 * len(panels), 2.7), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    gray = dict(cmap="gray", vmin=-1.0, vmax=1.0)
    for ax, name in zip(axes, panels):
        ax.set_axis_off()
        if name == "truth":
            ax.imshow(_as_image(truth), **gray)
            ax.set_title("truth", fontsize=8)
        elif name == "backprojection":
            bp = backprojection.detach().float().cpu()
            lo, hi = bp.min(), bp.max()
            bp = 2 * (bp - lo) / (hi - lo).clamp_min(1e-12) - 1
            ax.imshow(_as_image(bp), **gray)
            ax.set_title("Aᵀy (rescaled)", fontsize=8)
        elif name == "mean":
            ax.imshow(_as_image(mean), **gray)
            ax.set_title("posterior mean" + _quality(mean, truth), fontsize=8)
        elif name in ("std", "error"):
            m = std if name == "std" else (mean.float() - truth.float()).abs()
            im = ax.imshow(m.detach().float().cpu().mean(0).numpy(), cmap="magma", vmin=0.0)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title("posterior std" if name == "std" else "|mean − truth|", fontsize=8)
        else:
            k = int(name[1:])
            ax.imshow(_as_image(shown[k]), **gray)
            ax.set_title(f"sample {k}" + _quality(shown[k], truth), fontsize=8)
    fig.suptitle(f"measurement {index}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))


def calibration_figure(path: str | os.PathLike, levels: list[float], coverage: list[float], *, title: str = "",
                       reference: list[float] | None = None, n_samples: int | None = None) -> None:
    """Reliability plot: empirical coverage of the central credible intervals against their nominal
    level; with many samples a calibrated sampler lies on the diagonal, an over-confident one below it.
    ``reference``: what a calibrated sampler scores with ``n_samples`` samples (well below the diagonal
    for few samples), drawn as its own curve."""
    fig = Figure(figsize=(3.4, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="nominal")
    if reference:
        ax.plot(levels, reference, color="0.3", lw=1, ls=":", marker="x",
                label=f"calibrated, {n_samples} samples" if n_samples else "calibrated")
    ax.plot(levels, coverage, marker="o", label="empirical")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal level of the central interval")
    ax.set_ylabel("fraction of pixels covered")
    ax.set_title(title or "calibration", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.fspath(path))
