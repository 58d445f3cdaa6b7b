"""Closed-form SVD operators (denoise, inpaint, blur, super-resolution, MRI) against dense oracles and
independent references (explicit loops, numpy FFTs, formulas), in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffpost.fourier import dht2
from diffpost.operators import MRI, Blur, Denoising, Inpainting, SuperResolution, SVDOperator
from diffpost.operators.superres import block_basis

pytestmark = pytest.mark.usefixtures("no_global_rng")

CUSTOM = [[0.1, 0.0, 0.3], [0.4, 1.0, 0.2], [0.0, 0.3, -0.1], [0.2, 0.0, 0.0], [0.0, 0.1, 0.05]]  # 5x3, asymmetric

FACTORIES = {
    "denoise-3x5x4": lambda: Denoising(shape=(3, 5, 4)),
    "inpaint-random-1x7x6": lambda: Inpainting(shape=(1, 7, 6), keep_ratio=0.5, seed=2),
    "inpaint-box-3x6x5": lambda: Inpainting(shape=(3, 6, 5), mask_type="box"),
    "blur-gauss-1x8x7": lambda: Blur(shape=(1, 8, 7), kernel_size=3, blur_sigma=0.8),
    "blur-gauss-3x6x6": lambda: Blur(shape=(3, 6, 6), kernel_size=5, blur_sigma=1.2),
    "blur-uniform-1x6x9": lambda: Blur(shape=(1, 6, 9), kernel="uniform", kernel_size=3),  # exact zeros in K
    "blur-custom-1x9x7": lambda: Blur(shape=(1, 9, 7), kernel="custom", custom_kernel=CUSTOM),
    "superres-f2-3x4x6": lambda: SuperResolution(shape=(3, 4, 6), factor=2),
    "superres-f3-1x9x6": lambda: SuperResolution(shape=(1, 9, 6), factor=3),
    "mri-random-1x8x6": lambda: MRI(shape=(1, 8, 6), acceleration=2),
    "mri-random-3x7x5": lambda: MRI(shape=(3, 7, 5), acceleration=2, seed=4),
    "mri-equi-1x10x5": lambda: MRI(shape=(1, 10, 5), acceleration=3, mask_type="equispaced", seed=2),
}


@pytest.fixture(params=list(FACTORIES))
def op(request):
    return FACTORIES[request.param]()  # default float32 buffers, float64 inputs: spectra follow the input


def _randn(shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _dense_vt(op):
    """``Vᵀ`` as an ``(x_dim, x_dim)`` matrix, column j = ``Vt(e_j)``."""
    eye = torch.eye(op.x_dim, dtype=torch.float64).reshape(op.x_dim, *op.x_shape)
    return op.Vt(eye).T


# ----------------------------------------------------------------------------- SVD consistency
def test_V_is_orthogonal(op):
    Vt = _dense_vt(op)
    assert torch.allclose(Vt @ Vt.T, torch.eye(op.x_dim, dtype=torch.float64), atol=1e-12)
    x = _randn((2, *op.x_shape), 0)
    c = _randn((2, op.x_dim), 1)
    assert _rel(op.V(op.Vt(x)), x) < 1e-13
    assert _rel(op.Vt(op.V(c)), c) < 1e-13


def test_svd_reproduces_A(op):
    s = op.singular_values.double()
    assert s.shape == (op.x_dim,) and bool((s >= 0).all())
    x = _randn((3, *op.x_shape), 2)
    assert _rel(op.U(s * op.Vt(x)), op.forward(x)) < 1e-12
    # Aᵀ = V diag(s) Uᵀ
    y = _randn((3, *op.y_shape), 3)
    assert _rel(op.V(s * op.Ut(y)), op.adjoint(y)) < 1e-12


def test_U_has_orthonormal_columns_on_support(op):
    s = op.singular_values.double()
    c = _randn((2, op.x_dim), 4) * (s > 1e-10 * s.max())
    assert _rel(op.Ut(op.U(c)), c) < 1e-12
    # U Uᵀ is the orthogonal projector onto range(A) = A A⁺
    A = op.to_dense()
    y = _randn((2, *op.y_shape), 5)
    proj = y.flatten(1) @ (A @ torch.linalg.pinv(A)).T
    assert _rel(op.U(op.Ut(y)).flatten(1), proj) < 1e-9


def test_singular_values_match_dense(op):
    sv = torch.linalg.svdvals(op.to_dense())
    sv = torch.cat([sv, sv.new_zeros(op.x_dim - sv.numel())])
    ours = op.singular_values.double().sort(descending=True).values
    assert torch.allclose(ours, sv, atol=1e-12, rtol=0)


def test_spectral_basis_attribute(op):
    assert type(op).spectral_basis in ("hartley", "pixel", "block")
    x = _randn((2, *op.x_shape), 6)
    if op.spectral_basis == "hartley":
        assert torch.allclose(op.Vt(x), dht2(x).flatten(1), atol=1e-14)
    elif op.spectral_basis == "pixel":
        assert torch.equal(op.Vt(x), x.flatten(1))


def test_pinv_matches_dense_pinv(op):
    A = op.to_dense()
    y = _randn((3, *op.y_shape), 7)
    want = y.flatten(1) @ torch.linalg.pinv(A, rtol=1e-10).T
    assert _rel(op.pinv(y).flatten(1), want) < 1e-9


def test_overrides_agree_with_generic_svd_formulas(op):
    """Cheap overrides (U, Ut, pinv, normal_solve) equal SVDOperator's formulas from V, s and A."""
    x = _randn((2, *op.x_shape), 8)
    y = _randn((2, *op.y_shape), 9)
    c = _randn((2, op.x_dim), 10)
    rho = torch.tensor([0.2, 3.0], dtype=torch.float64)
    assert _rel(op.U(c), SVDOperator.U(op, c)) < 1e-12
    assert _rel(op.Ut(y), SVDOperator.Ut(op, y)) < 1e-12
    assert _rel(op.pinv(y), SVDOperator.pinv(op, y)) < 1e-10
    assert _rel(op.normal_solve(x, rho), SVDOperator.normal_solve(op, x, rho)) < 1e-12


