"""Choosing a σ-space sampler by name from configs (a ``Literal``, so LightningCLI validates it)."""
from __future__ import annotations

from typing import Callable, Literal

import torch

from diffpost import samplers

SamplerName = Literal["heun", "euler", "euler_maruyama", "edm"]


def run_sampler(name: SamplerName, denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor, *, generator=None,
                noise=None, callback=None, churn: float = 0.0) -> torch.Tensor:
    if name == "heun":
        return samplers.heun(denoiser, x, sigmas, callback=callback)
    if name == "euler":
        return samplers.euler(denoiser, x, sigmas, callback=callback)
    if name == "euler_maruyama":
        return samplers.euler_maruyama(denoiser, x, sigmas, generator=generator, noise=noise, callback=callback)
    if name == "edm":
        return samplers.edm_stochastic(denoiser, x, sigmas, generator=generator, churn=churn, noise=noise, callback=callback)
    raise ValueError(f"unknown sampler {name!r}; choose one of heun, euler, euler_maruyama, edm")
