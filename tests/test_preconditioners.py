"""Memory-lean UCoS preconditioners (issue 12), the randomized SVD's complement as a buffer (issue 11),
and ``compile: true`` UCoS checkpoints that keep their keys (issue 10).

Oracles: dense inverses ``(a I + AᵀA/σ_y²)⁻¹`` from the operator's matrix, dense formulas from stored
factors, and the state-dict byte counts of the factors' shapes. Small sizes only (8²–16²).
"""
from __future__ import annotations

import math

import pytest
import torch

from diffpost.operators import CT, Blur, DenseOperator
from diffpost.random import make_generator
from diffpost.ucos import (
    CirculantPreconditioner,
    DensePreconditioner,
    LowRankDiagonalPreconditioner,
    RandomizedSVDPreconditioner,
    SpectralPreconditioner,
    default_preconditioner,
)

D64 = torch.float64
SIGMAS = torch.tensor([0.05, 1.0, 30.0], dtype=D64)


def dense_inverse(op, sigma_y: float, rho0: float, sigma: float) -> torch.Tensor:
    A = op.to_dense()
    return torch.linalg.inv(torch.eye(op.x_dim, dtype=D64) * (sigma**-2 + rho0) + A.T @ A / sigma_y**2)


def as_matrix(pre, sigma: float, d: int, shape) -> torch.Tensor:
    """``G_σ`` column by column through ``apply`` (the map training and sampling use)."""
    eye = torch.eye(d, dtype=D64).reshape(d, *shape)
    return pre.apply(eye, torch.full((d,), sigma, dtype=D64)).reshape(d, d).T


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------ exactness
def test_circulant_is_exact_for_a_periodic_blur():
    """Blur's normal operator is Hartley-diagonal, so two probes recover it: catches a wrong probe
    formula (e.g. dividing by Σ|Hv| instead of Σ(Hv)²), a missing σ_y² or a dropped transform."""
    op = Blur((1, 8, 8), kernel_size=3, blur_sigma=1.0).to(D64)
    pre = CirculantPreconditioner(op, 0.05, 0.5, probes=2)
    z = torch.randn(3, *op.x_shape, generator=make_generator(1), dtype=D64)
    got = pre.apply(z, SIGMAS)
    for i, s in enumerate(SIGMAS.tolist()):
        assert rel(got[i].flatten(), dense_inverse(op, 0.05, 0.5, s) @ z[i].flatten()) < 1e-6


def test_lowrank_diagonal_at_full_rank_is_the_exact_inverse():
    """rank = d: the Krylov space is all of R^d; float32 storage of V limits the agreement to ~1e-6.
    Catches a wrong Rayleigh–Ritz (eigenvectors of QᵀSQ not mapped back by Q) or a/σ_y² slips."""
    op = CT((1, 8, 8), n_angles=5).to(D64)
    pre = LowRankDiagonalPreconditioner(op, 0.05, 0.5, rank=64, oversample=0, blocks=4)
    for s in SIGMAS.tolist():
        assert rel(as_matrix(pre, s, 64, op.x_shape), dense_inverse(op, 0.05, 0.5, s)) < 1e-5


def test_lowrank_diagonal_is_exact_when_the_residual_is_diagonal():
    """``S = diag(w)`` with distinct ``w`` and a Krylov space of all of R^d: the top-k Ritz vectors are
    pixels, the residual is diagonal and its probed curvature (R²)_ii/R_ii is w_i, so with floor 0 the
    truncated map is the exact inverse. Catches the residual diagonal mis-estimated (e.g. ``diag R``
    squared, or probes not centred), the complement scaled by σ_y instead of σ_y², or not projected."""
    d = 36
    w = torch.linspace(0.05, 4.0, d, dtype=D64) ** 2
    op = DenseOperator(torch.diag(w.sqrt()), (1, 6, 6))
    pre = LowRankDiagonalPreconditioner(op, 0.1, 1.0, rank=8, oversample=28, blocks=6, probes=4, floor=0.0)
    for s in (0.1, 3.0):
        G = as_matrix(pre, s, d, op.x_shape)
        assert rel(G, dense_inverse(op, 0.1, 1.0, s)) < 1e-3


