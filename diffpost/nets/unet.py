"""A compact DDPM/ADM-style U-Net: ``net(x, c_noise) -> out`` with the same spatial size as ``x``.

Residual blocks (GroupNorm → SiLU → conv) take the noise embedding as a per-channel scale/shift
(FiLM) after their second normalisation; self-attention at the coarse levels listed in
``attn_levels``; strided-conv downsampling, nearest+conv upsampling, one skip connection per block.
Residual sums are scaled by 1/√2 so activations keep their scale through deep stacks. The output
convolution is zero-initialised: under EDM preconditioning the untrained denoiser is then exactly
``c_skip x`` (the optimal denoiser for data of variance σ_d²), a good starting point.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from diffpost.config import Configurable
from diffpost.nets.embedding import NoiseEmbedding, noise_batch

_SKIP_SCALE = 1.0 / math.sqrt(2.0)


def _num_groups(channels: int) -> int:
    """At most 32 groups with at least 4 channels each, dividing ``channels``."""
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_num_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_num_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.film(emb), "b (two c) -> two b c 1 1", two=2)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # FiLM: norm(h)·(1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return (self.skip(x) + h) * _SKIP_SCALE


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels (use only at coarse levels: cost ∝ (HW)²)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_num_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)  # a key bias would be softmax-invariant (dead)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[-2]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three h d) x y -> three b h (x y) d", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b h (x y) d -> b (h d) x y", x=height)
        return (x + self.proj(out)) * _SKIP_SCALE


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """The blocks of one resolution level; ``resample`` is Identity at the last level."""

    def __init__(self, blocks: list[ResBlock], attns: list[nn.Module], resample: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)
        self.resample = resample


class UNet(Configurable, nn.Module):
    """U-Net for images ``(B, in_channels, H, W)``; H and W must be divisible by ``2**(len(channel_mult)-1)``.

    Args:
        in_channels, out_channels: image channels in and out.
        base_channels: width of the first level; level ``i`` has ``base_channels * channel_mult[i]``.
        channel_mult: one entry per resolution level (each level halves the resolution).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_levels: level indices (0 = full resolution) with self-attention after each block; the
            middle block has attention iff the last level does (``[]`` gives a purely convolutional net).
        num_heads: attention heads; must divide the channel count at every attention level.
        dropout: dropout inside residual blocks.
        emb_dim: noise-embedding width; default ``4 * base_channels``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 32,
        channel_mult: list[int] = [1, 2, 2],
        num_res_blocks: int = 2,
        attn_levels: list[int] = [2],
        num_heads: int = 4,
        dropout: float = 0.0,
        emb_dim: int | None = None,
    ):
        super().__init__()
        channel_mult = [int(m) for m in channel_mult]
        attn_levels = sorted({int(a) for a in attn_levels})
        if in_channels < 1 or out_channels < 1 or base_channels < 1:
            raise ValueError("in_channels, out_channels and base_channels must be positive")
        if not channel_mult or any(m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive integers, got {channel_mult}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n_levels = len(channel_mult)
        bad = [a for a in attn_levels if not 0 <= a < n_levels]
        if bad:
            raise ValueError(f"attn_levels {bad} out of range: levels are 0..{n_levels - 1}")
        chans = [base_channels * m for m in channel_mult]
        for a in attn_levels:
            if num_heads < 1 or chans[a] % num_heads:
                raise ValueError(f"num_heads={num_heads} must divide the {chans[a]} channels of attention level {a}")
        emb_dim = emb_dim if emb_dim is not None else 4 * base_channels
        if emb_dim < 1:
            raise ValueError(f"emb_dim must be positive, got {emb_dim}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_levels = n_levels
        self.embed = NoiseEmbedding(emb_dim)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def attn(level: int, ch: int) -> nn.Module:
            return SelfAttention(ch, num_heads) if level in attn_levels else nn.Identity()

        skip_chans = [base_channels]
        ch = base_channels
        down = []
        for lvl, c in enumerate(chans):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, c, emb_dim, dropout))
                attns.append(attn(lvl, c))
                ch = c
                skip_chans.append(ch)
            last = lvl == n_levels - 1
            down.append(_Level(blocks, attns, nn.Identity() if last else Downsample(ch)))
            if not last:
                skip_chans.append(ch)
        self.down = nn.ModuleList(down)

        self.mid_block1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = attn(n_levels - 1, ch)
        self.mid_block2 = ResBlock(ch, ch, emb_dim, dropout)

        up = []
        for lvl in reversed(range(n_levels)):
            c = chans[lvl]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(ch + skip_chans.pop(), c, emb_dim, dropout))
                attns.append(attn(lvl, c))
                ch = c
            up.append(_Level(blocks, attns, Upsample(ch) if lvl > 0 else nn.Identity()))
        self.up = nn.ModuleList(up)

        self.norm_out = nn.GroupNorm(_num_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2 ** (self.n_levels - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"UNet with {self.n_levels} levels needs H and W divisible by {factor}, got {tuple(x.shape[-2:])}"
            )
        emb = self.embed(noise_batch(c_noise, x))

        h = self.conv_in(x)
        skips = [h]
        for lvl, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                skips.append(h)
            if lvl < self.n_levels - 1:
                h = level.resample(h)
                skips.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)

        for level in self.up:
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            h = level.resample(h)

        return self.conv_out(F.silu(self.norm_out(h)))