def test_float32_buffers_float64_input_stay_exact(op):
    """Spectra are built in the input's dtype: a float32 module still gives a float64-exact SVD."""
    op32 = op.to(torch.float32)
    s = op32._s(torch.zeros((), dtype=torch.float64))
    assert s.dtype == torch.float64
    x = _randn((2, *op.x_shape), 11)
    assert _rel(op32.U(s * op32.Vt(x)), op32.forward(x)) < 1e-12


def test_pinv_truncates_tiny_singular_values():
    """``|K| <= rcond·max|K|`` counts as zero, as in ``torch.linalg.pinv(A, rtol=rcond)``.

    Kernel ``[a, 1, a]`` with ``a = 1/2 − 1e-13`` has ``|K| ≈ 1e-13`` at the Nyquist column; built with
    float64 as the default dtype so the buffer keeps that value."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        op = Blur(shape=(1, 4, 6), kernel="custom", custom_kernel=[[0.5 - 1e-13, 1.0, 0.5 - 1e-13]])
    finally:
        torch.set_default_dtype(old)
    assert op.kernel.dtype == torch.float64
    s = op.singular_values
    assert 0 < float(s.min()) < 1e-12
    A = op.to_dense()
    y = _randn((2, *op.y_shape), 20)
    want = y.flatten(1) @ torch.linalg.pinv(A, rtol=op.rcond).T
    assert _rel(op.pinv(y).flatten(1), want) < 1e-9
    assert _rel(SVDOperator.pinv(op, y).flatten(1), want) < 1e-9


# ----------------------------------------------------------------------------- fingerprints
@pytest.mark.parametrize(
    "a, b",
    [
        (lambda: Inpainting(seed=0), lambda: Inpainting(seed=1)),
        (lambda: Inpainting(keep_ratio=0.3), lambda: Inpainting(keep_ratio=0.4)),
        (lambda: Inpainting(mask_type="box"), lambda: Inpainting(mask_type="box", box=[0, 0, 16, 16])),
        (lambda: Inpainting(shape=(1, 32, 32)), lambda: Inpainting(shape=(3, 32, 32))),
        (lambda: Blur(), lambda: Blur(blur_sigma=1.5)),
        (lambda: Blur(), lambda: Blur(kernel_size=7)),
        (lambda: Blur(kernel="uniform"), lambda: Blur()),
        (lambda: Blur(kernel="custom", custom_kernel=[[1.0, 2.0, 1.0]]), lambda: Blur(kernel="custom", custom_kernel=[[1.0, 3.0, 1.0]])),
        (lambda: SuperResolution(factor=2), lambda: SuperResolution(factor=4)),
        (lambda: MRI(seed=0), lambda: MRI(seed=1)),
        (lambda: MRI(acceleration=4), lambda: MRI(acceleration=8)),
        (lambda: MRI(), lambda: MRI(mask_type="equispaced")),
        (lambda: MRI(center_fraction=0.08), lambda: MRI(center_fraction=0.2)),
        (lambda: Denoising(), lambda: Denoising(shape=(1, 32, 16))),
    ],
)
def test_fingerprint_changes_with_definition(a, b):
    assert a().fingerprint() != b().fingerprint()


@pytest.mark.parametrize("make", [lambda: Inpainting(seed=3), lambda: MRI(seed=3)])
def test_fingerprint_covers_the_mask_itself(make):
    """A mask drawn differently from the same seed (e.g. another torch RNG) must not go unnoticed."""
    op = make()
    fp = op.fingerprint()
    op.mask[0] = 1.0 - op.mask[0]
    assert op.fingerprint() != fp


def test_fingerprint_ignores_irrelevant_arguments():
    # a box mask does not depend on seed or keep_ratio; a custom kernel not on kernel_size
    assert Inpainting(mask_type="box", seed=0).fingerprint() == Inpainting(mask_type="box", seed=5, keep_ratio=0.9).fingerprint()
    assert Inpainting(mask_type="box").fingerprint() == Inpainting(mask_type="box", box=[8, 8, 16, 16]).fingerprint()
    k = [[1.0, 2.0, 1.0]]
    assert Blur(kernel="custom", custom_kernel=k).fingerprint() == Blur(kernel="custom", custom_kernel=k, kernel_size=3).fingerprint()
    assert Blur(kernel="uniform", blur_sigma=5.0).fingerprint() == Blur(kernel="uniform").fingerprint()


# ----------------------------------------------------------------------------- denoising
def test_denoising_is_identity():
    op = Denoising(shape=(3, 5, 7))
    x = _randn((2, 3, 5, 7), 12)
    y = op.forward(x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    assert torch.equal(op.to_dense(), torch.eye(105, dtype=torch.float64))
    assert torch.equal(op.singular_values, torch.ones(105, dtype=torch.float64))


# ----------------------------------------------------------------------------- inpainting
def test_inpainting_box_mask():
    op = Inpainting(shape=(3, 6, 8), mask_type="box", box=[1, 2, 3, 4])
    want = torch.ones(6, 8)
    for i in range(6):
        for j in range(8):
            if 1 <= i < 4 and 2 <= j < 6:
                want[i, j] = 0.0
    assert torch.equal(op.mask, want)
    x = _randn((2, 3, 6, 8), 13)
    assert torch.equal(op.forward(x), x * want)


@pytest.mark.parametrize("H, W, want", [(8, 8, [2, 2, 4, 4]), (7, 10, [2, 2, 3, 5]), (1, 5, [0, 1, 1, 2])])
def test_inpainting_default_box_is_centred_half(H, W, want):
    op = Inpainting(shape=(1, H, W), mask_type="box")
    assert op.config()["box"] == want
    top, left, h, w = want
    assert float(op.mask.sum()) == H * W - h * w


def test_inpainting_random_mask():
    op = Inpainting(shape=(3, 10, 12), keep_ratio=0.25, seed=7)
    assert set(op.mask.unique().tolist()) <= {0.0, 1.0}
    assert int(op.mask.sum()) == round(0.25 * 120)
    x = _randn((1, 3, 10, 12), 14)
    y = op.forward(x)
    hidden = op.mask == 0
    assert bool((y[:, :, hidden] == 0).all()) and torch.equal(y[:, :, ~hidden], x[:, :, ~hidden])  # same mask per channel
    assert torch.equal(op.mask, Inpainting(shape=(3, 10, 12), keep_ratio=0.25, seed=7).mask)
    assert not torch.equal(op.mask, Inpainting(shape=(3, 10, 12), keep_ratio=0.25, seed=8).mask)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(keep_ratio=0.0), "keep_ratio"),
        (dict(keep_ratio=1.5), "keep_ratio"),
        (dict(box=[0, 0, 2, 2]), "box is only used"),
        (dict(mask_type="box", box=[30, 0, 4, 4]), "does not fit"),
        (dict(mask_type="box", box=[0, 0, 0, 4]), "does not fit"),
        (dict(mask_type="box", box=[0, 0, 4]), "four ints"),
        (dict(mask_type="ellipse"), "mask_type"),
        (dict(shape=(32, 32)), r"\(C, H, W\)"),
        (dict(shape=(1, 0, 32)), r"\(C, H, W\)"),
    ],
)
def test_inpainting_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Inpainting(**kwargs)


# ----------------------------------------------------------------------------- blur
def _loop_convolution(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``y[i, j] = Σ_{a, b} k[a, b] x[(i − (a − ra)) mod H, (j − (b − rb)) mod W]`` by explicit loops."""
    B, C, H, W = x.shape
    kh, kw = k.shape
    ra, rb = kh // 2, kw // 2
    y = torch.zeros_like(x)
    for i in range(H):
        for j in range(W):
            acc = torch.zeros(B, C, dtype=x.dtype)
            for a in range(kh):
                for b in range(kw):
                    acc += k[a, b] * x[:, :, (i - (a - ra)) % H, (j - (b - rb)) % W]
            y[:, :, i, j] = acc
    return y


