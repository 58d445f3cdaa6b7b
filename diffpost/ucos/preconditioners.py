"""Offline input preconditioners ``G_σ = (σ⁻² I + S/σ_y² + ρ0 I)⁻¹`` with ``S ≈ AᵀA`` (METHODS §3.1).

Any fixed invertible linear map of the network input keeps UCoS exact (``E[x0 | m] = E[x0 | G_σ m]``),
and this one turns the information vector into a Tikhonov-like estimate on the data scale, which is
what makes a small network learn (measured in METHODS §3.1). ``S`` is factored OFFLINE from the operator;
applying ``G_σ`` costs FFTs or a ``d×k`` product and never calls ``A``. The factors are buffers: they are
saved in the checkpoint and enter ``fingerprint()``. Training and sampling both call ``apply``.
Memory-lean fits for large operators (circulant, low-rank plus diagonal) and the ``auto`` choice:
``diffpost/ucos/lean_preconditioners.py``.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from diffpost.operators.base import LinearOperator, SVDOperator
from diffpost.random import make_generator


def _sigma_col(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return s.reshape(-1, 1) if s.dim() else s


class Preconditioner(nn.Module):
    """``apply(z, sigma) = G_σ z`` for ``z`` of shape ``(B, *x_shape)`` and ``sigma`` ``(B,)``."""

    def __init__(self, x_shape: tuple[int, ...], sigma_y: float, rho0: float):
        super().__init__()
        if sigma_y <= 0 or rho0 < 0:
            raise ValueError(f"preconditioner: need sigma_y > 0 and rho0 ≥ 0, got {sigma_y}, {rho0}")
        self.x_shape, self.sigma_y, self.rho0 = tuple(x_shape), float(sigma_y), float(rho0)

    def _diag(self, eig: torch.Tensor, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``1/(σ⁻² + λ/σ_y² + ρ0)`` per sample and eigen-direction."""
        return 1.0 / (_sigma_col(sigma, like) ** -2 + eig.to(like) / self.sigma_y**2 + self.rho0)

    def apply(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """``G_σ z`` in at least float32 with autocast off: under bf16-mixed training the map must be the
        one sampling uses (bf16 matmuls would round it by ~0.4 %), and it is cheap next to the network."""
        work = z if z.dtype in (torch.float32, torch.float64) else z.float()
        with torch.autocast(z.device.type, enabled=False):
            return self._map(work, sigma).to(z.dtype)

    def _map(self, z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        raise NotImplementedError

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{type(self).__name__}|{self.sigma_y!r}|{self.rho0!r}".encode())
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(torch.round(t.detach().cpu().double() * 1e6).to(torch.int64).numpy().tobytes())
        return h.hexdigest()[:16]


class SpectralPreconditioner(Preconditioner):
    """Exact ``S = AᵀA`` from a closed-form SVD: ``G_σ = V diag(1/(σ⁻² + s²/σ_y² + ρ0)) Vᵀ``.

    Keeps the operator only for its basis ``V``/``Vt`` (FFTs for blur/MRI, identity for inpainting,
    per-block for super-resolution), which never counts as a forward or adjoint call.
    """

    def __init__(self, operator: SVDOperator, sigma_y: float, rho0: float = 0.0):
        super().__init__(operator.x_shape, sigma_y, rho0)
        self.basis = operator
        self.register_buffer("eigenvalues", operator.singular_values.detach().double() ** 2)

    def _map(self, z, sigma):
        c = self.basis.Vt(z)
        return self.basis.V(c * self._diag(self.eigenvalues, sigma, c))


class DensePreconditioner(Preconditioner):
    """Exact ``S = AᵀA`` by dense eigendecomposition (small images, d ≲ 64²)."""

    def __init__(self, operator: LinearOperator, sigma_y: float, rho0: float = 0.0, max_dim: int = 64 * 64):
        super().__init__(operator.x_shape, sigma_y, rho0)
        if operator.x_dim > max_dim:
            raise ValueError(f"DensePreconditioner: d = {operator.x_dim} > {max_dim}; use RandomizedSVDPreconditioner")
        A = operator.to_dense(dtype=torch.float64)
        eig, Q = torch.linalg.eigh(A.T @ A)
        self.register_buffer("eigenvalues", eig.clamp_min(0))
        self.register_buffer("eigenvectors", Q)
        self._cast: tuple = (None, None)

    def _basis(self, like: torch.Tensor) -> torch.Tensor:
        """``Q`` in ``like``'s dtype/device, cast once (134 MB at 64² in float64: casting it at every
        network call doubled a 64² training step), recast when the buffer changes (load, ``.to``)."""
        Q = self.eigenvectors
        if Q.dtype == like.dtype and Q.device == like.device:
            return Q
        key = (Q.data_ptr(), Q._version, like.dtype, like.device)
        if self._cast[0] != key:
            self._cast = (key, Q.to(like))
        return self._cast[1]

    def _map(self, z, sigma):
        Q = self._basis(z)
        c = z.flatten(1) @ Q
        return ((c * self._diag(self.eigenvalues, sigma, c)) @ Q.T).reshape(z.shape)


class RandomizedSVDPreconditioner(Preconditioner):
    """Truncated ``S ≈ V_k diag(s_k²) V_kᵀ`` from randomized range finding (offline ``A``/``Aᵀ`` calls):

    ``G_σ = V_k diag(1/(σ⁻² + s_k²/σ_y² + ρ0)) V_kᵀ + (I − V_k V_kᵀ)/(σ⁻² + ρ0 + c)``, with ``c`` the
    energy left in the complement (default: the smallest kept ``s_k²/σ_y²`` halved, a neutral guess).
    """

    def __init__(self, operator: LinearOperator, sigma_y: float, rho0: float = 0.0, rank: int = 256,
                 oversample: int = 16, power_iters: int = 2, seed: int = 0, complement: float | None = None):
        super().__init__(operator.x_shape, sigma_y, rho0)
        d = operator.x_dim
        k = min(rank, d)
        g = make_generator(seed)
        dev = next(iter(operator.buffers()), torch.empty(0)).device
        omega = torch.randn(d, min(d, k + oversample), generator=g, dtype=torch.float64).to(dev)

        def gram(M):  # AᵀA applied to columns
            cols = M.T.reshape(-1, *operator.x_shape)
            return operator.gram(cols.to(torch.float64)).reshape(M.shape[1], d).T

        Yk = gram(omega)
        for _ in range(power_iters):
            Yk, _ = torch.linalg.qr(Yk)
            Yk = gram(Yk)
        Qm, _ = torch.linalg.qr(Yk)
        B = gram(Qm).T @ Qm  # Qᵀ AᵀA Q (symmetric)
        eig, W = torch.linalg.eigh(0.5 * (B + B.T))
        order = torch.argsort(eig, descending=True)[:k]
        self.register_buffer("eigenvalues", eig[order].clamp_min(0).cpu())
        self.register_buffer("basis_vectors", (Qm @ W[:, order]).cpu())
        c = float(self.eigenvalues[-1]) / (2 * self.sigma_y**2) if complement is None else float(complement)
        # a buffer: part of G_σ, so it is saved with the factors and enters the fingerprint
        self.register_buffer("complement", torch.tensor(c, dtype=torch.float64))

    def _map(self, z, sigma):
        Vk = self.basis_vectors.to(z)
        flat = z.flatten(1)
        c = flat @ Vk
        s = _sigma_col(sigma, flat)
        rest = (flat - c @ Vk.T) / (s**-2 + self.rho0 + self.complement.to(flat))
        return ((c * self._diag(self.eigenvalues, sigma, c)) @ Vk.T + rest).reshape(z.shape)

