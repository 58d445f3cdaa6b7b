"""CT series on disk as image sources: DICOM files (``DicomFolder``) or 16-bit PNG/TIFF slices
(``SliceFolder``), in Hounsfield units, windowed and resampled to the training size, in [-1, 1].

Pipeline per slice (one home: ``hu_to_image``): stored values → HU (DICOM: the modality LUT, i.e.
``RescaleSlope·v + RescaleIntercept``; slices: the given slope/intercept) → centred square crop of the
largest physical square (``PixelSpacing`` honoured, so anisotropic pixels come out square) → bilinear
antialiased resize to ``size × size`` (an average of HU, before any clipping) → window
``[center − width/2, center + width/2]`` mapped linearly to ``[-1, 1]`` and clipped.
Bad input (missing or empty folder, a file that is not DICOM or not a 16-bit image, a DICOM without
an image) is a ``ValueError`` naming the folder or file, raised when the source is built (headers are
read then), or for undecodable pixel data when the slice is read.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.sources import _check_positive_int, _index


def hu_to_image(hu: np.ndarray, size: int, window_center: float, window_width: float,
                spacing: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """``(H, W)`` Hounsfield units → ``(1, size, size)`` float32 in [-1, 1] (crop, resize, window)."""
    x = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float64))
    H, W = x.shape
    dr, dc = spacing
    side = min(H * dr, W * dc)  # the largest centred physical square
    h, w = min(H, max(1, round(side / dr))), min(W, max(1, round(side / dc)))
    x = x[(H - h) // 2 : (H - h) // 2 + h, (W - w) // 2 : (W - w) // 2 + w]
    if (h, w) != (size, size):
        x = F.interpolate(x[None, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    lo = window_center - window_width / 2
    return ((x - lo) / window_width * 2.0 - 1.0).clamp(-1.0, 1.0).to(torch.float32)[None]


def _files(owner: str, root: str, pattern: str) -> tuple[Path, list[Path]]:
    path = Path(root).expanduser()
    if not path.exists():
        raise ValueError(f"{owner}: folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"{owner}: {str(path)!r} is not a folder")
    files = sorted(
        (p for p in path.rglob(pattern) if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR"),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise ValueError(f"{owner}: no files matching {pattern!r} under {str(path)!r}")
    return path, files


def _check_window(owner: str, center, width) -> None:
    for name, v in (("window_center", center), ("window_width", width)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"{owner}: {name} must be a finite number or None, got {v!r}")
    if width is not None and width <= 0:
        raise ValueError(f"{owner}: window_width must be positive, got {width!r}")


class DicomFolder(Dataset):
    """Every DICOM image under ``root`` (recursive, files matching ``pattern``, sorted by path; a
    ``DICOMDIR`` index and hidden files are ignored), one item per slice (per frame of multi-frame
    files), as ``(1, size, size)`` float32 in [-1, 1].

    Window (HU): ``window_center``/``window_width``, default 40/400 (soft tissue; lung −600/1500,
    bone 400/1800, the whole range of a typical scan 0/2000); ``None`` takes each file's own
    ``WindowCenter``/``WindowWidth`` (their first value). Compressed transfer syntaxes need pydicom's
    optional decoders (e.g. pylibjpeg); without them reading that slice raises a ``ValueError``.
    """

    def __init__(
        self,
        root: str,
        size: int = 128,
        window_center: float | None = 40.0,
        window_width: float | None = 400.0,
        pattern: str = "*",
    ):
        super().__init__()
        import pydicom
        from pydicom.errors import InvalidDicomError

        self.size = _check_positive_int("size", size, "DicomFolder")
        _check_window("DicomFolder", window_center, window_width)
        self.window_center, self.window_width, self.channels = window_center, window_width, 1
        self.root, files = _files("DicomFolder", root, pattern)
        self.items: list[tuple[Path, int]] = []  # (file, frame)
        for p in files:
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except InvalidDicomError:
                raise ValueError(f"DicomFolder: {str(p)!r} is not a DICOM file (no DICM header)") from None
            except (OSError, ValueError, EOFError) as e:
                raise ValueError(f"DicomFolder: cannot read DICOM file {str(p)!r}: {e}") from None
            if "Rows" not in ds or "Columns" not in ds:
                raise ValueError(f"DicomFolder: {str(p)!r} holds no image (no Rows/Columns)")
            if window_center is None and ("WindowCenter" not in ds or "WindowWidth" not in ds):
                raise ValueError(f"DicomFolder: {str(p)!r} has no WindowCenter/WindowWidth; pass window_center and window_width")
            self.items += [(p, f) for f in range(int(ds.get("NumberOfFrames", 1) or 1))]

    def __len__(self) -> int:
        return len(self.items)

    def hounsfield(self, index: int) -> tuple[np.ndarray, object]:
        """Slice ``index`` in HU at its stored resolution, float64, and its dataset (header)."""
        import pydicom
        from pydicom.pixels import apply_modality_lut

        path, frame = self.items[_index(index, len(self), "DicomFolder")]
        try:
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
        except Exception as e:  # decoders raise many types (missing plugin, corrupt stream)
            raise ValueError(f"DicomFolder: cannot decode the pixel data of {str(path)!r}: {e}") from None
        if arr.ndim == 3 and int(ds.get("NumberOfFrames", 1) or 1) > 1:
            arr = arr[frame]
        if arr.ndim != 2:
            raise ValueError(f"DicomFolder: {str(path)!r} is not a greyscale slice (pixel array {arr.shape})")
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64), ds

    def __getitem__(self, index: int) -> torch.Tensor:
        from pydicom.multival import MultiValue

        hu, ds = self.hounsfield(index)
        center, width = self.window_center, self.window_width
        if center is None:  # the file's own window; several values (alternatives) → the first
            center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (ds.WindowCenter, ds.WindowWidth))
        spacing = tuple(float(s) for s in ds.get("PixelSpacing", (1.0, 1.0)))
        return hu_to_image(hu, self.size, center, width, spacing)


class SliceFolder(Dataset):
    """A CT series stored as 16-bit PNG/TIFF slices (one image per file; unsigned or signed), read at
    full 16-bit depth: ``HU = rescale_slope·stored + rescale_intercept`` (default 1, −1024: the common
    "HU + 1024 as uint16" export), then cropped, resized and windowed like ``DicomFolder``. 8-bit
    images are refused (use ``ImageFolder`` for those).
    """

    def __init__(
        self,
        root: str,
        size: int = 128,
        window_center: float = 40.0,
        window_width: float = 400.0,
        rescale_slope: float = 1.0,
        rescale_intercept: float = -1024.0,
        extensions: tuple[str, ...] = (".png", ".tif", ".tiff"),
    ):
        super().__init__()
        self.size = _check_positive_int("size", size, "SliceFolder")
        _check_window("SliceFolder", window_center, window_width)
        if window_center is None or window_width is None:
            raise ValueError("SliceFolder: window_center and window_width are required (slices carry no window)")
        for name, v in (("rescale_slope", rescale_slope), ("rescale_intercept", rescale_intercept)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"SliceFolder: {name} must be a finite number, got {v!r}")
        self.window_center, self.window_width = float(window_center), float(window_width)
        self.rescale_slope, self.rescale_intercept, self.channels = float(rescale_slope), float(rescale_intercept), 1
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.root, files = _files("SliceFolder", root, "*")
        self.paths = [p for p in files if p.suffix.lower() in exts]
        if not self.paths:
            raise ValueError(f"SliceFolder: no {'/'.join(exts)} files under {str(self.root)!r}")

    def __len__(self) -> int:
        return len(self.paths)

    def stored(self, index: int) -> np.ndarray:
        """The stored 16-bit values of slice ``index`` as int64 (no scaling)."""
        from PIL import Image

        path = self.paths[_index(index, len(self), "SliceFolder")]
        try:
            with Image.open(path) as img:
                img.load()
                mode = img.mode
                arr = np.asarray(img)
        except (OSError, ValueError) as e:
            raise ValueError(f"SliceFolder: cannot read image {str(path)!r}: {e}") from None
        if not (mode.startswith("I;16") or mode == "I") or arr.ndim != 2:
            raise ValueError(f"SliceFolder: {str(path)!r} is not a 16-bit greyscale slice (PIL mode {mode})")
        return arr.astype(np.int64)

    def __getitem__(self, index: int) -> torch.Tensor:
        hu = self.stored(index) * self.rescale_slope + self.rescale_intercept
        return hu_to_image(hu, self.size, self.window_center, self.window_width)
