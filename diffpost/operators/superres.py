"""Super-resolution: ``y`` = average pooling of ``x`` over non-overlapping ``f × f`` blocks.

Per block ``A_block = 1ᵀ / f² = (1/f) q₀ᵀ`` with ``q₀ = 1/f`` (unit norm), so ``AAᵀ = I / f²``: one
singular value ``1/f`` per block, along the block's constant vector, and ``f² − 1`` zeros. ``V`` is a
fixed orthonormal basis of each block, the 2-D DCT-II basis ``Q = D ⊗ D`` whose first vector is the
constant, applied per block with ``einops.rearrange``.

Coefficient ordering of ``Vt(x)``: ``(k, C, h, w)`` flattened, ``k`` the DCT index within the block
(row-major over the block's ``(p, q)`` frequencies), ``(h, w)`` the block position. The first ``C·h·w``
coefficients are therefore the block means times ``f`` (``s = 1/f``), laid out exactly like ``y``; all
later ones are within-block detail (``s = 0``). Hence ``U`` is the identity on that first slice.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from einops import rearrange, reduce, repeat

from diffpost.operators.base import _as_batch
from diffpost.operators.denoise import ImageSVDOperator, SpectralBasis, validate_image_shape, validate_int


def dct_matrix(n: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D[k, j] = α_k cos(π k (2j + 1) / (2n))``; row 0 is constant."""
    k = torch.arange(n, dtype=dtype, device=device).unsqueeze(1)
    j = torch.arange(n, dtype=dtype, device=device).unsqueeze(0)
    D = torch.cos(math.pi * k * (2 * j + 1) / (2 * n)) * math.sqrt(2.0 / n)
    D[0] = D[0] / math.sqrt(2.0)
    return D


def block_basis(factor: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``Q = D ⊗ D`` (``f² × f²``, orthogonal): row ``k`` is the k-th basis vector of a flattened
    ``f × f`` block; row 0 is the constant ``1/f``."""
    D = dct_matrix(factor, dtype=dtype, device=device)
    return torch.kron(D, D)


class SuperResolution(ImageSVDOperator):
    """``y = avgpool_f(x)``, ``y`` of shape ``(C, H/f, W/f)``; ``H`` and ``W`` must be divisible by ``f``.

    ``pinv`` is nearest-neighbour upsampling (``A⁺ = f² Aᵀ``) and ``normal_solve`` splits into block
    means and the rest; neither needs the block basis.
    """

    spectral_basis: ClassVar[SpectralBasis] = "block"

    def __init__(self, shape: tuple[int, int, int] | list[int] = (1, 32, 32), factor: int = 2):
        name = type(self).__name__
        C, H, W = validate_image_shape(name, shape)
        factor = validate_int(name, "factor", factor, 1)
        if H % factor or W % factor:
            raise ValueError(f"{name}: image size (H, W) = ({H}, {W}) is not divisible by factor {factor}")
        super().__init__((C, H, W), (C, H // factor, W // factor))
        self.factor = factor

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return reduce(x, "b c (h p) (w q) -> b c h w", "mean", p=self.factor, q=self.factor)

    def _upsample(self, y: torch.Tensor) -> torch.Tensor:
        return repeat(y, "b c h w -> b c (h p) (w q)", p=self.factor, q=self.factor)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._upsample(y) / self.factor**2

    def _spectrum(self, dtype, device):
        n_range = math.prod(self.y_shape)
        s = torch.zeros(self.x_dim, dtype=dtype, device=device)
        s[:n_range] = 1.0 / self.factor
        return s

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.x_shape, "x")
        f = self.factor
        blocks = rearrange(x, "b c (h p) (w q) -> b c h w (p q)", p=f, q=f)
        coeffs = blocks @ block_basis(f, dtype=x.dtype, device=x.device).T
        return rearrange(coeffs, "b c h w k -> b (k c h w)")

    def V(self, c: torch.Tensor) -> torch.Tensor:
        self._check_coeffs(c)
        f = self.factor
        C, h, w = self.y_shape
        coeffs = rearrange(c, "b (k c h w) -> b c h w k", k=f * f, c=C, h=h, w=w)
        blocks = coeffs @ block_basis(f, dtype=c.dtype, device=c.device)
        return rearrange(blocks, "b c h w (p q) -> b c (h p) (w q)", p=f, q=f)

    # U = A V diag(1/s) on s > 0 maps the first C·h·w coefficients onto y one to one
    def U(self, c: torch.Tensor) -> torch.Tensor:
        self._check_coeffs(c)
        n_range = math.prod(self.y_shape)
        return c[:, :n_range].reshape(c.shape[0], *self.y_shape)

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.y_shape, "y")
        flat = y.flatten(1)
        return torch.cat([flat, flat.new_zeros(y.shape[0], self.x_dim - flat.shape[1])], 1)

    def pinv(self, y: torch.Tensor, *, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
        """Nearest-neighbour upsampling (``tol``/``max_iter`` unused: closed form)."""
        self._check(y, self.y_shape, "y")
        return self._upsample(y)

    def normal_solve(self, rhs: torch.Tensor, rho: float | torch.Tensor, *, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
        """``(AᵀA + ρ)⁻¹ rhs``: block means scaled by ``1/(1/f² + ρ)``, the rest by ``1/ρ``."""
        self._check(rhs, self.x_shape, "rhs")
        rho_b = _as_batch(rho, rhs)
        mean_part = self._upsample(self._forward(rhs))
        return mean_part / (1.0 / self.factor**2 + rho_b) + (rhs - mean_part) / rho_b

    def config(self) -> dict:
        return {"shape": list(self.x_shape), "factor": self.factor}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factor={self.factor}"
