"""Memory-lean UCoS preconditioners for large operators (CT at 128²–256² and beyond; METHODS §3.1).

Both keep UCoS exact: ``G_σ`` is a fixed symmetric positive definite map for every σ (the only
σ-dependence is ``a = σ⁻² + ρ0`` in closed form), the same function in training and sampling.

- ``CirculantPreconditioner``: a Fourier-diagonal fit ``S ≈ H diag(m) H`` (``H`` the orthonormal 2-D
  Hartley transform) from random probes, ``G_σ = H diag(1/(a + m/σ_y²)) H``. ``d`` floats, two FFTs.
- ``LowRankDiagonalPreconditioner``: ``S ≈ V diag(λ) Vᵀ`` (Nyström from randomized range finding)
  plus a per-pixel diagonal ``δ`` on the complement, ``G_σ = V diag(1/(a + λ/σ_y²)) Vᵀ +
  P diag(1/(a + δ/σ_y²)) P``, ``P = I − V Vᵀ``; ``V`` stored in float32.

Factors are computed on first use (training) or loaded from a checkpoint (then never recomputed):
building them costs operator calls (minutes for 256² CT on a CPU) that loading a trained model must
not repeat. They are buffers, so they are saved in the checkpoint and enter ``fingerprint()``; the
kind is the class (in the fingerprint) and the buffer names (a checkpoint of another kind is refused
with a message naming both).
"""
from __future__ import annotations

import math

import torch

from diffpost.fourier import dht2
from diffpost.operators.base import LinearOperator, SVDOperator
from diffpost.random import make_generator
from diffpost.ucos.preconditioners import DensePreconditioner, Preconditioner, SpectralPreconditioner, _sigma_col

__all__ = ["LazyPreconditioner", "CirculantPreconditioner", "LowRankDiagonalPreconditioner", "gram_columns",
           "default_preconditioner"]


