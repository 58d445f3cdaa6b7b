"""Langevin baselines for targets known up to a constant (METHODS §6.3): ULA and MALA.

ULA: ``x' = x + h ∇log π(x) + sqrt(2h) ξ`` (biased by O(h), no rejection).
MALA: the same proposal, accepted with probability
``min(1, π(x') q(x | x') / (π(x) q(x' | x)))``, ``q(a | b) = N(a; b + h ∇log π(b), 2h I)``; exact for any h.
During ``n_burnin`` steps MALA adapts each chain's own step size by Robbins–Monro on ``log h`` towards
the acceptance rate 0.574 (optimal for smooth targets in high dimension), then freezes it at the
average of ``log h`` over the second half of the burn-in.

Randomness: ``generator`` is None, one ``torch.Generator`` or one generator per chain. Noise is drawn in
blocks of steps whose size depends only on the dimension, so with per-chain generators every chain is
the same whatever the batch size. Chains are independent (per-chain step sizes), for the same reason.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from diffpost.random import GeneratorLike, rand, randn
from diffpost.samplers.errors import check_finite
from diffpost.targets.base import EvalCounter, Target

#: numbers drawn per sample in one block (bounds memory at n × this; independent of batch size)
NOISE_BLOCK = 4096


class NoiseStream:
    """Standard normal (or uniform) draws of shape ``(n, *event)`` per call, pre-drawn in blocks.

    Each block is one draw of ``(steps, *event)`` per sample (one call per generator when ``generator``
    is a list), so the numbers every sample sees depend only on its own generator, ``event`` and
    ``n_calls`` (the number of calls the caller will make, which bounds the block).
    """

    def __init__(self, generator: GeneratorLike, n: int, event: tuple[int, ...], dtype, device, *, n_calls: int, uniform: bool = False):
        self.generator, self.n, self.event = generator, n, tuple(event)
        self.dtype, self.device = dtype, device
        self.draw = rand if uniform else randn
        self.block = max(1, min(n_calls, NOISE_BLOCK // max(1, math.prod(self.event))))
        self.buffer: torch.Tensor | None = None
        self.i = 0

    def __call__(self) -> torch.Tensor:
        if self.buffer is None or self.i == self.block:
            self.buffer = self.draw((self.n, self.block, *self.event), self.generator, dtype=self.dtype, device=self.device)
            self.i = 0
        out = self.buffer[:, self.i]
        self.i += 1
        return out


def _initial_state(target: Target, init: torch.Tensor | int, generator: GeneratorLike) -> torch.Tensor:
    """``init`` as given, or ``N(0, I)`` draws for an integer number of chains."""
    if isinstance(init, int):
        if init < 1:
            raise ValueError(f"number of chains must be positive, got {init}")
        return randn((init, target.dim), generator, dtype=target.dtype)
    if not torch.is_tensor(init) or init.dim() != 2 or init.shape[1] != target.dim:
        raise ValueError(f"init must be an int or a (n, {target.dim}) tensor, got {getattr(init, 'shape', init)}")
    check_finite(init, "the initial state", "initialisation")
    return init.clone()


def _check_steps(n_steps: int, n_burnin: int, thin: int) -> None:
    if n_steps < 1 or n_burnin < 0 or thin < 1:
        raise ValueError(f"need n_steps >= 1, n_burnin >= 0, thin >= 1; got {n_steps}, {n_burnin}, {thin}")


def ula(
    target: Target,
    init: torch.Tensor | int,
    *,
    step: float,
    n_steps: int,
    n_burnin: int = 0,
    generator: GeneratorLike = None,
    thin: int = 1,
    return_chain: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Unadjusted Langevin: ``n_burnin + n_steps`` steps; returns the final states ``(n, d)`` and info.

    ``info``: ``counts`` (gradient evaluations, total and per chain), ``time_s``, and with
    ``return_chain`` the post-burn-in states every ``thin`` steps as ``chain`` ``(n_kept, n, d)``.
    """
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"ula: step must be positive and finite, got {step}")
    _check_steps(n_steps, n_burnin, thin)
    counter = EvalCounter(target)
    t0 = time.perf_counter()
    x = _initial_state(target, init, generator)
    noise = NoiseStream(generator, x.shape[0], (target.dim,), x.dtype, x.device, n_calls=n_burnin + n_steps)
    chain = []
    scale = math.sqrt(2 * step)
    for k in range(n_burnin + n_steps):
        g = counter.grad_log_prob(x)
        check_finite(g, "the gradient of log π", f"ula step {k}")
        x = x + step * g + scale * noise()
        check_finite(x, "the state", f"ula step {k}")
        if return_chain and k >= n_burnin and (k - n_burnin) % thin == 0:
            chain.append(x)
        if callback is not None:
            callback({"step": k, "x": x})
    info: dict[str, Any] = {
        "counts": dict(counter.counts),
        "counts_per_sample": counter.per_sample(x.shape[0]),
        "time_s": time.perf_counter() - t0,
        "step": step,
    }
    if return_chain:
        info["chain"] = torch.stack(chain)
    return x, info


