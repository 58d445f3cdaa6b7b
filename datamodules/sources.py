"""Image sources: map-style datasets of images ``(C, H, W)`` in [-1, 1], float32, deterministic per index.

Synthetic sources (``Ellipses``, ``GaussianRandomField``) draw image ``i`` from its own generator seeded
by ``seed_for(seed, i)``, so an image never depends on which worker, rank or batch asks for it and the
global RNG is never touched. On-disk sources (``Digits``, ``TorchvisionImages``, ``ImageFolder``) read
local files only and fail with a message that says where the data was expected and how to get it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from diffpost.random import make_generator, seed_for


def _check_positive_int(name: str, value: int, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return value


def _index(i: int, length: int, owner: str) -> int:
    """Python-style index normalisation with an IndexError (DataLoader and ``list()`` rely on it)."""
    i = int(i)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"{owner}: index {i} out of range for length {length}")
    return i


# ----------------------------------------------------------------------------------------- ellipses
class Ellipses(Dataset):
    """Random CT-like ellipse phantoms, rasterised at any resolution.

    A phantom is a set of ellipses in continuous coordinates on ``[-1, 1]²`` (a large body ellipse plus
    up to ``max_ellipses − 1`` smaller inner ones inside it) with additive intensities, clipped to
    ``[0, 1]`` pointwise and mapped to ``[-1, 1]`` (background −1). Pixel values are the average of the
    clipped continuous phantom over ``supersample²`` sub-pixel centres (anti-aliasing). Parameters do
    not depend on ``size``, so the same index gives the same continuous phantom at every resolution.
    With ``channels > 1`` every ellipse has one intensity per channel.
    """

    def __init__(
        self,
        size: int = 32,
        channels: int = 1,
        length: int = 10000,
        seed: int = 0,
        max_ellipses: int = 8,
        supersample: int = 4,
    ):
        super().__init__()
        self.size = _check_positive_int("size", size, "Ellipses")
        self.channels = _check_positive_int("channels", channels, "Ellipses")
        self.length = _check_positive_int("length", length, "Ellipses")
        self.max_ellipses = _check_positive_int("max_ellipses", max_ellipses, "Ellipses")
        self.supersample = _check_positive_int("supersample", supersample, "Ellipses")
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def parameters_of(self, index: int) -> dict[str, torch.Tensor]:
        """The continuous phantom of image ``index``: centres (n, 2), semi-axes (n, 2), angles (n,),
        intensities (n, channels); row 0 is the body. Coordinates are (x, y) on [-1, 1]²."""
        i = _index(index, self.length, "Ellipses")
        g = make_generator(seed_for(self.seed, i))
        C = self.channels

        def u(n: int, lo: float, hi: float, *shape: int) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand((n, *shape), generator=g, dtype=torch.float64)

        n_inner = int(torch.randint(0, self.max_ellipses, (1,), generator=g)) if self.max_ellipses > 1 else 0
        body_c = u(1, -0.08, 0.08, 2)
        body_ax = torch.cat([u(1, 0.62, 0.9, 1), u(1, 0.5, 0.8, 1)], 1)
        body_th = u(1, 0.0, math.pi)
        body_I = u(1, 0.45, 0.8, C)
        # inner ellipses: centres uniform over the inner 75% of the body (in its own frame)
        r = 0.75 * torch.sqrt(u(n_inner, 0.0, 1.0))
        phi = u(n_inner, 0.0, 2 * math.pi)
        local = torch.stack([body_ax[0, 0] * r * torch.cos(phi), body_ax[0, 1] * r * torch.sin(phi)], 1)
        ct, st = torch.cos(body_th[0]), torch.sin(body_th[0])
        rot = torch.stack([torch.stack([ct, -st]), torch.stack([st, ct])])
        inner_c = body_c + local @ rot.T
        inner_ax = u(n_inner, 0.04, 0.3, 2)
        inner_th = u(n_inner, 0.0, math.pi)
        # signed: denser and lighter structures; clipping keeps the sum in range
        inner_I = u(n_inner, -0.4, 0.4, C)
        return {
            "centers": torch.cat([body_c, inner_c]),
            "axes": torch.cat([body_ax, inner_ax]),
            "angles": torch.cat([body_th, inner_th]),
            "intensities": torch.cat([body_I, inner_I]),
        }

    @staticmethod
    def render(params: dict[str, torch.Tensor], size: int, supersample: int = 4) -> torch.Tensor:
        """Rasterise a continuous phantom at ``size × size``; returns (C, size, size) float32 in [-1, 1].

        Each ellipse is tested only on the sub-pixels of its bounding box (plus one sub-pixel of
        margin), with the same float64 operations per sub-pixel as a test over the whole grid, so the
        pixels are bit-identical to the full-grid rendering (which cost ≈ 50 ms per 128² phantom);
        outside the box the test is false.
        """
        n_sub = size * supersample
        h = 2.0 / n_sub
        t = -1.0 + (torch.arange(n_sub, dtype=torch.float64) + 0.5) * h  # rows are y, columns are x
        value = torch.zeros(params["intensities"].shape[1], n_sub, n_sub, dtype=torch.float64)
        for c, ax, th, inten in zip(params["centers"], params["axes"], params["angles"], params["intensities"]):
            cos, sin = torch.cos(th), torch.sin(th)
            a, b, cx, cy, co, si = (float(v) for v in (ax[0], ax[1], c[0], c[1], cos, sin))
            # half extents of the rotated ellipse's bounding box along x and y
            wx, wy = math.hypot(a * co, b * si), math.hypot(a * si, b * co)
            c0, c1 = max(0, math.floor((cx - wx + 1.0) / h - 0.5) - 1), min(n_sub, math.ceil((cx + wx + 1.0) / h - 0.5) + 2)
            r0, r1 = max(0, math.floor((cy - wy + 1.0) / h - 0.5) - 1), min(n_sub, math.ceil((cy + wy + 1.0) / h - 0.5) + 2)
            if c0 >= c1 or r0 >= r1:
                continue
            dx, dy = (t[c0:c1] - c[0])[None, :], (t[r0:r1] - c[1])[:, None]
            # in place, but the same operations in the same order as (dx cos + dy sin)/a etc.
            u = torch.add(dx * cos, dy * sin).div_(ax[0])
            v = torch.add(-dx * sin, dy * cos).div_(ax[1])
            inside = u.mul_(u).add_(v.mul_(v)) <= 1.0
            value[:, r0:r1, c0:c1] += inten[:, None, None] * inside
        value = value.clamp(0.0, 1.0)
        value = value.reshape(-1, size, supersample, size, supersample).mean(dim=(2, 4))
        return (2.0 * value - 1.0).to(torch.float32)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.render(self.parameters_of(index), self.size, self.supersample)


# ------------------------------------------------------------------------- Gaussian random field
class GaussianRandomField(Dataset):
    """Draws from the stationary Gaussian random field ``N(0, amplitude (τ² I − Δ)^(−s))`` on the unit
    periodic square (``diffpost.priors.GaussianRandomField``: pointwise variance 1 at every resolution),
    one per index. Values are not clipped: a GRF is unbounded (|x| > 1 happens, |x| > 4 is rare).

    ``prior`` is that analytic prior (float64), so exact posteriors are known for these images.
    """

    def __init__(self, size: int = 32, channels: int = 1, length: int = 10000, seed: int = 0, tau: float = 3.0, s: float = 2.0):
        super().__init__()
        from diffpost.priors import GaussianRandomField as GRFPrior

        self.size = _check_positive_int("size", size, "GaussianRandomField")
        self.channels = _check_positive_int("channels", channels, "GaussianRandomField")
        self.length = _check_positive_int("length", length, "GaussianRandomField")
        self.seed = int(seed)
        self.prior = GRFPrior((self.channels, self.size, self.size), tau, s)  # validates tau, s
        self.tau, self.s = self.prior.tau, self.prior.s

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        i = _index(index, self.length, "GaussianRandomField")
        return self.prior.sample(1, make_generator(seed_for(self.seed, i)))[0].to(torch.float32)


# ---------------------------------------------------------------------------------------- digits
class Digits(Dataset):
    """scikit-learn's 1,797 handwritten 8×8 digits (shipped with the package, no download), resized
    bilinearly to ``size``; one channel. The order is a fixed permutation drawn from ``split_seed``
    so contiguous index ranges (the datamodule's splits) mix all classes; ``length`` truncates it."""

    def __init__(self, size: int = 32, length: int | None = None, split_seed: int = 0):
        super().__init__()
        self.size = _check_positive_int("size", size, "Digits")
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # dev extra
            raise ImportError("Digits needs scikit-learn: pip install scikit-learn") from e
        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (N, 8, 8), values 0..16
        perm = torch.randperm(images.shape[0], generator=make_generator(seed_for(split_seed)))
        n = images.shape[0]
        if length is not None:
            _check_positive_int("length", length, "Digits")
            if length > n:
                raise ValueError(f"Digits: length {length} exceeds the {n} available images")
            n = length
        perm = perm[:n]
        self.images = (images[perm] / 16.0 * 2.0 - 1.0).unsqueeze(1)  # (n, 1, 8, 8) in [-1, 1]
        self.labels = torch.as_tensor(bunch.target, dtype=torch.long)[perm]
        self.channels = 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.images[_index(index, len(self), "Digits")]
        if self.size != x.shape[-1]:
            # bilinear weights are a convex combination, so the range stays [-1, 1]
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return x.clone()


# --------------------------------------------------------------------------------- torchvision
_TORCHVISION_LAYOUT = {
    "MNIST": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "FashionMNIST": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "CIFAR10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
}


class TorchvisionImages(Dataset):
    """MNIST, FashionMNIST or CIFAR10 from a local ``root`` (torchvision's layout), as images in [-1, 1].

    ``size`` resizes (bilinear, antialiased); ``grayscale`` converts RGB with ITU-R 601 weights.
    Nothing is downloaded unless ``download=True``.
    """

    def __init__(
        self,
        name: Literal["MNIST", "FashionMNIST", "CIFAR10"],
        root: str,
        train: bool = True,
        size: int | None = None,
        grayscale: bool = False,
        download: bool = False,
    ):
        super().__init__()
        if name not in _TORCHVISION_LAYOUT:
            raise ValueError(f"TorchvisionImages: name must be one of {sorted(_TORCHVISION_LAYOUT)}, got {name!r}")
        if size is not None:
            _check_positive_int("size", size, "TorchvisionImages")
        import torchvision

        self.name, self.root, self.train, self.size, self.grayscale = name, str(root), bool(train), size, bool(grayscale)
        hint = (
            f"TorchvisionImages: {name} not found under {self.root!r} (expected {os.path.join(self.root, _TORCHVISION_LAYOUT[name])}). "
            f"Download it once on a machine with internet, e.g. "
            f"`python -c \"import torchvision; torchvision.datasets.{name}('{self.root}', train={self.train}, download=True)\"`, "
            f"or pass download=True."
        )
        if not download and not os.path.isdir(self.root):
            raise FileNotFoundError(hint)
        try:
            ds = getattr(torchvision.datasets, name)(self.root, train=self.train, download=download)
        except RuntimeError as e:
            if download:
                raise
            raise FileNotFoundError(f"{hint} ({e})") from e
        data = ds.data
        data = torch.as_tensor(np.asarray(data)) if not torch.is_tensor(data) else data
        # uint8 (N, H, W) for the MNISTs, (N, H, W, 3) for CIFAR10; kept as uint8 to save memory
        self.data = data.unsqueeze(-1) if data.dim() == 3 else data
        self.labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
        self.channels = 1 if (self.grayscale or self.data.shape[-1] == 1) else self.data.shape[-1]

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.data[_index(index, len(self), "TorchvisionImages")].permute(2, 0, 1).to(torch.float32) / 255.0
        if self.grayscale and x.shape[0] == 3:
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)[0]
            x = x.clamp(0.0, 1.0)  # antialiasing kernels have small negative lobes
        return 2.0 * x - 1.0


