"""``ReconstructionMetrics``: PSNR/SSIM of a configurable reconstruction on fixed validation/test data.

PSNR and SSIM are torchmetrics' functional metrics here. The math core (``diffpost.image_quality``)
keeps its own small implementation because importing torchmetrics imports torchvision, which the core
must not; tests hold both to scikit-image.
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from diffpost.image_quality import coverage_at_levels, to_unit_range
from lightning_modules.reconstruct import Reconstructor, Tikhonov


def image_psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``(B, C, H, W)`` images in [-1, 1], mapped to [0, 1] with data range 1."""
    return peak_signal_noise_ratio(to_unit_range(x_hat), to_unit_range(x), data_range=1.0, reduction="none",
                                   dim=tuple(range(1, x.dim())))


#: half-width of SSIM's Gaussian window (σ = 1.5 truncated at 3.5σ: 11 pixels)
_SSIM_PAD = 5


def image_ssim(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, σ 1.5, data range 1 on [0, 1]) averaged over the pixels
    whose window lies inside the image, like scikit-image's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``: torchmetrics' own mean also covers a reflect-padded
    border, which moves SSIM by ~0.005 at 32²."""
    if x.dim() != 4 or min(x.shape[-2:]) <= 2 * _SSIM_PAD:
        raise ValueError(f"image_ssim: expected (B, C, H, W) images larger than {2 * _SSIM_PAD}², got {tuple(x.shape)}")
    _, ssim_map = structural_similarity_index_measure(to_unit_range(x_hat), to_unit_range(x), gaussian_kernel=True,
                                                      sigma=1.5, data_range=1.0, reduction="none", return_full_image=True)
    return ssim_map[..., _SSIM_PAD:-_SSIM_PAD, _SSIM_PAD:-_SSIM_PAD].flatten(1).mean(1)


def eval_items(datamodule, split: str, n: int) -> dict[str, torch.Tensor]:
    """The first ``n`` items of ``split`` (fewer if the split is smaller), stacked: ``x``, ``y``, ``index``.

    Items come from the DataModule's own dataset, so their measurement noise is the seeded one every
    run, rank and batch size sees.
    """
    if not hasattr(datamodule, "dataset") or not hasattr(datamodule, "operator"):
        raise TypeError(f"reconstruction callbacks need an InverseProblemDataModule-like DataModule, got {type(datamodule).__name__}")
    count = min(n, len(datamodule.dataset(split)))
    return datamodule.first_items(split, count) if count else {}


#: nominal levels of the central credible intervals whose coverage is logged when samples are available
COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)


class ReconstructionMetrics(pl.Callback):
    """Reconstructs the first ``n_images`` validation (and test) measurements once per evaluation epoch
    and logs ``{val,test}/<reconstructor.name>/{psnr,ssim}``: the mean of per-image values; when the
    reconstructor returns two or more posterior samples per image, also the calibration
    ``{val,test}/<name>/coverage{50,80,90,95}``: the fraction of pixels whose truth lies in the central
    credible interval of that level (a calibrated sampler: the level itself).

    - ``reconstructor``: ``Tikhonov``/``PseudoInverse`` (classical, any module) or ``PosteriorSampling``
      (calls ``module.sample_posterior``), so every posterior sampler plugs in without change.
    - DDP: the images are split ``rank::world_size`` (disjoint, nothing dropped or repeated) and the
      sums are synced by torchmetrics, so the logged value equals the single-process one.
    - The work happens at the first evaluation batch, while the evaluated weights (e.g. the EMA
      weights swapped in by ``EMAWeightAveraging``) are in place, whatever the callback order.
    - Runs with autograd available (outside inference mode, under ``no_grad``): samplers that need
      gradients (DPS-like guidance) enable them locally.
    """

    def __init__(self, reconstructor: Reconstructor | None = None, n_images: int = 16, every_n_epochs: int = 1):
        if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
            raise ValueError(f"ReconstructionMetrics: n_images must be a positive integer, got {n_images!r}")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"ReconstructionMetrics: every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        self.reconstructor = reconstructor if reconstructor is not None else Tikhonov()
        self.n_images, self.every_n_epochs = n_images, every_n_epochs
        self.psnr, self.ssim = MeanMetric(), MeanMetric()
        self.coverage = {level: MeanMetric() for level in COVERAGE_LEVELS}
        self._pending: str | None = None

    @property
    def state_key(self) -> str:
        # several instances (one per reconstructor) may sit side by side
        return f"{type(self).__name__}[{self.reconstructor.name}]"

    def _due(self, trainer: pl.Trainer, batch_idx: int, dataloader_idx: int, every_epoch: bool = False) -> bool:
        return (batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking
                and (every_epoch or trainer.current_epoch % self.every_n_epochs == 0))

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        dm = trainer.datamodule
        device = pl_module.device
        self.psnr, self.ssim = self.psnr.to(device), self.ssim.to(device)
        self.coverage = {level: m.to(device) for level, m in self.coverage.items()}
        with torch.inference_mode(False), torch.no_grad():
            items = eval_items(dm, split, self.n_images)
            mine = {k: v[trainer.global_rank::trainer.world_size].to(device) for k, v in items.items()}
            if mine and len(mine["index"]):
                x = mine["x"]
                x_hat, samples = self.reconstructor(pl_module, mine["y"], dm.operator.to(device), dm.sigma_y, mine["index"])
                x_hat = x_hat.detach().to(x.dtype)
                self.psnr.update(image_psnr(x_hat, x))
                self.ssim.update(image_ssim(x_hat, x))
                if samples is not None and samples.shape[1] >= 2:
                    per_level = coverage_at_levels(samples.detach(), x, COVERAGE_LEVELS)
                    for k, level in enumerate(COVERAGE_LEVELS):
                        self.coverage[level].update(per_level[:, k])
        self._pending = split

    def _log(self, pl_module: pl.LightningModule, split: str) -> None:
        if self._pending != split:
            return
        name = self.reconstructor.name
        # compute() syncs the sums over ranks: every rank logs the global mean (no sync_dist needed)
        pl_module.log(f"{split}/{name}/psnr", self.psnr.compute(), sync_dist=False, prog_bar=True)
        pl_module.log(f"{split}/{name}/ssim", self.ssim.compute(), sync_dist=False, prog_bar=True)
        for level, metric in self.coverage.items():
            if metric.update_called:  # only reconstructors with samples have a calibration
                pl_module.log(f"{split}/{name}/coverage{round(100 * level)}", metric.compute(), sync_dist=False)
            metric.reset()
        self.psnr.reset()
        self.ssim.reset()
        self._pending = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due(trainer, batch_idx, dataloader_idx):
            self._measure(trainer, pl_module, "val")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due(trainer, batch_idx, dataloader_idx, every_epoch=True):
            self._measure(trainer, pl_module, "test")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module, "test")
