"""``ReconstructionMetrics``: PSNR/SSIM of a configurable reconstruction on fixed validation data."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric

from diffpost.image_quality import psnr, ssim
from lightning_modules.reconstruct import Reconstructor, Tikhonov


class ReconstructionMetrics(pl.Callback):
    """At the end of each validation epoch, reconstruct the first ``n_images`` validation measurements.

    The subset is sharded over ranks (``rank::world_size``: disjoint, nothing dropped) and the mean of
    per-image PSNR/SSIM is synced with torchmetrics, so the logged value equals the single-process
    one. Reconstructions run with gradients allowed (DPS-like samplers backprop through the prior).
    """

    def __init__(self, reconstructor: Reconstructor | None = None, n_images: int = 16, every_n_epochs: int = 1):
        self.reconstructor = reconstructor if reconstructor is not None else Tikhonov()
        self.n_images, self.every_n_epochs = n_images, every_n_epochs
        self.psnr, self.ssim = MeanMetric(), MeanMetric()
        self.last: dict[int, torch.Tensor] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch % self.every_n_epochs):
            return
        dm = trainer.datamodule
        batch = dm.val_subset(self.n_images)
        shard = slice(trainer.global_rank, None, trainer.world_size)
        x, y, index = (batch[k][shard].to(pl_module.device) for k in ("x", "y", "index"))
        self.psnr, self.ssim = self.psnr.to(pl_module.device), self.ssim.to(pl_module.device)
        self.last = {}
        if len(index):
            with torch.inference_mode(False):
                x_hat, _ = self.reconstructor(pl_module, y.clone(), dm.operator.to(pl_module.device), dm.noise.sigma_y, index.clone())
            x_hat = x_hat.detach()
            self.psnr.update(psnr(x_hat, x))
            self.ssim.update(ssim(x_hat, x))
            self.last = {int(i): r for i, r in zip(index.cpu(), x_hat.cpu())}
        name = self.reconstructor.name
        pl_module.log(f"val/{name}/psnr", self.psnr.compute(), prog_bar=True)
        pl_module.log(f"val/{name}/ssim", self.ssim.compute())
        self.psnr.reset()
        self.ssim.reset()
