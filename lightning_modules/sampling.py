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


#: generator stream of posterior draws: ``seed_for(seed, POSTERIOR_STREAM, index, sample)``
POSTERIOR_STREAM = 3


def check_measurement_shape(y: torch.Tensor, y_shape: tuple[int, ...], who: str = "this model") -> None:
    if y.dim() != len(y_shape) + 1 or tuple(y.shape[1:]) != tuple(y_shape):
        raise ValueError(f"measurement has shape {tuple(y.shape)}; {who} needs (B, {', '.join(map(str, y_shape))})")


def posterior_generators(seed: int, index: torch.Tensor, n_samples: int) -> list[torch.Generator]:
    """One generator per (measurement index, sample): draws do not depend on batching or sharding."""
    from diffpost.random import per_sample_generators, seed_for

    return per_sample_generators([seed_for(seed, POSTERIOR_STREAM, int(i), s) for i in index for s in range(n_samples)])


def posterior_result(out: torch.Tensor, n_samples: int, x_shape: tuple[int, ...], nfe: int,
                     counts: dict, counts_before: dict) -> dict:
    """The ``sample_posterior`` contract: samples ``(B, S, *x_shape)``, mean, std, NFE, operator calls."""
    samples = out.detach().reshape(-1, n_samples, *x_shape)
    return {"samples": samples, "mean": samples.mean(1),
            "std": samples.std(1) if n_samples > 1 else torch.zeros_like(samples[:, 0]), "nfe": nfe,
            "operator_calls": {k: counts[k] - counts_before.get(k, 0) for k in ("forward", "adjoint")}}
