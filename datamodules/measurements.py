"""Measurement sources for posterior inference: where ``y`` (and, when known, the truth ``x``) come from.

- a DataModule export (``datamodules.export``: carries its operator, σ_y and truths);
- a raw ``.pt``/``.npy`` tensor ``(N, *y_shape)`` with the task named by ``--task`` or ``--operator`` +
  ``--sigma-y``;
- layered data configs (the DataModule spec, as LightningCLI layers ``--data``) to synthesise the first
  ``n`` items of a split from, with a task layered on top.

Every file is read without unpickling code (``np.load(allow_pickle=False)``, ``torch.load(weights_only=True)``,
``yaml.safe_load``); classes are built through ``diffpost.config.build``'s allow-list. Bad input raises
``InputError`` (one line naming the problem). ``MeasurementDataModule`` serves the measurements to
``Trainer.predict``; Lightning shards them across ranks without padding (nothing duplicated or dropped).
"""
from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from datamodules.export import FORMAT, build_operator, validate_measurements
from datamodules.inverse_problem import InverseProblemDataModule, operator_spec
from diffpost.config import build
from diffpost.operators import LinearOperator


class InputError(ValueError):
    """Bad input (a file, config or option): the script reports it in one line and exits with 2."""


@dataclass
class Measurements:
    """Measurements ``y (N, *y_shape)`` with their indices, operator and σ_y; truths ``x`` when known."""

    y: torch.Tensor
    index: torch.Tensor
    operator: LinearOperator
    sigma_y: float
    x: torch.Tensor | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.y.shape[0]


def read_yaml(text_or_path: str, what: str) -> dict[str, Any]:
    """A mapping from a YAML/JSON file, or from inline YAML/JSON text (``yaml.safe_load``: no code runs)."""
    inline = text_or_path.lstrip().startswith("{")  # before any path call: long inline JSON is no valid file name
    p = Path(text_or_path)
    where = "(inline)" if inline else str(p)
    if not inline and not p.is_file():
        raise InputError(f"{what} not found: {p}")
    try:
        cfg = yaml.safe_load(text_or_path if inline else p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"{what} {where} is not valid YAML/JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{what} {where} must hold a mapping, got {type(cfg).__name__}")
    return cfg


def _task_entries(cfg: dict[str, Any]) -> dict[str, Any]:
    """``data.init_args`` of a data/task config (LightningCLI layout); a bare operator spec as is."""
    if "class_path" in cfg and "data" not in cfg and "operator" not in (cfg.get("init_args") or {}):
        return {"operator": cfg}
    data = cfg.get("data", cfg)
    args = data.get("init_args", data) if isinstance(data, dict) else None
    if not isinstance(args, dict):
        raise InputError("expected the data-config layout data: {init_args: {operator: ..., sigma_y: ...}}")
    return args


def _operator(spec: Any, where: str) -> LinearOperator:
    try:
        return build_operator(spec)
    except (ValueError, TypeError) as e:
        raise InputError(f"{where}: {e}") from None


