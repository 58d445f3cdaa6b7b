"""DDNM+: the denoising diffusion null-space model (Wang et al., "Zero-Shot Image Restoration Using
Denoising Diffusion Null-Space Model", ICLR 2023; METHODS §4).

Own steps in the spectral coordinates of ``A = U diag(s) Vᵀ`` (``ȳ_j = (Uᵀy)_j / s_j``, ``τ_j = σ_y / s_j``),
as in the authors' SVD code (github.com/wyhuai/DDNM, ``functions/svd_operators.py``, ``Lambda`` and
``Lambda_noise``). Range–null correction of ``x̄0 = Vᵀ x̂0`` toward the measurement,

    x̄0'_j = x̄0_j − λ_j (x̄0_j − ȳ_j),   λ_j = 1 if σ' ≥ τ_j else √(1−η²) σ'/τ_j   (λ_j = 0 on the null space)

then the step to ``σ'`` with the fresh noise reduced by the variance ``(λ_j τ_j)²`` that ``ȳ``'s noise
already carries, so that every coordinate's total stays ``σ'²`` (``ε`` fresh, ``ε̂ = (x̄ − x̄0)/σ``):

- null space, and every coordinate when noiseless: the DDIM-η step ``x̄0'_j + η σ' ε_j + √(1−η²) σ' ε̂_j``;
- ``σ' ≥ τ_j``: ``ȳ_j + √(σ'² − τ_j²) ε_j``;   ``σ' < τ_j``: ``x̄0'_j + η σ' ε_j``.

METHODS §4 writes ``λ_j = σ'/τ_j`` (the paper's Eq. 19, i.e. η = 0); taken with an η-step it leaves no
noise at all where ``σ' < τ_j`` and every chain collapses onto the same value there (measured on the
Gaussian oracle: 90 % coverage 0 with blur at 100 steps). The authors' η-version is what runs here.
With ``σ_y > 0`` it coincides step for step with DDRM at ``η_b = 1``; DDNM+ differs by its noiseless
step (DDIM-η on the corrected ``x̂0'``), its start (plain noise) and time-travel. Noiseless
(``σ_y = 0``): ``λ = 1`` and ``A x̂0' = y`` exactly; the result's observed coordinates are ``ȳ``.

Time-travel (optional, off by default): the paper's ``get_schedule_jump``: counting levels back from the
last network evaluation, after every ``travel_length`` steps the chain is re-noised back
``travel_length`` levels by forward diffusion (``x̄ += √(σ_back² − σ²) ε``, the paper's
``q(x_{t+l} | x_t)``) and the window is run again, ``travel_repeat`` times in all. Paper: η = 0.85,
100 steps. One network call per step, no VJP; the only operator use is ``Uᵀy`` once per measurement.
"""
from __future__ import annotations

import math

import torch

from diffpost.posterior.base import Run, check_fraction
from diffpost.posterior.spectral import SpectralMeasurement, SpectralMethod, count_transforms, spectral_denoise


def ddnm_update(xbar: torch.Tensor, x0bar: torch.Tensor, m: SpectralMeasurement, sigma: float, sigma_next: float,
                eta: float, eps: torch.Tensor, noiseless: bool) -> torch.Tensor:
    """One DDNM+ step in spectral coordinates (the cases above); ``eps`` white ``(N, x_dim)``."""
    keep = math.sqrt(1.0 - eta**2)
    eps_hat = (xbar - x0bar) / sigma
    ddim = eta * sigma_next * eps + keep * sigma_next * eps_hat
    if noiseless:
        return torch.where(m.observed, m.ybar, x0bar) + ddim
    tau = torch.where(m.observed, m.tau, torch.ones_like(m.tau))
    above = m.ybar + torch.sqrt((sigma_next**2 - tau**2).clamp_min(0.0)) * eps
    below = x0bar - (keep * sigma_next / tau) * (x0bar - m.ybar) + eta * sigma_next * eps
    return torch.where(~m.observed, x0bar + ddim, torch.where(sigma_next >= tau, above, below))


def travel_path(num_steps: int, length: int, repeat: int) -> list[int]:
    """Level indices visited on the grid ``σ_0 > … > σ_N = 0``: ``0, 1, …, N`` with, on reaching level
    ``N − 1 − jL ≥ L`` (``j = 0, 1, …``; the last network level and every ``L``-th before it), a jump back
    ``L`` levels, ``repeat − 1`` times: the paper's ``get_schedule_jump`` (``repeat = 1``: no travel)."""
    jumps = {num_steps - 1 - t: repeat - 1 for t in range(0, num_steps - length, length)}
    path, k = [0], 0
    while k < num_steps:
        k += 1
        path.append(k)
        if jumps.get(k, 0) > 0:
            jumps[k] -= 1
            k -= length
            path.append(k)
    return path


class DDNM(SpectralMethod):
    """``eta``: η of the DDIM step; ``travel_length``/``travel_repeat``: the time-travel window (levels
    jumped back) and how often each window runs (1: off). Needs an operator with a closed-form SVD."""

    default_num_steps = 100
    tuning = {"eta": (0.5, 0.7, 0.85, 1.0)}  # the noise share of the step; the paper's 0.85 is tuned for FFHQ/ImageNet

    def __init__(self, eta: float = 0.85, travel_length: int = 1, travel_repeat: int = 1):
        check_fraction("DDNM", eta=eta)
        for name, v in (("travel_length", travel_length), ("travel_repeat", travel_repeat)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DDNM: {name} must be a positive integer, got {v!r}")
        self.eta, self.travel_length, self.travel_repeat = float(eta), travel_length, travel_repeat

    def sample(self, run: Run) -> torch.Tensor:
        A, m, sigmas = self.spectral_setup(run)
        path = travel_path(len(sigmas) - 1, self.travel_length, self.travel_repeat)
        xbar = sigmas[0] * run.white_noise((A.x_dim,))
        for i, (a, b) in enumerate(zip(path[:-1], path[1:])):
            s, s_next = sigmas[a], sigmas[b]
            if b < a:  # time-travel: forward diffusion back up to σ_b
                xbar = xbar + math.sqrt(s_next**2 - s**2) * run.white_noise((A.x_dim,))
                x0 = None
            else:
                _, x0, x0bar = spectral_denoise(run, A, xbar, s)
                noise = run.white_noise((A.x_dim,)) if s_next > 0 else torch.zeros_like(xbar)
                xbar = ddnm_update(xbar, x0bar, m, s, s_next, self.eta, noise, run.sigma_y == 0)
            x = A.V(xbar)
            run.emit(i, x, s, s_next, x0)
        count_transforms(run, len(path) - 1)
        return x
