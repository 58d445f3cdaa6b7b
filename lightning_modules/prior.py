"""``ScorePriorModule``: trains an unconditional EDM denoiser ``D(x, σ) ≈ E[x0 | x_σ = x]`` (METHODS §2)."""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torchmetrics import MeanMetric

from diffpost.image_quality import psnr
from diffpost.losses import edm_denoising_loss
from diffpost.precond import EDMDenoiser
from diffpost.random import per_sample_generators, randn, seed_for
from diffpost.samplers import CountingDenoiser
from diffpost.schedules import EDMTrainingDensity, karras_sigmas
from lightning_modules.base import DiffpostModule
from lightning_modules.sampling import SamplerName, run_sampler

_VAL_STREAM, _PREDICT_STREAM = 1, 2


class ScorePriorModule(DiffpostModule):
    """Denoising score matching with EDM preconditioning, loss weighting and σ density.

    EMA is Lightning's ``EMAWeightAveraging`` callback (see configs/trainer/); validation therefore
    scores the EMA weights, and checkpoints store them as ``state_dict``.
    """

    def __init__(
        self,
        net: nn.Module,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        log_uniform_fraction: float = 0.0,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        val_sigmas: list[float] = [0.05, 0.2, 0.5, 1.0],
        sampler: SamplerName = "heun",
        num_steps: int = 18,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        self._save_config({"net": net})
        self.net = net
        self.denoiser = EDMDenoiser(net, sigma_data=sigma_data)
        self.density = EDMTrainingDensity(p_mean=p_mean, p_std=p_std, log_uniform_fraction=log_uniform_fraction,
                                          sigma_min=sigma_min, sigma_max=sigma_max)
        self.val_psnr = nn.ModuleList([MeanMetric() for _ in val_sigmas])
        self.val_loss = MeanMetric()

    # ------------------------------------------------------------------ training
    def configure_model(self) -> None:
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.denoiser.net = torch.compile(self.denoiser.net)
            self._compiled = True

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, sigma)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0 = batch["x"]
        g = self.step_generator(batch_idx)
        sigma = self.density.sample(x0.shape[0], g, dtype=x0.dtype, device=x0.device)
        noise = randn(x0.shape, g, dtype=x0.dtype, device=x0.device)
        loss = edm_denoising_loss(self.denoiser, x0, sigma, noise, self.hparams.sigma_data).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    # ------------------------------------------------------------------ validation
    def _fixed_noise(self, index: torch.Tensor, like: torch.Tensor, stream: int, k: int) -> torch.Tensor:
        # seeded by (seed, stream, index, k): the same for any batch size, worker count or world size
        gens = per_sample_generators([seed_for(self.hparams.seed, stream, int(i), k) for i in index])
        return randn(like.shape, gens, dtype=like.dtype, device=like.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x0, index = batch["x"], batch["index"]
        for k, (s, metric) in enumerate(zip(self.hparams.val_sigmas, self.val_psnr)):
            sigma = torch.full((x0.shape[0],), float(s), dtype=x0.dtype, device=x0.device)
            noise = self._fixed_noise(index, x0, _VAL_STREAM, k)
            metric.update(psnr(self.denoiser(x0 + sigma.view(-1, 1, 1, 1) * noise, sigma), x0))
        sigma = self.density.sample(x0.shape[0], per_sample_generators(
            [seed_for(self.hparams.seed, _VAL_STREAM, int(i), -1) for i in index]), dtype=x0.dtype, device=x0.device)
        noise = self._fixed_noise(index, x0, _VAL_STREAM, -2)
        self.val_loss.update(edm_denoising_loss(self.denoiser, x0, sigma, noise, self.hparams.sigma_data))

    def on_validation_epoch_end(self) -> None:
        for s, metric in zip(self.hparams.val_sigmas, self.val_psnr):
            self.log(f"val/denoise_psnr_sigma{s:g}", metric.compute(), sync_dist=False)
            metric.reset()
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.val_loss.reset()

    # ------------------------------------------------------------------ sampling
    def sample(self, n_or_index: int | torch.Tensor, *, num_steps: int | None = None, sampler: SamplerName | None = None,
               seed: int | None = None, shape: tuple[int, ...] | None = None, callback=None) -> tuple[torch.Tensor, int]:
        """Unconditional samples, one per index (per-index seeds: batch-size independent).

        Returns ``(samples, nfe)``. ``shape`` defaults to the training images' ``(C, H, W)``.
        """
        index = torch.arange(n_or_index) if isinstance(n_or_index, int) else n_or_index
        shape = tuple(shape or self.image_shape)
        seed = self.hparams.seed if seed is None else seed
        gens = per_sample_generators([seed_for(seed, _PREDICT_STREAM, int(i)) for i in index])
        sigmas = karras_sigmas(num_steps or self.hparams.num_steps, self.hparams.sigma_min, self.hparams.sigma_max,
                               self.hparams.rho, dtype=torch.float32, device=self.device)
        x = sigmas[0] * randn((len(index), *shape), gens, dtype=torch.float32, device=self.device)
        counting = CountingDenoiser(self.denoiser)
        out = run_sampler(sampler or self.hparams.sampler, counting, x, sigmas, generator=gens, callback=callback)
        return out, counting.nfe

    @property
    def image_shape(self) -> tuple[int, ...]:
        if self._image_shape is None:
            raise RuntimeError("image shape unknown: pass shape=(C, H, W) or train/fit the module on a DataModule first")
        return self._image_shape

    _image_shape: tuple[int, ...] | None = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "x_shape"):
            self._image_shape = tuple(dm.x_shape)

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"image_shape": list(self._image_shape) if self._image_shape else None}

    def on_load_diffpost_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        shape = (checkpoint.get("diffpost") or {}).get("image_shape")
        self._image_shape = tuple(shape) if shape else None

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        samples, nfe = self.sample(batch["index"], shape=tuple(batch["x"].shape[1:]))
        return {"samples": samples, "index": batch["index"], "nfe": torch.tensor(nfe)}

    def configure_optimizers(self):
        hp = self.hparams
        return self.build_optimizer(hp.lr, hp.weight_decay, hp.warmup_steps, hp.lr_schedule)
