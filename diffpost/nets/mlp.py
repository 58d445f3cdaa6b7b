"""Noise-conditioned MLP for vectors ``(B, dim)`` (toy priors, §6 targets, diffusion samplers)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from diffpost.config import Configurable
from diffpost.nets.embedding import NoiseEmbedding, noise_batch


class MLP(Configurable, nn.Module):
    """``net(x, c_noise)``: ``depth`` hidden layers ``h ← SiLU(L_i h + E_i(emb))``, then a linear output.

    Args:
        dim: input dimension.
        hidden: hidden width (also the noise-embedding width).
        depth: number of hidden layers.
        out_dim: output dimension; default ``dim``.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, out_dim: int | None = None):
        super().__init__()
        out_dim = out_dim if out_dim is not None else dim
        if min(dim, hidden, depth, out_dim) < 1:
            raise ValueError("dim, hidden, depth and out_dim must all be positive")
        self.dim = dim
        self.embed = NoiseEmbedding(hidden)
        self.layers = nn.ModuleList([nn.Linear(dim if i == 0 else hidden, hidden) for i in range(depth)])
        self.emb_proj = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        emb = self.embed(noise_batch(c_noise, x))
        h = x
        for layer, proj in zip(self.layers, self.emb_proj):
            h = F.silu(layer(h) + proj(emb))
        return self.out(h)
