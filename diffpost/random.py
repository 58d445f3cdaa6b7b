"""Randomness without the global RNG.

Every stochastic function in diffpost takes ``generator``: ``None`` (a fresh, unseeded CPU generator:
non-reproducible but never touching the global stream), one ``torch.Generator`` (draws the whole batch
from it), or a sequence of generators, one per sample. Per-sample generators make results independent
of batch size: sample ``i`` sees only its own stream. Draws happen on the generator's device and are
moved to the target device, so CPU generators give the same numbers on CPU and GPU.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

GeneratorLike = Union[None, torch.Generator, Sequence[torch.Generator]]


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) % (2**63))
    return g


def seed_for(*keys: int) -> int:
    """A stable 63-bit seed from a tuple of integers, e.g. ``(seed, split, index)``.

    Uses a fixed integer hash (splitmix64) so the result is equal across processes and machines,
    unlike Python's ``hash``.
    """
    h = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for k in keys:
        z = (h + (int(k) & mask) + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


def per_sample_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    return [make_generator(s, device) for s in seeds]


def _draw(fn, shape, generator, dtype, device):
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    if isinstance(generator, torch.Generator):
        out = fn(shape, generator=generator, dtype=dtype, device=generator.device)
        return out.to(device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    rows = [fn(tuple(shape[1:]), generator=g, dtype=dtype, device=g.device).to(device) for g in gens]
    return torch.stack(rows, 0)


def randn(shape, generator: GeneratorLike = None, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return _draw(torch.randn, tuple(shape), generator, dtype, device)


def rand(shape, generator: GeneratorLike = None, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return _draw(torch.rand, tuple(shape), generator, dtype, device)


def randn_like(x: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


def rand_like(x: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
    return rand(x.shape, generator, dtype=x.dtype, device=x.device)
