"""Plain-typed specs of objects, and rebuilding them safely.

A spec is ``{"class_path": "pkg.mod.Class", "init_args": {...}}`` with plain types only (nested specs
allowed), the same shape LightningCLI uses. Checkpoints store specs, never pickled objects, so they load
with ``torch.load(weights_only=True)``. ``build`` imports a class only from allow-listed packages and
only if it subclasses the expected base: a checkpoint from an untrusted source cannot make us import
or run arbitrary code.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

#: packages whose classes a spec may name
TRUSTED_PACKAGES = ("diffpost", "lightning_modules", "datamodules", "callbacks")


class Configurable:
    """Mixin that records the arguments of the outermost ``__init__`` call as ``self.init_config``.

    Typed ``__init__`` signatures are our config schema; recording the call makes ``spec_of(obj)``
    exact for any subclass without each class writing ``config()`` by hand.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_config", False):
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            if "_init_config" not in self.__dict__:
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                cfg = dict(list(bound.arguments.items())[1:])
                object.__setattr__(self, "_init_config", {k: to_plain(v) for k, v in cfg.items()})
            init(self, *args, **kw)

        __init__._records_config = True
        cls.__init__ = __init__

    @property
    def init_config(self) -> dict[str, Any]:
        return dict(self.__dict__.get("_init_config", {}))


def class_path(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def spec_of(obj: Any) -> dict[str, Any]:
    """The spec that rebuilds ``obj``: from ``config()`` (operators) or the recorded init args."""
    if hasattr(obj, "config") and callable(obj.config):
        args = obj.config()
    elif isinstance(obj, Configurable):
        args = obj.init_config
    else:
        raise TypeError(
            f"cannot record the configuration of {class_path(obj)}: it has no config() and does not "
            "derive from diffpost.config.Configurable"
        )
    return {"class_path": class_path(obj), "init_args": to_plain(args)}


def to_plain(v: Any) -> Any:
    """Convert to JSON/YAML-safe plain types; objects with a spec become nested specs."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): to_plain(x) for k, x in v.items()}
    if hasattr(v, "config") or isinstance(v, Configurable):
        return spec_of(v)
    try:
        import torch

        if torch.is_tensor(v):
            return v.tolist()
        if isinstance(v, (torch.dtype, torch.device)):
            return str(v)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"value of type {type(v).__name__} cannot be stored in a plain config")


def is_spec(v: Any) -> bool:
    return isinstance(v, dict) and "class_path" in v and set(v) <= {"class_path", "init_args"}


def resolve_class(path: str, base: type | None = None) -> type:
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"invalid class_path {path!r}")
    if not path.startswith(tuple(p + "." for p in TRUSTED_PACKAGES)):
        raise ValueError(
            f"refusing to import {path!r}: specs may only name classes from the packages "
            f"{', '.join(TRUSTED_PACKAGES)}"
        )
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"class_path {path!r} does not name an importable class: {e}") from None
    if not isinstance(cls, type) or (base is not None and not issubclass(cls, base)):
        raise ValueError(f"class_path {path!r} is not a subclass of {class_path(base)}")
    return cls


def build(spec: dict[str, Any], base: type | None = None) -> Any:
    """Instantiate a spec (nested specs first), importing only trusted classes."""
    if not is_spec(spec):
        raise ValueError(f"not a spec (needs 'class_path' and 'init_args'): {spec!r}"[:300])
    cls = resolve_class(spec["class_path"], base)
    args = {k: build(v) if is_spec(v) else v for k, v in (spec.get("init_args") or {}).items()}
    try:
        return cls(**args)
    except TypeError as e:
        raise ValueError(f"cannot build {spec['class_path']} from its saved arguments: {e}") from None
