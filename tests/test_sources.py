"""Image sources: range, dtype, determinism per index, resolution consistency, on-disk error messages."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.sources import Digits, Ellipses, GaussianRandomField, ImageFolder, TorchvisionImages
from diffpost.fourier import dht2

# sources take per-index generators; none may touch the global RNG
pytestmark = pytest.mark.usefixtures("no_global_rng")


def _check_image(x: torch.Tensor, shape, *, clipped: bool = True):
    assert torch.is_tensor(x) and x.dtype == torch.float32 and tuple(x.shape) == tuple(shape)
    assert torch.isfinite(x).all()
    if clipped:
        assert x.min() >= -1.0 and x.max() <= 1.0


# ------------------------------------------------------------------------------------- ellipses
def test_ellipses_range_shape_and_determinism():
    a, b = Ellipses(size=32, length=50, seed=3), Ellipses(size=32, length=50, seed=3)
    for i in (0, 7, 49):
        _check_image(a[i], (1, 32, 32))
        assert torch.equal(a[i], b[i])  # a fresh instance gives the same image
    assert torch.equal(a[-1], a[49])
    # different index or seed: a different phantom
    assert (a[0] - a[1]).abs().mean() > 0.05
    assert (a[0] - Ellipses(size=32, length=50, seed=4)[0]).abs().mean() > 0.05
    with pytest.raises(IndexError):
        a[50]
    # background is exactly -1 in the corners (the body stays inside the unit disc)
    assert a[0][0, 0, 0] == -1.0 and a[0][0, -1, -1] == -1.0
    # body plus inner structure: several distinct grey levels, anti-aliased edges in between
    levels = a[0].unique()
    assert levels.numel() > 10


def test_ellipses_order_independent_and_channels():
    e = Ellipses(size=16, channels=3, length=20, seed=1)
    forward = [e[i] for i in range(20)]
    backward = [e[i] for i in reversed(range(20))][::-1]
    assert all(torch.equal(p, q) for p, q in zip(forward, backward))
    _check_image(forward[0], (3, 16, 16))
    # per-channel intensities: channels are not copies of each other
    assert (forward[0][0] - forward[0][1]).abs().max() > 0.01


def test_ellipses_resolution_consistent():
    """The same continuous phantom at 32² and 64²: 2×2-averaged 64² ≈ 32² (both approximate the pixel
    average of one continuous image); a different phantom is far away."""
    e32, e64 = Ellipses(size=32, length=20, seed=5), Ellipses(size=64, length=20, seed=5)
    for i in range(5):
        down = F.avg_pool2d(e64[i][None], 2)[0]
        diff = (e32[i] - down).abs()
        assert diff.mean() < 0.01, diff.mean()
        other = (e32[(i + 1) % 20] - down).abs().mean()
        assert other > 10 * diff.mean()


def test_ellipses_parameters_are_resolution_free():
    p16 = Ellipses(size=16, length=5, seed=2).parameters_of(3)
    p64 = Ellipses(size=64, length=5, seed=2).parameters_of(3)
    for k in p16:
        assert torch.equal(p16[k], p64[k])
    # one ellipse only: a single body, rendered with a closed-form area check
    e1 = Ellipses(size=64, length=5, seed=0, max_ellipses=1, supersample=8)
    p = e1.parameters_of(0)
    assert p["axes"].shape[0] == 1
    img = e1[0]
    # mean of (x + 1)/2 = intensity · (area fraction of the body in [-1, 1]²) = I · π a b / 4
    expected = float(p["intensities"][0, 0]) * math.pi * float(p["axes"][0, 0] * p["axes"][0, 1]) / 4
    assert abs(((img + 1) / 2).mean().item() - expected) < 2e-3 * max(expected, 1e-3) + 1e-4


def _render_full_grid(params, size, supersample):
    """The definition: every ellipse tested on every sub-pixel centre of [-1, 1]² (float64), intensities
    added, clipped to [0, 1], averaged per pixel, mapped to [-1, 1] (the renderer before issue 12)."""
    n = size * supersample
    t = -1.0 + (torch.arange(n, dtype=torch.float64) + 0.5) * (2.0 / n)
    Y, X = torch.meshgrid(t, t, indexing="ij")
    value = torch.zeros(params["intensities"].shape[1], n, n, dtype=torch.float64)
    for c, ax, th, inten in zip(params["centers"], params["axes"], params["angles"], params["intensities"]):
        dx, dy = X - c[0], Y - c[1]
        u = (dx * torch.cos(th) + dy * torch.sin(th)) / ax[0]
        v = (-dx * torch.sin(th) + dy * torch.cos(th)) / ax[1]
        value += inten[:, None, None] * (u * u + v * v <= 1.0).to(torch.float64)
    value = value.clamp(0.0, 1.0).reshape(-1, size, supersample, size, supersample).mean(dim=(2, 4))
    return (2.0 * value - 1.0).to(torch.float32)


@pytest.mark.parametrize("size,channels,supersample", [(16, 1, 4), (37, 3, 4), (64, 1, 4), (24, 1, 3)])
def test_ellipses_bounding_box_renderer_is_bit_identical_to_the_full_grid(size, channels, supersample):
    """Phantoms did not change when rendering was restricted to bounding boxes (catches a box that
    clips an ellipse: those sub-pixels would be lost), including ellipses crossing the border."""
    e = Ellipses(size=size, channels=channels, length=200, seed=11, supersample=supersample)
    for i in range(0, 200, 7):
        assert torch.equal(e[i], _render_full_grid(e.parameters_of(i), size, supersample)), i
    # an ellipse half outside the image, tilted
    p = {"centers": torch.tensor([[0.9, -0.7]], dtype=torch.float64), "axes": torch.tensor([[0.5, 0.2]], dtype=torch.float64),
         "angles": torch.tensor([0.7], dtype=torch.float64), "intensities": torch.tensor([[0.6]], dtype=torch.float64)}
    assert torch.equal(Ellipses.render(p, size, supersample), _render_full_grid(p, size, supersample))


@pytest.mark.parametrize("bad", [dict(size=0), dict(channels=0), dict(max_ellipses=0), dict(length=-1)])
def test_ellipses_bad_arguments(bad):
    with pytest.raises(ValueError):
        Ellipses(**bad)


# --------------------------------------------------------------------------- Gaussian random field
def test_grf_deterministic_and_matches_prior_spectrum():
    size, n = 16, 400
    grf = GaussianRandomField(size=size, length=n, seed=0, tau=3.0, s=2.0)
    x0 = grf[0]
    _check_image(x0, (1, size, size), clipped=False)
    assert torch.equal(x0, GaussianRandomField(size=size, length=n, seed=0)[0])
    assert not torch.equal(x0, grf[1])
    # empirical Hartley-coefficient variances against the analytic prior's eigenvalues
    xs = torch.stack([grf[i] for i in range(n)]).double()
    emp = (dht2(xs) ** 2).mean(0)
    eig = grf.prior.eigenvalues
    ratio = emp / eig  # each entry ~ χ²_400/400: mean 1, std 0.07
    assert abs(ratio.mean().item() - 1) < 0.02
    assert (ratio - 1).abs().max() < 0.4
    # the default amplitude gives pointwise variance ≈ 1 (stated by the prior)
    assert abs(xs.var().item() - eig.mean().item()) < 0.1


# -------------------------------------------------------------------------------------- digits
def _bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    M = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        M[i, i0] += 1 - (src - i0)
        M[i, i1] += src - i0
    return M


def test_digits_range_and_exact_at_native_size():
    sk = pytest.importorskip("sklearn.datasets")
    bunch = sk.load_digits()
    raw = torch.as_tensor(bunch.images, dtype=torch.float32)
    d8 = Digits(size=8, split_seed=0)
    assert len(d8) == raw.shape[0] == 1797
    # at 8×8 no resizing: the items are a permutation of the raw digits mapped 0..16 → [-1, 1]
    mapped = raw / 8.0 - 1.0
    items = torch.stack([d8[i] for i in range(len(d8))])
    _check_image(items[0], (1, 8, 8))
    assert items.min() == -1.0 and items.max() == 1.0
    assert torch.allclose(items[:, 0].sum(0), mapped.sum(0), atol=1e-3)
    for i in (0, 5, 1796):
        j = int(((mapped - items[i, 0]).abs().flatten(1).sum(1)).argmin())
        assert torch.equal(items[i, 0], mapped[j]) and int(d8.labels[i]) == int(bunch.target[j])
    other = torch.stack([Digits(size=8, split_seed=1)[i] for i in range(10)])
    assert not torch.equal(other, items[:10])
    d32 = Digits(size=32, length=100, split_seed=0)
    assert len(d32) == 100
    for i in range(0, 100, 9):
        x = d32[i]
        _check_image(x, (1, 32, 32))
        # oracle: separable bilinear interpolation at pixel centres, source coordinate
        # (i + ½)·8/32 − ½ clamped to the grid (half-pixel convention), written from the definition
        W = _bilinear_matrix(32, 8)
        assert torch.allclose(x[0].double(), W @ d8[i][0].double() @ W.T, atol=1e-5)
    # the permutation mixes classes into every contiguous range
    assert len(set(d32.labels[:30].tolist())) >= 8
    with pytest.raises(ValueError, match="exceeds"):
        Digits(length=5000)


# --------------------------------------------------------------------------------- torchvision
def test_torchvision_missing_root_is_clear(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="download") as err:
        TorchvisionImages("MNIST", root=str(missing))
    assert str(missing) in str(err.value)
    # existing but empty folder: same clear error, not torchvision's RuntimeError
    with pytest.raises(FileNotFoundError, match="MNIST"):
        TorchvisionImages("MNIST", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        TorchvisionImages("CIFAR10", root=str(tmp_path))


def _write_idx(path, arr: np.ndarray):
    """IDX format (MNIST's): magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian int32 dims, raw bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim))
        f.write(struct.pack(f">{arr.ndim}i", *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_files(tmp_path):
    pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", train)
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(5) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", test)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(3))
    ds = TorchvisionImages("MNIST", root=str(tmp_path), train=True)
    assert len(ds) == 5
    x = ds[2]
    _check_image(x, (1, 28, 28))
    assert torch.allclose(x[0], torch.from_numpy(train[2]).float() / 255 * 2 - 1)
    assert len(TorchvisionImages("MNIST", root=str(tmp_path), train=False)) == 3
    small = TorchvisionImages("MNIST", root=str(tmp_path), size=14)
    _check_image(small[2], (1, 14, 14))
    # antialiased 2× downsampling of a 28² image ≈ 2×2 block mean
    assert (small[2] - F.avg_pool2d(x[None], 2)[0]).abs().mean() < 0.15


# -------------------------------------------------------------------------------- image folder
def test_image_folder_reads_crops_and_resizes(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    (tmp_path / "sub").mkdir()
    # 40×20 (w×h): black 10-px borders left and right, white 20×20 centre → centre crop is all white
    a = np.zeros((20, 40), dtype=np.uint8)
    a[:, 10:30] = 255
    Image.fromarray(a).save(tmp_path / "a.png")
    # RGB 16×16 in a subfolder, pure red
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "sub" / "b.PNG")
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(tmp_path / "sub" / "c.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(str(tmp_path), size=8, grayscale=True)
    assert [p.name for p in ds.paths] == ["a.png", "b.PNG", "c.jpg"]
    x = ds[0]
    _check_image(x, (1, 8, 8))
    assert torch.allclose(x, torch.ones_like(x))  # only the white centre survived the crop
    red_gray = ds[1]
    assert torch.allclose(red_gray, torch.full_like(red_gray, 2 * 76 / 255 - 1), atol=2 / 255)  # L = 0.299·R
    color = ImageFolder(str(tmp_path), size=4, grayscale=False)
    r = color[1]
    _check_image(r, (3, 4, 4))
    assert torch.allclose(r[0], torch.ones(4, 4)) and torch.allclose(r[1:], -torch.ones(2, 4, 4))


def test_image_folder_errors_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images") as err:
        ImageFolder(str(empty))
    assert str(empty) in str(err.value)
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        ImageFolder(str(missing))
    assert str(missing) in str(err.value)
    # an unreadable file: clear error naming it, at access time
    (empty / "broken.png").write_bytes(b"not a png")
    ds = ImageFolder(str(empty))
    with pytest.raises(ValueError, match="broken.png"):
        ds[0]
