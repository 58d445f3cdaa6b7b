"""UCoS posterior sampling (METHODS §3.2; "An Unconditional Representation of the Conditional Score in
Infinite-Dimensional Linear Inverse Problems", TMLR 2025).

``b = Aᵀy/σ_y²`` once per measurement (the only operator use), then any σ-space sampler on the
posterior denoiser ``D_post(x, σ) = D_θ(x/σ² + b, σ)``: no forward operator, no backpropagation, one
network call per sampler evaluation. Exact for any prior up to learning and discretisation error.
With a trace-class noise covariance ``C`` (§3.4) the input is ``x/σ² + C b`` and the sampler injects
``N(0, C)`` noise.
"""
from __future__ import annotations

import math

import torch

from diffpost.operators.base import LinearOperator
from diffpost.posterior.base import DiffusionModel, PosteriorMethod, Run, UCoSModel
from diffpost.samplers.select import SAMPLER_NAMES, SamplerName, run_sampler
from diffpost.ucos.information import information_offset, posterior_denoiser


class UCoS(PosteriorMethod):
    """Posterior samples from a trained UCoS model with the σ-space ``sampler`` (``churn`` for ``edm``)."""

    model_type = UCoSModel

    def __init__(self, sampler: SamplerName = "heun", churn: float = 0.0):
        if sampler not in SAMPLER_NAMES:
            raise ValueError(f"UCoS: sampler must be one of {', '.join(SAMPLER_NAMES)}, got {sampler!r}")
        if isinstance(churn, bool) or not isinstance(churn, (int, float)) or not (math.isfinite(churn) and churn >= 0):
            raise ValueError(f"UCoS: churn must be a finite number >= 0, got {churn!r}")
        self.sampler, self.churn = sampler, float(churn)

    @property
    def name(self) -> str:
        return "ucos"

    def check(self, model: DiffusionModel, operator: LinearOperator, sigma_y: float) -> None:
        model.check_task(operator, sigma_y)

    def sample(self, run: Run) -> torch.Tensor:
        model = run.model
        b = run.repeat(information_offset(run.y, run.operator, run.sigma_y, noise_cov=model.noise_cov))
        sigmas = run.sigmas()
        den = run.counted(posterior_denoiser(model.aux, b))
        return run_sampler(self.sampler, den, run.initial(sigmas[0]), sigmas, generator=run.generator,
                           noise=run.noise_fn, callback=run.callback, churn=self.churn)


class UCoSMMSE(PosteriorMethod):
    """The instant MMSE reconstruction ``D_θ(b, σ_max) ≈ E[x0 | y]``: one network call (METHODS §3.1).

    At ``σ_max`` the input ``x/σ² + b`` is dominated by ``b``; the estimate is a mean, not a sample."""

    model_type = UCoSModel
    mean_estimator = True

    @property
    def name(self) -> str:
        return "ucos_mmse"

    def check(self, model: DiffusionModel, operator: LinearOperator, sigma_y: float) -> None:
        model.check_task(operator, sigma_y)

    def sample(self, run: Run) -> torch.Tensor:
        b = information_offset(run.y, run.operator, run.sigma_y, noise_cov=run.model.noise_cov)
        sigma = torch.full((b.shape[0],), float(run.model.sigma_max), dtype=b.dtype, device=b.device)
        return run.counted(run.model.aux)(b, sigma)