# -------------------------------------------------------------------------------- image folder
class ImageFolder(Dataset):
    """Every image file under ``root`` (recursive, sorted by path), centre-cropped to a square and
    resized (bilinear, antialiased by PIL) to ``size × size``; 1 channel if ``grayscale`` else 3."""

    def __init__(
        self,
        root: str,
        size: int = 64,
        grayscale: bool = True,
        extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg"),
    ):
        super().__init__()
        self.size = _check_positive_int("size", size, "ImageFolder")
        self.grayscale = bool(grayscale)
        self.channels = 1 if self.grayscale else 3
        self.root = Path(root).expanduser()
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if not self.root.exists():
            raise FileNotFoundError(f"ImageFolder: folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"ImageFolder: {str(self.root)!r} is not a folder")
        self.paths = sorted(
            (p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in exts),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        if not self.paths:
            raise FileNotFoundError(f"ImageFolder: no images with extensions {exts} found under {str(self.root)!r}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.paths[_index(index, len(self), "ImageFolder")]
        try:
            with Image.open(path) as img:
                img.load()
                img = _to_float_image(img, self.grayscale)
        except (OSError, ValueError) as e:
            raise ValueError(f"ImageFolder: cannot read image {str(path)!r}: {e}") from e
        w, h = img[0].size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        chans = [np.asarray(c.crop(box).resize((self.size, self.size), Image.Resampling.BILINEAR), dtype=np.float32) for c in img]
        x = torch.from_numpy(np.stack(chans, 0)).clamp(0.0, 1.0)
        return 2.0 * x - 1.0


def _to_float_image(img, grayscale: bool) -> list:
    """Per-channel PIL images of mode 'F' with values in [0, 1] (handles 8- and 16-bit files)."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if img.mode != "F" else max(float(arr.max()), 1.0)
        gray = Image.fromarray(arr / scale)
        return [gray] if grayscale else [gray, gray, gray]
    img = img.convert("L" if grayscale else "RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if grayscale:
        return [Image.fromarray(arr)]
    return [Image.fromarray(np.ascontiguousarray(arr[..., c])) for c in range(3)]
