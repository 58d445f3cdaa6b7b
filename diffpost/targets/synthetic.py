"""Plain-typed constructors of Bayesian posteriors (METHODS §6.3): every ingredient from a seed.

``GMMPosterior``/``LinearGaussianPosterior``/``ImagePosterior`` take a prior object, an operator and a
measurement tensor ``y``. A ``GaussianPrior``/``GMMPrior`` has no spec and a ``DenseOperator``'s
``config()`` leaves out its matrix, so such targets cannot be rebuilt from a checkpoint. The classes
here draw the prior's parameters, the operator, a ground truth ``x_true ~ prior`` and
``y = A x_true + σ_y ε`` from ``seed``; their arguments are plain numbers (or specs), so a YAML config
or a checkpoint names them exactly (``diffpost.config.spec_of``/``build``).

Every random draw comes from one generator seeded by ``seed`` in a fixed order, in float64.
"""
from __future__ import annotations

import copy
import math

import torch

from diffpost.operators.base import DenseOperator, LinearOperator
from diffpost.priors.gaussian import GaussianPrior
from diffpost.priors.gmm import GMMPrior
from diffpost.random import make_generator, rand, randn
from diffpost.targets.gaussian import GMMPosterior, LinearGaussianPosterior
from diffpost.targets.image import ImagePosterior

F64 = torch.float64


def _check(name: str, value, positive_int: bool = False) -> None:
    if positive_int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    elif not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _random_cov(d: int, g: torch.Generator, scale: float) -> torch.Tensor:
    """``scale² (½ I + L Lᵀ / d)`` with ``L`` standard normal: correlated, well conditioned."""
    L = randn((d, d), g, dtype=F64)
    return scale**2 * (0.5 * torch.eye(d, dtype=F64) + L @ L.T / d)


def _measure(prior, A: torch.Tensor, sigma_y: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x_true = prior.sample(1, g).reshape(-1)
    y = A @ x_true + sigma_y * randn((A.shape[0],), g, dtype=F64)
    return x_true, y


class SyntheticLinearGaussianPosterior(LinearGaussianPosterior):
    """``N(x; μ, Σ) N(y; A x, σ_y² I)`` on ``R^dim`` with ``μ ~ N(0, prior_scale² I)``,
    ``Σ = prior_scale² (½ I + L Lᵀ/dim)``, ``A`` ``(n_obs, dim)`` with ``N(0, 1/dim)`` entries and
    ``y = A x_true + σ_y ε``, ``x_true ~ N(μ, Σ)``; ``log_Z = log p(y)`` exactly. ``x_true`` is kept."""

    def __init__(self, dim: int = 10, n_obs: int = 5, sigma_y: float = 0.5, seed: int = 0, prior_scale: float = 1.0):
        _check("dim", dim, True)
        _check("n_obs", n_obs, True)
        _check("sigma_y", sigma_y)
        _check("prior_scale", prior_scale)
        g = make_generator(seed)
        mean = prior_scale * randn((dim,), g, dtype=F64)
        prior = GaussianPrior(mean, _random_cov(dim, g, prior_scale))
        A = randn((n_obs, dim), g, dtype=F64) / math.sqrt(dim)
        self.x_true, y = _measure(prior, A, sigma_y, g)
        super().__init__(prior, DenseOperator(A, (dim,)), y, sigma_y)


class SyntheticGMMPosterior(GMMPosterior):
    """``p(x) N(y; A x, σ_y² I)`` for a ``n_components``-mixture prior on ``R^dim``: weights ``∝ ½ + U(0, 1)``,
    means ``spread · N(0, I)``, covariances ``component_std² (½ I + L Lᵀ/dim)``; ``A`` ``(n_obs, dim)`` with
    ``N(0, 1/dim)`` entries, ``y = A x_true + σ_y ε``. With ``n_obs < dim`` the posterior keeps several
    modes (the components whose means agree with ``y``); modes, mode weights and ``log_Z`` are exact."""

    def __init__(self, dim: int = 2, n_components: int = 4, n_obs: int = 1, sigma_y: float = 0.5, seed: int = 0,
                 spread: float = 4.0, component_std: float = 0.7):
        for name, v in (("dim", dim), ("n_components", n_components), ("n_obs", n_obs)):
            _check(name, v, True)
        for name, v in (("sigma_y", sigma_y), ("spread", spread), ("component_std", component_std)):
            _check(name, v)
        g = make_generator(seed)
        weights = 0.5 + rand((n_components,), g, dtype=F64)
        means = spread * randn((n_components, dim), g, dtype=F64)
        covs = torch.stack([_random_cov(dim, g, component_std) for _ in range(n_components)])
        prior = GMMPrior(weights, means, covs)
        A = randn((n_obs, dim), g, dtype=F64) / math.sqrt(dim)
        self.x_true, y = _measure(prior, A, sigma_y, g)
        super().__init__(prior, DenseOperator(A, (dim,)), y, sigma_y)


class SyntheticImagePosterior(ImagePosterior):
    """``ImagePosterior`` with ``y = A x_true + σ_y ε``, ``x_true ~ prior``, drawn from ``seed``.

    ``prior``: a Gaussian over images with a spec (``GaussianRandomField``); ``operator``: a
    ``LinearOperator`` whose ``config()`` rebuilds it (blur, CT, inpainting, ...). Both may be given
    as specs in a YAML config. The operator is used in float64 (a copy; the caller's is unchanged).
    """

    def __init__(self, prior, operator: LinearOperator, sigma_y: float = 0.05, seed: int = 0):
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"SyntheticImagePosterior: operator must be a LinearOperator, got {type(operator).__name__}")
        _check("sigma_y", sigma_y)
        op = copy.deepcopy(operator).to(F64)
        g = make_generator(seed)
        x_true = prior.sample(1, g).to(F64)
        if tuple(x_true.shape[1:]) != tuple(op.x_shape):
            raise ValueError(f"SyntheticImagePosterior: the prior draws images {tuple(x_true.shape[1:])}, the operator acts on {op.x_shape}")
        y = op.forward(x_true)[0] + sigma_y * randn(op.y_shape, g, dtype=F64)
        self.x_true = x_true.reshape(-1)
        super().__init__(prior, op, y, sigma_y)
