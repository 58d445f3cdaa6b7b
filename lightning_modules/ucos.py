"""``UCoSModule``: trains the task-dependent auxiliary denoiser for one ``(A, σ_y)`` (METHODS §3) and
samples posteriors with no forward-operator call in the sampling loop."""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from diffpost.image_quality import psnr
from diffpost.operators import LinearOperator
from diffpost.schedules import EDMTrainingDensity, FourierCovariance, edm_loss_weight
from diffpost.ucos import (
    CirculantPreconditioner,
    DenseNoisePreconditioner,
    DensePreconditioner,
    FourierNoisePreconditioner,
    LowRankDiagonalPreconditioner,
    RandomizedSVDPreconditioner,
    SpectralPreconditioner,
    UCoSDenoiser,
    auxiliary_sample,
    default_preconditioner,
    function_space_preconditioner,
    information_offset,
)
from diffpost.posterior.base import OperatorMismatchError, PosteriorOutput, UCoSModel
from diffpost.posterior.ucos import UCoS
from diffpost.samplers.select import SamplerName
from lightning_modules.base import DiffpostModule
from lightning_modules.metrics import IndexedMean
from lightning_modules.sampling import sample_posterior

__all__ = ["UCoSModule", "OperatorMismatchError"]


class UCoSModule(DiffpostModule):
    """Auxiliary-score training: ``Ỹ_σ = P_σ x0 + ξ`` from data ``x0``, regress ``x0`` (METHODS §3.1).

    ``operator`` and ``sigma_y`` are linked from the DataModule by the CLI (one place in the config).
    The checkpoint records the operator's spec and fingerprint, σ_y and the preconditioner factors;
    sampling with another operator or σ_y raises ``OperatorMismatchError``.

    ``noise_tau`` (with ``noise_s``) switches on function-space UCoS (METHODS §3.4): diffusion noise
    ``N(0, C)``, ``C = FourierCovariance(x_shape, noise_tau, noise_s)``, in the auxiliary variable, the
    preconditioner, the network input ``x/σ² + C b`` and the sampler; ``None`` (default) is white noise.
    """

    def __init__(
        self,
        net: nn.Module,
        operator: LinearOperator,
        sigma_y: float,
        rho0: float = 4.0,
        preconditioner: Literal["auto", "spectral", "dense", "randomized", "circulant", "lowrank_diagonal"] = "auto",
        precond_rank: int = 256,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        log_uniform_fraction: float = 0.3,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        sampler: SamplerName = "heun",
        num_steps: int = 20,
        seed: int = 0,
        compile: bool = False,
        noise_tau: float | None = None,
        noise_s: float = 2.0,
    ):
        super().__init__()
        if not (sigma_y > 0 and math.isfinite(sigma_y)):
            raise ValueError(f"UCoSModule: sigma_y must be positive and finite, got {sigma_y}")
        self._save_config({"net": net, "operator": operator})
        self.operator = operator
        # function space (METHODS §3.4): noise_tau set → diffusion noise N(0, C), C = FourierCovariance(τ, s)
        # of unit pointwise variance; None keeps white noise
        self.noise_cov = None if noise_tau is None else FourierCovariance(operator.x_shape, noise_tau, noise_s)
        precond = self._function_space_preconditioner(preconditioner, rho0) if self.noise_cov is not None else {
            "auto": lambda: default_preconditioner(operator, sigma_y, rho0),
            "spectral": lambda: SpectralPreconditioner(operator, sigma_y, rho0),
            "dense": lambda: DensePreconditioner(operator, sigma_y, rho0),
            "randomized": lambda: RandomizedSVDPreconditioner(operator, sigma_y, rho0, rank=precond_rank, seed=seed),
            "circulant": lambda: CirculantPreconditioner(operator, sigma_y, rho0, seed=seed),
            "lowrank_diagonal": lambda: LowRankDiagonalPreconditioner(operator, sigma_y, rho0, rank=precond_rank, seed=seed),
        }[preconditioner]()
        self.aux = UCoSDenoiser(net, precond, sigma_data=sigma_data)
        self.density = EDMTrainingDensity(p_mean=p_mean, p_std=p_std, log_uniform_fraction=log_uniform_fraction,
                                          sigma_min=sigma_min, sigma_max=sigma_max)
        # per-image means keyed by index: DDP's padded samplers repeat images, each must count once
        self.val_mmse_psnr, self.val_tikhonov_psnr = IndexedMean(), IndexedMean()

    def _function_space_preconditioner(self, kind: str, rho0: float):
        """``G_σ = ((σ⁻² + ρ0) I + C S/σ_y²)⁻¹`` (diffpost.ucos.function_space), the same in training and sampling."""
        op, sy, C = self.operator, float(self.hparams.sigma_y), self.noise_cov
        if kind == "auto":
            return function_space_preconditioner(op, sy, C, rho0)
        if kind == "spectral":
            return FourierNoisePreconditioner(op, sy, C, rho0)
        if kind == "dense":
            return DenseNoisePreconditioner(op, sy, C, rho0)
        raise ValueError(f"UCoSModule: preconditioner={kind!r} has no function-space version; "
                         "use 'auto', 'spectral' or 'dense' with noise_tau")

    # ------------------------------------------------------------------ identity of the task
    @property
    def sigma_y(self) -> float:
        return float(self.hparams.sigma_y)

    def task_fingerprint(self) -> dict[str, Any]:
        return {"operator_fingerprint": self.operator.fingerprint(), "sigma_y": self.sigma_y,
                "preconditioner_fingerprint": self.aux.preconditioner.fingerprint(),
                "operator": self.hparams.operator,
                **({} if self.noise_cov is None else {"noise_cov": self.noise_cov.config()})}

    def checkpoint_metadata(self) -> dict[str, Any]:
        return self.task_fingerprint()

    def check_task(self, operator: LinearOperator, sigma_y: float) -> None:
        """``OperatorMismatchError`` naming both tasks unless ``(operator, sigma_y)`` is this model's."""
        self.posterior_model().check_task(operator, sigma_y)

    # ------------------------------------------------------------------ training
    def configure_model(self) -> None:
        if self.hparams.compile and not getattr(self, "_compiled", False):
            # in place: state_dict keys stay those of the plain network (no `_orig_mod.`), so compiled
            # and plain runs share checkpoints
            self.aux.net.compile()
            self._compiled = True

    def ucos_loss(self, x0: torch.Tensor, sigma: torch.Tensor, generator) -> torch.Tensor:
        """Per-sample ``λ(σ)‖D_θ(Ỹ_σ, σ) − x0‖²`` (pixel mean); one ``A`` and one ``Aᵀ`` per image."""
        z = auxiliary_sample(x0, sigma, self.operator, self.sigma_y, generator, noise_cov=self.noise_cov)
        err = ((self.aux(z, sigma) - x0) ** 2).flatten(1).mean(1)
        return edm_loss_weight(sigma, self.hparams.sigma_data) * err

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0 = batch["x"]
        g = self.step_generator(batch_idx)
        sigma = self.density.sample(x0.shape[0], g, dtype=x0.dtype, device=x0.device)
        loss = self.ucos_loss(x0, sigma, g).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def mmse(self, y: torch.Tensor) -> torch.Tensor:
        """One network call: ``D_θ(b, σ_max) ≈ E[x0 | y]`` (the instant reconstruction, METHODS §3.1)."""
        b = information_offset(y, self.operator, self.sigma_y, noise_cov=self.noise_cov)
        return self.aux(b, torch.full((y.shape[0],), self.hparams.sigma_max, dtype=b.dtype, device=b.device))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x0, y = batch["x"], batch["y"]
        b = information_offset(y, self.operator, self.sigma_y, noise_cov=self.noise_cov)
        smax = torch.full((y.shape[0],), self.hparams.sigma_max, dtype=b.dtype, device=b.device)
        self.val_mmse_psnr.update(psnr(self.aux(b, smax), x0), batch["index"])
        # the input estimate alone (σ → ∞ limit of G_σ b): the baseline the network must beat
        self.val_tikhonov_psnr.update(psnr(self.aux.tikhonov(b, smax), x0), batch["index"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/mmse_psnr", self.val_mmse_psnr.compute(), prog_bar=True)
        self.log("val/input_estimate_psnr", self.val_tikhonov_psnr.compute())
        self.val_mmse_psnr.reset()
        self.val_tikhonov_psnr.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """``validation_step``'s metrics on the test split, logged as ``test/...``. The metric objects are
        shared (validation and test never run at once); Lightning computes and resets them at the end
        of the test epoch, each image counted once under DDP padding."""
        self.validation_step(batch, batch_idx)
        self.log("test/mmse_psnr", self.val_mmse_psnr, on_step=False, on_epoch=True)
        self.log("test/input_estimate_psnr", self.val_tikhonov_psnr, on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ posterior sampling
    def posterior_model(self) -> UCoSModel:
        """The core view of this model for ``diffpost.posterior`` methods (UCoS, UCoSMMSE)."""
        hp = self.hparams
        p = next(self.aux.net.parameters())
        return UCoSModel(x_shape=self.operator.x_shape, sigma_min=hp.sigma_min, sigma_max=hp.sigma_max, rho=hp.rho,
                         sigma_data=hp.sigma_data, noise_cov=self.noise_cov, dtype=p.dtype, device=p.device,
                         aux=self.aux, operator=self.operator, sigma_y=self.sigma_y)

    def default_posterior_method(self) -> UCoS:
        return UCoS(sampler=self.hparams.sampler)

    def sample_posterior(self, y: torch.Tensor, *, operator: LinearOperator | None = None, sigma_y: float | None = None,
                         index: torch.Tensor | None = None, n_samples: int = 8, num_steps: int | None = None,
                         sampler: SamplerName | None = None, seed: int = 0, churn: float = 0.0, callback=None) -> PosteriorOutput:
        """Posterior samples for each measurement with the ``UCoS`` method: ``b = Aᵀy/σ_y²`` once, then
        the σ-space ``sampler`` on ``D_θ(x/σ² + b, σ)``. Per-(index, sample) seeds: results do not
        depend on batch size or how measurements are sharded."""
        method = UCoS(sampler=sampler or self.hparams.sampler, churn=churn)
        return sample_posterior(self, y, method=method, operator=operator, sigma_y=sigma_y, index=index,
                                n_samples=n_samples, num_steps=num_steps, seed=seed, callback=callback)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        out = self.sample_posterior(batch["y"], index=batch["index"])
        return {"index": batch["index"], "samples": out.samples, "mean": out.mean}

    def configure_optimizers(self):
        hp = self.hparams
        return self.build_optimizer(hp.lr, hp.weight_decay, hp.warmup_steps, hp.lr_schedule)
