"""Unnormalised densities ``π(x) ∝ exp(−U(x))`` on flat vectors ``(B, d)`` (METHODS §6).

A ``Target`` answers ``log_prob`` (up to a constant) and ``grad_log_prob`` (autograd unless a subclass
has a closed form). Targets with known answers also give exact samples, ``log_Z`` (the log of the
normaliser of ``exp(log_prob)``), mode locations and weights, and, where ``π`` is a Gaussian mixture, the
exact mean and samples of rdMC's regularised posterior
``q_s(x0 | x) ∝ π(x0) N(x; e^{−s} x0, (1 − e^{−2s}) I)``.

``EvalCounter`` wraps a target and counts evaluated rows, so every sampler reports its cost in
density and gradient evaluations per sample point.

Rebuilding from a spec: a ``Target`` records the arguments of its outermost ``__init__`` call
(``diffpost.config.Configurable``), so ``spec_of(target)`` gives ``{"class_path", "init_args"}`` and
``build(spec)`` (e.g. ``lightning_modules.checkpoint.load_module``) makes the same target again. The
arguments are kept as given and converted to plain types only when a spec is asked for: a target
whose ingredients have no spec (a ``GaussianPrior``/``GMMPrior`` object, a ``DenseOperator``, whose
``config()`` leaves out its matrix, a network) still works as a density; only ``spec_of`` fails, with
a ``TypeError`` naming the argument. Such targets have plain-typed siblings that build their
ingredients from seeds (``diffpost.targets.synthetic``, ``SyntheticLogisticRegression``, ...). Tensors
among the arguments (``y``, mixture means) are stored as lists; the spec is read from the argument
objects when asked for, so do not modify them in place after construction.
"""
from __future__ import annotations

import copy
import functools
import inspect
from collections import Counter
from typing import Any

import torch

from diffpost.config import Configurable, is_spec, resolve_class, to_plain
from diffpost.random import GeneratorLike


def _check_rebuildable(spec: dict[str, Any], where: str) -> None:
    """Raise ``TypeError`` unless ``build(spec)`` can at least call every constructor it names: the class
    is importable from a trusted package and the saved arguments bind to its signature (catches lossy
    ``config()`` methods such as ``DenseOperator``'s, which leaves out the matrix). Builds nothing."""
    try:
        cls = resolve_class(spec["class_path"])
    except ValueError as e:
        raise TypeError(f"{where}: {e}") from None
    args = spec.get("init_args") or {}
    try:
        inspect.signature(cls).bind(**args)
    except TypeError as e:
        raise TypeError(
            f"{where}: {spec['class_path']} cannot be rebuilt from its saved arguments {sorted(args)} ({e}); "
            "its config() does not carry everything its constructor needs"
        ) from None
    for name, v in args.items():
        for item in v if isinstance(v, list) else [v]:
            if is_spec(item):
                _check_rebuildable(item, f"{where} -> {name}")


def _move(v: Any, device: torch.device) -> Any:
    """``v`` with its tensors on ``device``; modules are copied first (never moved under their owner)."""
    if torch.is_tensor(v):
        return v.to(device)
    if isinstance(v, Target):
        return v.to(device)
    if isinstance(v, torch.nn.Module):
        return copy.deepcopy(v).to(device)
    if isinstance(v, (list, tuple)):
        return type(v)(_move(x, device) for x in v)
    if isinstance(v, dict):
        out = copy.copy(v)  # keeps the mapping's type (e.g. Counter)
        for k, x in v.items():
            out[k] = _move(x, device)
        return out
    if callable(getattr(v, "to", None)) and hasattr(v, "_tensor_fields"):  # diffpost.priors: .to returns a copy
        return v.to(device=device)
    return v


