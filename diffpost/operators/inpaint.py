"""Inpainting: ``y = mask ⊙ x`` with a pixel mask shared by all channels.

``A`` is diagonal in the pixel basis: ``V = I`` and ``s = mask`` (0 or 1), so every closed form is an
elementwise product. ``y`` keeps the image shape (missing pixels are zeros), which keeps it usable as an
image by networks and loggers.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch

from diffpost.operators.denoise import ImageSVDOperator, SpectralBasis, validate_int
from diffpost.random import make_generator


class Inpainting(ImageSVDOperator):
    """Random-pixel or box inpainting.

    - ``mask_type="random"``: exactly ``round(keep_ratio · H · W)`` pixels are kept, drawn by a CPU
      generator seeded with ``seed`` (same mask on every device and process).
    - ``mask_type="box"``: ``box = [top, left, height, width]`` is the *missing* region (default: a
      centred box of half the height and half the width); ``keep_ratio`` and ``seed`` are ignored.

    ``config()`` keeps only the arguments that define the mask, so equal operators have equal
    fingerprints. The mask itself is part of the fingerprint too, so a change in torch's random
    stream cannot pass unnoticed.
    """

    spectral_basis: ClassVar[SpectralBasis] = "pixel"
    fingerprint_tensors = ("mask",)

    def __init__(
        self,
        shape: tuple[int, int, int] | list[int] = (1, 32, 32),
        mask_type: Literal["random", "box"] = "random",
        keep_ratio: float = 0.3,
        box: list[int] | None = None,
        seed: int = 0,
    ):
        super().__init__(shape)
        name = type(self).__name__
        _, H, W = self.x_shape
        self.mask_type = mask_type
        if mask_type == "random":
            if box is not None:
                raise ValueError(f"{name}: box is only used with mask_type='box', got box={box!r} with mask_type='random'")
            keep_ratio = float(keep_ratio)
            if not (0.0 < keep_ratio <= 1.0):
                raise ValueError(f"{name}: keep_ratio must be in (0, 1], got {keep_ratio}")
            self.keep_ratio = keep_ratio
            self.seed = validate_int(name, "seed", seed, 0)
            n_keep = round(keep_ratio * H * W)
            if n_keep == 0:
                raise ValueError(f"{name}: keep_ratio={keep_ratio} keeps no pixel of a {H}x{W} image")
            order = torch.randperm(H * W, generator=make_generator(self.seed))
            mask = torch.zeros(H * W)
            mask[order[:n_keep]] = 1.0
            mask = mask.reshape(H, W)
            self.box = None
        elif mask_type == "box":
            self.box = self._validate_box(box, H, W)
            top, left, h, w = self.box
            mask = torch.ones(H, W)
            mask[top : top + h, left : left + w] = 0.0
            self.keep_ratio = None  # not a parameter of box masks; see measured_keep_ratio
            self.seed = None
        else:
            raise ValueError(f"{name}: mask_type must be 'random' or 'box', got {mask_type!r}")
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))

    def _validate_box(self, box, H: int, W: int) -> list[int]:
        name = type(self).__name__
        if box is None:
            h, w = max(1, H // 2), max(1, W // 2)
            return [(H - h) // 2, (W - w) // 2, h, w]
        box = list(box)
        if len(box) != 4 or not all(isinstance(b, int) and not isinstance(b, bool) for b in box):
            raise ValueError(f"{name}: box must be four ints [top, left, height, width], got {box!r}")
        top, left, h, w = box
        if h < 1 or w < 1 or top < 0 or left < 0 or top + h > H or left + w > W:
            raise ValueError(f"{name}: box [top, left, height, width] = {box} does not fit in a {H}x{W} image")
        return box

    def _m(self, like: torch.Tensor) -> torch.Tensor:
        return self.mask.to(device=like.device, dtype=like.dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._m(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self._m(y)

    def _spectrum(self, dtype, device):
        return self._channel_broadcast(self.mask.to(device=device, dtype=dtype))

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.x_shape, "x")
        return x.flatten(1)

    def V(self, c: torch.Tensor) -> torch.Tensor:
        self._check_coeffs(c)
        return c.reshape(c.shape[0], *self.x_shape)

    # U = A V diag(1/s) on s > 0 is the mask itself: no division needed
    def U(self, c: torch.Tensor) -> torch.Tensor:
        self._check_coeffs(c)
        return c.reshape(c.shape[0], *self.y_shape) * self._m(c)

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.y_shape, "y")
        return (y * self._m(y)).flatten(1)

    @property
    def measured_keep_ratio(self) -> float:
        return float(self.mask.mean())

    def config(self) -> dict:
        if self.mask_type == "box":
            return {"shape": list(self.x_shape), "mask_type": "box", "box": list(self.box)}
        return {"shape": list(self.x_shape), "mask_type": "random", "keep_ratio": self.keep_ratio, "seed": self.seed}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}, kept={self.measured_keep_ratio:.3f}"
