"""Contract checks every forward operator must pass, against dense-matrix oracles (float64).

Parametrised over factories so a new operator joins by adding one line. Every factory, CT included,
must build: a missing operator fails its cases, never skips them.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from diffpost.operators import MRI, Blur, Denoising, FanBeamCT, Inpainting, SuperResolution, SVDOperator

pytestmark = pytest.mark.usefixtures("no_global_rng")


def _ct(**kwargs):
    # few angles on small images: the CG-based pinv/normal_solve of CT stay fast and well-conditioned;
    # imported when built, so a missing CT fails its cases (and the fingerprint check) instead of skipping
    def make():
        from diffpost.operators import CT

        return CT(**kwargs)

    return make


FACTORIES = {
    "denoise-1x6x5": lambda: Denoising(shape=(1, 6, 5)),
    "denoise-3x4x4": lambda: Denoising(shape=(3, 4, 4)),
    "inpaint-random-1x7x6": lambda: Inpainting(shape=(1, 7, 6), keep_ratio=0.4, seed=3),
    "inpaint-box-3x6x8": lambda: Inpainting(shape=(3, 6, 8), mask_type="box", box=[1, 2, 3, 4]),
    "inpaint-box-default-2x5x5": lambda: Inpainting(shape=(2, 5, 5), mask_type="box"),
    "blur-gauss-1x8x7": lambda: Blur(shape=(1, 8, 7), kernel_size=5, blur_sigma=1.0),
    "blur-uniform-3x6x6": lambda: Blur(shape=(3, 6, 6), kernel="uniform", kernel_size=3),
    "blur-custom-1x7x9": lambda: Blur(
        shape=(1, 7, 9), kernel="custom", custom_kernel=[[0.1, 0.0, 0.3, -0.2, 0.05], [0.4, 1.0, 0.2, 0.0, 0.1], [0.0, 0.3, 0.0, 0.2, 0.0]]
    ),
    "blur-default-1x16x16": lambda: Blur(shape=(1, 16, 16)),
    "superres-f2-1x6x4": lambda: SuperResolution(shape=(1, 6, 4), factor=2),
    "superres-f3-3x6x9": lambda: SuperResolution(shape=(3, 6, 9), factor=3),
    "superres-f1-1x5x5": lambda: SuperResolution(shape=(1, 5, 5), factor=1),
    "mri-random-1x8x6": lambda: MRI(shape=(1, 8, 6), acceleration=2),
    "mri-equi-3x7x5": lambda: MRI(shape=(3, 7, 5), acceleration=2, mask_type="equispaced", seed=1),
    "mri-random-1x9x8": lambda: MRI(shape=(1, 9, 8), acceleration=3, center_fraction=0.2, seed=5),
    "ct-1x8x8": _ct(shape=(1, 8, 8), n_angles=12),
    "ct-3x7x9": _ct(shape=(3, 7, 9), n_angles=8),
    "fanbeam-2x8x7": lambda: FanBeamCT(shape=(2, 8, 7), n_angles=9),
}
IDS = list(FACTORIES)


@pytest.fixture(params=IDS)
def op(request):
    return FACTORIES[request.param]()


def _randn(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def test_adjointness(op):
    x = _randn((3, *op.x_shape), 0)
    v = _randn((3, *op.y_shape), 1)
    Ax, Atv = op.forward(x), op.adjoint(v)
    lhs = (Ax * v).flatten(1).sum(1)
    rhs = (x * Atv).flatten(1).sum(1)
    scale = Ax.flatten(1).norm(dim=1) * v.flatten(1).norm(dim=1)
    assert float(((lhs - rhs).abs() / scale).max()) < 1e-10


def test_autograd_gradient_is_normal_operator(op):
    """``∇_x ½‖A x‖² = AᵀA x``: gradient-based guidance (DPS) differentiates through ``A``."""
    x = _randn((2, *op.x_shape), 16).requires_grad_(True)
    (0.5 * op.forward(x).pow(2).sum()).backward()
    assert _rel(x.grad, op.adjoint(op.forward(x.detach()))) < 1e-12


def test_dense_matches_forward_and_adjoint(op):
    A = op.to_dense()
    assert A.shape == (op.y_dim, op.x_dim)
    x = _randn((4, *op.x_shape), 2)
    v = _randn((4, *op.y_shape), 3)
    assert _rel(op.forward(x).flatten(1), x.flatten(1) @ A.T) < 1e-12
    assert _rel(op.adjoint(v).flatten(1), v.flatten(1) @ A) < 1e-12


def test_batched_equals_per_sample(op):
    x = _randn((3, *op.x_shape), 4)
    full = op.forward(x)
    single = torch.cat([op.forward(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(full, single, rtol=0, atol=1e-13)


def test_normal_solve_against_dense_solve(op):
    A = op.to_dense()
    rhs = _randn((2, *op.x_shape), 5)
    rho = torch.tensor([0.3, 2.0], dtype=torch.float64)
    got = op.normal_solve(rhs, rho).flatten(1)
    eye = torch.eye(op.x_dim, dtype=torch.float64)
    want = torch.stack([torch.linalg.solve(A.T @ A + r * eye, b) for r, b in zip(rho, rhs.flatten(1))])
    tol = 1e-10 if isinstance(op, SVDOperator) else 1e-7
    assert _rel(got, want) < tol
    scalar = op.normal_solve(rhs, 0.3).flatten(1)
    assert _rel(scalar[0], want[0]) < tol


def test_pinv_is_generalised_inverse(op):
    """``A A⁺ A = A`` on random inputs, and ``A⁺ y`` lies in the row space (``A⁺ A A⁺ = A⁺``)."""
    x = _randn((3, *op.x_shape), 6)
    y = op.forward(x)
    tol = 1e-9 if isinstance(op, SVDOperator) else 1e-6
    assert _rel(op.forward(op.pinv(y)), y) < tol
    v = _randn((3, *op.y_shape), 7)
    p = op.pinv(v)
    assert _rel(op.pinv(op.forward(p)), p) < tol


def _plain(o) -> bool:
    if isinstance(o, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in o.items())
    if isinstance(o, list):
        return all(_plain(v) for v in o)
    return o is None or isinstance(o, (bool, int, float, str))


def test_config_round_trip(op):
    cfg = op.config()
    assert _plain(cfg), cfg
    json.dumps(cfg)
    again = type(op)(**json.loads(json.dumps(cfg)))
    assert again.fingerprint() == op.fingerprint()
    assert again.config() == cfg
    x = _randn((2, *op.x_shape), 8)
    assert torch.equal(again.forward(x), op.forward(x))


@pytest.fixture(scope="module")
def fingerprints_in_subprocess():
    specs = {}
    for name, make in FACTORIES.items():
        o = make()  # every operator, CT included: none is dropped silently from the fingerprint check
        specs[name] = [type(o).__module__, type(o).__qualname__, o.config()]
    code = (
        "import importlib, json, sys\n"
        "specs = json.loads(sys.stdin.read())\n"
        "out = {k: getattr(importlib.import_module(m), q)(**c).fingerprint() for k, (m, q, c) in specs.items()}\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps(specs), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_fingerprint_stable_across_processes(op, fingerprints_in_subprocess, request):
    name = request.node.callspec.params["op"]
    assert fingerprints_in_subprocess[name] == op.fingerprint()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_computes_in_input_dtype(op, dtype):
    x64 = _randn((2, *op.x_shape), 9)
    v64 = _randn((2, *op.y_shape), 10)
    x, v = x64.to(dtype), v64.to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    cg_tol = 1e-6 if dtype == torch.float32 else 1e-10  # used by CG-based operators only
    for got, want in [
        (op.forward(x), op.forward(x64)),
        (op.adjoint(v), op.adjoint(v64)),
        (op.normal_solve(x, 0.5, tol=cg_tol), op.normal_solve(x64, 0.5)),
    ]:
        assert got.dtype == dtype
        assert _rel(got.double(), want) < tol
    assert op.pinv(v, tol=cg_tol).dtype == dtype


def test_to_float64_moves_buffers_and_keeps_fingerprint(op):
    fp = op.fingerprint()
    op64 = op.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in op64.buffers() if b.is_floating_point())
    x = _randn((1, *op.x_shape), 11)
    assert op64.forward(x).dtype == torch.float64
    assert op64.fingerprint() == fp


def test_shape_errors_name_expected_shape(op):
    bad_x = torch.zeros(2, *op.x_shape[:-1], op.x_shape[-1] + 1, dtype=torch.float64)
    expected = f"(B, {', '.join(map(str, op.x_shape))})"
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        op.forward(bad_x)
    with pytest.raises(ValueError):
        op.forward(torch.zeros(op.x_shape, dtype=torch.float64))  # missing batch axis
    bad_y = torch.zeros(2, *op.y_shape[:-1], op.y_shape[-1] + 1, dtype=torch.float64)
    expected_y = f"(B, {', '.join(map(str, op.y_shape))})"
    with pytest.raises(ValueError, match=expected_y.replace("(", r"\(").replace(")", r"\)")):
        op.adjoint(bad_y)


def test_counts_one_per_image(op):
    op.reset_counts()
    op.forward(_randn((3, *op.x_shape), 12))
    op.adjoint(_randn((2, *op.y_shape), 13))
    assert op.counts["forward"] == 3 and op.counts["adjoint"] == 2


@pytest.mark.gpu
def test_cuda_matches_cpu(op):
    x = _randn((2, *op.x_shape), 14)
    v = _randn((2, *op.y_shape), 15)
    cpu = [op.forward(x), op.adjoint(v), op.pinv(v), op.normal_solve(x, 0.7)]
    gop = op.to("cuda")
    assert all(b.device.type == "cuda" for b in gop.buffers())
    xg, vg = x.cuda(), v.cuda()
    gpu = [gop.forward(xg), gop.adjoint(vg), gop.pinv(vg), gop.normal_solve(xg, 0.7)]
    tol = 1e-10 if isinstance(gop, SVDOperator) else 1e-6
    for a, b in zip(gpu, cpu):
        assert a.device.type == "cuda"
        assert _rel(a.cpu(), b) < tol
    if isinstance(gop, SVDOperator):
        assert gop.Vt(xg).device.type == "cuda"
        assert _rel(gop.V(gop.Vt(xg)).cpu(), x) < 1e-12
