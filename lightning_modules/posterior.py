"""``PosteriorModule``: a trained checkpoint plus a posterior method given by ``class_path``.

The checkpoint is a ``ScorePriorModule`` (an unconditional prior, for DPS, DDRM, DiffPIR, ...) or a
``UCoSModule`` (for ``UCoS``/``UCoSMMSE``); the method is any ``diffpost.posterior`` class. The task
(operator, σ_y) is checked against the method and the model once, when the module is built.
``predict_step`` samples each batch of measurements (with per-(index, sample) seeds: the same samples
for any batch size or number of devices) and returns samples, cost and time; ``test_step`` logs the
posterior-mean PSNR/SSIM where the truth is known. Callbacks, ``scripts/sample.py`` and the
benchmarks call this module and never name a method.
"""
from __future__ import annotations

import math
import time

import torch

from diffpost.config import spec_of
from diffpost.image_quality import psnr, ssim
from diffpost.operators import LinearOperator
from diffpost.posterior.base import PosteriorMethod, PosteriorOutput, UCoSModel
from diffpost.samplers.base import Callback
from lightning_modules.base import DiffpostModule
from lightning_modules.checkpoint import CheckpointError, load_module
from lightning_modules.sampling import sample_posterior


class PosteriorModule(DiffpostModule):
    """``checkpoint``: a prior or UCoS checkpoint (loaded with ``weights_only=True``); ``method``: the
    posterior method (default: the checkpoint's own: UCoS for a UCoS model, DPS for a prior);
    ``operator``/``sigma_y``: the task (a UCoS checkpoint brings its own; given ones must match it);
    ``num_steps`` (default: the method's paper operating point, else the checkpoint's), ``n_samples``,
    ``seed``: the sampling run."""

    def __init__(self, checkpoint: str, method: PosteriorMethod | None = None, operator: LinearOperator | None = None,
                 sigma_y: float | None = None, num_steps: int | None = None, n_samples: int = 1, seed: int = 0):
        super().__init__()
        for name, v in (("num_steps", num_steps), ("n_samples", n_samples)):
            if v is None and name == "num_steps":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PosteriorModule: {name} must be a positive integer, got {v!r}")
        if method is not None and not isinstance(method, PosteriorMethod):
            raise TypeError(f"PosteriorModule: method must be a diffpost.posterior method, got {type(method).__name__}")
        self._save_config({"method": method, "operator": operator})
        self.model = load_module(checkpoint)
        if not hasattr(self.model, "posterior_model"):
            raise CheckpointError(f"{checkpoint} holds a {type(self.model).__name__}, which has no posterior model "
                                  "(a ScorePriorModule or UCoSModule checkpoint is needed)")
        if method is None:
            method = self.model.default_posterior_method()
            self.hparams["method"] = spec_of(method)
        self.num_steps = int(num_steps or method.default_num_steps or self.model.hparams.num_steps)
        core = self.model.posterior_model()
        if isinstance(core, UCoSModel):  # the task is the one the model was trained for
            operator = core.operator if operator is None else operator
            sigma_y = core.sigma_y if sigma_y is None else sigma_y
        if operator is None or sigma_y is None:
            raise ValueError(f"PosteriorModule: {type(method).__name__} on a prior checkpoint needs the task: "
                             "an operator and sigma_y")
        if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not math.isfinite(sigma_y):
            raise ValueError(f"PosteriorModule: sigma_y must be a finite number, got {sigma_y!r}")
        self.method, self.operator, self._sigma_y = method, operator, float(sigma_y)
        method.check_setup(core, operator, sigma_y)  # the task, checked once

    @property
    def sigma_y(self) -> float:
        return self._sigma_y

    def posterior_model(self):
        return self.model.posterior_model()

    def default_posterior_method(self) -> PosteriorMethod:
        return self.method

    def sample_posterior(self, y: torch.Tensor, *, index: torch.Tensor | None = None, n_samples: int | None = None,
                         num_steps: int | None = None, seed: int | None = None,
                         callback: Callback | None = None) -> PosteriorOutput:
        hp = self.hparams
        return sample_posterior(self, y, method=self.method, index=index,
                                n_samples=hp.n_samples if n_samples is None else n_samples,
                                num_steps=self.num_steps if num_steps is None else num_steps,
                                seed=hp.seed if seed is None else seed, callback=callback)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Samples ``(B, S, *x_shape)`` with the batch's ``index``, and the batch's cost as 0-d tensors
        (NFE and VJP per chain; operator calls and seconds for the whole batch), so prediction writers
        can concatenate and sum them."""
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.sample_posterior(batch["y"], index=batch["index"], callback=getattr(self, "step_callback", None))
        _sync(self.device)
        samples = out.samples.float() if out.samples.dtype in (torch.float16, torch.bfloat16) else out.samples
        cost = {"nfe": out.nfe, "vjp": out.vjp, "forward": out.operator_calls["forward"],
                "adjoint": out.operator_calls["adjoint"], "seconds": time.perf_counter() - t0}
        return {"index": batch["index"], "samples": samples, **{k: torch.tensor(v) for k, v in cost.items()}}

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.sample_posterior(batch["y"], index=batch["index"])
        x = batch["x"].to(out.mean.dtype)
        n = x.shape[0]
        self.log(f"test/{self.method.name}/psnr", psnr(out.mean, x).mean(), batch_size=n, sync_dist=True)
        self.log(f"test/{self.method.name}/ssim", ssim(out.mean, x).mean(), batch_size=n, sync_dist=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
