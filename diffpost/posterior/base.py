"""The posterior-method contract (DESIGN.md "Posterior methods", METHODS §3–§5).

A posterior method is a small class: its typed ``__init__`` holds the hyper-parameters (so
LightningCLI/jsonargparse configure it by ``class_path``) and its one call

    method(model, operator, y, sigma_y, num_steps=..., n_samples=..., generator=..., callback=...)

returns a ``PosteriorOutput`` with samples ``(B, S, *x_shape)`` and the cost of producing them.
``model`` is what the method runs on: a ``PriorModel`` (an unconditional denoiser, for DPS, DDRM,
DiffPIR, ...) or a ``UCoSModel`` (a trained auxiliary denoiser tied to one operator and σ_y).

Subclasses implement ``sample(run)`` over a flat batch of ``B·S`` chains; the ``Run`` they receive
holds the shared pieces, so that every method is counted, seeded and guarded the same way:
- ``run.denoise`` / ``run.denoise_vjp`` count network evaluations (NFE, one per call whatever the
  batch, i.e. per chain) and vector-Jacobian products through the network;
- operator calls are the operator's own per-image counters (``LinearOperator.counts``);
- ``run.noise`` draws ``N(0, C)`` from per-(measurement, sample) generators, so samples do not depend
  on the batch size or how measurements are sharded;
- ``run.emit`` calls the callback and stops a non-finite chain with ``SamplerDivergedError`` naming
  the method and the step (one divergence error in the whole project).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from diffpost.config import Configurable
from diffpost.operators.base import LinearOperator, SVDOperator
from diffpost.random import GeneratorLike, per_sample_generators, randn, seed_for
from diffpost.samplers.base import Callback, Denoiser, NoiseFn
from diffpost.samplers.errors import SamplerDivergedError
from diffpost.schedules import NoiseCovariance, karras_sigmas

#: generator stream of posterior draws: ``seed_for(seed, POSTERIOR_STREAM, index, sample)``
POSTERIOR_STREAM = 3


class OperatorMismatchError(ValueError):
    """A model used with an operator or σ_y it was not trained for (UCoS), or a method given an
    operator it cannot use."""


# ================================================================================ models
@dataclass(eq=False, kw_only=True)
class DiffusionModel:
    """What every method needs of a trained diffusion model: the image shape, its σ grid (EDM's
    Karras grid, METHODS §2), ``σ_d`` and the diffusion-noise covariance (``None``: white noise)."""

    x_shape: tuple[int, ...]
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5
    noise_cov: NoiseCovariance | None = None
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self.x_shape = tuple(int(s) for s in self.x_shape)

    def sigmas(self, num_steps: int, sigma_max: float | None = None) -> torch.Tensor:
        """The descending grid ``σ_max … σ_min, 0`` (``num_steps + 1`` levels) in the model's dtype."""
        return karras_sigmas(num_steps, self.sigma_min, self.sigma_max if sigma_max is None else sigma_max, self.rho,
                             dtype=self.dtype, device=self.device)


@dataclass(eq=False, kw_only=True)
class PriorModel(DiffusionModel):
    """An unconditional prior: ``denoiser(x, σ) ≈ E[x0 | x_σ = x]``."""

    denoiser: Denoiser


@dataclass(eq=False, kw_only=True)
class UCoSModel(DiffusionModel):
    """A trained UCoS auxiliary denoiser ``aux(ỹ, σ) ≈ E[x0 | Ỹ_σ = ỹ]`` (METHODS §3), valid only for
    the ``operator`` and ``sigma_y`` it was trained with."""

    aux: Denoiser
    operator: LinearOperator
    sigma_y: float

    def check_task(self, operator: LinearOperator, sigma_y: float) -> None:
        mine, theirs = self.operator.fingerprint(), operator.fingerprint()
        if mine != theirs:
            raise OperatorMismatchError(
                f"this UCoS model was trained for {type(self.operator).__name__} {self.operator.config()} "
                f"(fingerprint {mine}); got {type(operator).__name__} {operator.config()} (fingerprint {theirs})")
        if not math.isclose(float(sigma_y), float(self.sigma_y), rel_tol=1e-6):
            raise OperatorMismatchError(f"this UCoS model was trained for sigma_y = {self.sigma_y}; got sigma_y = {sigma_y}")


