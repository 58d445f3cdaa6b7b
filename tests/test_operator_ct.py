"""CT (parallel-beam Radon transform): exact adjoint, agreement with scikit-image, closed-form projections.

Oracles: scikit-image's ``radon`` (independent implementation of the same discretisation, in pixel
units: ours is it times the pixel size ``2/max(H, W)`` of the default ``[-1, 1]²`` extent), analytic
projections (column/row sums at 0°/90°, chord lengths of a disc), dense matrices, finite differences.
Physical geometry across resolutions and fan beam: tests/test_ct_geometry.py.
"""
import json
import math

import numpy as np
import pytest
import torch

from diffpost.operators import CT
from diffpost.random import make_generator

pytestmark = pytest.mark.usefixtures("no_global_rng")

skimage_transform = pytest.importorskip("skimage.transform")
skimage_data = pytest.importorskip("skimage.data")


# ----------------------------------------------------------------------------- phantoms
def ellipse_phantom(H: int, W: int, n_ellipses: int, generator: torch.Generator, supersample: int = 4) -> torch.Tensor:
    """Random ellipses inside the inscribed ellipse of the image, anti-aliased by supersampling."""
    f = supersample
    r = ((torch.arange(H * f, dtype=torch.float64) + 0.5) / f - 0.5 - (H - 1) / 2) / (H / 2)
    c = ((torch.arange(W * f, dtype=torch.float64) + 0.5) / f - 0.5 - (W - 1) / 2) / (W / 2)
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    img = torch.zeros_like(rr)
    u = torch.rand(n_ellipses, 6, generator=generator, dtype=torch.float64)
    for k in range(n_ellipses):
        radius, ang, a, b, phi, val = u[k]
        r0, c0 = 0.45 * radius * torch.cos(2 * math.pi * ang), 0.45 * radius * torch.sin(2 * math.pi * ang)
        a, b = 0.1 + 0.35 * a, 0.1 + 0.35 * b
        phi = math.pi * phi
        dr, dc = rr - r0, cc - c0
        p = dr * torch.cos(phi) + dc * torch.sin(phi)
        q = -dr * torch.sin(phi) + dc * torch.cos(phi)
        img = img + (2 * val - 0.5) * ((p / a) ** 2 + (q / b) ** 2 <= 1).double()
    return img.reshape(H, f, W, f).mean((1, 3))


def shepp_logan(n: int) -> torch.Tensor:
    img = skimage_transform.resize(skimage_data.shepp_logan_phantom(), (n, n), anti_aliasing=True)
    return torch.from_numpy(np.ascontiguousarray(img))


def disc(n: int, radius: float, supersample: int = 8) -> torch.Tensor:
    """Unit disc centred on the image centre ((n−1)/2, (n−1)/2), pixel values = covered area fraction."""
    f = (torch.arange(n * supersample, dtype=torch.float64) + 0.5) / supersample - 0.5 - (n - 1) / 2
    inside = (f[:, None] ** 2 + f[None, :] ** 2 <= radius**2).double()
    return inside.reshape(n, supersample, n, supersample).mean((1, 3))