@pytest.mark.parametrize(
    "make",
    [
        lambda: Blur(shape=(3, 7, 6), kernel="custom", custom_kernel=CUSTOM),
        lambda: Blur(shape=(1, 5, 8), kernel_size=5, blur_sigma=1.3),
        lambda: Blur(shape=(2, 6, 5), kernel="uniform", kernel_size=3),
        lambda: Blur(shape=(1, 5, 5), kernel_size=5, blur_sigma=2.0),  # kernel as large as the image
    ],
)
def test_blur_against_loop_convolution(make):
    op = make().to(torch.float64)
    x = _randn((2, *op.x_shape), 15)
    assert _rel(op.forward(x), _loop_convolution(x, op.kernel)) < 1e-13


def test_blur_kernels_match_formulas():
    op = Blur(shape=(1, 16, 16), kernel_size=7, blur_sigma=1.5).to(torch.float64)
    w = [math.exp(-(t * t) / (2 * 1.5**2)) for t in range(-3, 4)]
    want = torch.tensor([[a * b for b in w] for a in w], dtype=torch.float64)
    assert torch.allclose(op.kernel, want / want.sum(), atol=1e-7)  # buffer built in float32 by default
    assert torch.allclose(Blur(kernel="uniform", kernel_size=3).kernel, torch.full((3, 3), 1 / 9))
    custom = Blur(shape=(1, 9, 9), kernel="custom", custom_kernel=CUSTOM).to(torch.float64)
    raw = torch.tensor(CUSTOM, dtype=torch.float64)
    assert torch.allclose(custom.kernel, raw / raw.sum(), atol=1e-7)
    assert custom.config()["custom_kernel"] == CUSTOM  # as given, not normalised
    # the DC singular value is |sum of kernel| = 1
    assert abs(float(custom.transfer_function()[0, 0].abs()) - 1.0) < 1e-6


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(kernel_size=4), ValueError, "odd"),
        (dict(kernel_size=0), ValueError, "kernel_size"),
        (dict(kernel_size=3.0), TypeError, "kernel_size"),
        (dict(shape=(1, 8, 8), kernel_size=9), ValueError, "larger than"),
        (dict(blur_sigma=0.0), ValueError, "blur_sigma"),
        (dict(blur_sigma=float("nan")), ValueError, "blur_sigma"),
        (dict(kernel="custom"), ValueError, "custom_kernel"),
        (dict(custom_kernel=[[1.0]]), ValueError, "only used with kernel='custom'"),
        (dict(kernel="custom", custom_kernel=[[1.0, -2.0, 1.0]]), ValueError, "nonzero"),
        (dict(kernel="custom", custom_kernel=[[1.0, 1.0]]), ValueError, "odd"),
        (dict(kernel="custom", custom_kernel=[1.0, 1.0, 1.0]), ValueError, "2-D"),
        (dict(kernel="custom", custom_kernel=[[1.0, float("inf"), 1.0]]), ValueError, "non-finite"),
        (dict(kernel="custom", custom_kernel=[[1.0, 2.0], [1.0]]), ValueError, "custom_kernel"),
        (dict(kernel="motion"), ValueError, "kernel must be"),
    ],
)
def test_blur_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        Blur(**kwargs)


