"""Image reconstruction metrics (METHODS §7). Inputs are in the core's [-1, 1] range and are mapped
to [0, 1] with ``data_range = 1``; every function returns per-image values ``(B,)`` so callers can
average per-image PSNR (the convention), sync across ranks, or report spreads."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clamped (reconstructions can overshoot)."""
    return ((x + 1) / 2).clamp(0, 1)


def psnr(x: torch.Tensor, ref: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """Per-image PSNR in dB with data range 1 on [0, 1]; inputs in [-1, 1], shape (B, ...)."""
    mse = ((to_unit_range(x) - to_unit_range(ref)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(eps))


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, ref: torch.Tensor, *, window_size: int = 11, window_sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) with a Gaussian window, data range 1 on [0, 1].

    Means over the 'valid' region (no padding) and over channels, like scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1)``. Images smaller than the window use a window shrunk to the image.
    """
    if x.shape != ref.shape or x.dim() != 4:
        raise ValueError(f"ssim: expected two (B, C, H, W) tensors of equal shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    a, b = to_unit_range(x), to_unit_range(ref)
    size = min(window_size, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2  # odd
    g = _gaussian_window(size, window_sigma, x.dtype, x.device)
    C = x.shape[1]
    wx = g.view(1, 1, 1, -1).expand(C, 1, 1, size)
    wy = g.view(1, 1, -1, 1).expand(C, 1, size, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, wx, groups=C), wy, groups=C)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = k1**2, k2**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def bias_squared(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """UCoS-paper bias² ``‖mean − x0‖²`` per measurement; samples ``(B, S, ...)``, truth ``(B, ...)``."""
    return ((samples.mean(1) - truth) ** 2).flatten(1).sum(1)


def summed_variance(samples: torch.Tensor) -> torch.Tensor:
    """UCoS-paper variance ``Σ_pixels var`` per measurement; samples ``(B, S, ...)`` (S ≥ 2)."""
    return samples.var(1, unbiased=True).flatten(1).sum(1)


def coverage(samples: torch.Tensor, truth: torch.Tensor, level: float = 0.9) -> torch.Tensor:
    """Fraction of pixels whose truth lies in the central ``level`` credible interval of the samples.

    A calibrated sampler covers at the nominal rate (in expectation over the prior). Per measurement,
    ``(B,)``; samples ``(B, S, ...)``.
    """
    return coverage_at_levels(samples, truth, (level,))[:, 0]


def coverage_at_levels(samples: torch.Tensor, truth: torch.Tensor, levels=(0.5, 0.8, 0.9, 0.95)) -> torch.Tensor:
    """``coverage`` at several nominal levels at once (one quantile pass): ``(B, len(levels))``.

    The interval of level ``p`` is ``[q_{(1−p)/2}, q_{(1+p)/2}]`` of the ``S`` samples per pixel (linear
    interpolation). With exact posterior samples and the truth drawn from the prior its coverage tends to
    ``p`` as S grows but is far below it for few samples (0.557 for 90 % with S = 4):
    ``calibrated_coverage(S, levels)`` is what a calibrated sampler scores, the value to compare with.
    """
    levels = tuple(float(v) for v in levels)
    if not levels or not all(0 < v < 1 for v in levels):
        raise ValueError(f"coverage: levels must be in (0, 1), got {levels}")
    if samples.dim() < 2 or samples.shape[0] != truth.shape[0] or samples.shape[2:] != truth.shape[1:]:
        raise ValueError(f"coverage: samples (B, S, ...) and truth (B, ...) must agree, got {tuple(samples.shape)} and {tuple(truth.shape)}")
    if samples.shape[1] < 2:
        raise ValueError(f"coverage: needs at least 2 samples per measurement, got {samples.shape[1]}")
    p = torch.tensor(levels, dtype=torch.float32, device=samples.device)
    q = torch.quantile(samples.flatten(2).float(), torch.cat([(1 - p) / 2, (1 + p) / 2]), dim=1)  # (2L, B, pixels)
    lo, hi = q[: len(levels)], q[len(levels):]
    t = truth.flatten(1).float()[None]
    return ((t >= lo) & (t <= hi)).float().mean(-1).T


def calibrated_coverage(n_samples: int, levels=(0.5, 0.8, 0.9, 0.95), *, trials: int = 200_000) -> tuple[float, ...]:
    """What ``coverage_at_levels`` gives a perfectly calibrated sampler with ``n_samples`` samples: the
    truth and the samples exchangeable (simulated with i.i.d. Gaussians, fixed seed). Where the interval's
    ends fall on order statistics it is distribution-free, ``(j_hi − j_lo)/(S + 1)`` for 0-based
    ranks ``j``; in between, linear interpolation makes it depend slightly on the distribution."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"calibrated_coverage: n_samples must be an integer >= 2, got {n_samples!r}")
    trials = max(1000, min(trials, 4_000_000 // n_samples))
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(1, n_samples, trials, generator=g)
    truth = torch.randn(1, trials, generator=g)
    return tuple(float(c) for c in coverage_at_levels(samples, truth, levels)[0])


@dataclass(frozen=True)
class ReliabilityCurve:
    """Nominal levels against empirical coverage of central credible intervals (METHODS §7): the data
    of a reliability plot, plain numbers only (plotting lives outside the core).

    ``coverage[k]`` is the mean over measurements at ``levels[k]``; ``stderr[k]`` its standard error
    across measurements (pixels of one image are correlated, measurements are not); ``n`` measurements."""

    levels: tuple[float, ...]
    coverage: tuple[float, ...]
    stderr: tuple[float, ...]
    n: int

    @property
    def max_gap(self) -> float:
        """Largest ``|coverage − level|``: 0 for a calibrated sampler up to Monte Carlo error."""
        return max(abs(c - v) for c, v in zip(self.coverage, self.levels))

    def as_dict(self) -> dict[str, object]:
        """For ``metrics.json``: ``{"levels", "coverage", "stderr", "n", "max_gap"}``."""
        return {"levels": list(self.levels), "coverage": list(self.coverage), "stderr": list(self.stderr), "n": self.n,
                "max_gap": self.max_gap}


def reliability_curve(samples: torch.Tensor, truth: torch.Tensor, levels=(0.5, 0.8, 0.9, 0.95)) -> ReliabilityCurve:
    """``ReliabilityCurve`` of posterior samples ``(B, S, ...)`` against the truths ``(B, ...)``."""
    per = coverage_at_levels(samples, truth, levels).double()
    n = per.shape[0]
    se = per.std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full((per.shape[1],), float("nan"), dtype=per.dtype)
    return ReliabilityCurve(tuple(float(v) for v in levels), tuple(per.mean(0).tolist()), tuple(se.tolist()), n)


def gaussian_filter_denoise(x: torch.Tensor, width: float) -> torch.Tensor:
    """A Gaussian-filter denoiser (reflect padding): the classical baseline a learned prior must beat."""
    if width <= 0:
        return x.clone()
    radius = max(1, int(math.ceil(3 * width)))
    g = _gaussian_window(2 * radius + 1, width, x.dtype, x.device)
    C = x.shape[1]
    xp = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(xp, g.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(out, g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