def gram_columns(operator: LinearOperator, M: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``AᵀA`` applied to the columns of ``M`` ``(d, n)``, ``chunk`` images per operator call."""
    cols = M.T.reshape(-1, *operator.x_shape)
    out = torch.cat([operator.gram(c) for c in cols.split(chunk)], 0)
    return out.reshape(M.shape[1], -1).T


class LazyPreconditioner(Preconditioner):
    """Factors (buffers of known shapes) fitted by ``_fit`` on the first ``apply``/``fingerprint``.

    The operator is kept by reference, not as a submodule (its state is not the preconditioner's).
    Building runs without autograd, autocast or inference mode, on the device of the buffers.
    """

    kind = "lazy"

    def __init__(self, operator: LinearOperator, sigma_y: float, rho0: float, seed: int):
        super().__init__(operator.x_shape, sigma_y, rho0)
        object.__setattr__(self, "_operator", operator)
        self.seed, self._built = int(seed), False

    def _fit(self, device: torch.device) -> None:
        raise NotImplementedError

    def build(self) -> "LazyPreconditioner":
        if not self._built:
            device = next(self.buffers()).device
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
                self._fit(device)
            self._built = True
        return self

    def apply(self, z, sigma):
        self.build()
        return super().apply(z, sigma)

    def fingerprint(self) -> str:
        self.build()
        return super().fingerprint()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        mine = {prefix + name for name, _ in self.named_buffers(recurse=False)}
        theirs = {k for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix):]}
        if theirs and not (mine & theirs):
            error_msgs.append(f"the checkpoint's UCoS preconditioner is another kind (buffers {sorted(theirs)}); "
                              f"this model builds a {self.kind} preconditioner (buffers {sorted(mine)})")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._built = True

    def _a(self, sigma, like: torch.Tensor) -> torch.Tensor:
        """``σ⁻² + ρ0`` as a column ``(B, 1)``."""
        return _sigma_col(sigma, like) ** -2 + self.rho0


class CirculantPreconditioner(LazyPreconditioner):
    """``G_σ = H diag(1/(σ⁻² + ρ0 + m/σ_y²)) H`` with ``m`` the Hartley-diagonal fit of ``S = AᵀA``.

    ``m_k = Σ_j (H v_j)_k (H S v_j)_k / Σ_j (H v_j)_k²`` over ``probes`` Gaussian probes ``v_j``: an
    estimate of ``diag(H S H)``, the circulant closest to ``S`` in Frobenius norm (exact when ``S`` is a
    symmetric periodic convolution, e.g. blur), clamped at 0 so ``G_σ`` stays SPD. Costs ``probes``
    calls of ``AᵀA`` to build, ``d`` floats to store, two FFTs per apply. CT's normal operator on a
    bounded image is far from circulant at low frequencies: see docs/benchmarks.md before using it there.
    """

    kind = "circulant"

    def __init__(self, operator: LinearOperator, sigma_y: float, rho0: float = 0.0, probes: int = 16, seed: int = 0):
        super().__init__(operator, sigma_y, rho0, seed)
        if len(self.x_shape) < 2 or probes < 1:
            raise ValueError(f"CirculantPreconditioner: need images (…, H, W) and probes ≥ 1, got {self.x_shape}, {probes}")
        self.probes = int(probes)
        self.register_buffer("multiplier", torch.zeros(self.x_shape, dtype=torch.float32))

    def _fit(self, device):
        op, g = self._operator, make_generator(self.seed)
        v = torch.randn(self.probes, *self.x_shape, generator=g, dtype=torch.float64).to(device)
        hv, hs = dht2(v), dht2(op.gram(v))
        self.multiplier.copy_(((hv * hs).sum(0) / (hv * hv).sum(0)).clamp_min(0))

    def _map(self, z, sigma):
        a = self._a(sigma, z).reshape(-1, *([1] * (z.dim() - 1)))
        return dht2(dht2(z) / (a + self.multiplier.to(z) / self.sigma_y**2))


class LowRankDiagonalPreconditioner(LazyPreconditioner):
    """``G_σ = V diag(1/(a + λ/σ_y²)) Vᵀ + P diag(1/(a + δ/σ_y²)) P``, ``a = σ⁻² + ρ0``, ``P = I − VVᵀ``.

    ``V`` ``(d, rank)`` orthonormal, float32: the top Ritz vectors of ``S`` on a block Krylov space of
    ``rank + oversample`` columns in ``blocks`` blocks (randomized block Lanczos; one ``AᵀA`` call per
    column, so the build costs ``rank + oversample + probes`` calls). Measured on 64² CT: at 512
    columns, keeping 128–256 Ritz vectors gave 25 dB against the exact Tikhonov solution, keeping all
    512 gave 5 dB (unconverged vectors with tiny λ_rank make the floor useless); hence
    ``oversample = rank`` by default. ``δ`` per pixel: the residual ``R = S − VΛVᵀ``'s
    energy-weighted curvature ``(R²)_ii / R_ii`` from ``probes`` Rademacher probes (exact when ``R``
    is diagonal, e.g. masks), kept within ``[floor·λ_rank, λ_rank]``. The floor (default ½, the
    randomized SVD's neutral guess) matters for CT, whose complement spectrum decays slowly: measured
    on 32²–64² CT, under-estimating the complement's curvature amplifies it and costs several dB, a
    floor of ½·λ_rank did not. Use ``floor=0`` for mask-like operators.

    SPD: on ``range(V)`` the eigenvalues are ``1/(a + λ/σ_y²) > 0``; on its complement
    ``wᵀ P diag(·) P w = wᵀ diag(·) w > 0``; the two blocks do not mix. ``rank=None``: 256, or less
    where ``8√d`` is smaller or the float32 basis would exceed ``max_bytes`` (64 MiB; rank 64 at 512²).
    """

    kind = "lowrank_diagonal"

    def __init__(self, operator: LinearOperator, sigma_y: float, rho0: float = 0.0, rank: int | None = None,
                 oversample: int | None = None, blocks: int = 16, probes: int = 8, floor: float = 0.5, seed: int = 0,
                 max_bytes: int = 64 * 2**20):
        super().__init__(operator, sigma_y, rho0, seed)
        d = operator.x_dim
        if rank is None:
            rank = max(1, min(256, int(8 * math.sqrt(d)), max_bytes // (4 * d)))
        oversample = rank if oversample is None else oversample
        if not (1 <= rank and oversample >= 0 and blocks >= 1 and probes >= 1 and 0 <= floor <= 1):
            raise ValueError(f"LowRankDiagonalPreconditioner: need rank ≥ 1, oversample ≥ 0, blocks ≥ 1, "
                             f"probes ≥ 1 and 0 ≤ floor ≤ 1; got {rank}, {oversample}, {blocks}, {probes}, {floor}")
        self.rank, self.oversample, self.blocks = min(int(rank), d), int(oversample), int(blocks)
        self.probes, self.floor = int(probes), float(floor)
        self.register_buffer("basis", torch.zeros(d, self.rank, dtype=torch.float32))
        self.register_buffer("eigenvalues", torch.zeros(self.rank, dtype=torch.float64))
        self.register_buffer("complement_diagonal", torch.zeros(d, dtype=torch.float32))

    def _fit(self, device):
        op, d, k = self._operator, self._operator.x_dim, self.rank
        g = make_generator(self.seed)
        Q, SQ = self._krylov(op, d, min(d, k + self.oversample), g, device)
        T = (Q.T.double() @ SQ.double())
        lam, W = torch.linalg.eigh(0.5 * (T + T.T))
        order = torch.argsort(lam, descending=True)[:k]
        lam, V = lam[order].clamp_min(0), Q.double() @ W[:, order]
        # residual curvature per pixel from Rademacher probes: E[v⊙Rv] = diag R, E[(Rv)²] = diag R²
        v = (torch.randint(0, 2, (d, self.probes), generator=g) * 2 - 1).to(device=device, dtype=torch.float64)
        Rv = gram_columns(op, v.float()).double() - V @ (lam[:, None] * (V.T @ v))
        diag_r = (v * Rv).mean(1).clamp_min(0)
        diag_r2 = (Rv**2).mean(1)
        top = float(lam[-1])
        delta = torch.where(diag_r > 0, diag_r2 / diag_r.clamp_min(1e-300), torch.zeros_like(diag_r))
        self.basis.copy_(V)
        self.eigenvalues.copy_(lam)
        self.complement_diagonal.copy_(delta.clamp(self.floor * top, top))

    def _krylov(self, op, d: int, width: int, g, device):
        """Orthonormal basis ``Q`` of the block Krylov space ``[Ω, SΩ, S²Ω, …]`` (``width`` columns in
        ``blocks`` blocks, full re-orthogonalisation) and ``S Q``: one ``AᵀA`` call per column, and the
        Rayleigh–Ritz pairs from it beat those of a power-iterated sketch at equal operator calls."""
        b = max(1, math.ceil(width / self.blocks))
        Q = torch.linalg.qr(torch.randn(d, b, generator=g, dtype=torch.float32).to(device))[0]
        basis, images, n = [Q], [gram_columns(op, Q)], b
        while n < width:
            W, B = images[-1][:, : width - n], torch.cat(basis, 1)
            for _ in range(2):  # block Gram–Schmidt twice (float32; an exhausted Krylov space leaves
                W = torch.linalg.qr(W - B @ (B.T @ W))[0]  # only rounding noise, re-orthogonalised too)
            basis.append(W)
            images.append(gram_columns(op, W))
            n += W.shape[1]
        return torch.cat(basis, 1), torch.cat(images, 1)

    def _map(self, z, sigma):
        V = self.basis.to(z)
        flat = z.flatten(1)
        a = self._a(sigma, flat)
        c = flat @ V
        w = (flat - c @ V.T) / (a + self.complement_diagonal.to(z) / self.sigma_y**2)
        w = w - (w @ V) @ V.T  # back onto the complement (δ is not constant on it)
        top = c * self._diag(self.eigenvalues, sigma, c)
        return (top @ V.T + w).reshape(z.shape)


def default_preconditioner(operator: LinearOperator, sigma_y: float, rho0: float = 0.0) -> Preconditioner:
    """Exact where cheap: closed-form SVD, else dense eigendecomposition up to 64²; beyond, the low-rank-
    plus-diagonal fit in float32 (at most 64 MiB of factors), chosen by the measurements in
    docs/benchmarks.md ("Scale": quality against the exact Tikhonov solution, build time, bytes)."""
    if isinstance(operator, SVDOperator):
        return SpectralPreconditioner(operator, sigma_y, rho0)
    if operator.x_dim <= 64 * 64:
        return DensePreconditioner(operator, sigma_y, rho0)
    return LowRankDiagonalPreconditioner(operator, sigma_y, rho0)
