"""``DPSModule``: DPS posterior sampling on a trained unconditional prior checkpoint (the UCoS comparator)."""
from __future__ import annotations

import math
from typing import Any, Literal

import torch

from diffpost.operators import LinearOperator
from diffpost.random import per_sample_generators, randn, seed_for
from diffpost.samplers import CountingDenoiser
from diffpost.samplers.dps import dps
from diffpost.schedules import karras_sigmas
from lightning_modules.base import DiffpostModule
from lightning_modules.checkpoint import load_module

_POSTERIOR_STREAM = 3


class DPSModule(DiffpostModule):
    """Wraps a ``ScorePriorModule`` checkpoint; ``predict_step``/``test_step`` run DPS.

    DPS backpropagates through the prior: sampling opens ``torch.inference_mode(False)`` and
    ``torch.enable_grad()`` itself, so it works under Lightning's default inference mode too.
    """

    def __init__(self, prior_checkpoint: str, operator: LinearOperator, sigma_y: float, zeta: float = 1.0,
                 step: Literal["ancestral", "euler"] = "ancestral", num_steps: int = 100, seed: int = 0):
        super().__init__()
        if not (sigma_y > 0 and math.isfinite(sigma_y)):
            raise ValueError(f"DPSModule: sigma_y must be positive and finite, got {sigma_y}")
        self._save_config({"operator": operator})
        from lightning_modules.prior import ScorePriorModule

        self.prior = load_module(prior_checkpoint, expected=ScorePriorModule)
        self.operator = operator

    @property
    def sigma_y(self) -> float:
        return float(self.hparams.sigma_y)

    def sample_posterior(self, y: torch.Tensor, *, operator: LinearOperator | None = None, sigma_y: float | None = None,
                         index: torch.Tensor | None = None, n_samples: int = 1, num_steps: int | None = None,
                         sampler: str | None = None, seed: int = 0, callback=None) -> dict[str, Any]:
        """Same contract as ``UCoSModule.sample_posterior``; ``sampler`` is ignored (DPS has its own step)."""
        op = operator if operator is not None else self.operator
        sy = self.sigma_y if sigma_y is None else float(sigma_y)
        if y.dim() != len(op.y_shape) + 1 or tuple(y.shape[1:]) != op.y_shape:
            raise ValueError(f"measurement has shape {tuple(y.shape)}; the operator needs (B, {', '.join(map(str, op.y_shape))})")
        B = y.shape[0]
        index = torch.arange(B) if index is None else index
        hp = self.prior.hparams
        dtype = next(self.prior.parameters()).dtype
        gens = per_sample_generators([seed_for(seed, _POSTERIOR_STREAM, int(i), s) for i in index for s in range(n_samples)])
        sigmas = karras_sigmas(num_steps or self.hparams.num_steps, hp.sigma_min, hp.sigma_max, hp.rho, dtype=dtype, device=self.device)
        before = dict(op.counts)
        with torch.inference_mode(False), torch.enable_grad():
            yy = y.clone().to(device=self.device, dtype=dtype).repeat_interleave(n_samples, 0)
            x = sigmas[0] * randn((B * n_samples, *op.x_shape), gens, dtype=dtype, device=self.device)
            den = CountingDenoiser(self.prior.denoiser)
            # zeta is stated for σ_y-free residuals; the likelihood scale enters through ‖y − A x̂0‖ itself
            out = dps(den, x, sigmas, yy, op, zeta=self.hparams.zeta, step=self.hparams.step, generator=gens, callback=callback)
        samples = out.detach().reshape(B, n_samples, *op.x_shape)
        calls = {k: op.counts[k] - before.get(k, 0) for k in ("forward", "adjoint")}
        return {"samples": samples, "mean": samples.mean(1),
                "std": samples.std(1) if n_samples > 1 else torch.zeros_like(samples[:, 0]),
                "nfe": den.nfe, "operator_calls": calls}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        out = self.sample_posterior(batch["y"], index=batch["index"])
        return {"index": batch["index"], "samples": out["samples"], "mean": out["mean"], "std": out["std"]}

