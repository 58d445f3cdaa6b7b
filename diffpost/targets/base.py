"""Unnormalised densities ``π(x) ∝ exp(−U(x))`` on flat vectors ``(B, d)`` (METHODS §6).

A ``Target`` answers ``log_prob`` (up to a constant) and ``grad_log_prob`` (autograd unless a subclass
has a closed form). Targets with known answers also give exact samples, ``log_Z`` (the log of the
normaliser of ``exp(log_prob)``), mode locations and weights, and, where ``π`` is a Gaussian mixture, the
exact mean and samples of rdMC's regularised posterior
``q_s(x0 | x) ∝ π(x0) N(x; e^{−s} x0, (1 − e^{−2s}) I)``.

``EvalCounter`` wraps a target and counts evaluated rows, so every sampler reports its cost in
density and gradient evaluations per sample point.
"""
from __future__ import annotations

from collections import Counter

import torch

from diffpost.random import GeneratorLike


class Target:
    """Base class. Subclasses set ``dim`` and implement ``log_prob``; everything else is optional.

    Attributes with known answers default to ``None``: ``log_Z`` (float), ``modes`` ``(K, d)``,
    ``mode_weights`` ``(K,)``, ``lipschitz`` (an estimate of the Lipschitz constant of
    ``∇ log π``, used by samplers to choose step sizes).
    """

    dim: int
    log_Z: float | None = None
    modes: torch.Tensor | None = None
    mode_weights: torch.Tensor | None = None
    lipschitz: float | None = None
    dtype: torch.dtype = torch.float64

    # ----------------------------------------------------------------- to be implemented
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log π(x)`` up to an additive constant, shape ``(B,)``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- defaults
    def grad_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``∇ log π(x)``, shape ``(B, d)``; autograd through ``log_prob`` unless overridden."""
        return self.log_prob_and_grad(x)[1]

    def log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both at once (one forward/backward pass with autograd)."""
        self.check_input(x)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            lp = self.log_prob(xr)
            (g,) = torch.autograd.grad(lp.sum(), xr)
        return lp.detach(), g

    def sample(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        """Exact samples ``(n, d)`` where the target has them."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def regularised_mean(self, x: torch.Tensor, s: float) -> torch.Tensor:
        """Exact ``E_{q_s}[x0 | x]`` (rdMC's inner mean) where available."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form regularised-posterior mean")

    def regularised_sample(self, x: torch.Tensor, s: float, generator: GeneratorLike = None) -> torch.Tensor:
        """One exact draw from ``q_s(· | x)`` per row of ``x`` where available."""
        raise NotImplementedError(f"{type(self).__name__} has no exact regularised-posterior sampler")

    def has(self, method: str) -> bool:
        """Whether an optional method (``sample``, ``regularised_mean``, ...) is implemented."""
        impl = getattr(type(self), method, None)
        return impl is not None and impl is not getattr(Target, method)

    def check_input(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"{type(self).__name__}: x must be a tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}: expected x of shape (B, {self.dim}), got {tuple(x.shape)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class EvalCounter(Target):
    """Counts evaluations of a wrapped target, one per evaluated row.

    ``counts['log_prob']`` and ``counts['grad']`` grow by the batch size of each call;
    ``log_prob_and_grad`` counts one of each. Everything else is forwarded to the wrapped target.
    """

    def __init__(self, target: Target):
        if not isinstance(target, Target):
            raise TypeError(f"EvalCounter: expected a Target, got {type(target).__name__}")
        self.target = target
        self.dim = target.dim
        self.counts: Counter = Counter()

    def __getattr__(self, name: str):
        # only reached for attributes not found on the counter itself: forward to the target
        if name == "target":
            raise AttributeError(name)
        return getattr(self.target, name)

    @property
    def log_Z(self):  # type: ignore[override]
        return self.target.log_Z

    @property
    def modes(self):  # type: ignore[override]
        return self.target.modes

    @property
    def mode_weights(self):  # type: ignore[override]
        return self.target.mode_weights

    @property
    def lipschitz(self):  # type: ignore[override]
        return self.target.lipschitz

    @property
    def dtype(self):  # type: ignore[override]
        return self.target.dtype

    def log_prob(self, x):
        self.counts["log_prob"] += x.shape[0]
        return self.target.log_prob(x)

    def grad_log_prob(self, x):
        self.counts["grad"] += x.shape[0]
        return self.target.grad_log_prob(x)

    def log_prob_and_grad(self, x):
        self.counts["log_prob"] += x.shape[0]
        self.counts["grad"] += x.shape[0]
        return self.target.log_prob_and_grad(x)

    def sample(self, n, generator=None):
        return self.target.sample(n, generator)

    def regularised_mean(self, x, s):
        return self.target.regularised_mean(x, s)

    def regularised_sample(self, x, s, generator=None):
        return self.target.regularised_sample(x, s, generator)

    def has(self, method: str) -> bool:
        return self.target.has(method)

    def reset(self) -> None:
        self.counts.clear()

    def per_sample(self, n_samples: int) -> dict[str, float]:
        """Counts divided by the number of sample points the sampler returned."""
        return {k: v / n_samples for k, v in self.counts.items()}

    def __repr__(self) -> str:
        return f"EvalCounter({self.target!r}, counts={dict(self.counts)})"