class Target(Configurable):
    """Base class. Subclasses set ``dim`` and implement ``log_prob``; everything else is optional.

    Attributes with known answers default to ``None``: ``log_Z`` (float), ``modes`` ``(K, d)``,
    ``mode_weights`` ``(K,)``, ``lipschitz`` (an estimate of the Lipschitz constant of
    ``∇ log π``, used by samplers to choose step sizes).

    ``spec_of(target)`` / ``build(spec)`` round-trip a target (module docstring); ``to(device)`` gives a
    copy whose tensors live on ``device``.
    """

    dim: int
    log_Z: float | None = None
    modes: torch.Tensor | None = None
    mode_weights: torch.Tensor | None = None
    lipschitz: float | None = None
    dtype: torch.dtype = torch.float64

    def __init_subclass__(cls, **kwargs):
        # Record the outermost __init__ call's arguments as given (Configurable converts them at once,
        # which would copy dense covariances into lists on every construction and reject ingredients
        # without a spec even when no spec is ever asked for); converted in ``init_config``.
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_config", False):
            sig = inspect.signature(init)

            @functools.wraps(init)
            def __init__(self, *args, **kw):
                if "_init_args" not in self.__dict__:
                    bound = sig.bind(self, *args, **kw)
                    bound.apply_defaults()
                    object.__setattr__(self, "_init_args", dict(list(bound.arguments.items())[1:]))
                init(self, *args, **kw)

            __init__._records_config = True
            cls.__init__ = __init__
        super().__init_subclass__(**kwargs)  # Configurable sees a recording __init__ and leaves it alone

    @property
    def init_config(self) -> dict[str, Any]:
        """Plain-typed arguments that rebuild this target; ``TypeError`` naming the argument if one
        has no spec (see the module docstring for what cannot be rebuilt)."""
        name = type(self).__name__
        if "_init_args" not in self.__dict__:
            if type(self).__init__ is object.__init__:
                return {}
            raise TypeError(f"{name}: no recorded constructor arguments (was it made without calling __init__?)")
        out = {}
        for key, v in self.__dict__["_init_args"].items():
            try:
                out[key] = to_plain(v)
            except TypeError as e:
                raise TypeError(
                    f"{name} cannot be rebuilt from a spec: its argument `{key}` ({type(v).__name__}) has no plain-typed "
                    f"form ({e}). Give it an object with config() or a Configurable one, or use a plain-typed "
                    "constructor (diffpost.targets.synthetic)"
                ) from None
            for item in out[key] if isinstance(out[key], list) else [out[key]]:
                if is_spec(item):
                    _check_rebuildable(item, f"{name} argument `{key}`")
        return out

    @property
    def device(self) -> torch.device:
        """Where the target's tensors live (``to`` moves them)."""
        return self.__dict__.get("_device", torch.device("cpu"))

    def to(self, device: str | torch.device) -> "Target":
        """A copy with every tensor (and operator, prior, nested target) on ``device``; ``self`` when
        already there. Dtypes are kept: targets compute in their own dtype (float64 by default)."""
        device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as modules report it
        if device == self.device:
            return self
        new = copy.copy(self)
        for key, v in self.__dict__.items():
            if key != "_init_args":  # the recorded arguments stay as given: they only feed the spec
                new.__dict__[key] = _move(v, device)
        new.__dict__["_device"] = device
        return new

    # ----------------------------------------------------------------- to be implemented
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log π(x)`` up to an additive constant, shape ``(B,)``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- defaults
    def grad_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``∇ log π(x)``, shape ``(B, d)``; autograd through ``log_prob`` unless overridden."""
        return self.log_prob_and_grad(x)[1]

    def log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both at once (one forward/backward pass with autograd)."""
        self.check_input(x)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            lp = self.log_prob(xr)
            (g,) = torch.autograd.grad(lp.sum(), xr)
        return lp.detach(), g

    def sample(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        """Exact samples ``(n, d)`` where the target has them."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def regularised_mean(self, x: torch.Tensor, s: float) -> torch.Tensor:
        """Exact ``E_{q_s}[x0 | x]`` (rdMC's inner mean) where available."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form regularised-posterior mean")

    def regularised_sample(self, x: torch.Tensor, s: float, generator: GeneratorLike = None) -> torch.Tensor:
        """One exact draw from ``q_s(· | x)`` per row of ``x`` where available."""
        raise NotImplementedError(f"{type(self).__name__} has no exact regularised-posterior sampler")

    def has(self, method: str) -> bool:
        """Whether an optional method (``sample``, ``regularised_mean``, ...) is implemented."""
        impl = getattr(type(self), method, None)
        return impl is not None and impl is not getattr(Target, method)

    def check_input(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x):
            raise TypeError(f"{type(self).__name__}: x must be a tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}: expected x of shape (B, {self.dim}), got {tuple(x.shape)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class EvalCounter(Target):
    """Counts evaluations of a wrapped target, one per evaluated row.

    ``counts['log_prob']`` and ``counts['grad']`` grow by the batch size of each call;
    ``log_prob_and_grad`` counts one of each (and ``joint`` counts its rows, so ``passes()`` counts such
    a call once: one forward and backward pass). Everything else is forwarded to the wrapped target.
    """

    def __init__(self, target: Target):
        if not isinstance(target, Target):
            raise TypeError(f"EvalCounter: expected a Target, got {type(target).__name__}")
        self.target = target
        self.dim = target.dim
        self.counts: Counter = Counter()
        self.joint = 0

    def __getattr__(self, name: str):
        # only reached for attributes not found on the counter itself: forward to the target
        if name == "target":
            raise AttributeError(name)
        return getattr(self.target, name)

    @property
    def log_Z(self):  # type: ignore[override]
        return self.target.log_Z

    @property
    def modes(self):  # type: ignore[override]
        return self.target.modes

    @property
    def mode_weights(self):  # type: ignore[override]
        return self.target.mode_weights

    @property
    def lipschitz(self):  # type: ignore[override]
        return self.target.lipschitz

    @property
    def dtype(self):  # type: ignore[override]
        return self.target.dtype

    @property
    def device(self):  # type: ignore[override]
        return self.target.device

    def log_prob(self, x):
        self.counts["log_prob"] += x.shape[0]
        return self.target.log_prob(x)

    def grad_log_prob(self, x):
        self.counts["grad"] += x.shape[0]
        return self.target.grad_log_prob(x)

    def log_prob_and_grad(self, x):
        self.counts["log_prob"] += x.shape[0]
        self.counts["grad"] += x.shape[0]
        self.joint += x.shape[0]
        return self.target.log_prob_and_grad(x)

    def passes(self) -> int:
        """Evaluated rows with a density and its gradient from one call counted once."""
        return sum(self.counts.values()) - self.joint

    def sample(self, n, generator=None):
        return self.target.sample(n, generator)

    def regularised_mean(self, x, s):
        return self.target.regularised_mean(x, s)

    def regularised_sample(self, x, s, generator=None):
        return self.target.regularised_sample(x, s, generator)

    def has(self, method: str) -> bool:
        return self.target.has(method)

    def reset(self) -> None:
        self.counts.clear()
        self.joint = 0

    def per_sample(self, n_samples: int) -> dict[str, float]:
        """Counts divided by the number of sample points the sampler returned."""
        return {k: v / n_samples for k, v in self.counts.items()}

    def __repr__(self) -> str:
        return f"EvalCounter({self.target!r}, counts={dict(self.counts)})"
