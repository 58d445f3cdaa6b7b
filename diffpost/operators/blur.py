"""Blur: circular convolution with a small kernel, computed by FFT.

``A = F⁻¹ diag(K) F`` with ``K`` the DFT of the kernel placed on the image grid with its centre at
index ``(0, 0)``. ``AᵀA = F⁻¹ diag(|K|²) F``, and ``|K|²`` is real and symmetric (``K(−k) = conj K(k)``
for a real kernel), so it is diagonal in the real Hartley basis: ``V = H``, ``s = |K|`` on the FFT grid
(diffpost/fourier.py). ``U = A V diag(1/s)`` is then a phase-rotated Hartley basis, used through the
base class' formulas.

Convention: true convolution, ``y[i] = Σ_j k[j] x[i − j]`` with kernel offsets ``j`` relative to the
kernel's centre and indices taken modulo the image size (periodic boundary).
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch

from diffpost.operators.base import _as_batch
from diffpost.operators.denoise import HartleySVDOperator, SpectralBasis, validate_int


def gaussian_kernel(kernel_size: int, blur_sigma: float, *, dtype=torch.float64) -> torch.Tensor:
    """Separable Gaussian ``exp(−(i² + j²) / (2σ²))`` on offsets ``−r..r``, normalised to sum 1."""
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2.0 * blur_sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).to(dtype)


class Blur(HartleySVDOperator):
    """Periodic blur with a Gaussian, uniform (box) or user-given kernel; ``y`` has the shape of ``x``.

    A custom kernel is normalised to sum 1 (so the blur keeps the mean brightness); its sum must be
    nonzero. ``config()`` keeps only the arguments that define the kernel, the custom one as given.
    ``pinv`` and ``normal_solve`` divide in Fourier space (real FFTs, no Hartley transforms).
    """

    spectral_basis: ClassVar[SpectralBasis] = "hartley"

    def __init__(
        self,
        shape: tuple[int, int, int] | list[int] = (1, 32, 32),
        kernel: Literal["gaussian", "uniform", "custom"] = "gaussian",
        kernel_size: int = 9,
        blur_sigma: float = 2.0,
        custom_kernel: list[list[float]] | None = None,
    ):
        super().__init__(shape)
        name = type(self).__name__
        _, H, W = self.x_shape
        self.kernel_type = kernel
        self.kernel_size: int | None = None
        self.blur_sigma: float | None = None
        self.custom_kernel: list[list[float]] | None = None
        if kernel != "custom" and custom_kernel is not None:
            raise ValueError(f"{name}: custom_kernel is only used with kernel='custom', got kernel={kernel!r}")
        if kernel in ("gaussian", "uniform"):
            self.kernel_size = validate_int(name, "kernel_size", kernel_size, 1)
            if kernel_size % 2 == 0:
                raise ValueError(f"{name}: kernel_size must be odd (the kernel needs a centre pixel), got {kernel_size}")
            if kernel == "gaussian":
                blur_sigma = float(blur_sigma)
                if not (math.isfinite(blur_sigma) and blur_sigma > 0):
                    raise ValueError(f"{name}: blur_sigma must be a finite positive number, got {blur_sigma}")
                self.blur_sigma = blur_sigma
                k = gaussian_kernel(kernel_size, blur_sigma)
            else:
                k = torch.full((kernel_size, kernel_size), 1.0 / kernel_size**2, dtype=torch.float64)
        elif kernel == "custom":
            if custom_kernel is None:
                raise ValueError(f"{name}: kernel='custom' needs custom_kernel (a 2-D list of floats)")
            try:
                raw = torch.as_tensor(custom_kernel, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"{name}: custom_kernel must be a rectangular 2-D list of numbers ({e})") from None
            if raw.dim() != 2 or raw.shape[0] % 2 == 0 or raw.shape[1] % 2 == 0:
                raise ValueError(f"{name}: custom_kernel must be 2-D with odd sides (a centre pixel), got shape {tuple(raw.shape)}")
            if not bool(torch.isfinite(raw).all()):
                raise ValueError(f"{name}: custom_kernel has non-finite entries")
            total = float(raw.sum())
            if abs(total) <= 1e-12 * float(raw.abs().sum()) or total == 0.0:
                raise ValueError(f"{name}: custom_kernel must sum to a nonzero value (it is normalised to sum 1), got sum {total}")
            self.custom_kernel = raw.tolist()
            k = raw / total
        else:
            raise ValueError(f"{name}: kernel must be 'gaussian', 'uniform' or 'custom', got {kernel!r}")
        if k.shape[0] > H or k.shape[1] > W:
            raise ValueError(f"{name}: kernel of size {tuple(k.shape)} is larger than the {H}x{W} image")
        self.register_buffer("kernel", k.to(torch.get_default_dtype()))

    # ----------------------------------------------------------------- Fourier pieces
    def _kernel_grid(self, dtype: torch.dtype, device) -> torch.Tensor:
        """The kernel on the ``(H, W)`` grid, centre rolled to index ``(0, 0)``."""
        k = self.kernel.to(device=device, dtype=dtype)
        kh, kw = k.shape
        grid = k.new_zeros(self.x_shape[1:])
        grid[:kh, :kw] = k
        return torch.roll(grid, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))

    def _rfft_kernel(self, like: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(self._kernel_grid(like.dtype, like.device))

    def _filter(self, x: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * multiplier, s=self.x_shape[1:])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._filter(x, self._rfft_kernel(x))

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._filter(y, self._rfft_kernel(y).conj())

    def transfer_function(self, *, dtype=torch.float64, device=None) -> torch.Tensor:
        """``K``: the complex DFT of the centred kernel on the full ``(H, W)`` FFT grid."""
        device = self.kernel.device if device is None else device
        return torch.fft.fft2(self._kernel_grid(dtype, device))

    def _spectrum(self, dtype, device):
        return self._channel_broadcast(torch.fft.fft2(self._kernel_grid(dtype, device)).abs())

    # ----------------------------------------------------------------- closed forms in Fourier space
    def pinv(self, y: torch.Tensor, *, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
        """``F⁻¹ (conj K / |K|²) F y`` with ``|K| ≤ rcond · max|K|`` treated as zero (as ``SVDOperator``).
        ``tol``/``max_iter`` are unused (closed form)."""
        self._check(y, self.y_shape, "y")
        K = self._rfft_kernel(y)
        a = K.abs()
        keep = a > self.rcond * a.max()
        inv = torch.where(keep, K.conj() / torch.where(keep, a, torch.ones_like(a)) ** 2, torch.zeros_like(K))
        return self._filter(y, inv)

    def normal_solve(self, rhs: torch.Tensor, rho: float | torch.Tensor, *, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
        """``F⁻¹ (|K|² + ρ)⁻¹ F rhs``; ``rho`` scalar or ``(B,)``. ``tol``/``max_iter`` unused."""
        self._check(rhs, self.x_shape, "rhs")
        K2 = self._rfft_kernel(rhs).abs() ** 2
        return self._filter(rhs, 1.0 / (K2 + _as_batch(rho, rhs)))

    def config(self) -> dict:
        cfg: dict = {"shape": list(self.x_shape), "kernel": self.kernel_type}
        if self.kernel_type == "gaussian":
            cfg.update(kernel_size=self.kernel_size, blur_sigma=self.blur_sigma)
        elif self.kernel_type == "uniform":
            cfg.update(kernel_size=self.kernel_size)
        else:
            cfg.update(custom_kernel=self.custom_kernel)
        return cfg

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel_type!r}, kernel_shape={tuple(self.kernel.shape)}"
