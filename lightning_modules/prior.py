"""``ScorePriorModule``: trains an unconditional EDM denoiser ``D(x, σ) ≈ E[x0 | x_σ = x]`` (METHODS §2)."""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from diffpost.image_quality import psnr
from diffpost.losses import edm_denoising_loss
from diffpost.precond import EDMDenoiser
from diffpost.random import per_sample_generators, randn, seed_for
from diffpost.samplers import CountingDenoiser
from diffpost.schedules import EDMTrainingDensity, karras_sigmas
from diffpost.posterior.base import PriorModel
from diffpost.posterior.dps import DPS
from diffpost.samplers.select import SamplerName, run_sampler
from lightning_modules.base import DiffpostModule
from lightning_modules.metrics import IndexedMean

#: random streams (keys of ``seed_for``): training steps use ``step_generator``'s stream 0
_EVAL_STREAM, _SAMPLE_STREAM = 1, 2


class ScorePriorModule(DiffpostModule):
    """Denoising score matching with EDM preconditioning, loss weighting and σ density.

    - Training noise comes from ``step_generator`` (per rank, per step: reproducible, resumable).
    - Validation/test log the denoising PSNR at the fixed levels ``val_sigmas`` and the EDM loss, on
      noise seeded by each image's index: the same numbers for any batch size or number of GPUs.
    - EMA is Lightning's ``EMAWeightAveraging`` callback (configs/callbacks/): validation then scores
      the EMA weights, and checkpoints store them as ``state_dict``.
    - ``predict_step`` draws one unconditional sample per item with ``sampler``/``num_steps``.
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
        if not val_sigmas or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in val_sigmas):
            raise ValueError(f"ScorePriorModule: val_sigmas must be a non-empty list of positive numbers, got {val_sigmas!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"ScorePriorModule: num_steps must be a positive integer, got {num_steps!r}")
        self._save_config({"net": net})
        # the network is registered once, inside the denoiser: one set of state_dict keys
        self.denoiser = EDMDenoiser(net, sigma_data=sigma_data)
        self.density = EDMTrainingDensity(p_mean=p_mean, p_std=p_std, log_uniform_fraction=log_uniform_fraction,
                                          sigma_min=sigma_min, sigma_max=sigma_max)
        karras_sigmas(num_steps, sigma_min, sigma_max, rho)  # fail now, not at the first sample
        self.eval_psnr = nn.ModuleList([IndexedMean() for _ in val_sigmas])
        self.eval_loss = IndexedMean()
        self._image_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "x_shape"):
            self._image_shape = tuple(dm.x_shape)
        if self.hparams.compile and not getattr(self, "_compiled", False):
            # in place (state_dict keys unchanged) and here, after the callbacks' setup, so that
            # EMAWeightAveraging copies the plain module
            self.denoiser.net.compile()
            self._compiled = True

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, sigma)

    # ------------------------------------------------------------------ training
    def training_noise(self, x0: torch.Tensor, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(σ, n)`` of one training step, from this rank's step generator."""
        g = self.step_generator(batch_idx)
        sigma = self.density.sample(x0.shape[0], g, dtype=x0.dtype, device=x0.device)
        noise = randn(x0.shape, g, dtype=x0.dtype, device=x0.device)
        return sigma, noise

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0 = batch["x"]
        sigma, noise = self.training_noise(x0, batch_idx)
        loss = edm_denoising_loss(self.denoiser, x0, sigma, noise, self.hparams.sigma_data).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    # ------------------------------------------------------------------ validation / test
    def _index_generators(self, index: torch.Tensor, *key: int) -> list[torch.Generator]:
        # seeded by (seed, stream, index, key): the same for any batch size, worker count or world size
        return per_sample_generators([seed_for(self.hparams.seed, _EVAL_STREAM, int(i), *key) for i in index])

    def _evaluate(self, batch: dict[str, torch.Tensor]) -> None:
        x0, index = batch["x"], batch["index"]
        for k, (s, metric) in enumerate(zip(self.hparams.val_sigmas, self.eval_psnr)):
            sigma = torch.full((x0.shape[0],), float(s), dtype=x0.dtype, device=x0.device)
            noise = randn(x0.shape, self._index_generators(index, k), dtype=x0.dtype, device=x0.device)
            metric.update(psnr(self.denoiser(x0 + float(s) * noise, sigma), x0), index)
        gens = self._index_generators(index, -1)
        sigma = self.density.sample(x0.shape[0], gens, dtype=x0.dtype, device=x0.device)
        noise = randn(x0.shape, gens, dtype=x0.dtype, device=x0.device)
        self.eval_loss.update(edm_denoising_loss(self.denoiser, x0, sigma, noise, self.hparams.sigma_data), index)

    def _log_evaluation(self, prefix: str) -> None:
        # IndexedMean.compute syncs across ranks and drops the sampler's padding: every rank logs the
        # single-process value, so no further reduction (sync_dist) is needed
        for s, metric in zip(self.hparams.val_sigmas, self.eval_psnr):
            self.log(f"{prefix}/denoise_psnr_sigma{s:g}", metric.compute(), sync_dist=False)
            metric.reset()
        self.log(f"{prefix}/loss", self.eval_loss.compute(), prog_bar=True, sync_dist=False)
        self.eval_loss.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n_or_index: int | torch.Tensor, *, num_steps: int | None = None, sampler: SamplerName | None = None,
               seed: int | None = None, shape: tuple[int, ...] | None = None, callback=None) -> tuple[torch.Tensor, int]:
        """Unconditional samples, one per index (per-index seeds: batch-size and world-size independent).

        Returns ``(samples, nfe)``. ``shape`` defaults to the training images' ``(C, H, W)``. Runs
        without gradients: unconditional sampling never needs them.
        """
        index = torch.arange(n_or_index) if isinstance(n_or_index, int) else n_or_index.reshape(-1)
        shape = tuple(shape or self.image_shape)
        seed = self.hparams.seed if seed is None else seed
        gens = per_sample_generators([seed_for(seed, _SAMPLE_STREAM, int(i)) for i in index])
        dtype = next(self.denoiser.parameters()).dtype
        sigmas = karras_sigmas(num_steps or self.hparams.num_steps, self.hparams.sigma_min, self.hparams.sigma_max,
                               self.hparams.rho, dtype=dtype, device=self.device)
        x = sigmas[0] * randn((len(index), *shape), gens, dtype=dtype, device=self.device)
        counting = CountingDenoiser(self.denoiser)
        out = run_sampler(sampler or self.hparams.sampler, counting, x, sigmas, generator=gens, callback=callback)
        return out, counting.nfe

    def posterior_model(self) -> PriorModel:
        """The core view of this prior for ``diffpost.posterior`` methods (DPS, DDRM, DiffPIR, ...)."""
        hp = self.hparams
        p = next(self.denoiser.parameters())
        return PriorModel(x_shape=self.image_shape, sigma_min=hp.sigma_min, sigma_max=hp.sigma_max, rho=hp.rho,
                          sigma_data=hp.sigma_data, dtype=p.dtype, device=p.device, denoiser=self.denoiser)

    def default_posterior_method(self) -> DPS:
        """The standard baseline on an unconditional prior (sample.py's ``--method auto``)."""
        return DPS()

    @property
    def image_shape(self) -> tuple[int, ...]:
        if self._image_shape is None:
            raise RuntimeError("image shape unknown: pass shape=(C, H, W), or fit/load the module with a DataModule first")
        return self._image_shape

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        samples, nfe = self.sample(batch["index"], shape=tuple(batch["x"].shape[1:]))
        return {"samples": samples, "index": batch["index"], "nfe": torch.tensor(nfe)}

    # ------------------------------------------------------------------ checkpoints / optimisation
    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"image_shape": list(self._image_shape) if self._image_shape else None}

    def on_load_diffpost_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        shape = (checkpoint.get("diffpost") or {}).get("image_shape")
        if shape:
            self._image_shape = tuple(int(s) for s in shape)

    def configure_optimizers(self):
        hp = self.hparams
        return self.build_optimizer(hp.lr, hp.weight_decay, hp.warmup_steps, hp.lr_schedule)
