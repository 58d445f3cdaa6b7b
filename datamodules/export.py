"""Measurement files: a portable, safe-to-load record of ``(x, y, index)`` plus how ``y`` was made.

A file holds only tensors and plain types, so ``torch.load(path, weights_only=True)`` reads it without
executing code, and the operator is described by ``class_path``/``init_args``/``fingerprint`` rather
than pickled. ``build_operator`` rebuilds it, importing nothing outside ``diffpost.operators``.
"""
from __future__ import annotations

import importlib
import math
import os
import pickle
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any

import torch

from diffpost.operators import LinearOperator, SVDOperator

if TYPE_CHECKING:  # pragma: no cover
    from datamodules.inverse_problem import InverseProblemDataModule

FORMAT = "diffpost.measurements/v1"
_OPERATOR_PACKAGE = "diffpost.operators"
_REQUIRED = ("format", "x", "y", "index", "sigma_y", "operator")


def export_measurements(datamodule: "InverseProblemDataModule", path: str, split: str = "test", n: int | None = None) -> str:
    """Write the first ``n`` items (default all) of ``split`` to ``path`` atomically; returns the path.

    The items are exactly those of the split's dataloader (same noise seeds), stacked in index order.
    """
    from datamodules.inverse_problem import operator_spec

    size = len(datamodule.dataset(split))
    if n is None:
        n = size
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= size:
        raise ValueError(f"export_measurements: n must be an integer in [1, {size}] for the {split} split, got {n!r}")
    items = datamodule.first_items(split, n)
    record = {
        "format": FORMAT,
        "x": items["x"].contiguous(),
        "y": items["y"].contiguous(),
        "index": items["index"],
        "sigma_y": float(datamodule.sigma_y),
        "operator": operator_spec(datamodule.operator),
        "split": split,
        "seed": int(datamodule.seed),
    }
    _atomic_save(record, os.fspath(path))
    return os.fspath(path)


def _atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the target folder, then ``os.replace``: readers never see
    a half-written file, and a crash leaves the old file (if any) intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_measurements(path: str) -> dict[str, Any]:
    """Load and validate a file written by ``export_measurements`` (``weights_only=True``, on CPU)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_measurements: no measurement file at {path!r}")
    corrupt = f"load_measurements: {path!r} is not a readable torch file (truncated or corrupt?)"
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives
        raise ValueError(f"{corrupt}: not a zip archive")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise ValueError(
                f"load_measurements: {path!r} contains objects other than tensors and plain types and was refused "
                f"by safe loading (weights_only=True); it was not written by export_measurements. Details: {e}"
            ) from e
        raise ValueError(f"{corrupt}: {e}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise ValueError(f"{corrupt}: {e}") from e
    validate_measurements(data, where=path)
    return data


def validate_measurements(data: Any, where: str = "measurements") -> None:
    """Check keys, types, shapes and finiteness of a measurement record; ValueError naming the problem."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a dict with format {FORMAT!r}, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ValueError(f"{where}: unknown format {data.get('format')!r} (expected {FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    x, y, index = data["x"], data["y"], data["index"]
    for name, t in (("x", x), ("y", y), ("index", index)):
        if not torch.is_tensor(t):
            raise ValueError(f"{where}: {name!r} must be a tensor, got {type(t).__name__}")
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"{where}: 'x' must be a floating tensor (N, *x_shape), got dtype {x.dtype} shape {tuple(x.shape)}")
    if y.dim() < 2 or not (y.is_floating_point() or y.is_complex()):
        raise ValueError(f"{where}: 'y' must be a floating tensor (N, *y_shape), got dtype {y.dtype} shape {tuple(y.shape)}")
    if index.dim() != 1 or index.dtype != torch.long:
        raise ValueError(f"{where}: 'index' must be a 1-D int64 tensor, got dtype {index.dtype} shape {tuple(index.shape)}")
    if not (x.shape[0] == y.shape[0] == index.shape[0]):
        raise ValueError(f"{where}: x, y and index disagree on the number of items: {x.shape[0]}, {y.shape[0]}, {index.shape[0]}")
    if index.unique().numel() != index.numel():
        raise ValueError(f"{where}: 'index' contains duplicates")
    for name, t in (("x", x), ("y", y)):
        bad = (~torch.isfinite(t)).sum().item()
        if bad:
            raise ValueError(f"{where}: {name!r} contains {bad} non-finite values (NaN/Inf)")
    sigma_y = data["sigma_y"]
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not math.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"{where}: 'sigma_y' must be a finite non-negative number, got {sigma_y!r}")
    spec = data["operator"]
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str) or not isinstance(spec.get("init_args", {}), dict):
        raise ValueError(f"{where}: 'operator' must be a dict with a 'class_path' string and an 'init_args' dict, got {spec!r}")


def build_operator(spec: dict[str, Any], *, check_fingerprint: bool = True) -> LinearOperator:
    """Instantiate ``spec["class_path"](**spec["init_args"])``.

    Only concrete ``LinearOperator`` subclasses defined in the ``diffpost.operators`` package are
    accepted, and nothing outside it is imported, so a measurement file cannot make us run foreign
    code. With ``check_fingerprint`` a ``spec["fingerprint"]`` must match the rebuilt operator's.
    """
    if not isinstance(spec, dict):
        raise TypeError(f"build_operator: spec must be a dict, got {type(spec).__name__}")
    class_path = spec.get("class_path")
    init_args = spec.get("init_args", {})
    if not isinstance(class_path, str) or not isinstance(init_args, dict):
        raise ValueError(f"build_operator: spec needs a 'class_path' string and an 'init_args' dict, got {spec!r}")
    module_name, _, name = class_path.rpartition(".")
    inside = module_name == _OPERATOR_PACKAGE or module_name.startswith(_OPERATOR_PACKAGE + ".")
    if not inside or not name.isidentifier() or not all(p.isidentifier() for p in module_name.split(".")):
        raise ValueError(f"build_operator: refusing class_path {class_path!r}: only operators from the {_OPERATOR_PACKAGE} package can be built")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"build_operator: no module {module_name!r} in {_OPERATOR_PACKAGE} (class_path {class_path!r})") from e
    cls = getattr(module, name, None)
    if not isinstance(cls, type) or not issubclass(cls, LinearOperator) or cls in (LinearOperator, SVDOperator):
        raise ValueError(f"build_operator: {class_path!r} is not a concrete LinearOperator subclass")
    try:
        operator = cls(**init_args)
    except TypeError as e:
        raise ValueError(
            f"build_operator: cannot rebuild {class_path} from init_args {sorted(init_args)} ({e}); operators whose "
            f"defining tensors are not in their config (e.g. DenseOperator) cannot be rebuilt from a spec"
        ) from e
    expected = spec.get("fingerprint")
    if check_fingerprint and expected is not None and operator.fingerprint() != expected:
        raise ValueError(
            f"build_operator: rebuilt {class_path} has fingerprint {operator.fingerprint()} but the spec says {expected}: "
            f"the operator's code or defining tensors changed since the spec was written"
        )
    return operator
