"""``ImageLogger``: truth / back-projection / reconstruction / unconditional samples, on rank 0."""
from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid, save_image

from callbacks.reconstruction import eval_items
from lightning_modules.reconstruct import Reconstructor, Tikhonov


def grid_rows(rows: list[tuple[torch.Tensor, bool]], padding: int = 1, pad_value: float = 1.0) -> torch.Tensor:
    """One ``(3, H', W')`` grid in [0, 1]: a row per ``(images, autoscale)`` entry, images ``(n, C, H, W)``.

    torchvision's ``make_grid`` normalises each row: images in the data range [-1, 1] are clamped and
    mapped to [0, 1]; ``autoscale`` rows (back-projections, on another scale) are min–max scaled per
    image. Images that are neither grey nor RGB show channel 0.
    """
    grids = []
    for k, (images, autoscale) in enumerate(rows):
        images = images.detach().to(torch.float32).cpu()
        if images.shape[1] not in (1, 3):
            images = images[:, :1]
        norm = {"scale_each": True} if autoscale else {"value_range": (-1.0, 1.0)}
        g = make_grid(images, nrow=len(images), padding=padding, pad_value=pad_value, normalize=True, **norm)
        grids.append(g if k == 0 else g[:, padding:])  # rows share the padding line between them
    return torch.cat(grids, dim=1)


class ImageLogger(pl.Callback):
    """Logs a grid every ``every_n_epochs`` validation epochs; one column per validation image, rows:
    truth, ``Aᵀy`` (min–max scaled), ``reconstructor``'s estimate, and (for modules with ``sample``,
    i.e. priors) unconditional samples.

    Runs on rank 0 only, at the first validation batch (so the EMA weights are the ones shown). W&B
    and TensorBoard loggers get the image, and a PNG always goes to ``<log_dir>/images/``. Skipped
    under ``fast_dev_run`` (Lightning disables loggers there). A ``PosteriorSampling`` reconstructor
    shows posterior means; it then samples ``n_images`` measurements on rank 0. For UCoS, the one-call
    MMSE estimate is ``PosteriorSampling(method=diffpost.posterior.ucos.UCoSMMSE())`` (one network call
    per image; configs/callbacks/ucos_cpu.yaml).
    """

    CAPTION = "rows: truth | Aᵀy (scaled) | reconstruction | unconditional samples"

    def __init__(self, n_images: int = 8, every_n_epochs: int = 1, reconstructor: Reconstructor | None = None,
                 log_samples: bool = True, sample_steps: int = 18):
        for name, v in (("n_images", n_images), ("every_n_epochs", every_n_epochs), ("sample_steps", sample_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ImageLogger: {name} must be a positive integer, got {v!r}")
        self.n_images, self.every_n_epochs = n_images, every_n_epochs
        self.reconstructor = reconstructor if reconstructor is not None else Tikhonov()
        self.log_samples, self.sample_steps = log_samples, sample_steps
        self.image_dir: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0 (a collective): ask on every rank here, never on rank 0 alone
        self.image_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, "images")

    def make_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        """The ``(3, H', W')`` grid in [0, 1]."""
        dm = trainer.datamodule
        device = pl_module.device
        with torch.inference_mode(False), torch.no_grad():
            batch = eval_items(dm, "val", self.n_images)
            x, y, index = (batch[k].to(device) for k in ("x", "y", "index"))
            op = dm.operator.to(device)
            x_hat, _ = self.reconstructor(pl_module, y, op, dm.sigma_y, index)
            rows = [(x, False), (op.adjoint(y), True), (x_hat, False)]
            if self.log_samples and hasattr(pl_module, "sample"):
                samples, _ = pl_module.sample(len(index), num_steps=self.sample_steps, shape=tuple(x.shape[1:]))
                rows.append((samples, False))
        return grid_rows(rows)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or trainer.fast_dev_run
                or trainer.current_epoch % self.every_n_epochs or not trainer.is_global_zero):
            return
        self.log_grid(trainer, self.make_grid(trainer, pl_module))

    def log_grid(self, trainer: pl.Trainer, grid: torch.Tensor) -> str:
        """Send ``grid`` to the W&B/TensorBoard loggers and save it as a PNG in ``<log_dir>/images/``
        (kept locally whatever the loggers; small). Returns the PNG's path."""
        key, step = "val/images", trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[grid], step=step, caption=[self.CAPTION])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, grid, global_step=step)
        out = self.image_dir or os.path.join(trainer.default_root_dir, "images")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, f"epoch{trainer.current_epoch:04d}_step{step:07d}.png")
        save_image(grid, path)
        return path
