"""Fourier neural operator: a resolution-agnostic ``net(x, c_noise)`` on periodic grids.

Each layer is ``GELU(K h + W h + b(emb))`` with ``K`` a spectral convolution (multiply the lowest
Fourier modes by learned complex weights, drop the rest) and ``W`` a pointwise 1×1 map. Why it
transfers across grids: with ``rfft2(norm="forward")`` the retained coefficients of a band-limited
field are its continuum Fourier coefficients whatever the grid, and ``irfft2(norm="forward")``
evaluates the resulting band-limited field at the grid points; pointwise maps and GELU act on values.
So a net trained at 32² evaluates the same operator at 64² (up to aliasing of the harmonics GELU
creates, small for smooth inputs). Only frequencies strictly below the grid's Nyquist frequency are
used, so the kept set is symmetric and the same on every grid that can hold it.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from diffpost.config import Configurable
from diffpost.nets.embedding import NoiseEmbedding, noise_batch


class SpectralConv2d(nn.Module):
    """``h ↦ irfft2(Σ_i W[i, o, k] · rfft2(h)[i, k])`` over frequencies ``|k1|, k2 < modes``.

    Weights are stored as real tensors ``(..., 2)`` (viewed as complex in ``forward``) so optimisers,
    EMA, gradient clipping and DDP see ordinary real parameters. Row index ``j`` holds
    ``k1 = j − (modes − 1)``; column ``k2`` ∈ ``0..modes−1`` (the rfft half-plane). On a grid too
    coarse for all modes, the central sub-block of the weights is used.
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int):
        super().__init__()
        if modes < 1:
            raise ValueError(f"modes must be >= 1, got {modes}")
        self.modes = modes
        std = 1.0 / math.sqrt(2.0 * in_channels)  # real and imaginary parts each; unit gain per mode
        self.weight = nn.Parameter(std * torch.randn(in_channels, out_channels, 2 * modes - 1, modes, 2))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        H, W = h.shape[-2:]
        m1 = min(self.modes, (H + 1) // 2)  # |k1| ≤ m1 − 1 < H/2
        m2 = min(self.modes, (W + 1) // 2)  # k2 ≤ m2 − 1 < W/2
        weight = torch.view_as_complex(self.weight.to(h.dtype).contiguous())
        c = self.modes - 1
        weight = weight[:, :, c - (m1 - 1) : c + m1, :m2]

        spec = torch.fft.rfft2(h, norm="forward")
        # Rows ordered k1 = −(m1−1) … m1−1, matching the weight rows.
        low = torch.cat([spec[..., H - (m1 - 1) :, :m2], spec[..., :m1, :m2]], dim=-2)
        mixed = torch.einsum("bixy,ioxy->boxy", low, weight)

        out = torch.zeros(h.shape[0], weight.shape[1], H, W // 2 + 1, dtype=spec.dtype, device=h.device)
        out[..., :m1, :m2] = mixed[..., m1 - 1 :, :]
        if m1 > 1:
            out[..., H - (m1 - 1) :, :m2] = mixed[..., : m1 - 1, :]
        return torch.fft.irfft2(out, s=(H, W), norm="forward")


class FNO(Configurable, nn.Module):
    """Fourier neural operator ``(B, in_channels, H, W) → (B, out_channels, H, W)`` for any H, W.

    Args:
        in_channels, out_channels: field channels in and out.
        width: hidden channels of every Fourier layer.
        modes: Fourier modes kept per axis (``|k1|, k2 < modes``); coarser grids keep what they hold.
        n_layers: number of Fourier layers (no activation after the last one).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 32, modes: int = 12, n_layers: int = 4):
        super().__init__()
        if min(in_channels, out_channels, width, modes, n_layers) < 1:
            raise ValueError("in_channels, out_channels, width, modes and n_layers must all be positive")
        self.in_channels = in_channels
        emb_dim = 4 * width
        self.embed = NoiseEmbedding(emb_dim)
        self.lift = nn.Conv2d(in_channels, width, 1)
        self.spectral = nn.ModuleList([SpectralConv2d(width, width, modes) for _ in range(n_layers)])
        self.pointwise = nn.ModuleList([nn.Conv2d(width, width, 1) for _ in range(n_layers)])
        self.emb_proj = nn.ModuleList([nn.Linear(emb_dim, width) for _ in range(n_layers)])
        self.proj1 = nn.Conv2d(width, 4 * width, 1)
        self.proj2 = nn.Conv2d(4 * width, out_channels, 1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"FNO expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        emb = self.embed(noise_batch(c_noise, x))
        h = self.lift(x)
        n = len(self.spectral)
        for i, (spec, pw, ep) in enumerate(zip(self.spectral, self.pointwise, self.emb_proj)):
            h = spec(h) + pw(h) + ep(emb)[:, :, None, None]
            if i < n - 1:
                h = F.gelu(h)
        return self.proj2(F.gelu(self.proj1(h)))