def test_blur_normal_operator_is_hartley_diagonal():
    """AᵀA = H diag(|K|²) H (the claim the Hartley basis rests on), checked on the dense matrix."""
    op = Blur(shape=(1, 7, 6), kernel="custom", custom_kernel=CUSTOM)
    A = op.to_dense()
    Hm = dht2(torch.eye(42, dtype=torch.float64).reshape(42, 1, 7, 6)).reshape(42, 42)
    K = op.transfer_function()
    assert torch.allclose(Hm @ (A.T @ A) @ Hm, torch.diag((K.abs() ** 2).flatten()), atol=1e-12)


# ----------------------------------------------------------------------------- super-resolution
def test_superres_against_block_loop():
    op = SuperResolution(shape=(3, 6, 9), factor=3)
    x = _randn((2, 3, 6, 9), 16)
    want = torch.zeros(2, 3, 2, 3, dtype=torch.float64)
    for i in range(2):
        for j in range(3):
            want[:, :, i, j] = x[:, :, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3].mean((-2, -1))
    assert _rel(op.forward(x), want) < 1e-14
    # pinv = nearest-neighbour upsampling
    assert torch.equal(op.pinv(want), want.repeat_interleave(3, -2).repeat_interleave(3, -1))


@pytest.mark.parametrize("f", [1, 2, 3, 4])
def test_block_basis_orthogonal_with_constant_first_vector(f):
    Q = block_basis(f)
    assert torch.allclose(Q @ Q.T, torch.eye(f * f, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(Q[0], torch.full((f * f,), 1.0 / f, dtype=torch.float64), atol=1e-15)


def test_superres_coefficient_ordering():
    """The first C·h·w coefficients are f × block means in y's layout; their s is 1/f, the rest 0."""
    op = SuperResolution(shape=(2, 4, 6), factor=2)
    x = _randn((1, 2, 4, 6), 17)
    c = op.Vt(x)
    n = 2 * 2 * 3
    assert _rel(c[:, :n], 2 * op.forward(x).flatten(1)) < 1e-14
    assert torch.equal(op.singular_values, torch.cat([torch.full((n,), 0.5), torch.zeros(op.x_dim - n)]).double())


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(shape=(1, 6, 5), factor=2), ValueError, r"\(H, W\) = \(6, 5\) is not divisible by factor 2"),
        (dict(factor=0), ValueError, "factor"),
        (dict(factor=2.5), TypeError, "factor"),
    ],
)
def test_superres_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        SuperResolution(**kwargs)