def scale_and_corr(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Least-squares scale s minimising ||s·ours − ref|| and the Pearson correlation."""
    a, b = ours.ravel(), ref.ravel()
    return float(a @ b / (a @ a)), float(np.corrcoef(a, b)[0, 1])


def skimage_radon(img: torch.Tensor, angles: list[float]) -> np.ndarray:
    """skimage's sinogram transposed to our layout (n_angles, N)."""
    return skimage_transform.radon(img.numpy(), theta=np.asarray(angles), circle=False).T


def randn(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=make_generator(seed), dtype=dtype)


# ----------------------------------------------------------------------------- adjointness
ADJOINT_CASES = [
    dict(shape=(1, 16, 16), n_angles=180),
    dict(shape=(2, 16, 16), n_angles=12),  # sparse view, two channels
    dict(shape=(1, 17, 17), n_angles=30, angle_range=90.0, angle_start=20.0),  # limited angle
    dict(shape=(2, 12, 20), n_angles=23),  # non-square
    dict(shape=(1, 20, 9), angles=[0.0, 13.7, 45.0, 90.0, 171.2, 250.0]),  # explicit angles, tall
    dict(shape=(1, 16, 16), n_angles=10, n_detectors=9),  # detector narrower than the image
    dict(shape=(1, 16, 16), n_angles=10, n_detectors=40),  # wider than needed
]


@pytest.mark.parametrize("kwargs", ADJOINT_CASES, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_adjoint_is_exact_transpose(kwargs):
    op = CT(**kwargs)
    x = randn((3, *op.x_shape), 1)
    y = randn((3, *op.y_shape), 2)
    Ax, Aty = op(x), op.adjoint(y)
    assert Ax.shape == (3, *op.y_shape) and Aty.shape == (3, *op.x_shape)
    lhs = (Ax * y).flatten(1).sum(1)
    rhs = (x * Aty).flatten(1).sum(1)
    rel = (lhs - rhs).abs() / (Ax.flatten(1).norm(dim=1) * y.flatten(1).norm(dim=1))
    assert rel.max() < 1e-10, rel
    assert Ax.abs().max() > 0 and Aty.abs().max() > 0


def test_to_dense_transpose_equals_adjoint_on_unit_vectors():
    op = CT((1, 8, 7), n_angles=5)
    D = op.to_dense()
    assert D.shape == (op.y_dim, op.x_dim)
    eye = torch.eye(op.y_dim, dtype=torch.float64).reshape(op.y_dim, *op.y_shape)
    adj_cols = op.adjoint(eye).reshape(op.y_dim, op.x_dim)  # row i = Aᵀ e_i = column i of Aᵀ
    torch.testing.assert_close(adj_cols, D, rtol=0, atol=1e-13)
    x = randn((2, *op.x_shape), 3)
    torch.testing.assert_close(op(x).flatten(1), x.flatten(1) @ D.T, rtol=1e-12, atol=1e-12)
    assert (D >= 0).all() and D.abs().sum() > 0  # bilinear weights are non-negative


def test_channels_and_batch_are_independent():
    op = CT((3, 11, 14), n_angles=7)
    x = randn((4, 3, 11, 14), 4)
    y = op(x)
    single = CT((1, 11, 14), n_angles=7)
    for b in range(4):
        for c in range(3):
            torch.testing.assert_close(y[b, c], single(x[b : b + 1, c : c + 1])[0, 0], rtol=1e-13, atol=1e-13)
    yb = randn((4, *op.y_shape), 5)
    torch.testing.assert_close(op.adjoint(yb)[2, 1], single.adjoint(yb[2:3, 1:2])[0, 0], rtol=1e-13, atol=1e-13)


def test_chunked_uncached_grid_gives_the_same_result():
    op = CT((2, 13, 13), n_angles=17)
    chunked = CT((2, 13, 13), n_angles=17)
    chunked.max_cached_grid_bytes = 0  # rebuild the grid per chunk, as for large images
    chunked.chunk_elements = 1  # one angle per chunk
    chunked.grid_build_points = 1  # and each grid built one angle at a time
    x, y = randn((3, 2, 13, 13), 6), randn((3, *op.y_shape), 7)
    torch.testing.assert_close(chunked(x), op(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(chunked.adjoint(y), op.adjoint(y), rtol=1e-13, atol=1e-13)
    assert chunked._grid_cache == {}


# ----------------------------------------------------------------------------- closed forms
def test_zero_and_ninety_degrees_are_column_and_row_sums():
    # θ=0: rays run down the columns; θ=90°: along rows, detector t pointing up (reversed row order).
    # H even puts the centre between rows: samples average two rows, sums stay exact.
    H, W = 10, 7  # W odd with n_det odd -> detector offsets land on columns
    # catches a wrong physical scale: line integrals are pixel sums times the pixel size 2/max(H, W)
    op = CT((1, H, W), angles=[0.0, 90.0], n_detectors=11)
    x = randn((1, 1, H, W), 8)
    y = op(x)[0, 0] / (2 / max(H, W))
    col = torch.zeros(11, dtype=torch.float64)
    col[2:9] = x[0, 0].sum(0)
    torch.testing.assert_close(y[0], col, rtol=1e-12, atol=1e-12)
    # θ=90°: detector k at row cy − t_k = 4.5 − (k − 5): half-integer rows -> average of neighbours
    rows = torch.cat([torch.zeros(1, dtype=torch.float64), x[0, 0].sum(1), torch.zeros(1, dtype=torch.float64)])
    expected = 0.5 * (rows[1:] + rows[:-1]).flip(0)  # 11 values: midpoints between rows 9.5 .. -0.5
    torch.testing.assert_close(y[1], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,n_detectors", [((1, 9, 9), None), ((1, 10, 13), None), ((1, 32, 32), None), ((1, 10, 13), 45)])
def test_every_pixel_is_fully_crossed_at_every_angle(shape, n_detectors):
    """Row sums of Aᵀ per angle: a pixel's total bilinear weight over one angle's samples.

    On a rotated unit lattice it is not exactly 1 (between 0.83 and 1.35, aliasing of the tent), but a
    pixel outside the detector or the ray range (e.g. a corner) would get ~0; over many angles it
    averages to ≈ 1, the unit-spacing line integral, except the pixel that every angle's lattice hits
    exactly (the centre of an odd image with integer detector offsets: 1 + 4·(1 − 3/π) ≈ 1.18).
    """
    op = CT(shape, n_angles=90, n_detectors=n_detectors)
    one_angle = torch.zeros(op.n_angles, *op.y_shape, dtype=torch.float64)
    one_angle[torch.arange(op.n_angles), :, torch.arange(op.n_angles)] = 1.0
    w = op.adjoint(one_angle) / (2 / max(shape[1:]))  # (n_angles, C, H, W), in pixel units
    assert w.min() > 0.8 and w.max() < 1.4, (w.min().item(), w.max().item())
    mean = w.mean(0)
    assert (mean - 1).abs().max() < 0.2, mean


def test_opposite_angles_give_mirrored_projections():
    op = CT((1, 12, 15), angles=[17.0, 197.0, 63.5, 243.5])
    y = op(randn((2, 1, 12, 15), 9))[:, 0]
    torch.testing.assert_close(y[:, 1], y[:, 0].flip(-1), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(y[:, 3], y[:, 2].flip(-1), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("n,radius", [(32, 10.0), (48, 17.0)])
def test_centred_disc_projections_are_constant_chords(n, radius):
    op = CT((1, n, n), n_angles=37)
    y = op(disc(n, radius)[None, None])[0, 0]
    rel_std = (y.std(0) / y.max()).max().item()  # across angles, worst detector
    assert rel_std < 0.02, rel_std
    p = 2 / n  # physical units: [-1, 1]² image, so offsets and chords are pixels times p
    t = (torch.arange(op.n_detectors, dtype=torch.float64) - (op.n_detectors - 1) / 2) * p
    chord = 2 * torch.sqrt(((radius * p) ** 2 - t**2).clamp_min(0))  # line integral of the unit disc
    rel_err = ((y - chord).norm(dim=1) / chord.norm()).max().item()
    assert rel_err < 0.04, rel_err


# ----------------------------------------------------------------------------- scikit-image
def _embed_odd(img: torch.Tensor) -> torch.Tensor:
    """Append a zero row/column to even sides: our geometric centre becomes skimage's pixel (H//2, W//2)."""
    H, W = img.shape
    out = img.new_zeros(H + (H % 2 == 0), W + (W % 2 == 0))
    out[:H, :W] = img
    return out


SKIMAGE_CASES = [
    ("shepp_logan", 64, 64, list(np.arange(180.0))),
    ("shepp_logan", 32, 32, list(np.arange(180.0))),
    ("ellipses", 64, 64, list(np.linspace(0, 180, 16, endpoint=False))),  # sparse view
    ("ellipses", 32, 32, list(np.linspace(10, 100, 30, endpoint=False))),  # limited angle
    ("ellipses", 21, 33, list(np.linspace(0, 180, 25, endpoint=False) + 3.3)),  # non-square, odd
    ("ellipses", 20, 30, list(np.arange(0.0, 180.0, 7.5))),  # non-square, even
]


def _phantom(kind, H, W, seed=10):
    return shepp_logan(H) if kind == "shepp_logan" else ellipse_phantom(H, W, 6, make_generator(seed + H + W))


@pytest.mark.parametrize("kind,H,W,angles", SKIMAGE_CASES, ids=lambda v: str(v) if not isinstance(v, list) else f"{len(v)}ang")
def test_matches_skimage_radon_exactly_after_centre_alignment(kind, H, W, angles):
    """Same discretisation as skimage once both use the same centre and detector positions.

    skimage rotates about pixel (H//2, W//2) with detector c at t = c − N//2 (N its sinogram length):
    a zero row/column appended to even sides makes our centre that pixel, and n_det = N (N odd) or
    N + 1 (N even, then detectors 0..N−1 are skimage's) aligns the detectors.
    """
    img = _phantom(kind, H, W)
    ref = skimage_radon(img, angles)
    N = ref.shape[1]
    assert N == math.ceil(math.sqrt(2) * max(H, W))
    emb = _embed_odd(img)
    op = CT((1, *emb.shape), angles=angles, n_detectors=N if N % 2 else N + 1)
    ours = op(emb[None, None])[0, 0, :, :N].numpy() / (2 / max(emb.shape))  # pixel units, as skimage
    unit = CT((1, *emb.shape), angles=angles, n_detectors=N if N % 2 else N + 1, extent=float(max(emb.shape)))
    np.testing.assert_allclose(unit(emb[None, None])[0, 0, :, :N].numpy(), ours, rtol=1e-12, atol=1e-12)
    scale, corr = scale_and_corr(ours, ref)
    assert corr >= 0.99 and abs(scale - 1) < 1e-10, (scale, corr)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10 * np.abs(ref).max())


@pytest.mark.parametrize("kind,n", [("shepp_logan", 64), ("shepp_logan", 32), ("ellipses", 64), ("ellipses", 32)])
def test_agrees_with_skimage_radon_default_geometry(kind, n):
    """Our default operator on the image as is: same detector count N as skimage, centres half a pixel apart.

    skimage's centre is ours + (½, ½) (row, col), which moves its detector c to our offset
    t = c − N//2 + ½(cos θ − sin θ); interpolating our sinogram there must reproduce skimage's, while
    the raw sinograms (a sub-pixel shift apart) still correlate at 64².
    """
    img = _phantom(kind, n, n)
    angles = list(np.arange(0.0, 180.0, 2.0))
    ref = skimage_radon(img, angles)
    op = CT((1, n, n), angles=angles)
    assert op.n_detectors == ref.shape[1]
    ours = op(img[None, None])[0, 0].numpy() / (2 / n)  # pixel units, as skimage
    nd, N = op.n_detectors, ref.shape[1]
    th = np.deg2rad(angles)
    c = np.arange(N)
    shifted = np.stack(
        [np.interp(c - N // 2 + 0.5 * (np.cos(a) - np.sin(a)) + (nd - 1) / 2, np.arange(nd), ours[i]) for i, a in enumerate(th)]
    )
    scale, corr = scale_and_corr(shifted, ref)
    assert corr >= 0.99 and abs(scale - 1) < 0.01, (scale, corr)
    if n == 64:
        scale_raw, corr_raw = scale_and_corr(ours, ref)
        assert corr_raw >= 0.99 and abs(scale_raw - 1) < 0.01, (scale_raw, corr_raw)


# ----------------------------------------------------------------------------- solves
def test_pinv_cg_satisfies_penrose_and_matches_dense():
    op = CT((1, 8, 8), n_angles=4)  # 48 measurements < 64 unknowns: a real null space
    D = op.to_dense()
    x = randn((2, *op.x_shape), 11)
    Ax = op(x)
    xp = op.pinv(Ax)
    rel = ((op(xp) - Ax).norm() / Ax.norm()).item()
    assert rel < 1e-8, rel  # A A⁺ A = A
    y = randn((2, *op.y_shape), 12)  # generic y: least-squares, minimum-norm solution
    ref = (torch.linalg.pinv(D, rtol=1e-10) @ y.flatten(1).T).T
    torch.testing.assert_close(op.pinv(y).flatten(1), ref, rtol=1e-7, atol=1e-7 * ref.abs().max().item())


def test_normal_solve_matches_dense_solve():
    op = CT((2, 9, 10), n_angles=6)
    D = op.to_dense()  # per channel: channels share the matrix
    rhs = randn((3, *op.x_shape), 13)
    rho = torch.tensor([0.3, 1.0, 5.0], dtype=torch.float64)
    got = op.normal_solve(rhs, rho)
    for b in range(3):
        M = D.T @ D + rho[b] * torch.eye(op.x_dim, dtype=torch.float64)
        ref = torch.linalg.solve(M, rhs[b].flatten())
        rel = ((got[b].flatten() - ref).norm() / ref.norm()).item()
        assert rel < 1e-8, rel


# ----------------------------------------------------------------------------- autograd
def test_autograd_through_forward_and_adjoint():
    op = CT((2, 5, 6), n_angles=3, n_detectors=7)
    x = randn((2, *op.x_shape), 14).requires_grad_()
    y = randn((2, *op.y_shape), 15).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradcheck(op.adjoint, (y,))
    go = randn((2, *op.y_shape), 23).requires_grad_()  # explicit: the default draws from the global RNG
    assert torch.autograd.gradgradcheck(lambda v: op(v) ** 2, (x,), (go,))
    # the gradient of ⟨A x, w⟩ is Aᵀ w, and of ⟨Aᵀ y, v⟩ is A v
    w, v = randn((2, *op.y_shape), 16), randn((2, *op.x_shape), 17)
    (gx,) = torch.autograd.grad((op(x) * w).sum(), x)
    (gy,) = torch.autograd.grad((op.adjoint(y) * v).sum(), y)
    torch.testing.assert_close(gx, op.adjoint(w), rtol=0, atol=0)
    torch.testing.assert_close(gy, op(v), rtol=0, atol=0)
    # torch.func (functional transforms) sees the same VJP
    _, vjp = torch.func.vjp(op, x.detach())
    torch.testing.assert_close(vjp(w)[0], op.adjoint(w), rtol=0, atol=0)


def test_works_under_inference_mode_then_with_autograd():
    op = CT((1, 10, 10), n_angles=8)
    x = randn((1, 1, 10, 10), 18)
    with torch.inference_mode():  # the grid gets cached here
        y_inf = op(x)
        op.adjoint(y_inf)
    xg = x.clone().requires_grad_()
    (op(xg) ** 2).sum().backward()
    torch.testing.assert_close(xg.grad, 2 * op.adjoint(op(x)), rtol=1e-12, atol=1e-12)


def test_dtype_follows_input_and_float32_is_close():
    op = CT((1, 16, 16), n_angles=20)
    x64 = ellipse_phantom(16, 16, 4, make_generator(19))[None, None]
    y64, y32 = op(x64), op(x64.float())
    assert y64.dtype == torch.float64 and y32.dtype == torch.float32
    assert op.adjoint(y32).dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-5, atol=1e-5 * y64.abs().max().item())
    assert len(op._grid_cache) == 2  # one grid per dtype


@pytest.mark.gpu
def test_cuda_matches_cpu():
    op = CT((2, 24, 20), n_angles=31)
    x, y = randn((2, *op.x_shape), 20), randn((2, *op.y_shape), 21)
    torch.testing.assert_close(op(x.cuda()).cpu(), op(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.adjoint(y.cuda()).cpu(), op.adjoint(y), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- FBP
def test_fbp_reconstructs_phantom():
    img = shepp_logan(64)[None, None]
    op = CT((1, 64, 64), n_angles=180)
    rec = op.fbp(op(img))
    scale, corr = scale_and_corr(rec.numpy(), img.numpy())
    assert corr > 0.9, corr
    assert 0.8 < scale < 1.25, scale  # correctly scaled up to the smoothing of the bilinear transpose


def test_ramp_filter_kernel_and_frequency_response():
    op = CT((1, 8, 8), n_angles=2)
    delta = torch.zeros(1, 1, 2, op.n_detectors, dtype=torch.float64)
    delta[..., 5] = 1.0
    h = op.ramp_filter(delta)[0, 0, 0]  # impulse response around index 5
    k = torch.arange(op.n_detectors) - 5
    expected = torch.where(k % 2 != 0, -1.0 / (math.pi * k.double()) ** 2, torch.zeros(op.n_detectors, dtype=torch.float64))
    expected[5] = 0.25
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- config and errors
def test_config_rebuilds_operator_and_fingerprint():
    for op in [CT((2, 12, 14), n_angles=9, angle_range=120.0, angle_start=5.0, n_detectors=15),
               CT((1, 8, 8), angles=[0.0, 33.0, 90.0]), CT((1, 8, 8), n_angles=3, extent=3.0, detector_spacing=0.5)]:
        cfg = op.config()
        json.dumps(cfg)  # plain types only
        clone = CT(**cfg)
        assert clone.fingerprint() == op.fingerprint()
        torch.testing.assert_close(clone.angles_deg, op.angles_deg, rtol=0, atol=0)
        x = randn((1, *op.x_shape), 22)
        torch.testing.assert_close(clone(x), op(x), rtol=0, atol=0)
    assert CT((1, 8, 8), n_angles=9).fingerprint() != CT((1, 8, 8), n_angles=10).fingerprint()
    assert CT((1, 8, 8), angles=[0.0, 30.0]).fingerprint() != CT((1, 8, 8), angles=[0.0, 31.0]).fingerprint()
    # the geometry is part of the fingerprint
    assert CT((1, 8, 8), n_angles=9).fingerprint() != CT((1, 8, 8), n_angles=9, extent=8.0).fingerprint()
    ref = CT((1, 8, 8), n_angles=9, n_detectors=12)
    assert ref.fingerprint() != CT((1, 8, 8), n_angles=9, n_detectors=12, detector_spacing=0.3).fingerprint()


def test_angles_and_default_geometry():
    op = CT((1, 32, 32), n_angles=4, angle_range=90.0, angle_start=10.0)
    torch.testing.assert_close(op.angles_deg, torch.tensor([10.0, 32.5, 55.0, 77.5], dtype=torch.float64))
    assert op.n_detectors == 46 and op.y_shape == (1, 4, 46)
    assert op.pixel_size == 2 / 32 and op.detector_spacing == 2 / 32 and op.extent == 2.0
    torch.testing.assert_close(op.detector_positions[[0, -1]], torch.tensor([-22.5, 22.5], dtype=torch.float64) / 16)
    # a coarser physical detector: fewer detectors cover the same √2·extent
    assert CT((1, 32, 32), n_angles=4, detector_spacing=0.125).n_detectors == math.ceil(math.sqrt(2) * 2 / 0.125)
    assert CT((3, 20, 30)).y_shape == (3, 180, math.ceil(math.sqrt(2) * 30))
    assert CT((1, 8, 8), angles=[1.0, 2.0], n_angles=50).n_angles == 2  # explicit angles override


@pytest.mark.parametrize(
    "kwargs",
    [dict(shape=(32, 32)), dict(shape=(1, 0, 8)), dict(n_angles=0), dict(angle_range=0.0), dict(angle_range=float("nan")),
     dict(n_detectors=0), dict(angles=[]), dict(angles=[0.0, float("inf")]), dict(n_angles=2.5), dict(extent=0.0),
     dict(extent=-2.0), dict(detector_spacing=0.0), dict(detector_spacing=float("nan"))],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="CT"):
        CT(**kwargs)


def test_bad_inputs_raise():
    op = CT((1, 8, 8), n_angles=3)
    with pytest.raises(ValueError, match="shape"):
        op(torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="shape"):
        op.adjoint(torch.zeros(1, 1, 3, 5))
    with pytest.raises(TypeError, match="floating"):
        op(torch.zeros(1, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating"):
        op.fbp(torch.zeros(1, *op.y_shape, dtype=torch.int32))
