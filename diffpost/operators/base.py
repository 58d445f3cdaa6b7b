"""The linear-operator contract (DeepInverse-style): forward, adjoint, pseudo-inverse, normal solve.

Shapes are per sample: ``x_shape`` e.g. ``(C, H, W)``, ``y_shape`` whatever the measurement is.
Batched tensors carry a leading batch axis. Subclasses implement ``_forward`` and ``_adjoint``; the
public ``forward``/``adjoint`` validate shapes and count applications (one count per image), so tests
and benchmarks can prove that a sampler makes no operator calls.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from typing import Any, Callable

import torch
from torch import nn


def _flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def conjugate_gradient(
    apply: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    tol: float = 1e-10,
    max_iter: int = 500,
) -> torch.Tensor:
    """Batched CG for symmetric positive (semi-)definite ``apply``; every sample has its own step sizes.

    Stops when every sample's residual norm is below ``tol`` times its right-hand side's norm.
    Started at zero, iterates stay in the range of ``apply`` (gives minimum-norm solutions of
    consistent singular systems).
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rs = _flat_dot(r, r)
    bnorm2 = _flat_dot(rhs, rhs).clamp_min(torch.finfo(rhs.dtype).tiny)
    shape = (-1,) + (1,) * (rhs.dim() - 1)
    for _ in range(max_iter):
        if bool((rs <= tol**2 * bnorm2).all()):
            break
        Ap = apply(p)
        pAp = _flat_dot(p, Ap)
        active = rs > tol**2 * bnorm2
        alpha = torch.where(active & (pAp > 0), rs / pAp.clamp_min(torch.finfo(rhs.dtype).tiny), torch.zeros_like(rs))
        x = x + alpha.view(shape) * p
        r = r - alpha.view(shape) * Ap
        rs_new = _flat_dot(r, r)
        beta = torch.where(active, rs_new / rs.clamp_min(torch.finfo(rhs.dtype).tiny), torch.zeros_like(rs))
        p = r + beta.view(shape) * p
        rs = rs_new
    return x


