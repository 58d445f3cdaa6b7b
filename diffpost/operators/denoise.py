"""Denoising (``A = I``) and the pieces every closed-form-SVD image operator shares.

The shared base lives here because the identity is the simplest operator that is diagonal in the
Hartley basis; inpainting, blur, super-resolution and MRI build on :class:`ImageSVDOperator`.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch

from diffpost.fourier import dht2
from diffpost.operators.base import SVDOperator, _as_batch, _buffer_device

SpectralBasis = Literal["hartley", "pixel", "block"]


def validate_image_shape(owner: str, shape) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)`` of positive ints, or a ValueError naming the expected form."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if (
        dims is None
        or len(dims) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
    ):
        raise ValueError(f"{owner}: shape must be (C, H, W) with three positive ints, got {shape!r}")
    return dims  # type: ignore[return-value]


def validate_int(owner: str, name: str, value, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


class ImageSVDOperator(SVDOperator):
    """An :class:`SVDOperator` on images ``(C, H, W)`` whose spectrum is built in the caller's dtype.

    Subclasses give ``_spectrum(dtype, device) -> (x_dim,)``. Building it in the input's dtype (rather
    than casting a stored float32 copy) keeps ``U diag(s) Vᵀ = A`` exact to float64 rounding even when
    the module's buffers are float32. ``spectral_basis`` tells analytic priors which basis ``Vt`` uses:
    ``"hartley"`` means ``Vt(x) == dht2(x).flatten(1)``.
    """

    spectral_basis: ClassVar[SpectralBasis] = "pixel"

    def __init__(self, shape, y_shape: tuple[int, ...] | None = None):
        dims = validate_image_shape(type(self).__name__, shape)
        super().__init__(dims, dims if y_shape is None else y_shape)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.x_shape  # type: ignore[return-value]

    def _check(self, t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        super()._check(t, shape, what)
        if not t.is_floating_point():
            raise TypeError(f"{type(self).__name__}: {what} must be a real floating-point tensor, got {t.dtype}")

    def _check_coeffs(self, c: torch.Tensor) -> None:
        self._check(c, (self.x_dim,), "spectral coefficients")

    def _spectrum(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    @property
    def singular_values(self) -> torch.Tensor:
        """``(x_dim,)`` in float64 on the buffers' device: the exact spectrum of the operator its
        buffers define (cast down as needed; internal closed forms build it in the input's dtype)."""
        return self._spectrum(torch.float64, _buffer_device(self))

    def _s(self, like: torch.Tensor) -> torch.Tensor:
        return self._spectrum(like.dtype, like.device)

    def _channel_broadcast(self, per_pixel: torch.Tensor) -> torch.Tensor:
        """An ``(H, W)`` spectrum shared by all channels, flattened in ``(C, H, W)`` order."""
        return per_pixel.expand(self.x_shape).reshape(-1)


class HartleySVDOperator(ImageSVDOperator):
    """``V`` is the orthonormal 2-D Hartley transform per channel; ``Vt(x) = dht2(x).flatten(1)``."""

    spectral_basis: ClassVar[SpectralBasis] = "hartley"

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.x_shape, "x")
        return dht2(x).flatten(1)

    def V(self, c: torch.Tensor) -> torch.Tensor:
        self._check_coeffs(c)
        return dht2(c.reshape(c.shape[0], *self.x_shape))


class Denoising(HartleySVDOperator):
    """``A = I`` (y = x + noise). Any orthonormal basis diagonalises it; Hartley is chosen so that
    stationary priors stay diagonal."""

    def __init__(self, shape: tuple[int, int, int] | list[int] = (1, 32, 32)):
        super().__init__(shape)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()  # a copy, so callers may modify y in place without touching x

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    def _spectrum(self, dtype, device):
        return torch.ones(self.x_dim, dtype=dtype, device=device)

    def U(self, c: torch.Tensor) -> torch.Tensor:
        return self.V(c)

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        return self.Vt(y)

    def pinv(self, y: torch.Tensor, *, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
        """``y`` itself (``tol``/``max_iter`` unused: closed form)."""
        self._check(y, self.y_shape, "y")
        return y.clone()

    def normal_solve(self, rhs: torch.Tensor, rho: float | torch.Tensor, *, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
        """``rhs / (1 + ρ)`` (``tol``/``max_iter`` unused: closed form)."""
        self._check(rhs, self.x_shape, "rhs")
        return rhs / (1.0 + _as_batch(rho, rhs))

    def config(self) -> dict:
        return {"shape": list(self.x_shape)}