# ================================================================================ output
@dataclass
class PosteriorOutput:
    """Samples ``(B, S, *x_shape)`` (``S = 1`` and ``mean_only`` for mean estimators such as RMP) and
    the cost: ``nfe`` network evaluations and ``vjp`` vector-Jacobian products per chain,
    ``operator_calls`` the per-image ``forward``/``adjoint`` applications of the whole call."""

    samples: torch.Tensor
    nfe: int
    vjp: int
    operator_calls: dict[str, int]
    mean_only: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> torch.Tensor:
        return self.samples.mean(1)

    def __getitem__(self, key: str) -> Any:
        """Mapping-style reads (``out["samples"]``) of the same fields."""
        return getattr(self, key)

    @property
    def std(self) -> torch.Tensor | None:
        """Per-pixel std over samples; ``None`` when there is only one (or a mean estimate)."""
        return None if self.mean_only or self.samples.shape[1] < 2 else self.samples.std(1)


def posterior_generators(seed: int, index: torch.Tensor | Sequence[int], n_samples: int) -> list[torch.Generator]:
    """One generator per (measurement index, sample), ordered measurement-major like ``Run.repeat``."""
    return per_sample_generators([seed_for(seed, POSTERIOR_STREAM, int(i), s) for i in index for s in range(n_samples)])