class LinearOperator(nn.Module):
    """A linear map ``A: R^{x_shape} → R^{y_shape}`` applied per sample.

    Buffers (masks, kernels) follow ``.to(device, dtype)``; inputs of another dtype are computed in the
    input's dtype. Subclasses must implement ``_forward``, ``_adjoint`` and ``config``.
    """

    #: names of tensors (buffers or parameters) that define the operator beyond ``config()``,
    #: included in ``fingerprint()`` (e.g. a user-given kernel or a dense matrix).
    fingerprint_tensors: tuple[str, ...] = ()

    def __init__(self, x_shape: tuple[int, ...], y_shape: tuple[int, ...]):
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        self.y_shape = tuple(int(s) for s in y_shape)
        self.counts: Counter = Counter()

    # ----------------------------------------------------------------- to be implemented
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Plain-typed keyword arguments that rebuild this operator with ``type(self)(**config)``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- public contract
    @property
    def x_dim(self) -> int:
        return math.prod(self.x_shape)

    @property
    def y_dim(self) -> int:
        return math.prod(self.y_shape)

    def _check(self, t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        if not torch.is_tensor(t):
            raise TypeError(f"{type(self).__name__}: {what} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape[1:]) != shape or t.dim() != len(shape) + 1:
            raise ValueError(
                f"{type(self).__name__}: expected {what} of shape (B, {', '.join(map(str, shape))}), "
                f"got {tuple(t.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.x_shape, "x")
        self.counts["forward"] += x.shape[0]
        return self._forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, self.y_shape, "y")
        self.counts["adjoint"] += y.shape[0]
        return self._adjoint(y)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``AᵀA x``."""
        return self.adjoint(self.forward(x))

    def normal_solve(self, rhs: torch.Tensor, rho: float | torch.Tensor, *, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
        """``(AᵀA + ρ I)⁻¹ rhs`` (CG here; closed form in SVD operators). ``rho`` scalar or ``(B,)``."""
        self._check(rhs, self.x_shape, "rhs")
        rho_b = _as_batch(rho, rhs)
        return conjugate_gradient(lambda v: self.gram(v) + rho_b * v, rhs, tol=tol, max_iter=max_iter)

    def pinv(self, y: torch.Tensor, *, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
        """Minimum-norm least-squares solution ``A⁺ y`` (CG on the normal equations started at 0)."""
        self._check(y, self.y_shape, "y")
        return conjugate_gradient(self.gram, self.adjoint(y), tol=tol, max_iter=max_iter)

    def to_dense(self, *, dtype=torch.float64, device=None) -> torch.Tensor:
        """The ``(y_dim, x_dim)`` matrix, built column by column (small problems and tests only)."""
        device = device if device is not None else _buffer_device(self)
        eye = torch.eye(self.x_dim, dtype=dtype, device=device).reshape(self.x_dim, *self.x_shape)
        cols = [self._forward(chunk).reshape(chunk.shape[0], -1) for chunk in eye.split(256)]
        return torch.cat(cols, 0).T.contiguous()

    def fingerprint(self) -> str:
        """Stable hash of class, config and defining tensors; equal across processes and machines."""
        h = hashlib.sha256()
        h.update(f"{type(self).__module__}.{type(self).__qualname__}".encode())
        h.update(json.dumps(self.config(), sort_keys=True, default=_json_default).encode())
        for name in self.fingerprint_tensors:
            t = getattr(self, name).detach().to("cpu", torch.float64).contiguous()
            # rounded so that last-bit differences between BLAS/FFT builds do not change the hash
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(torch.round(t * 1e8).to(torch.int64).numpy().tobytes())
        return h.hexdigest()[:16]

    def reset_counts(self) -> None:
        self.counts.clear()

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, y_shape={self.y_shape}"


class SVDOperator(LinearOperator):
    """An operator with a closed-form SVD ``A = U diag(s) Vᵀ``.

    Spectral coordinates have length ``x_dim``: ``Vt(x)`` returns ``(B, x_dim)`` coefficients in an
    orthonormal basis of x-space and ``singular_values`` is ``(x_dim,)`` aligned with them (zeros for
    the null space; not sorted). ``U``/``Ut`` act on the same coordinates and are defined by
    ``U(c) = A V (c / s)`` on ``s > 0``, so ``A = U diag(s) Vᵀ`` and ``Ut(y) = (Vᵀ Aᵀ y) / s`` (zero where
    ``s = 0``): the range part of y. Subclasses implement ``Vt``, ``V`` and ``singular_values`` and may
    override ``U``/``Ut`` with cheaper formulas.
    """

    #: singular values below this times the largest count as zero in pinv
    rcond: float = 1e-10

    @property
    def singular_values(self) -> torch.Tensor:
        raise NotImplementedError

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def V(self, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _s(self, like: torch.Tensor) -> torch.Tensor:
        return self.singular_values.to(device=like.device, dtype=like.dtype)

    def _inv_s(self, like: torch.Tensor, power: int = 1) -> torch.Tensor:
        s = self._s(like)
        keep = s > self.rcond * s.abs().max()
        return torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)) ** power, torch.zeros_like(s))

    def U(self, c: torch.Tensor) -> torch.Tensor:
        return self.forward(self.V(c * self._inv_s(c)))

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        return self.Vt(self.adjoint(y)) * self._inv_s(y)

    def normal_solve(self, rhs: torch.Tensor, rho: float | torch.Tensor, **_: Any) -> torch.Tensor:
        self._check(rhs, self.x_shape, "rhs")
        c = self.Vt(rhs)
        rho_b = _as_batch(rho, c)
        return self.V(c / (self._s(c) ** 2 + rho_b))

    def pinv(self, y: torch.Tensor, **_: Any) -> torch.Tensor:
        self._check(y, self.y_shape, "y")
        c = self.Vt(self.adjoint(y))
        return self.V(c * self._inv_s(c, power=2))


class DenseOperator(LinearOperator):
    """``A`` as an explicit ``(y_dim, x_dim)`` matrix: the test oracle for every other operator."""

    fingerprint_tensors = ("matrix",)

    def __init__(self, matrix: torch.Tensor, x_shape: tuple[int, ...], y_shape: tuple[int, ...] | None = None):
        matrix = torch.as_tensor(matrix)
        if matrix.dim() != 2 or matrix.shape[1] != math.prod(x_shape):
            raise ValueError(f"DenseOperator: matrix of shape {tuple(matrix.shape)} does not act on x_shape {tuple(x_shape)}")
        y_shape = (matrix.shape[0],) if y_shape is None else tuple(y_shape)
        if math.prod(y_shape) != matrix.shape[0]:
            raise ValueError(f"DenseOperator: y_shape {y_shape} does not match {matrix.shape[0]} rows")
        super().__init__(x_shape, y_shape)
        self.register_buffer("matrix", matrix)

    def _mat(self, like: torch.Tensor) -> torch.Tensor:
        return self.matrix.to(device=like.device, dtype=like.dtype)

    def _forward(self, x):
        return (x.reshape(x.shape[0], -1) @ self._mat(x).T).reshape(x.shape[0], *self.y_shape)

    def _adjoint(self, y):
        return (y.reshape(y.shape[0], -1) @ self._mat(y)).reshape(y.shape[0], *self.x_shape)

    def config(self):
        # the matrix itself is not a plain type; it is part of the fingerprint instead
        return {"x_shape": list(self.x_shape), "y_shape": list(self.y_shape)}

    def to_dense(self, *, dtype=torch.float64, device=None):
        return self.matrix.to(dtype=dtype, device=device or self.matrix.device).clone()


def _as_batch(rho: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    rho = torch.as_tensor(rho, dtype=like.dtype, device=like.device)
    if rho.dim() == 0:
        return rho
    return rho.reshape((-1,) + (1,) * (like.dim() - 1))


def _buffer_device(module: nn.Module) -> torch.device:
    for t in list(module.buffers()) + list(module.parameters()):
        return t.device
    return torch.device("cpu")


def _json_default(o: Any):
    if torch.is_tensor(o):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable in an operator config: {type(o).__name__}")
