"""The σ-space samplers by name, for configs (a ``Literal``, so LightningCLI validates the choice)."""
from __future__ import annotations

from typing import Literal

import torch

from diffpost.random import GeneratorLike
from diffpost.samplers.base import Callback, Denoiser, NoiseFn, edm_stochastic, euler, euler_maruyama, heun

SamplerName = Literal["heun", "euler", "euler_maruyama", "edm"]
SAMPLER_NAMES: tuple[str, ...] = ("heun", "euler", "euler_maruyama", "edm")


def run_sampler(name: SamplerName, denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                generator: GeneratorLike = None, noise: NoiseFn | None = None, callback: Callback | None = None,
                churn: float = 0.0) -> torch.Tensor:
    """Run the sampler ``name`` from ``x`` over ``sigmas``; ``churn`` only matters for ``edm``."""
    if name == "heun":
        return heun(denoiser, x, sigmas, callback=callback)
    if name == "euler":
        return euler(denoiser, x, sigmas, callback=callback)
    if name == "euler_maruyama":
        return euler_maruyama(denoiser, x, sigmas, generator=generator, noise=noise, callback=callback)
    if name == "edm":
        return edm_stochastic(denoiser, x, sigmas, generator=generator, churn=churn, noise=noise, callback=callback)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