def test_lowrank_diagonal_apply_is_its_dense_formula_and_spd():
    """Truncated CT: ``apply`` equals ``V diag(1/(a+λ/σ_y²)) Vᵀ + P diag(1/(a+δ/σ_y²)) P`` built densely
    from the stored factors, is symmetric positive definite, and its top eigenvalues are S's (Krylov
    converged). Catches a complement term that is not projected back (not symmetric) or a wrong block."""
    op = CT((1, 12, 12), n_angles=10).to(D64)
    sy, rho0 = 0.05, 0.5
    pre = LowRankDiagonalPreconditioner(op, sy, rho0, rank=24, oversample=40, blocks=8)
    pre.build()
    V, lam, delta = pre.basis.double(), pre.eigenvalues, pre.complement_diagonal.double()
    P = torch.eye(144, dtype=D64) - V @ V.T
    A = op.to_dense()
    exact = torch.linalg.eigvalsh(A.T @ A).flip(0)
    assert torch.allclose(lam[:4], exact[:4], rtol=1e-4)
    assert bool((delta >= 0.5 * lam[-1] - 1e-6).all() and (delta <= lam[-1] + 1e-6).all())  # the floor and cap
    for s in (0.05, 1.0, 30.0):
        a = s**-2 + rho0
        formula = V @ torch.diag(1 / (a + lam / sy**2)) @ V.T + P @ torch.diag(1 / (a + delta / sy**2)) @ P
        G = as_matrix(pre, s, 144, op.x_shape)
        assert rel(G, formula) < 1e-5
        assert rel(G, G.T) < 1e-5 and torch.linalg.eigvalsh(0.5 * (G + G.T)).min() > 0


def test_circulant_is_spd_and_one_map_per_sigma_for_ct():
    """For CT the fit is approximate but ``G_σ`` must stay a fixed SPD map (UCoS exactness only needs
    that); per-row σ in a batch equals one σ at a time. Catches a σ broadcast across the batch."""
    op = CT((1, 8, 8), n_angles=6).to(D64)
    pre = CirculantPreconditioner(op, 0.05, 0.5, probes=8)
    for s in (0.05, 30.0):
        G = as_matrix(pre, s, 64, op.x_shape)
        assert rel(G, G.T) < 1e-10 and torch.linalg.eigvalsh(G).min() > 0
    z = torch.randn(3, *op.x_shape, generator=make_generator(2), dtype=D64)
    batched = pre.apply(z, SIGMAS)
    for i in range(3):
        assert torch.allclose(batched[i], pre.apply(z[i:i + 1], SIGMAS[i:i + 1])[0], atol=1e-12)
    assert bool((pre.multiplier >= 0).all())


# ------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("kind", ["circulant", "lowrank_diagonal"])
def test_factors_are_buffers_loaded_without_operator_calls(kind):
    """A fresh preconditioner that loads saved factors applies the same map and never calls ``A``
    (a checkpoint must not rebuild minutes of factors); the fingerprint follows the factors."""
    op = CT((1, 8, 8), n_angles=6)
    make = {"circulant": lambda: CirculantPreconditioner(op, 0.05, 0.5, probes=4),
            "lowrank_diagonal": lambda: LowRankDiagonalPreconditioner(op, 0.05, 0.5, rank=8)}[kind]
    built = make().build()
    state = {k: v.clone() for k, v in built.state_dict().items()}
    op.reset_counts()
    fresh = make()
    fresh.load_state_dict(state)
    z = torch.randn(2, *op.x_shape, generator=make_generator(3))
    assert torch.equal(fresh.apply(z, torch.tensor([0.1, 2.0])), built.apply(z, torch.tensor([0.1, 2.0])))
    assert fresh.fingerprint() == built.fingerprint()
    assert dict(op.counts) == {}  # loaded: no gram call at all
    moved = make().to(torch.float64)  # nn.Module.to still works (a subclass once shadowed Module._apply)
    moved.load_state_dict(state)
    assert torch.allclose(moved.apply(z.double(), torch.tensor([0.1, 2.0])), built.apply(z, torch.tensor([0.1, 2.0])).double(),
                          rtol=1e-4, atol=1e-6)
    name = next(iter(state))
    state[name] = state[name] * 1.01
    fresh.load_state_dict(state)
    assert fresh.fingerprint() != built.fingerprint()


