"""UCoS preconditioners compared on the same CT problems (part of ``benchmark.py scale``).

For each size: ``G_σ b`` against the exact Tikhonov solution ``(AᵀA/σ_y² + σ⁻² + ρ0)⁻¹ b`` (CG,
``normal_solve``), build time, bytes of the factors in a checkpoint, and apply time per network call.
"""
from __future__ import annotations

import math
import time

import torch

#: σ values at which ``G_σ b`` is compared: σ_max (the one-call MMSE input) and a mid-chain level
SIGMAS = (80.0, 0.5)


COLUMNS = ["size", "kind", "rank", "build_s", "gram_calls", "checkpoint_MB", "apply_ms", "apply_over_unet",
           "psnr_vs_exact_sigma80", "psnr_vs_exact_sigma0.5", "psnr_vs_truth"]


def ct_problem(size: int, n_angles: int, n_images: int, sigma_y: float, seed: int = 0):
    """Ellipse phantoms, ``CT((1, size, size), n_angles)`` and noisy measurements ``y``."""
    from datamodules.sources import Ellipses
    from diffpost.operators import CT

    op = CT((1, size, size), n_angles=n_angles)
    src = Ellipses(size=size, length=10_000, seed=seed)
    x = torch.stack([src[i] for i in range(n_images)])
    g = torch.Generator().manual_seed(seed)
    ax = op(x)
    return op, x, ax + sigma_y * torch.randn(ax.shape, generator=g)


def exact_tikhonov(op, y, sigma_y: float, rho0: float, sigma: float, tol: float = 1e-6, max_iter: int = 1000):
    """``(AᵀA/σ_y² + σ⁻² + ρ0)⁻¹ Aᵀy/σ_y²`` by CG in float64 (independent of every preconditioner)."""
    op64 = op.to(torch.float64)
    aty = op64.adjoint(y.double())
    return op64.normal_solve(aty, sigma_y**2 * (sigma**-2 + rho0), tol=tol, max_iter=max_iter).float()


def checkpoint_bytes(pre) -> int:
    return sum(t.numel() * t.element_size() for t in pre.state_dict().values())


def build(kind: str, op, sigma_y: float, rho0: float, rank: int):
    from diffpost.ucos import (CirculantPreconditioner, DensePreconditioner, LowRankDiagonalPreconditioner,
                               RandomizedSVDPreconditioner)

    if kind == "dense (exact)":
        return DensePreconditioner(op.to(torch.float64), sigma_y, rho0)
    if kind == "circulant":
        return CirculantPreconditioner(op, sigma_y, rho0).build()
    if kind == "lowrank_diagonal":
        return LowRankDiagonalPreconditioner(op, sigma_y, rho0).build()
    if kind == "randomized (float64, q=2)":
        return RandomizedSVDPreconditioner(op, sigma_y, rho0, rank=rank)
    raise ValueError(kind)


def apply_ms(pre, shape, repeats: int = 3) -> float:
    """One network call's worth: batch 1, float32."""
    z = torch.randn(1, *shape)
    sigma = torch.ones(1)
    pre.apply(z, sigma)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        pre.apply(z, sigma)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


KINDS = ("dense (exact)", "circulant", "lowrank_diagonal", "randomized (float64, q=2)")


def compare(size: int, n_angles: int, *, net_ms: float | None, sigma_y: float, quick: bool = False,
            kinds=KINDS, n_images: int = 2, rho0: float = 4.0, log=print) -> list[dict]:
    """One row per preconditioner kind on the same measurements; ``net_ms``: U-Net forward (batch 1)."""
    from diffpost.image_quality import psnr
    from diffpost.ucos import LowRankDiagonalPreconditioner

    op, x, y = ct_problem(size, n_angles, n_images, sigma_y)
    exact = {s: exact_tikhonov(op, y, sigma_y, rho0, s) for s in SIGMAS}
    b = op.adjoint(y) / sigma_y**2
    lrd_rank = LowRankDiagonalPreconditioner(op, sigma_y, rho0).rank
    # dense only where it exists (≤ 64²); today's randomized SVD at the low-rank fit's rank (its own
    # default, 8√d in float64, is not buildable at 256² here), skipped above 32² in --quick
    kinds = [k for k in kinds if not (k.startswith("dense") and size > 64)
             and not (k.startswith("randomized") and quick and size > 32)]
    rows = []
    for kind in kinds:
        op.reset_counts()
        t = time.perf_counter()
        pre = build(kind, op, sigma_y, rho0, lrd_rank)
        build_s = time.perf_counter() - t
        basis = getattr(pre, "basis", getattr(pre, "basis_vectors", None))
        row = {"size": size, "angles": n_angles, "kind": kind, "sigma_y": sigma_y,
               "rank": basis.shape[1] if basis is not None else None, "build_s": build_s,
               "gram_calls": op.counts.get("adjoint", 0), "checkpoint_MB": checkpoint_bytes(pre) / 1e6,
               "apply_ms": apply_ms(pre, op.x_shape)}
        row["apply_over_unet"] = row["apply_ms"] / net_ms if net_ms else None
        for s in SIGMAS:
            u = pre.apply(b, torch.full((len(b),), s))
            row[f"psnr_vs_exact_sigma{s:g}"] = psnr(u, exact[s]).mean().item()
        row["psnr_vs_truth"] = psnr(pre.apply(b, torch.full((len(b),), SIGMAS[0])), x).mean().item()
        rows.append(row)
        log(f"  {size}² {kind}: build {build_s:.1f} s ({row['gram_calls']} AᵀA calls), {row['checkpoint_MB']:.1f} MB, "
            f"PSNR vs exact {row['psnr_vs_exact_sigma80']:.1f} dB")
        del pre
    rows.append({"size": size, "kind": "exact Tikhonov (CG)", "psnr_vs_truth": psnr(exact[SIGMAS[0]], x).mean().item()})
    return rows


def todays_default_bytes(size: int) -> float:
    """Bytes of the randomized SVD that ``auto`` built before (rank 8√d, float64), from shapes."""
    d = size * size
    rank = min(d, max(256, int(math.sqrt(d) * 8)))
    return (d * rank + rank) * 8 / 1e6
