"""Single-coil Cartesian MRI: a masked unitary 2-D DFT with whole k-space rows (phase encodes).

``y = (Re, Im)(M ⊙ F x)`` stacked as ``(C, 2, H, W)``, zeros outside the mask, so every tensor stays
real. Adjoint: ``Aᵀ y = Re(F^H M (y_re + i y_im))``. For real ``x``,
``AᵀA x = Re(F^H M F x) = F^H M_sym F x`` with ``M_sym(k) = (M(k) + M(−k)) / 2`` (the conjugate of
``F^H M F x`` is ``F^H M(−·) F x``), and ``M_sym`` is real and symmetric, hence diagonal in the Hartley
basis: ``V = H``, ``s = sqrt(M_sym) ∈ {0, 1/√2, 1}``. A row sampled without its mirror carries only half
of the information about the pair of Hartley coefficients it touches.
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch

from diffpost.fourier import symmetrize_multiplier
from diffpost.operators.denoise import HartleySVDOperator, SpectralBasis, validate_image_shape, validate_int
from diffpost.random import make_generator


def line_mask(
    H: int, acceleration: int, center_fraction: float, mask_type: str, seed: int
) -> torch.Tensor:
    """Boolean ``(H,)`` mask of sampled k-space rows in FFT order (row 0 = zero frequency).

    ``n_c = round(center_fraction · H)`` (at least 1 when ``center_fraction > 0``) rows around the zero
    frequency are always sampled. ``random``: further rows drawn uniformly without replacement until
    ``round(H / acceleration)`` rows are sampled. ``equispaced``: rows on a grid of spacing
    ``(H − n_c) / (H / acceleration − n_c)`` with a seeded offset, united with the centre, which samples
    ``≈ H / acceleration`` rows in total.
    """
    if mask_type not in ("random", "equispaced"):
        raise ValueError(f"line_mask: mask_type must be 'random' or 'equispaced', got {mask_type!r}")
    n_center = 0 if center_fraction == 0 else min(H, max(1, round(center_fraction * H)))
    n_target = max(1, round(H / acceleration))
    shifted = torch.zeros(H, dtype=torch.bool)  # centred order: index H//2 is the zero frequency
    start = H // 2 - n_center // 2
    shifted[start : start + n_center] = True
    g = make_generator(seed)
    n_extra = n_target - n_center
    if n_extra > 0:
        if mask_type == "random":
            candidates = (~shifted).nonzero().flatten()
            shifted[candidates[torch.randperm(len(candidates), generator=g)[:n_extra]]] = True
        else:
            spacing = (H - n_center) / n_extra
            offset = float(torch.rand((), generator=g, dtype=torch.float64)) * spacing
            rows = torch.floor(offset + spacing * torch.arange(math.ceil(H / spacing) + 1, dtype=torch.float64))
            rows = rows[rows < H].long()
            shifted[rows] = True
    return torch.fft.ifftshift(shifted)


class MRI(HartleySVDOperator):
    """Cartesian single-coil MRI with a row mask, ``y`` of shape ``(C, 2, H, W)`` (real, imaginary).

    Channels are independent real images under the same mask. ``mask`` is the ``(H, W)`` k-space mask
    in FFT order (rows all ones or all zeros); ``measured_acceleration = H / sampled rows``.
    """

    spectral_basis: ClassVar[SpectralBasis] = "hartley"
    fingerprint_tensors = ("mask",)

    def __init__(
        self,
        shape: tuple[int, int, int] | list[int] = (1, 32, 32),
        acceleration: int = 4,
        center_fraction: float = 0.08,
        mask_type: Literal["random", "equispaced"] = "random",
        seed: int = 0,
    ):
        name = type(self).__name__
        C, H, W = validate_image_shape(name, shape)
        acceleration = validate_int(name, "acceleration", acceleration, 1)
        center_fraction = float(center_fraction)
        if not (0.0 <= center_fraction <= 1.0):
            raise ValueError(f"{name}: center_fraction must be in [0, 1], got {center_fraction}")
        if mask_type not in ("random", "equispaced"):
            raise ValueError(f"{name}: mask_type must be 'random' or 'equispaced', got {mask_type!r}")
        seed = validate_int(name, "seed", seed, 0)
        super().__init__((C, H, W), (C, 2, H, W))
        self.acceleration = acceleration
        self.center_fraction = center_fraction
        self.mask_type = mask_type
        self.seed = seed
        rows = line_mask(H, acceleration, center_fraction, mask_type, seed)
        mask = rows.to(torch.get_default_dtype()).unsqueeze(1).expand(H, W).contiguous()
        self.register_buffer("mask", mask)

    @property
    def sampled_lines(self) -> int:
        return int((self.mask[:, 0] != 0).sum())

    @property
    def sampled_fraction(self) -> float:
        return self.sampled_lines / self.x_shape[1]

    @property
    def measured_acceleration(self) -> float:
        return self.x_shape[1] / self.sampled_lines

    def _m(self, like: torch.Tensor) -> torch.Tensor:
        return self.mask.to(device=like.device, dtype=like.dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.fft.fft2(x, norm="ortho") * self._m(x)
        return torch.stack((z.real, z.imag), dim=-3)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        z = torch.complex(y[:, :, 0], y[:, :, 1]) * self._m(y)
        return torch.fft.ifft2(z, norm="ortho").real

    def _spectrum(self, dtype, device):
        m_sym = symmetrize_multiplier(self.mask.to(device=device, dtype=dtype))
        return self._channel_broadcast(m_sym.sqrt())

    def config(self) -> dict:
        return {
            "shape": list(self.x_shape),
            "acceleration": self.acceleration,
            "center_fraction": self.center_fraction,
            "mask_type": self.mask_type,
            "seed": self.seed,
        }

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, mask_type={self.mask_type!r}, acceleration={self.acceleration}, "
            f"measured_acceleration={self.measured_acceleration:.2f}"
        )