def test_another_kinds_factors_are_refused_with_a_message():
    op = CT((1, 8, 8), n_angles=6)
    state = CirculantPreconditioner(op, 0.05, 0.5, probes=2).build().state_dict()
    with pytest.raises(RuntimeError, match="another kind.*multiplier.*lowrank_diagonal"):
        LowRankDiagonalPreconditioner(op, 0.05, 0.5, rank=4).load_state_dict(state)


def test_randomized_svd_complement_is_a_buffer_in_the_fingerprint():
    """Issue 11: ``complement`` is part of G_σ, so it is saved and hashed (it used to be a float)."""
    op = CT((1, 8, 8), n_angles=5).to(D64)
    a = RandomizedSVDPreconditioner(op, 0.05, 0.5, rank=8)
    b = RandomizedSVDPreconditioner(op, 0.05, 0.5, rank=8, complement=123.0)
    assert "complement" in a.state_dict() and float(b.state_dict()["complement"]) == 123.0
    assert a.fingerprint() != b.fingerprint()
    fresh = RandomizedSVDPreconditioner(op, 0.05, 0.5, rank=8)
    fresh.load_state_dict(b.state_dict())
    z = torch.randn(1, *op.x_shape, dtype=D64)
    assert torch.equal(fresh.apply(z, 1.0), b.apply(z, 1.0))


def test_default_at_256_is_under_100_mb_and_exact_where_cheap():
    """Issue 12's bound, from the real shapes of the default at 256² (and 512²) without building it:
    the factors are allocated at construction and filled on first use."""
    for size in (256, 512):
        pre = default_preconditioner(CT((1, size, size), n_angles=180), 0.05, 4.0)
        assert isinstance(pre, LowRankDiagonalPreconditioner) and not pre._built
        nbytes = sum(t.numel() * t.element_size() for t in pre.state_dict().values())
        assert nbytes < 100e6, (size, nbytes)
        assert nbytes >= 4 * size**2 * pre.rank  # the float32 basis is really there
    assert isinstance(default_preconditioner(Blur((1, 8, 8), kernel_size=3), 0.05), SpectralPreconditioner)
    assert isinstance(default_preconditioner(CT((1, 8, 8), n_angles=4), 0.05), DensePreconditioner)  # d ≤ 64²
    assert isinstance(default_preconditioner(CT((1, 65, 64), n_angles=4), 0.05), LowRankDiagonalPreconditioner)


def test_rank_follows_the_byte_budget():
    op = CT((1, 16, 16), n_angles=4)
    assert LowRankDiagonalPreconditioner(op, 0.1).rank == int(8 * math.sqrt(256))  # 8√d binds
    assert LowRankDiagonalPreconditioner(CT((1, 128, 128), n_angles=4), 0.1).rank == 256  # the cap binds
    assert LowRankDiagonalPreconditioner(CT((1, 512, 512), n_angles=4), 0.1).rank == 64  # 64 MiB binds
    assert LowRankDiagonalPreconditioner(op, 0.1, max_bytes=4 * 256 * 10).rank == 10  # budget binds
    with pytest.raises(ValueError, match="floor"):
        LowRankDiagonalPreconditioner(op, 0.1, floor=2.0)


# ------------------------------------------------------------------------------------ UCoSModule
def tiny_net():
    from diffpost.nets import UNet

    return UNet(base_channels=8, channel_mult=[1, 2], attn_levels=[], num_res_blocks=1)


@pytest.mark.parametrize("kind, cls", [("circulant", CirculantPreconditioner), ("lowrank_diagonal", LowRankDiagonalPreconditioner)])
def test_ucos_module_builds_the_requested_kind(kind, cls):
    from lightning_modules.ucos import UCoSModule

    op = CT((1, 16, 16), n_angles=6)
    model = UCoSModule(tiny_net(), operator=op, sigma_y=0.05, preconditioner=kind, precond_rank=16)
    assert type(model.aux.preconditioner) is cls
    big = UCoSModule(tiny_net(), operator=CT((1, 72, 72), n_angles=6), sigma_y=0.05)  # "auto" beyond 64²
    assert type(big.aux.preconditioner) is LowRankDiagonalPreconditioner and not big.aux.preconditioner._built