def _log_q(x_to: torch.Tensor, x_from: torch.Tensor, g_from: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``log N(x_to; x_from + h g_from, 2h I)`` up to the constant that cancels in MALA's ratio."""
    d = x_to.shape[1]
    r = x_to - x_from - h[:, None] * g_from
    return -(r**2).sum(1) / (4 * h) - 0.5 * d * torch.log(h)


def mala(
    target: Target,
    init: torch.Tensor | int,
    *,
    step: float,
    n_steps: int,
    n_burnin: int = 0,
    adapt: bool = True,
    target_accept: float = 0.574,
    generator: GeneratorLike = None,
    thin: int = 1,
    return_chain: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Metropolis-adjusted Langevin; ``step`` is the initial step size, adapted per chain during
    ``n_burnin`` when ``adapt``. Returns the final states and info with ``acceptance`` (mean
    post-burn-in acceptance probability), ``acceptance_per_chain``, ``step`` ``(n,)`` (the frozen
    steps), ``counts`` and, with ``return_chain``, ``chain`` ``(n_kept, n, d)``.
    """
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"mala: step must be positive and finite, got {step}")
    if not 0 < target_accept < 1:
        raise ValueError(f"mala: target_accept must be in (0, 1), got {target_accept}")
    _check_steps(n_steps, n_burnin, thin)
    counter = EvalCounter(target)
    t0 = time.perf_counter()
    x = _initial_state(target, init, generator)
    n = x.shape[0]
    noise = NoiseStream(generator, n, (target.dim,), x.dtype, x.device, n_calls=n_burnin + n_steps)
    unif = NoiseStream(generator, n, (1,), x.dtype, x.device, n_calls=n_burnin + n_steps, uniform=True)
    log_h = torch.full((n,), math.log(step), dtype=x.dtype, device=x.device)
    log_h_sum = torch.zeros_like(log_h)
    n_avg = 0
    lp, g = counter.log_prob_and_grad(x)
    check_finite(lp, "log π", "mala initial state")
    check_finite(g, "the gradient of log π", "mala initial state")
    acc_sum = torch.zeros_like(log_h)
    chain = []
    for k in range(n_burnin + n_steps):
        h = log_h.exp()
        prop = x + h[:, None] * g + torch.sqrt(2 * h)[:, None] * noise()
        check_finite(prop, "the proposal", f"mala step {k}")
        lp_p, g_p = counter.log_prob_and_grad(prop)
        check_finite(lp_p, "log π at the proposal", f"mala step {k}")
        check_finite(g_p, "the gradient of log π at the proposal", f"mala step {k}")
        log_ratio = lp_p - lp + _log_q(x, prop, g_p, h) - _log_q(prop, x, g, h)
        alpha = torch.exp(torch.clamp(log_ratio, max=0.0))
        accept = unif()[:, 0] < alpha
        x = torch.where(accept[:, None], prop, x)
        lp = torch.where(accept, lp_p, lp)
        g = torch.where(accept[:, None], g_p, g)
        if k < n_burnin:
            if adapt:
                log_h = log_h + (alpha - target_accept) / (k + 1) ** 0.6
                if k >= n_burnin // 2:
                    log_h_sum += log_h
                    n_avg += 1
                if k == n_burnin - 1:
                    log_h = log_h_sum / n_avg
        else:
            acc_sum += alpha
            if return_chain and (k - n_burnin) % thin == 0:
                chain.append(x)
        if callback is not None:
            callback({"step": k, "x": x, "accept_prob": alpha, "step_size": log_h.exp()})
    acc = acc_sum / n_steps
    info: dict[str, Any] = {
        "acceptance": float(acc.mean()),
        "acceptance_per_chain": acc,
        "step": log_h.exp(),
        "counts": dict(counter.counts),
        "counts_per_sample": counter.per_sample(n),
        "time_s": time.perf_counter() - t0,
    }
    if return_chain:
        info["chain"] = torch.stack(chain)
    return x, info
