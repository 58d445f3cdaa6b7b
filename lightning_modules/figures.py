"""One PNG per measurement for ``scripts/sample.py``: truth, back-projection, posterior mean, std map
and a few samples, titled with PSNR/SSIM.

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


def measurement_figure(path: str | os.PathLike, *, index: int, mean: torch.Tensor, std: torch.Tensor,
                       samples: torch.Tensor, backprojection: torch.Tensor, truth: torch.Tensor | None = None) -> None:
    """Write one figure for a measurement. Images are ``(C, H, W)`` in [-1, 1], ``samples`` ``(S, C, H, W)``.

    The back-projection ``Aᵀy`` has the operator's own scale, so it is drawn min–max rescaled; images
    share the data range [-1, 1]; the std map (channel mean) has its own colour bar.
    """
    shown = samples[:MAX_SAMPLES_SHOWN]
    panels = (["truth"] if truth is not None else []) + ["backprojection", "mean", "std"] + [f"s{k}" for k in range(len(shown))]
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
        elif name == "std":
            im = ax.imshow(std.detach().float().cpu().mean(0).numpy(), cmap="magma", vmin=0.0)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title("posterior std", fontsize=8)
        else:
            k = int(name[1:])
            ax.imshow(_as_image(shown[k]), **gray)
            ax.set_title(f"sample {k}" + _quality(shown[k], truth), fontsize=8)
    fig.suptitle(f"measurement {index}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