def _sigma_y(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InputError(f"{where}: sigma_y must be a positive finite number, got {value!r}")
    return float(value)


@dataclass
class TaskSpec:
    """A task named on the command line: the operator's spec, σ_y, and where they came from."""

    operator: dict[str, Any]
    sigma_y: float
    where: str

    def build(self) -> LinearOperator:
        return _operator(self.operator, self.where)


def explicit_task(task: str | None, operator: str | None, sigma_y: float | None) -> TaskSpec | None:
    """The task of ``--task YAML`` (``init_args: {operator, sigma_y}``, the configs/task/ layout, also
    under ``data:``) or of ``--operator SPEC`` (file or inline JSON) with ``--sigma-y``; ``None`` if neither."""
    if task is None and operator is None:
        return None
    where = f"task config {task}" if task is not None else "--operator/--sigma-y"
    args = _task_entries(read_yaml(task if task is not None else operator, "task config" if task is not None else "operator spec"))
    value = args.get("sigma_y") if task is not None else sigma_y
    if "operator" not in args or value is None:
        raise InputError(f"{where}: needs an operator spec and sigma_y (layout: init_args: {{operator: ..., sigma_y: ...}})")
    spec = TaskSpec(args["operator"], _sigma_y(value, where), where)
    spec.build()  # fail now on a bad spec
    return spec


def merge_config(base: Any, override: Any) -> Any:
    """Layer configs as LightningCLI does with repeated ``--data``: mappings merge key by key, but a
    spec naming another ``class_path`` replaces the old one whole (its init_args would not fit)."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    if "class_path" in override and override["class_path"] != base.get("class_path"):
        return override
    return {**base, **{k: merge_config(base[k], v) if k in base else v for k, v in override.items()}}


def check_same_task(meas: Measurements, operator: LinearOperator, sigma_y: float, what: str) -> None:
    if operator.fingerprint() != meas.operator.fingerprint():
        raise InputError(f"{what} names {type(operator).__name__} {operator.config()} (fingerprint {operator.fingerprint()}), "
                         f"but the measurements were made with {type(meas.operator).__name__} {meas.operator.config()} "
                         f"(fingerprint {meas.operator.fingerprint()})")
    if not math.isclose(sigma_y, meas.sigma_y, rel_tol=1e-6):
        raise InputError(f"{what} says sigma_y = {sigma_y}, but the measurements have sigma_y = {meas.sigma_y}")


def _load_tensor_file(p: Path) -> Any:
    """A ``.npy`` array (no pickles) or a ``torch.load(weights_only=True)`` object, with clear errors."""
    if p.suffix == ".npy":
        try:
            return torch.from_numpy(np.load(p, allow_pickle=False))
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"cannot read measurement file {p} as a .npy array (truncated, corrupt or pickled?): {e}") from None
    if not zipfile.is_zipfile(p):
        raise InputError(f"measurement file {p} is not a readable torch file (truncated or corrupt?)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"measurement file {p} holds objects other than tensors and plain types; refused: {e}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise InputError(f"measurement file {p} is not a readable torch file (truncated or corrupt?): {e}") from None


def _check_shape(t: torch.Tensor, shape: tuple[int, ...], what: str, operator: LinearOperator) -> None:
    if tuple(t.shape[1:]) != tuple(shape):
        raise InputError(f"{what} has shape {tuple(t.shape)}; {type(operator).__name__} {operator.config()} "
                         f"needs (N, {', '.join(map(str, shape))})")


def measurements_from_file(path: str, task: TaskSpec | None = None) -> Measurements:
    """A DataModule export (validated; carries its operator, σ_y and truths; checked against ``task``
    if given) or a raw tensor ``(N, *y_shape)`` (or one ``y_shape`` measurement), which needs ``task``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"measurement file not found: {p}")
    data = _load_tensor_file(p)
    if isinstance(data, dict):
        try:
            validate_measurements(data, where=str(p))
        except ValueError as e:
            raise InputError(str(e)) from None
        meas = Measurements(y=data["y"], index=data["index"], x=data["x"], sigma_y=float(data["sigma_y"]),
                            operator=_operator(data["operator"], f"measurement file {p}"),
                            source={"kind": "export", "path": str(p.absolute())})
        _check_shape(meas.y, meas.operator.y_shape, f"measurement file {p}: 'y'", meas.operator)
        _check_shape(meas.x, meas.operator.x_shape, f"measurement file {p}: 'x'", meas.operator)
        if task is not None:
            check_same_task(meas, task.build(), task.sigma_y, task.where)
        return meas
    if not torch.is_tensor(data):
        raise InputError(f"measurement file {p} holds a {type(data).__name__}; expected an export ({FORMAT}) or a tensor")
    if task is None:
        raise InputError(f"raw measurement tensor {p} carries no operator: pass --operator and --sigma-y (or --task)")
    operator = task.build()
    y = data[None] if data.dim() == len(operator.y_shape) else data
    _check_shape(y, operator.y_shape, f"measurement tensor {p}", operator)
    if not (y.is_floating_point() or y.is_complex()):
        raise InputError(f"measurement tensor {p} has dtype {y.dtype}; expected floating point")
    bad = int((~torch.isfinite(y)).sum())
    if bad:
        raise InputError(f"measurement tensor {p} contains {bad} non-finite values (NaN/Inf)")
    return Measurements(y=y, index=torch.arange(y.shape[0]), operator=operator, sigma_y=task.sigma_y,
                        source={"kind": "raw", "path": str(p.absolute()), "task": task.where})


def measurements_from_data_config(paths: list[str], split: str = "test", n: int | None = None,
                                  task: TaskSpec | None = None) -> Measurements:
    """Synthesise the first ``n`` items of ``split`` from data configs layered in order (the DataModule
    spec, bare or under ``data:``), with ``task``'s operator and σ_y on top if given. Classes are built
    through ``diffpost.config.build``'s allow-list, YAML read with ``safe_load``. The items, noise and
    indices are those of the DataModule's own loaders and exports."""
    cfg: dict[str, Any] = {}
    for path in paths:
        layer = read_yaml(path, "data config")
        cfg = merge_config(cfg, layer.get("data", layer))
    if task is not None:
        cfg = merge_config(cfg, {"init_args": {"operator": task.operator, "sigma_y": task.sigma_y}})
    path = " + ".join(paths)
    try:
        dm = build(cfg)
    except (ValueError, TypeError) as e:
        raise InputError(f"data config {path}: {e}") from None
    if not isinstance(dm, InverseProblemDataModule):
        raise InputError(f"data config {path} builds a {type(dm).__name__}; an InverseProblemDataModule is needed")
    try:
        ds = dm.dataset(split)
    except ValueError as e:
        raise InputError(str(e)) from None
    if len(ds) == 0:
        raise InputError(f"data config {path}: the {split} split is empty")
    items = dm.first_items(split, len(ds) if n is None else min(n, len(ds)))
    record = {"format": FORMAT, **items, "sigma_y": dm.sigma_y, "operator": operator_spec(dm.operator)}
    validate_measurements(record, where=f"data config {path}")
    return Measurements(y=record["y"], index=record["index"], x=record["x"], operator=dm.operator, sigma_y=dm.sigma_y,
                        source={"kind": "data_config", "paths": [str(Path(p).absolute()) for p in paths], "split": split,
                                "task": None if task is None else task.where})


class MeasurementSet(Dataset):
    """Items ``{position, index, y[, x]}``; ``position`` is the place in the input, used to merge."""

    def __init__(self, meas: Measurements):
        self.meas = meas

    def __len__(self) -> int:
        return len(self.meas)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        item = {"position": torch.tensor(k), "index": self.meas.index[k], "y": self.meas.y[k]}
        if self.meas.x is not None:
            item["x"] = self.meas.x[k]
        return item


class MeasurementDataModule(pl.LightningDataModule):
    """``Measurements`` as a predict DataModule; Lightning's own predict sampler shards them over ranks
    (``UnrepeatedDistributedSamplerWrapper``: no padding, every position exactly once)."""

    def __init__(self, meas: Measurements, batch_size: int):
        super().__init__()
        self.data, self.batch_size = MeasurementSet(meas), batch_size

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=False)
