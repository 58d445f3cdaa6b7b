"""Real orthonormal Fourier (Hartley) basis on periodic grids.

The 2-D discrete Hartley transform ``H x = Re(F x) − Im(F x)`` (``F`` the unitary DFT over the last two
axes) is real, symmetric and orthogonal (``H H = I``). Any real convolution-type operator whose
Fourier multiplier ``m(k)`` is real and symmetric (``m(k) = m(−k)``) is diagonal in it:
``F^H diag(m) F = H diag(m) H``. Blur normal operators (``|K|²``), MRI normal operators, stationary
Gaussian random fields and trace-class noise covariances all have that form, so they share this basis
and keep every matrix real.
"""
from __future__ import annotations

import math

import torch


def dht2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D Hartley transform over the last two axes (its own inverse)."""
    X = torch.fft.fft2(x, norm="ortho")
    return X.real - X.imag


def symmetrize_multiplier(m: torch.Tensor) -> torch.Tensor:
    """``(m(k) + m(−k)) / 2`` on the FFT grid (last two axes)."""
    flipped = torch.roll(torch.flip(m, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return 0.5 * (m + flipped)


def frequency_grid(H: int, W: int, *, dtype=torch.float64, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frequencies ``(k1, k2)`` on the FFT grid, shapes ``(H, W)``."""
    k1 = torch.fft.fftfreq(H, d=1.0 / H, dtype=dtype, device=device)
    k2 = torch.fft.fftfreq(W, d=1.0 / W, dtype=dtype, device=device)
    return torch.meshgrid(k1, k2, indexing="ij")


def matern_spectrum(H: int, W: int, tau: float, s: float, *, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Eigenvalues of ``(τ² I − Δ)^(−s)`` on the unit periodic square ``[0, 1)²`` at an ``H×W`` grid.

    Continuum eigenvalues are ``λ_k = (τ² + 4π²|k|²)^(−s)``; the covariance matrix of grid values is
    ``H W · Σ_k λ_k f_k f_kᵀ`` (``f_k`` orthonormal), so the pointwise variance ``Σ_k λ_k`` converges as
    the grid refines: the same field at any resolution. Returned: the grid-matrix eigenvalues
    ``H W λ_k`` laid out on the FFT grid, shape ``(H, W)``.
    """
    k1, k2 = frequency_grid(H, W, dtype=dtype, device=device)
    lam = (tau**2 + 4 * math.pi**2 * (k1**2 + k2**2)) ** (-s)
    return (H * W) * lam
