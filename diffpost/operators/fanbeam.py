"""2-D fan-beam CT with a flat detector, in the physical units of ``diffpost.operators.ct``.

At angle β the source sits at ``S = −R_s e_s`` and the flat detector's centre at ``R_d e_s``, its axis
along ``e_t`` (``e_t = (cos β, sin β)``, ``e_s = (sin β, −cos β)``: the parallel-beam frame of ``CT``, so
β = 0 puts the source above the image and, as ``R_s → ∞``, ``FanBeamCT`` tends to ``CT`` with detector
offsets scaled by the magnification ``(R_s + R_d)/R_s``). Detector ``k`` is at
``u_k = (k − (n_det − 1)/2)·Δ`` with ``Δ = 2 (R_s + R_d) tan(fan_angle/2) / n_det``, so the detector cells
tile the fan. The ray to detector ``k`` makes the angle ``α_k = atan(u_k/(R_s + R_d))`` with the central
ray and passes closest to the rotation centre at distance ``R_s cos α_k`` from the source; it is sampled
every pixel size on both sides of that point, far enough to cross the whole interpolated image, and
the samples are summed and multiplied by the pixel size (a line integral). Forward, exact adjoint and
autograd come from ``RayTransform``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from diffpost.operators.ct import RayTransform, _check_float


class FanBeamCT(RayTransform):
    """Fan-beam ray transform ``(C, H, W) → (C, n_angles, n_detectors)``, channels independent.

    Distances are physical (the image's longer side spans ``extent``, default ``[-1, 1]²``):
    ``source_distance`` ``R_s`` (source to rotation centre, beyond the image's support),
    ``detector_distance`` ``R_d`` (rotation centre to detector, ≥ 0; 0 is a virtual detector through
    the centre). ``fan_angle`` (degrees, full opening) defaults to the fan that just covers the image's
    circumscribed circle, ``2·asin(r/R_s)`` with ``r`` the half-diagonal of the ``extent`` square (for
    non-square images, of the image). ``n_detectors`` defaults to ``ceil(√2·max(H, W))``, as for
    ``CT``. Angles (source positions, degrees) default to a full 360° scan. No FBP (fan-beam FBP needs
    its own weights); ``pinv``/``normal_solve`` are the base class' CG.
    """

    def __init__(
        self,
        shape: tuple[int, int, int] | list[int] = (1, 32, 32),
        n_angles: int = 360,
        angle_range: float = 360.0,
        angle_start: float = 0.0,
        n_detectors: int | None = None,
        angles: list[float] | None = None,
        extent: float = 2.0,
        source_distance: float = 4.0,
        detector_distance: float = 4.0,
        fan_angle: float | None = None,
    ):
        self._parse_geometry(shape, n_angles, angle_range, angle_start, angles, extent)
        _, H, W = self._shape
        self.source_distance = _check_float("FanBeamCT", "source_distance", source_distance, positive=True)
        self.detector_distance = _check_float("FanBeamCT", "detector_distance", detector_distance)
        if self.detector_distance < 0:
            raise ValueError(f"FanBeamCT: detector_distance must be >= 0, got {detector_distance!r}")
        if self.source_distance <= self.support_radius:
            raise ValueError(
                f"FanBeamCT: source_distance {self.source_distance:g} must exceed the image's radius "
                f"{self.support_radius:g} (the source must lie outside the image)"
            )
        self._given_fan_angle = None if fan_angle is None else _check_float("FanBeamCT", "fan_angle", fan_angle)
        if fan_angle is None:
            half_diagonal = 0.5 * self.pixel_size * math.hypot(H, W)
            self.fan_angle = 2.0 * math.degrees(math.asin(half_diagonal / self.source_distance))
        else:
            if not 0.0 < self._given_fan_angle < 180.0:
                raise ValueError(f"FanBeamCT: fan_angle must lie in (0, 180) degrees, got {fan_angle!r}")
            self.fan_angle = self._given_fan_angle
        self._finish(math.ceil(math.sqrt(2.0) * max(H, W)) if n_detectors is None else n_detectors)
        self.detector_spacing = (
            2.0 * (self.source_distance + self.detector_distance) * math.tan(math.radians(self.fan_angle) / 2) / self.n_detectors
        )

    def config(self) -> dict[str, Any]:
        return {
            **self._angles_config(),
            "n_detectors": self.n_detectors,
            "source_distance": self.source_distance,
            "detector_distance": self.detector_distance,
            "fan_angle": self._given_fan_angle,
        }

    def _points(self, a0: int, a1: int, device, dtype) -> torch.Tensor:
        Rs, Rd = self.source_distance, self.detector_distance
        u = self._centred(self.n_detectors, self.detector_spacing, device, dtype)  # u_k on the detector
        alpha = torch.atan(u / (Rs + Rd))  # (n_det,) ray angle to the central ray
        s = self._centred(self.n_rays, self.pixel_size, device, dtype)
        dist = Rs * torch.cos(alpha)[None, :] + s[:, None]  # (n_rays, n_det) distance from the source
        pt = dist * torch.sin(alpha)  # coordinates in the (e_t, e_s) frame
        ps = dist * torch.cos(alpha) - Rs
        b = self._radians(a0, a1, device, dtype)
        c, sn = torch.cos(b)[:, None, None], torch.sin(b)[:, None, None]
        return torch.stack([pt * c + ps * sn, pt * sn - ps * c], -1)  # x = pt e_t + ps e_s