# ----------------------------------------------------------------------------- MRI
def test_mri_against_numpy_fft():
    op = MRI(shape=(2, 8, 6), acceleration=2, seed=3)
    x = _randn((2, 2, 8, 6), 18)
    M = op.mask.double().numpy()
    k = np.fft.fft2(x.numpy(), norm="ortho") * M
    y = op.forward(x)
    assert y.shape == (2, 2, 2, 8, 6)
    assert np.allclose(y[:, :, 0].numpy(), k.real, atol=1e-14) and np.allclose(y[:, :, 1].numpy(), k.imag, atol=1e-14)
    v = _randn((2, 2, 2, 8, 6), 19)
    adj = np.fft.ifft2(M * (v[:, :, 0].numpy() + 1j * v[:, :, 1].numpy()), norm="ortho").real
    assert np.allclose(op.adjoint(v).numpy(), adj, atol=1e-14)


@pytest.mark.parametrize("mask_type", ["random", "equispaced"])
@pytest.mark.parametrize("H, acc", [(128, 4), (256, 8), (96, 4), (320, 4), (100, 6)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mri_mask_fraction_and_centre(mask_type, H, acc, seed):
    op = MRI(shape=(1, H, 16), acceleration=acc, center_fraction=0.08, mask_type=mask_type, seed=seed)
    M = op.mask
    assert bool((M == M[:, :1]).all()), "mask must consist of whole k-space rows"
    rows = M[:, 0]
    n = int(rows.sum())
    if mask_type == "random":
        assert n == round(H / acc)
    else:
        assert abs(n - H / acc) <= 2
    assert abs(op.measured_acceleration - H / n) < 1e-12
    # the fully sampled centre: frequencies |k| <= (n_c - 1) // 2 with n_c = round(0.08 H)
    n_c = round(0.08 * H)
    freqs = torch.fft.fftfreq(H, d=1.0 / H)
    assert bool((rows[freqs.abs() <= (n_c - 1) // 2] == 1).all())
    assert int(rows[freqs.abs() <= n_c // 2].sum()) >= n_c


def test_mri_equispaced_lines_are_regular():
    H, acc, n_c = 256, 8, round(0.04 * 256)
    op = MRI(shape=(1, H, 8), acceleration=acc, mask_type="equispaced", center_fraction=0.04, seed=3)
    rows = torch.fft.fftshift(op.mask[:, 0])  # centred order: zero frequency at H // 2
    centre = set(range(H // 2 - n_c // 2, H // 2 - n_c // 2 + n_c))
    assert all(rows[i] == 1 for i in centre)
    grid = [i for i in rows.nonzero().flatten().tolist() if i not in centre]
    spacing = (H - n_c) / (H / acc - n_c)
    gaps = [b - a for a, b in zip(grid[:-1], grid[1:]) if not (a < H // 2 < b)]  # skip the jump over the centre
    assert len(gaps) >= 10 and set(gaps) <= {math.floor(spacing), math.ceil(spacing)}


def test_mri_seeds_and_singular_values():
    a, b = MRI(shape=(1, 64, 64), seed=0), MRI(shape=(1, 64, 64), seed=1)
    assert not torch.equal(a.mask, b.mask)
    assert torch.equal(a.mask, MRI(shape=(1, 64, 64), seed=0).mask)
    s2 = (a.singular_values.double() ** 2).reshape(64, 64)
    assert set(torch.round(s2 * 2).unique().tolist()) <= {0.0, 1.0, 2.0}
    # s² = (M(k) + M(−k)) / 2 computed here by explicit negation of row indices
    rows = a.mask[:, 0].double()
    neg = torch.tensor([rows[(-i) % 64] for i in range(64)], dtype=torch.float64)
    assert torch.allclose(s2[:, 0], (rows + neg) / 2)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(acceleration=0), ValueError, "acceleration"),
        (dict(acceleration=2.5), TypeError, "acceleration"),
        (dict(center_fraction=1.5), ValueError, "center_fraction"),
        (dict(mask_type="radial"), ValueError, "mask_type"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(shape=(1, 32)), ValueError, r"\(C, H, W\)"),
    ],
)
def test_mri_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        MRI(**kwargs)


def test_integer_input_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        Blur(shape=(1, 16, 16)).forward(torch.zeros(1, 1, 16, 16, dtype=torch.int64))
