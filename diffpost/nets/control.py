"""Control network of the path-integral / denoising diffusion samplers (PIS, DDS; METHODS §6.2).

``u(x, t) = NN1(x, emb(t)) + NN2(emb(t)) ⊙ clip(∇log π(x), ±c)``. The target's score enters as a
feature (detached: the loss differentiates through the path, not through ``∇log π``), scaled per
coordinate by a function of time only, so the network starts from a useful inductive bias (the
optimal control near the end of the path is ``σ_r² ∇log π + x`` for DDS). Clipping keeps steep targets
(the funnel's neck) from blowing up a step. The last layers of both branches are zero-initialised: the
untrained sampler is exactly the reference process, whose importance weights are known.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class TimeFeatures(nn.Module):
    """Sinusoids of ``t / T`` at geometric frequencies ``π·2^j``, ``j < n_freq`` (resolves the whole
    horizon and sharp changes near its end), followed by a small MLP."""

    def __init__(self, T: float, width: int, n_freq: int = 6):
        super().__init__()
        if not (T > 0 and math.isfinite(T)):
            raise ValueError(f"TimeFeatures: T must be positive and finite, got {T}")
        if n_freq < 1 or width < 1:
            raise ValueError("TimeFeatures: n_freq and width must be positive")
        self.T = float(T)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq + 1, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        s = (t / self.T).unsqueeze(-1)
        ang = s * self.freqs.to(t.dtype)
        return self.mlp(torch.cat([s, ang.sin(), ang.cos()], -1))


class ControlNet(nn.Module):
    """``control(x, t, score) -> u`` for flat states ``x (B, dim)``; ``t`` a number, a 0-d or a ``(B,)`` tensor.

    Args:
        dim: state dimension.
        hidden: width of both branches.
        T: the time horizon (``t`` is fed as ``t / T``).
        depth: hidden layers of ``NN1``.
        score_clip: ``c`` in ``clip(∇log π, ±c)``.
    """

    def __init__(self, dim: int, hidden: int = 64, T: float = 1.0, depth: int = 2, score_clip: float = 100.0):
        super().__init__()
        if min(dim, hidden, depth) < 1:
            raise ValueError(f"ControlNet: dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}")
        if not score_clip > 0:
            raise ValueError(f"ControlNet: score_clip must be positive, got {score_clip}")
        self.dim, self.score_clip = int(dim), float(score_clip)
        self.time1 = TimeFeatures(T, hidden)
        self.time2 = TimeFeatures(T, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth - 1)])
        self.out1 = nn.Linear(hidden, dim)
        self.nn2 = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        for last in (self.out1, self.nn2[-1]):  # untrained control ≡ 0: the sampler is the reference
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, score: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ControlNet expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        if score.shape != x.shape:
            raise ValueError(f"ControlNet: score shape {tuple(score.shape)} must equal x shape {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:  # one time for the whole batch: embed it once and broadcast
            t = t.view(1)
        elif t.shape != (x.shape[0],):
            raise ValueError(f"ControlNet: t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
        h = F.silu(self.inp(x) + self.time1(t))
        for layer in self.hidden:
            h = F.silu(layer(h))
        grad = score.detach().clamp(-self.score_clip, self.score_clip)
        return self.out1(h) + self.nn2(self.time2(t)) * grad