def _compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (None if it can): tried on a one-line function."""
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(3))
        return None
    except Exception as e:  # noqa: BLE001 - any backend failure means "unavailable", reported in the skip
        return f"torch.compile unavailable on this platform ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


def _check_compiled_checkpoint(tmp_path):
    """Train a ``compile=True`` UCoS model 2 steps (with EMA), save, reload; keys and outputs agree."""
    reason = _compile_unavailable()
    if reason:
        pytest.skip(reason)
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from datamodules import InverseProblemDataModule
    from datamodules.sources import Ellipses
    from lightning_modules.checkpoint import load_module
    from lightning_modules.ucos import UCoSModule

    pl.seed_everything(0, verbose=False)
    op = CT((1, 16, 16), n_angles=6)
    dm = InverseProblemDataModule(Ellipses(size=16, length=32), op, sigma_y=0.05, batch_size=4, n_val=4, n_test=4)
    model = UCoSModule(tiny_net(), operator=op, sigma_y=0.05, compile=True)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[EMAWeightAveraging(decay=0.9)], default_root_dir=tmp_path)
    trainer.fit(model, dm)
    keys = set(model.state_dict())
    assert not any("_orig_mod" in k for k in keys)
    assert keys == set(UCoSModule(tiny_net(), operator=op, sigma_y=0.05).state_dict())
    assert model._compiled and model.aux.net._compiled_call_impl is not None and trainer.global_step == 2
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_module(path, expected=UCoSModule)
    y = torch.stack([d["y"] for d in dm.val_subset(2)])
    with torch.no_grad():
        assert torch.allclose(loaded.mmse(y), model.eval().mmse(y), atol=1e-5)


def test_compiled_ucos_checkpoint_keeps_its_keys_and_loads(tmp_path, monkeypatch):
    """Issue 10: ``compile: true`` wrapped the network (``_orig_mod.`` keys) and its checkpoints did not
    load. Compiled in place, the keys are the plain module's and ``load_module`` rebuilds it exactly.
    Catches a return to ``self.aux.net = torch.compile(self.aux.net)``. Fast: TorchDynamo traces with
    its ``eager`` backend (the keys do not depend on the backend; inductor's C++ build takes minutes on
    a CPU and runs in the slow twin below)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    _check_compiled_checkpoint(tmp_path)


@pytest.mark.slow
def test_compiled_ucos_checkpoint_with_inductor(tmp_path):
    """The same with the default inductor backend (what ``compile: true`` runs on a GPU)."""
    _check_compiled_checkpoint(tmp_path)


@pytest.mark.parametrize("kind", ["dense", "circulant", "lowrank_diagonal"])
def test_bf16_autocast_does_not_change_the_map(kind):
    """bf16-mixed training must use the map sampling uses: under autocast the preconditioner still runs
    in float32. Catches the guard removed (bf16 matmuls/FFTs change G_σ z by ~1e-3 relative)."""
    op = CT((1, 12, 12), n_angles=8)
    pre = {"dense": lambda: DensePreconditioner(op, 0.05, 0.5),
           "circulant": lambda: CirculantPreconditioner(op, 0.05, 0.5, probes=4),
           "lowrank_diagonal": lambda: LowRankDiagonalPreconditioner(op, 0.05, 0.5, rank=16)}[kind]()
    z = torch.randn(2, *op.x_shape, generator=make_generator(4))
    sigma = torch.tensor([0.3, 5.0])
    plain = pre.apply(z, sigma)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = pre.apply(z, sigma)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)


def test_dense_float32_cast_follows_loaded_factors():
    """The cached float32 copy of the dense basis must not outlive a ``load_state_dict`` (which copies in
    place, same storage): catches a cache keyed on the storage alone (stale G_σ after loading)."""
    op = CT((1, 8, 8), n_angles=5)
    a, b = DensePreconditioner(op, 0.05, 0.5), DensePreconditioner(CT((1, 8, 8), n_angles=3), 0.05, 0.5)
    z = torch.randn(2, *op.x_shape, generator=make_generator(5))
    sigma = torch.tensor([0.2, 3.0])
    before = a.apply(z, sigma)  # float32: fills the cache
    a.load_state_dict(b.state_dict())
    assert torch.allclose(a.apply(z, sigma), b.apply(z, sigma)) and not torch.allclose(a.apply(z, sigma), before)
    assert torch.allclose(a.apply(z.double(), sigma.double()).float(), b.apply(z, sigma), atol=1e-5)
