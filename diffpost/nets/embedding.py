"""Noise-level embeddings shared by every network.

Networks receive the conditioning ``c_noise`` as a ``(B,)`` tensor (``¼ ln σ`` under EDM
preconditioning, ``t ∈ [0, 1]`` for VP/ε networks or diffusion samplers). A scalar has no spatial
structure, so it is lifted to sinusoidal features (smooth in ``c``, bounded for any ``c``) and then to
an embedding vector by a small MLP; each block adds a learned projection of that vector.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F


def noise_batch(c_noise: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``c_noise`` as a ``(B,)`` tensor in ``x``'s dtype/device; a scalar is broadcast to the batch."""
    c = torch.as_tensor(c_noise, dtype=x.dtype, device=x.device)
    batch = x.shape[0]
    if c.dim() == 0:
        return c.expand(batch)
    if c.shape != (batch,):
        raise ValueError(f"c_noise must be a scalar or have shape ({batch},) to match x, got {tuple(c.shape)}")
    return c


def positional_features(c: torch.Tensor, num_features: int, min_freq: float = 0.25, max_freq: float = 64.0) -> torch.Tensor:
    """``[cos(ω_i c), sin(ω_i c)]`` with angular frequencies ``ω_i`` log-spaced in ``[min_freq, max_freq]``.

    The defaults resolve ``c_noise = ¼ ln σ`` over σ ∈ [0.002, 80] (``c`` ∈ [−1.6, 1.1]) from nearly
    linear features (slow ω) up to changes of σ by ~10 % (fast ω), and equally ``t`` ∈ [0, 1].
    ``c``: ``(B,)`` → ``(B, num_features)``.
    """
    if num_features < 2 or num_features % 2:
        raise ValueError(f"num_features must be an even integer >= 2, got {num_features}")
    half = num_features // 2
    if half == 1:
        freqs = torch.tensor([min_freq], dtype=c.dtype, device=c.device)
    else:
        freqs = torch.logspace(math.log10(min_freq), math.log10(max_freq), half, dtype=c.dtype, device=c.device)
    angles = c[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierNoiseEmbedding(nn.Module):
    """Random Fourier features ``[cos(2π f c), sin(2π f c)]``, ``f ~ N(0, scale²)`` (NCSN++ style).

    The frequencies are drawn once from a private generator seeded with ``seed``, so construction
    never touches the global RNG and every run gets the same features; they are a (persistent)
    buffer, not parameters.
    """

    def __init__(self, num_features: int = 128, scale: float = 1.0, seed: int = 0):
        super().__init__()
        if num_features < 2 or num_features % 2:
            raise ValueError(f"num_features must be an even integer >= 2, got {num_features}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", scale * torch.randn(num_features // 2, generator=g))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * c[:, None] * self.freqs.to(c.dtype)[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """``c_noise (B,) → emb (B, emb_dim)``: sinusoidal features, then Linear–SiLU–Linear–SiLU.

    The trailing SiLU lets every consumer apply a plain ``Linear`` to the embedding.
    """

    def __init__(
        self,
        emb_dim: int,
        num_features: int | None = None,
        kind: Literal["positional", "fourier"] = "positional",
        fourier_scale: float = 1.0,
    ):
        super().__init__()
        if emb_dim < 1:
            raise ValueError(f"emb_dim must be positive, got {emb_dim}")
        if kind not in ("positional", "fourier"):
            raise ValueError(f"kind must be 'positional' or 'fourier', got {kind!r}")
        num_features = num_features if num_features is not None else max(2, 2 * (emb_dim // 4))
        self.kind = kind
        self.num_features = num_features
        self.fourier = FourierNoiseEmbedding(num_features, fourier_scale) if kind == "fourier" else None
        if kind == "positional" and (num_features < 2 or num_features % 2):
            raise ValueError(f"num_features must be an even integer >= 2, got {num_features}")
        self.fc1 = nn.Linear(num_features, emb_dim)
        self.fc2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        c = c.to(self.fc1.weight.dtype)
        feats = self.fourier(c) if self.fourier is not None else positional_features(c, self.num_features)
        return F.silu(self.fc2(F.silu(self.fc1(feats))))
