"""2-D parallel-beam CT: the discrete Radon transform as a matrix-free operator with an exact adjoint.

Discretisation (scikit-image's ``radon`` with ``circle=False``): for every angle θ the image is
resampled with bilinear interpolation (zero outside the image) on a rotated grid with unit spacing,
centred on the image centre, and the samples are summed along the ray direction. In pixel
coordinates (row, col) with centre ``((H−1)/2, (W−1)/2)``, detector offset ``t`` and ray offset ``s``:

    col = cx + t cos θ + s sin θ,    row = cy − t sin θ + s cos θ,    y[θ, t] = Σ_s x(row, col)

Detector offsets are ``t_k = k − (n_det − 1)/2``, ray offsets are the integers ``|s| ≤ (n_ray − 1)/2``
with ``n_ray`` just large enough that every ray crosses the whole support of the interpolated image
(so a narrow detector still integrates full rays). Both grids are symmetric about the centre, so the
projection at θ + 180° is the mirror image of the one at θ.

Relation to ``skimage.transform.radon``: same orientation and sampling; skimage rotates about pixel
``(H//2, W//2)`` and puts detector ``c`` at ``t = c − N//2`` (``N = ceil(√2·max(H, W))``), so the two
agree exactly for odd H, W when ``N`` is odd (otherwise they differ by sub-pixel shifts), up to the
image corners that skimage's N×N grid clips.

The forward is ``grid_sample`` (bilinear, zero padding, ``align_corners=False``, which also keeps CUDA
off the cuDNN kernel so forward and backward share one discretisation) on a cached sampling grid. The
adjoint is the vector-Jacobian product of that forward: ATen's ``grid_sampler_2d_backward`` (the
kernel autograd itself runs for the VJP of ``grid_sample``), so it is the exact transpose, not an
approximate back-projection, and it skips the wasted forward pass an ``autograd.grad`` call would make.
Forward and adjoint are wrapped in a pair of autograd Functions (each one's backward is the other), so
DPS-style guidance can backpropagate through ``A`` and ``Aᵀ`` to any order.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from diffpost.operators.base import LinearOperator

_BILINEAR, _ZEROS = 0, 0  # ATen codes of grid_sample's mode='bilinear' and padding_mode='zeros'


class _Project(torch.autograd.Function):
    """``x ↦ A x``; its backward is ``Aᵀ`` (itself differentiable, for higher-order gradients)."""

    @staticmethod
    def forward(x: torch.Tensor, op: "CT") -> torch.Tensor:
        return op._project(x)

    @staticmethod
    def setup_context(ctx, inputs, output):  # separate from forward so torch.func transforms work
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Backproject.apply(grad, ctx.op), None


class _Backproject(torch.autograd.Function):
    """``y ↦ Aᵀ y``; its backward is ``A``."""

    @staticmethod
    def forward(y: torch.Tensor, op: "CT") -> torch.Tensor:
        return op._backproject(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Project.apply(grad, ctx.op), None


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"CT: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"CT: {name} must be a finite number, got {value!r}")
    return float(value)


class CT(LinearOperator):
    """Parallel-beam Radon transform ``(C, H, W) → (C, n_angles, n_detectors)``, channels independent.

    ``angles`` (degrees) overrides ``n_angles``/``angle_range``/``angle_start``; otherwise the angles are
    ``angle_start + i·angle_range/n_angles``, ``i < n_angles`` (endpoint excluded, as 180° repeats 0°).
    Sparse view: few angles over 180°; limited angle: ``angle_range < 180``. ``n_detectors`` defaults
    to ``ceil(√2·max(H, W))`` so that every pixel centre is seen at every angle.
    ``pinv``/``normal_solve`` are the base class' CG.
    """

    #: the full sampling grid is cached per (device, dtype) when it needs at most this many bytes
    #: (190 MiB for 256² with 180 angles in float32); larger grids are rebuilt chunk by chunk per call
    max_cached_grid_bytes: int = 256 * 2**20
    #: elements per intermediate tensor (samples or per-angle back-projections) when chunking angles
    chunk_elements: int = 2**23

    def __init__(
        self,
        shape: tuple[int, int, int] | list[int] = (1, 32, 32),
        n_angles: int = 180,
        angle_range: float = 180.0,
        angle_start: float = 0.0,
        n_detectors: int | None = None,
        angles: list[float] | None = None,
    ):
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 3:
            raise ValueError(f"CT: shape must be (C, H, W), got {shape!r}")
        C, H, W = (_check_int(f"shape[{i}]", s, 1) for i, s in enumerate(shape))
        self.angle_range = _check_float("angle_range", angle_range)
        self.angle_start = _check_float("angle_start", angle_start)
        if angles is not None:
            if isinstance(angles, (str, bytes)) or not isinstance(angles, Sequence) or len(angles) == 0:
                raise ValueError(f"CT: angles must be a non-empty list of degrees, got {angles!r}")
            self._angles = [_check_float(f"angles[{i}]", a) for i, a in enumerate(angles)]
            self._explicit_angles = True
        else:
            n_angles = _check_int("n_angles", n_angles, 1)
            if not 0.0 < self.angle_range <= 360.0:
                raise ValueError(f"CT: angle_range must lie in (0, 360] degrees, got {angle_range}")
            step = self.angle_range / n_angles
            self._angles = [self.angle_start + i * step for i in range(n_angles)]
            self._explicit_angles = False
        self.n_angles = len(self._angles)
        if n_detectors is None:
            n_detectors = math.ceil(math.sqrt(2.0) * max(H, W))
        self.n_detectors = _check_int("n_detectors", n_detectors, 1)
        # interpolated image lives in |row − cy| < (H+1)/2, |col − cx| < (W+1)/2: every integer ray
        # offset with |s| < R (half that box's diagonal) is needed, none beyond
        R = 0.5 * math.hypot(H + 1, W + 1)
        self.n_rays = 2 * math.ceil(R) - 1
        super().__init__((C, H, W), (C, self.n_angles, self.n_detectors))
        self._grid_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    # ----------------------------------------------------------------- description
    @property
    def angles_deg(self) -> torch.Tensor:
        """Projection angles in degrees, ``(n_angles,)`` float64 on the CPU."""
        return torch.tensor(self._angles, dtype=torch.float64)

    def config(self) -> dict[str, Any]:
        return {
            "shape": list(self.x_shape),
            "n_angles": self.n_angles,
            "angle_range": self.angle_range,
            "angle_start": self.angle_start,
            "n_detectors": self.n_detectors,
            "angles": list(self._angles) if self._explicit_angles else None,
        }

    def extra_repr(self) -> str:
        a = self._angles
        return f"{super().extra_repr()}, angles=[{a[0]:g}..{a[-1]:g}] ({self.n_angles}), n_rays={self.n_rays}"

    # ----------------------------------------------------------------- sampling grid
    def _make_grid(self, a0: int, a1: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Normalised ``grid_sample`` coordinates ``(a1 − a0, n_rays, n_det, 2)`` of angles a0..a1−1.

        With ``align_corners=False`` a pixel column ``col`` sits at ``(2 col + 1)/W − 1`` and
        affine_grid's base coordinate of detector k is ``2 t_k / n_det`` (ray j: ``2 s_j / n_rays``), so
        the map from base to input coordinates is linear with the matrix below (centre ↦ 0).
        """
        _, H, W = self.x_shape
        th = torch.tensor(self._angles[a0:a1], dtype=torch.float64) * (math.pi / 180.0)
        c, s = torch.cos(th), torch.sin(th)
        nd, nr = self.n_detectors, self.n_rays
        zero = torch.zeros_like(c)
        theta = torch.stack(
            [torch.stack([nd * c / W, nr * s / W, zero], -1), torch.stack([-nd * s / H, nr * c / H, zero], -1)], 1
        ).to(device=device, dtype=dtype)
        # built outside inference mode so a cached grid is an ordinary tensor usable by autograd later
        with torch.inference_mode(False), torch.no_grad():
            return F.affine_grid(theta, [a1 - a0, 1, nr, nd], align_corners=False)

    def _grid_chunks(self, like: torch.Tensor, per_angle: int):
        """Yield ``(a0, a1, grid)`` over angle chunks whose intermediates have ≲ chunk_elements."""
        if not like.is_floating_point():
            raise TypeError(f"CT: inputs must be floating point, got {like.dtype}")
        step = max(1, min(self.n_angles, self.chunk_elements // max(1, per_angle)))
        key = (like.device, like.dtype)
        grid = self._grid_cache.get(key)
        full_bytes = self.n_angles * self.n_rays * self.n_detectors * 2 * like.element_size()
        if grid is None and full_bytes <= self.max_cached_grid_bytes:
            grid = self._grid_cache[key] = self._make_grid(0, self.n_angles, like.device, like.dtype)
        for a0 in range(0, self.n_angles, step):
            a1 = min(a0 + step, self.n_angles)
            yield a0, a1, (grid[a0:a1] if grid is not None else self._make_grid(a0, a1, like.device, like.dtype))

    # ----------------------------------------------------------------- forward / adjoint
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        BC = B * C
        # angles go in grid_sample's batch axis (the image is expanded, not copied): one grid per angle
        xs = x.reshape(1, BC, H, W)
        out = []
        for a0, a1, grid in self._grid_chunks(x, BC * max(self.n_rays * self.n_detectors, H * W)):
            samples = F.grid_sample(
                xs.expand(a1 - a0, BC, H, W), grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )  # (a, BC, n_rays, n_det)
            out.append(samples.sum(2))
        return torch.cat(out, 0).transpose(0, 1).reshape(B, C, self.n_angles, self.n_detectors)

    def _backproject(self, y: torch.Tensor) -> torch.Tensor:
        B, C = y.shape[:2]
        _, H, W = self.x_shape
        BC = B * C
        yf = y.reshape(BC, self.n_angles, self.n_detectors)
        x = y.new_zeros(BC, H, W)
        shape_only = y.new_zeros(())  # the VJP needs the input only for its shape and options
        for a0, a1, grid in self._grid_chunks(y, BC * max(self.n_rays * self.n_detectors, H * W)):
            a = a1 - a0
            # transpose of "sum over rays": broadcast along the ray axis (a view, no copy)
            g = yf[:, a0:a1].transpose(0, 1).unsqueeze(2).expand(a, BC, self.n_rays, self.n_detectors)
            gx, _ = torch.ops.aten.grid_sampler_2d_backward(
                g, shape_only.expand(a, BC, H, W), grid, _BILINEAR, _ZEROS, False, [True, False]
            )
            x += gx.sum(0)  # transpose of expanding the image over the angle axis
        return x.reshape(B, C, H, W)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Project.apply(x, self)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return _Backproject.apply(y, self)

    # ----------------------------------------------------------------- classical reconstruction
    def ramp_filter(self, y: torch.Tensor) -> torch.Tensor:
        """Convolve every projection with the band-limited ramp filter (Ram–Lak, unit spacing).

        Kernel ``h[0] = 1/4``, ``h[k] = −1/(πk)²`` for odd k, 0 for even k ≠ 0 (the inverse DTFT of
        ``|ν|`` on ``|ν| ≤ 1/2``); linear convolution via a zero-padded FFT (no wrap-around).
        """
        n = self.n_detectors
        P = 1 << max(6, math.ceil(math.log2(2 * n)))
        k = torch.arange(P, dtype=torch.float64)
        k = torch.minimum(k, P - k)  # circular lag
        h = torch.where(k % 2 == 1, -1.0 / (math.pi * k.clamp_min(1)) ** 2, torch.zeros_like(k))
        h[0] = 0.25
        # FFTs need at least float32 (no half-precision FFT on the CPU)
        work = y if y.dtype in (torch.float32, torch.float64) else y.float()
        H = torch.fft.rfft(h).real.to(device=y.device, dtype=work.dtype)  # h is even, so its DFT is real
        return torch.fft.irfft(torch.fft.rfft(work, n=P, dim=-1) * H, n=P, dim=-1)[..., :n].to(y.dtype)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        """Filtered back-projection: ramp filter, then ``Aᵀ`` scaled by ``π / n_angles``.

        (The same as skimage's ``2|ν|`` filter with ``π/(2·n_angles)``.) The scale is the quadrature
        weight of angles spread uniformly over 180°; with limited-angle or irregular sets it is only a
        rough reconstruction, and even over 180° it is slightly smoothed by the bilinear transpose.
        """
        self._check(y, self.y_shape, "y")
        if not y.is_floating_point():
            raise TypeError(f"CT: inputs must be floating point, got {y.dtype}")
        return self.adjoint(self.ramp_filter(y)) * (math.pi / self.n_angles)
