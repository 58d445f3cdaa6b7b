"""Posterior sampling from a Lightning module: the glue between modules and ``diffpost.posterior``.

A module that can sample posteriors exposes ``posterior_model()`` (a core ``PriorModel`` or
``UCoSModel`` built from its own weights) and, optionally, ``default_posterior_method()``.
``sample_posterior`` then runs any method on it with per-(index, sample) seeds, so results do not
depend on batch size or sharding, and returns the method's ``PosteriorOutput``.
"""
from __future__ import annotations

import torch

from diffpost.operators import LinearOperator
from diffpost.posterior.base import PosteriorMethod, PosteriorOutput, posterior_generators
from diffpost.samplers.base import Callback


def sample_posterior(module, y: torch.Tensor, *, method: PosteriorMethod | None = None,
                     operator: LinearOperator | None = None, sigma_y: float | None = None,
                     index: torch.Tensor | None = None, n_samples: int = 1, num_steps: int | None = None,
                     seed: int = 0, callback: Callback | None = None) -> PosteriorOutput:
    """Run ``method`` (default: the module's own) on ``module.posterior_model()``.

    ``operator``/``sigma_y`` default to the module's task (UCoS; a ``PosteriorModule``). ``index``
    (default ``0..B-1``) keys the generators; ``num_steps`` defaults to the module's ``num_steps``.
    """
    if method is None:
        default = getattr(module, "default_posterior_method", None)
        if default is None:
            raise TypeError(f"{type(module).__name__} has no default posterior method; pass one (e.g. diffpost.posterior.dps.DPS)")
        method = default()
    op = operator if operator is not None else getattr(module, "operator", None)
    sy = sigma_y if sigma_y is not None else getattr(module, "sigma_y", None)
    if op is None or sy is None:
        raise TypeError(f"{type(module).__name__} has no task of its own: pass operator and sigma_y")
    model = module.posterior_model()
    op = op.to(device=model.device)
    index = torch.arange(y.shape[0]) if index is None else index.reshape(-1).cpu()
    n_chains = 1 if method.mean_estimator else n_samples
    steps = int(num_steps if num_steps is not None else module.hparams.num_steps)
    return method(model, op, y, sy, num_steps=steps, n_samples=n_samples,
                  generator=posterior_generators(seed, index, n_chains), callback=callback)