# ================================================================================ one run
class Run:
    """The state of one method call over ``N = B·S`` chains: the counted model, the operator, the
    measurements, generators and callback. Methods use its pieces rather than their own."""

    def __init__(self, method: "PosteriorMethod", model: DiffusionModel, operator: LinearOperator, y: torch.Tensor,
                 sigma_y: float, num_steps: int, n_samples: int, generator: GeneratorLike, callback: Callback | None):
        self.method, self.model, self.operator = method, model, operator
        self.y, self.sigma_y, self.num_steps, self.n_samples = y, float(sigma_y), num_steps, n_samples
        self.generator, self.callback = generator, callback
        self.nfe = 0
        self.vjp_count = 0
        self.extras: dict[str, Any] = {}
        #: a state beyond this is exploding, not sampling: |x_σ| ≤ |x0| + a few σ ≤ 1 + 6 σ_max for data in [-1, 1]
        self.state_limit = 100.0 * (1.0 + float(model.sigma_max))

    # ------------------------------------------------------------------ shapes and grids
    @property
    def batch(self) -> int:
        """Number of chains ``N = B·S``."""
        return self.y.shape[0] * self.n_samples

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.operator.x_shape

    def repeat(self, t: torch.Tensor) -> torch.Tensor:
        """A per-measurement tensor ``(B, ...)`` repeated for the chains ``(B·S, ...)``."""
        return t.repeat_interleave(self.n_samples, 0) if self.n_samples > 1 else t

    def sigmas(self, num_steps: int | None = None, sigma_max: float | None = None) -> list[float]:
        """The model's descending grid (trailing 0) as Python floats: step coefficients cost nothing."""
        return [float(s) for s in self.model.sigmas(self.num_steps if num_steps is None else num_steps, sigma_max).tolist()]

    # ------------------------------------------------------------------ randomness
    def noise(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """``N(0, C)`` draws, one per chain, with the shape of ``like`` (default ``(N, *x_shape)``)."""
        shape = (self.batch, *self.x_shape) if like is None else tuple(like.shape)
        z = randn(shape, self.generator, dtype=self.model.dtype, device=self.model.device)
        cov = self.model.noise_cov
        return z if cov is None or tuple(shape[1:]) != self.x_shape else cov.sqrt_apply(z)

    def white_noise(self, shape: Sequence[int]) -> torch.Tensor:
        """``N(0, I)`` draws of any per-chain shape (e.g. measurement-space noise), one row per chain."""
        return randn((self.batch, *shape), self.generator, dtype=self.model.dtype, device=self.model.device)

    @property
    def noise_fn(self) -> NoiseFn | None:
        """The ``noise`` argument of the σ-space samplers: ``None`` for white noise."""
        cov = self.model.noise_cov
        return None if cov is None else (lambda like, gen: cov.sqrt_apply(randn(like.shape, gen, dtype=like.dtype, device=like.device)))

    def initial(self, sigma: float) -> torch.Tensor:
        """The start of every chain: ``σ C^½ n``."""
        return sigma * self.noise()

    # ------------------------------------------------------------------ the network, counted
    def counted(self, denoiser: Denoiser) -> Denoiser:
        """``denoiser`` with each call counted as one network evaluation (hand it to σ-space samplers)."""

        def call(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            self.nfe += 1
            return denoiser(x, sigma)

        return call

    def _sigma(self, sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return s.expand(x.shape[0]) if s.dim() == 0 else s

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``x̂0 = D(x, σ)`` of the prior (one NFE)."""
        self.nfe += 1
        return self.model.denoiser(x, self._sigma(sigma, x))

    def denoise_vjp(self, x: torch.Tensor, sigma: float | torch.Tensor) -> tuple[torch.Tensor, Callable[..., torch.Tensor]]:
        """``x̂0 = D(x, σ)`` and ``vjp(v) = (∂x̂0/∂x)ᵀ v`` through the network (one NFE; one VJP per
        ``vjp`` call). ``vjp(v, retain=True)`` keeps the graph for another product."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = self.denoise(x_in, sigma)

        def vjp(v: torch.Tensor, retain: bool = False) -> torch.Tensor:
            self.vjp_count += 1
            with torch.enable_grad():
                return torch.autograd.grad(x0, x_in, v, retain_graph=retain)[0]

        return x0.detach(), vjp

    # ------------------------------------------------------------------ per step
    def emit(self, i: int, x: torch.Tensor, sigma: float, sigma_next: float, denoised: torch.Tensor | None = None) -> None:
        """After step ``i``: stop on a non-finite state (``SamplerDivergedError`` naming the method and
        step), then call the callback with ``dict(i, x, sigma, sigma_next, denoised)``."""
        check_state(x, self.method.name, i, sigma, limit=self.state_limit)
        if self.callback is not None:
            self.callback(dict(i=i, x=x, sigma=sigma, sigma_hat=sigma, sigma_next=sigma_next, denoised=denoised))


def check_state(x: torch.Tensor, who: str, step: int, sigma: float | None = None, limit: float | None = None) -> None:
    """``SamplerDivergedError`` if ``x`` has a NaN/±inf, or (with ``limit``) an entry beyond ``limit`` in
    absolute value: "<who> diverged: state is not finite after step i (σ = …)" / "... exploded ..."."""
    at = "" if sigma is None else f" (σ = {sigma:.4g})"
    if not bool(torch.isfinite(x).all()):
        rows = int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).sum())
        raise SamplerDivergedError(f"{who} diverged: state is not finite after step {step}{at} in {rows} of {x.shape[0]} chains; "
                                   "lower the step size/guidance weight or check the model")
    if limit is not None:
        big = float(x.abs().max()) if x.numel() else 0.0
        if big > limit:
            raise SamplerDivergedError(f"{who} diverged: state exploded to |x| = {big:.3g} (limit {limit:.3g}) after step "
                                       f"{step}{at}; lower the step size/guidance weight")


# ================================================================================ methods
class PosteriorMethod(Configurable):
    """Base of every posterior method; subclasses implement ``sample(run) -> (B·S, *x_shape)``.

    Class attributes state what a method needs: ``model_type`` (``PriorModel`` or ``UCoSModel``),
    ``mean_estimator`` (returns one estimate per measurement, ``S = 1``), ``allows_noiseless``
    (accepts ``σ_y = 0``), ``supports_noise_cov`` (function-space noise covariance) and
    ``default_num_steps`` (the paper's operating point) and ``tuning`` (the grid of its key
    hyper-parameters that ``scripts/benchmark.py posterior`` searches on validation data).
    """

    model_type: ClassVar[type[DiffusionModel]] = PriorModel
    mean_estimator: ClassVar[bool] = False
    allows_noiseless: ClassVar[bool] = False
    supports_noise_cov: ClassVar[bool] = True
    #: the paper's step count (its operating point); ``None``: the model's own ``num_steps``
    default_num_steps: ClassVar[int | None] = None
    #: the key hyper-parameters and the small grid a benchmark tunes them over on validation data
    tuning: ClassVar[dict[str, tuple]] = {}
    #: why the formula cannot use a trace-class noise covariance (shown when ``supports_noise_cov`` is False)
    noise_cov_reason: ClassVar[str] = ""

    @property
    def name(self) -> str:
        """Short name for metric keys and messages, e.g. ``dps``."""
        return type(self).__name__.lower()

    def check(self, model: DiffusionModel, operator: LinearOperator, sigma_y: float) -> None:
        """Raise ``OperatorMismatchError`` naming the method, the operator and why, when it cannot run."""

    def sample(self, run: Run) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ the one call
    def __call__(self, model: DiffusionModel, operator: LinearOperator, y: torch.Tensor, sigma_y: float, *,
                 num_steps: int, n_samples: int = 1, generator: GeneratorLike = None,
                 callback: Callback | None = None) -> PosteriorOutput:
        self.validate(model, operator, y, sigma_y, num_steps, n_samples)
        S = 1 if self.mean_estimator else n_samples
        B = y.shape[0]
        if isinstance(generator, (list, tuple)) and len(generator) != B * S:
            raise ValueError(f"{self.name}: got {len(generator)} generators for {B} measurements × {S} samples")
        before = dict(operator.counts)
        # inference tensors (Lightning's predict) cannot enter autograd: methods with VJPs need a plain copy
        with torch.inference_mode(False), torch.no_grad():
            y_run = y.detach().to(device=model.device, dtype=model.dtype).clone()
            run = Run(self, model, operator, y_run, sigma_y, num_steps, S, generator, callback)
            out = self.sample(run)
        if tuple(out.shape) != (B * S, *operator.x_shape):
            raise RuntimeError(f"{self.name}: returned shape {tuple(out.shape)}, expected {(B * S, *operator.x_shape)}")
        check_state(out, self.name, num_steps, None, limit=run.state_limit)
        calls = {k: int(operator.counts.get(k, 0) - before.get(k, 0)) for k in ("forward", "adjoint")}
        return PosteriorOutput(out.detach().reshape(B, S, *operator.x_shape), run.nfe, run.vjp_count, calls,
                               mean_only=self.mean_estimator, extras=run.extras)

    def check_setup(self, model: DiffusionModel, operator: LinearOperator, sigma_y: float) -> None:
        """Everything about the task checkable before any measurement is seen: the model kind, its image
        shape against the operator, σ_y, the noise covariance and the method's own ``check``. Each failure
        is one line naming the problem (``OperatorMismatchError`` or ``ValueError``)."""
        who = type(self).__name__
        if not isinstance(model, self.model_type):
            hint = " (sample a UCoS checkpoint with diffpost.posterior.ucos.UCoS)" if isinstance(model, UCoSModel) else ""
            raise OperatorMismatchError(f"{who} runs on a {self.model_type.__name__}; got a {type(model).__name__}{hint}")
        if tuple(model.x_shape) != tuple(operator.x_shape):
            raise OperatorMismatchError(f"{who}: the model makes images of shape {tuple(model.x_shape)}, but "
                                        f"{type(operator).__name__} acts on {tuple(operator.x_shape)}")
        sy = float(sigma_y)
        if not math.isfinite(sy) or sy < 0 or (sy == 0 and not self.allows_noiseless):
            need = ">= 0" if self.allows_noiseless else "> 0"
            raise ValueError(f"{who}: sigma_y must be a finite number {need}, got {sigma_y}")
        if model.noise_cov is not None and not self.supports_noise_cov:
            raise OperatorMismatchError(f"{who} cannot use a function-space noise covariance: {self.noise_cov_reason}")
        self.check(model, operator, sy)

    def validate(self, model: DiffusionModel, operator: LinearOperator, y: torch.Tensor, sigma_y: float,
                 num_steps: int, n_samples: int) -> None:
        """``check_setup`` plus the checks of this call's measurements and counts."""
        who = type(self).__name__
        self.check_setup(model, operator, sigma_y)
        if not torch.is_tensor(y) or y.dim() != len(operator.y_shape) + 1 or tuple(y.shape[1:]) != tuple(operator.y_shape):
            got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"{who}: measurement has shape {got}; {type(operator).__name__} needs "
                             f"(B, {', '.join(map(str, operator.y_shape))})")
        if y.shape[0] == 0:
            raise ValueError(f"{who}: no measurements (batch of 0)")
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"{who}: measurement contains NaN or Inf values")
        for name, v in (("num_steps", num_steps), ("n_samples", n_samples)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{who}: {name} must be a positive integer, got {v!r}")


def require_svd(method: PosteriorMethod, operator: LinearOperator) -> SVDOperator:
    """The operator as an ``SVDOperator``, or the one-line error spectral methods (DDRM, DDNM) give."""
    if not isinstance(operator, SVDOperator):
        raise OperatorMismatchError(
            f"{type(method).__name__} needs an operator with a closed-form SVD (blur, super-resolution, inpainting, "
            f"MRI, denoising); {type(operator).__name__} has none: use DPS, ΠGDM, DiffPIR, DAPS or UCoS instead")
    return operator


def check_positive(owner: str, **values: float) -> None:
    """``ValueError`` unless every value is a finite positive number (method hyper-parameters)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{owner}: {name} must be a finite positive number, got {v!r}")


def check_fraction(owner: str, **values: float) -> None:
    """``ValueError`` unless every value is a finite number in [0, 1]."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 <= v <= 1):
            raise ValueError(f"{owner}: {name} must be a number in [0, 1], got {v!r}")
