"""2-D CT in physical units: ray transforms as matrix-free operators with exact adjoints.

Geometry (ASTRA/ODL style: physical units, independent of the pixel count). The image is a square-pixel
grid centred on the rotation centre whose longer side spans ``extent`` (default 2: a square image
covers ``[-1, 1]²``), so the pixel size is ``p = extent / max(H, W)``. Physical coordinates: ``x`` along
the columns, ``y`` up (row 0 is the top row): pixel ``(row, col)`` sits at
``x = (col − (W−1)/2)·p``, ``y = ((H−1)/2 − row)·p``. A measurement approximates the line integral
``∫ f ds`` of the image's bilinear interpolation (zero outside) along a ray: samples every ``p`` along
the ray, summed and multiplied by ``p``. So the same object gives the same sinogram (up to
discretisation) at 64², 128² and 256², and ``sigma_y`` means the same noise level at every size.

Parallel beam (``CT``, this file): at angle θ the detector axis is ``e_t = (cos θ, sin θ)`` and rays run
along ``e_s = (sin θ, −cos θ)``; detector ``k`` sits at ``t_k = (k − (n_det − 1)/2)·Δ`` (``Δ`` the
detector spacing, default ``p``) and ray samples at ``s_j = (j − (n_ray − 1)/2)·p``, with ``n_ray`` just
large enough that every ray crosses the whole support of the interpolated image. Both grids are
symmetric, so the projection at θ + 180° mirrors the one at θ. Fan beam: ``diffpost/operators/fanbeam.py``.

Relation to ``skimage.transform.radon`` (``circle=False``): with ``extent = max(H, W)`` (unit pixels)
and the default detector, ours is the same discretisation (bilinear resampling on a rotated unit grid,
summed along rays); skimage rotates about pixel ``(H//2, W//2)`` and puts detector ``c`` at
``t = c − N//2`` (``N = ceil(√2·max(H, W))``), so the two agree exactly for odd H, W when ``N`` is odd
(otherwise they differ by sub-pixel shifts), up to the image corners that skimage's N×N grid clips.
With the default extent, ours is skimage's times the pixel size ``p``.

The forward is ``grid_sample`` (bilinear, zero padding, ``align_corners=False``, which also keeps CUDA
off the cuDNN kernel so forward and backward share one discretisation) on a cached sampling grid. The
adjoint is the vector-Jacobian product of that forward: ATen's ``grid_sampler_2d_backward`` (the
kernel autograd itself runs for the VJP of ``grid_sample``), so it is the exact transpose, not an
approximate back-projection. Forward and adjoint are wrapped in a pair of autograd Functions (each
one's backward is the other), so DPS-style guidance can backpropagate through ``A`` and ``Aᵀ`` to any
order. ``RayTransform`` holds this machinery for any geometry that lists its sample points.
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
    def forward(x: torch.Tensor, op: "RayTransform") -> torch.Tensor:
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
    def forward(y: torch.Tensor, op: "RayTransform") -> torch.Tensor:
        return op._backproject(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Project.apply(grad, ctx.op), None


def _check_int(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(owner: str, name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{owner}: {name} must be positive, got {value!r}")
    return float(value)


class RayTransform(LinearOperator):
    """Line integrals ``(C, H, W) → (C, n_angles, n_detectors)`` of the bilinearly interpolated image
    along rays sampled every ``pixel_size``; channels independent. Shared by parallel and fan beam.

    Parses the image shape, ``extent`` and the angles: ``angles`` (degrees) overrides
    ``n_angles``/``angle_range``/``angle_start``; otherwise the angles are
    ``angle_start + i·angle_range/n_angles``, ``i < n_angles`` (endpoint excluded). A subclass sets
    ``n_detectors`` and ``detector_spacing``, implements ``_points`` (physical sample coordinates) and
    calls ``_finish``.
    """

    #: the full sampling grid is cached per (device, dtype) when it needs at most this many bytes
    #: (190 MiB for 256² with 180 angles in float32); larger grids are rebuilt chunk by chunk per call
    max_cached_grid_bytes: int = 256 * 2**20
    #: elements per intermediate tensor (samples or per-angle back-projections) when chunking angles
    chunk_elements: int = 2**23
    #: sample points computed at a time (in float64) while building a grid
    grid_build_points: int = 2**22

    def _parse_geometry(self, shape, n_angles, angle_range, angle_start, angles, extent) -> None:
        owner = type(self).__name__
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 3:
            raise ValueError(f"{owner}: shape must be (C, H, W), got {shape!r}")
        self._shape = tuple(_check_int(owner, f"shape[{i}]", s, 1) for i, s in enumerate(shape))
        _, H, W = self._shape
        self.extent = _check_float(owner, "extent", extent, positive=True)
        self.pixel_size = self.extent / max(H, W)
        self.angle_range = _check_float(owner, "angle_range", angle_range)
        self.angle_start = _check_float(owner, "angle_start", angle_start)
        if angles is not None:
            if isinstance(angles, (str, bytes)) or not isinstance(angles, Sequence) or len(angles) == 0:
                raise ValueError(f"{owner}: angles must be a non-empty list of degrees, got {angles!r}")
            self._angles = [_check_float(owner, f"angles[{i}]", a) for i, a in enumerate(angles)]
            self._explicit_angles = True
        else:
            n_angles = _check_int(owner, "n_angles", n_angles, 1)
            if not 0.0 < self.angle_range <= 360.0:
                raise ValueError(f"{owner}: angle_range must lie in (0, 360] degrees, got {angle_range}")
            step = self.angle_range / n_angles
            self._angles = [self.angle_start + i * step for i in range(n_angles)]
            self._explicit_angles = False
        self.n_angles = len(self._angles)
        # the interpolated image lives in |row − cy| < (H+1)/2, |col − cx| < (W+1)/2 (pixels): every
        # ray sample within R (half that box's diagonal) of the ray's closest point to the centre
        self.support_radius = 0.5 * math.hypot(H + 1, W + 1) * self.pixel_size
        self.n_rays = 2 * math.ceil(0.5 * math.hypot(H + 1, W + 1)) - 1

    def _finish(self, n_detectors: int) -> None:
        self.n_detectors = _check_int(type(self).__name__, "n_detectors", n_detectors, 1)
        C, H, W = self._shape
        super().__init__((C, H, W), (C, self.n_angles, self.n_detectors))
        self._grid_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    # ----------------------------------------------------------------- description
    @property
    def angles_deg(self) -> torch.Tensor:
        """Projection angles in degrees, ``(n_angles,)`` float64 on the CPU."""
        return torch.tensor(self._angles, dtype=torch.float64)

    def _angles_config(self) -> dict[str, Any]:
        return {
            "shape": list(self.x_shape),
            "n_angles": self.n_angles,
            "angle_range": self.angle_range,
            "angle_start": self.angle_start,
            "angles": list(self._angles) if self._explicit_angles else None,
            "extent": self.extent,
        }

    def extra_repr(self) -> str:
        a = self._angles
        return (f"{super().extra_repr()}, angles=[{a[0]:g}..{a[-1]:g}] ({self.n_angles}), n_rays={self.n_rays}, "
                f"pixel_size={self.pixel_size:g}")

    @property
    def detector_positions(self) -> torch.Tensor:
        """Physical detector offsets from the detector's centre, ``(n_detectors,)`` float64."""
        return self._centred(self.n_detectors, self.detector_spacing, torch.device("cpu"), torch.float64)

    # ----------------------------------------------------------------- sampling grid
    @staticmethod
    def _centred(n: int, spacing: float, device, dtype) -> torch.Tensor:
        """``(k − (n − 1)/2)·spacing`` for ``k < n``: a grid symmetric about 0."""
        return (torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2) * spacing

    def _radians(self, a0: int, a1: int, device, dtype) -> torch.Tensor:
        return torch.tensor(self._angles[a0:a1], dtype=torch.float64).mul(math.pi / 180.0).to(device, dtype)

    def _points(self, a0: int, a1: int, device, dtype) -> torch.Tensor:
        """Physical sample coordinates ``(a1 − a0, n_rays, n_det, 2)`` as (x, y)."""
        raise NotImplementedError

    def _make_grid(self, a0: int, a1: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``grid_sample`` coordinates of ``_points``: with ``align_corners=False`` the image spans
        [−1, 1] edge to edge, i.e. ``x/(W p/2)`` along columns and ``−y/(H p/2)`` along rows.

        Computed on ``device`` in float64 (float32 where float64 is missing), a few angles at a time
        so the float64 intermediates stay ≲ 64 MiB, then stored in ``dtype``.
        """
        _, H, W = self.x_shape
        device = torch.device(device)
        work = torch.float32 if device.type == "mps" else torch.float64
        scale = torch.tensor([2.0 / (W * self.pixel_size), -2.0 / (H * self.pixel_size)], device=device, dtype=work)
        step = max(1, self.grid_build_points // (self.n_rays * self.n_detectors))
        # built outside inference mode so a cached grid is an ordinary tensor usable by autograd later
        with torch.inference_mode(False), torch.no_grad():
            out = torch.empty(a1 - a0, self.n_rays, self.n_detectors, 2, device=device, dtype=dtype)
            for b0 in range(a0, a1, step):
                b1 = min(b0 + step, a1)
                out[b0 - a0 : b1 - a0] = self._points(b0, b1, device, work) * scale
            return out

    def _grid_chunks(self, like: torch.Tensor, per_angle: int):
        """Yield ``(a0, a1, grid)`` over angle chunks whose intermediates have ≲ chunk_elements."""
        if not like.is_floating_point():
            raise TypeError(f"{type(self).__name__}: inputs must be floating point, got {like.dtype}")
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
        # samples every pixel_size along the ray: Σ · p approximates the line integral
        y = torch.cat(out, 0).transpose(0, 1).reshape(B, C, self.n_angles, self.n_detectors)
        return y * self.pixel_size

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
        return x.reshape(B, C, H, W) * self.pixel_size

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Project.apply(x, self)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return _Backproject.apply(y, self)


class CT(RayTransform):
    """Parallel-beam Radon transform ``(C, H, W) → (C, n_angles, n_detectors)``, channels independent.

    Angles (degrees) as in ``RayTransform``: sparse view = few angles over 180°, limited angle =
    ``angle_range < 180``. ``extent``: physical side of the image's longer side (default 2, i.e.
    ``[-1, 1]²``; ``extent = max(H, W)`` gives the pixel units of skimage's ``radon``).
    ``detector_spacing`` (physical) defaults to the pixel size; ``n_detectors`` defaults to enough
    detectors to cover the diagonal of a square of side ``extent`` (``ceil(√2·max(H, W))`` at the
    default spacing), so every pixel centre is seen at every angle. ``pinv``/``normal_solve`` are the
    base class' CG.
    """

    def __init__(
        self,
        shape: tuple[int, int, int] | list[int] = (1, 32, 32),
        n_angles: int = 180,
        angle_range: float = 180.0,
        angle_start: float = 0.0,
        n_detectors: int | None = None,
        angles: list[float] | None = None,
        extent: float = 2.0,
        detector_spacing: float | None = None,
    ):
        self._parse_geometry(shape, n_angles, angle_range, angle_start, angles, extent)
        _, H, W = self._shape
        if detector_spacing is None:
            self.detector_spacing = self.pixel_size
            default_n = math.ceil(math.sqrt(2.0) * max(H, W))
        else:
            self.detector_spacing = _check_float("CT", "detector_spacing", detector_spacing, positive=True)
            default_n = math.ceil(math.sqrt(2.0) * self.extent / self.detector_spacing - 1e-9)
        self._explicit_spacing = detector_spacing is not None
        self._finish(default_n if n_detectors is None else n_detectors)

    def config(self) -> dict[str, Any]:
        return {
            **self._angles_config(),
            "n_detectors": self.n_detectors,
            "detector_spacing": self.detector_spacing if self._explicit_spacing else None,
        }

    def _points(self, a0: int, a1: int, device, dtype) -> torch.Tensor:
        th = self._radians(a0, a1, device, dtype)
        c, s = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
        t = self._centred(self.n_detectors, self.detector_spacing, device, dtype)[None, None, :]
        r = self._centred(self.n_rays, self.pixel_size, device, dtype)[None, :, None]
        return torch.stack([t * c + r * s, t * s - r * c], -1)  # x = t e_t + s e_s

    # ----------------------------------------------------------------- classical reconstruction
    def ramp_filter(self, y: torch.Tensor) -> torch.Tensor:
        """Convolve every projection with the band-limited ramp filter (Ram–Lak, unit detector spacing).

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
        Hf = torch.fft.rfft(h).real.to(device=y.device, dtype=work.dtype)  # h is even, so its DFT is real
        return torch.fft.irfft(torch.fft.rfft(work, n=P, dim=-1) * Hf, n=P, dim=-1)[..., :n].to(y.dtype)

    def fbp(self, y: torch.Tensor) -> torch.Tensor:
        """Filtered back-projection: ramp filter, then ``Aᵀ`` scaled by ``π / (n_angles p²)``.

        In physical units the ramp kernel is ``h[k]/Δ`` and a back-projection over one angle is
        ``(Δ/p²)·Aᵀ`` (ray samples every p, detectors every Δ), so Δ cancels. (Unit pixels: skimage's
        ``2|ν|`` filter with ``π/(2·n_angles)``.) The angle weight assumes angles spread uniformly over
        180°; with limited-angle or irregular sets it is only a rough reconstruction, and even over 180°
        it is slightly smoothed by the bilinear transpose.
        """
        self._check(y, self.y_shape, "y")
        if not y.is_floating_point():
            raise TypeError(f"CT: inputs must be floating point, got {y.dtype}")
        return self.adjoint(self.ramp_filter(y)) * (math.pi / (self.n_angles * self.pixel_size**2))
