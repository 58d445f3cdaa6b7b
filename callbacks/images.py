"""``ImageLogger``: truth / back-projection / reconstruction / unconditional samples, on rank 0."""
from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid, save_image

from lightning_modules.reconstruct import Reconstructor, Tikhonov


def _display(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1] for display."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def _autoscale(x: torch.Tensor) -> torch.Tensor:
    """Per-image min–max scaling (back-projections live on another scale)."""
    flat = x.float().flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return (x.float() - lo) / (hi - lo).clamp_min(1e-12)


class ImageLogger(pl.Callback):
    """Logs a grid (rows: truth, Aᵀy, reconstruction, samples) each ``every_n_epochs`` validation epochs.

    Uses the reconstructions of a ``ReconstructionMetrics`` callback when one ran this epoch, else its
    own ``reconstructor``. Wandb and TensorBoard get the image; other loggers get a PNG in the log dir.
    """

    def __init__(self, n_images: int = 8, every_n_epochs: int = 1, reconstructor: Reconstructor | None = None,
                 log_samples: bool = True, sample_steps: int = 18):
        self.n_images, self.every_n_epochs = n_images, every_n_epochs
        self.reconstructor = reconstructor if reconstructor is not None else Tikhonov()
        self.log_samples, self.sample_steps = log_samples, sample_steps

    @torch.no_grad()
    def make_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        dm = trainer.datamodule
        batch = dm.val_subset(self.n_images)
        x, y, index = (batch[k].to(pl_module.device) for k in ("x", "y", "index"))
        op = dm.operator.to(pl_module.device)
        cached = self._cached(trainer, index)
        if cached is None:
            with torch.inference_mode(False), torch.enable_grad():
                cached, _ = self.reconstructor(pl_module, y.clone(), op, dm.noise.sigma_y, index.clone())
        rows = [_display(x), _autoscale(op.adjoint(y)), _display(cached.detach().to(x.device))]
        if self.log_samples and hasattr(pl_module, "sample"):
            samples, _ = pl_module.sample(len(index), num_steps=self.sample_steps, shape=tuple(x.shape[1:]))
            rows.append(_display(samples))
        return make_grid(torch.cat(rows).cpu(), nrow=len(index), padding=1, pad_value=1.0)

    def _cached(self, trainer, index):
        for cb in trainer.callbacks:
            last = getattr(cb, "last", None)
            if isinstance(last, dict) and last and all(int(i) in last for i in index):
                return torch.stack([last[int(i)] for i in index])
        return None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch % self.every_n_epochs) or not trainer.is_global_zero:
            return
        grid = self.make_grid(trainer, pl_module)
        key, step = "val/images", trainer.global_step
        logged = False
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[grid], step=step, caption=["truth | Aᵀy | reconstruction | samples"])
                logged = True
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, grid, global_step=step)
                logged = True
        if not logged:
            out = os.path.join(trainer.log_dir or trainer.default_root_dir, "images")
            os.makedirs(out, exist_ok=True)
            save_image(grid, os.path.join(out, f"epoch{trainer.current_epoch:04d}_step{step:07d}.png"))
