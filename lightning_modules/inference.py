"""Checkpoint-based posterior inference: the logic behind ``scripts/sample.py``.

Pipeline (every rank runs it; ranks > 0 stop after writing their shards):

1. check inputs, all before any file is written: checkpoint (``safe_load``, weights only), the
   measurement source (a DataModule export, a raw ``.pt``/``.npy`` tensor with an operator spec, or
   layered data configs to synthesise from, a task config on top), the task (a UCoS model must match
   the measurements' operator and σ_y), the options and the output folder; bad input raises
   ``InputError``;
2. ``Trainer.predict`` over measurements sharded ``rank::world`` (no padding: nothing is duplicated or
   dropped when the count does not divide the world size); a ``BasePredictionWriter`` saves each
   batch (samples, per-measurement metrics, cost) into a temporary sibling of the output folder and
   draws its figures, so figure drawing runs in parallel on all ranks;
3. rank 0 merges the shards by input position, writes ``samples.pt``/``mean.pt``/``std.pt``/
   ``index.pt``/``metrics.json`` and renames the temporary folder into place. On failure the
   temporary folder is removed: a run leaves complete results or nothing.

Samples use per-(index, sample) seeds (``sample_posterior``), so they do not depend on the batch size
or the number of devices. One code path serves one and many devices.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import resource
import shutil
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from datamodules.export import FORMAT, build_operator, validate_measurements
from datamodules.inverse_problem import InverseProblemDataModule, operator_spec
from diffpost.config import build, resolve_class
from diffpost.image_quality import bias_squared, coverage, psnr, ssim, summed_variance
from diffpost.operators import LinearOperator
from lightning_modules.checkpoint import _module_class_path, load_module, safe_load
from lightning_modules.dps import DPSModule
from lightning_modules.figures import measurement_figure
from lightning_modules.prior import ScorePriorModule
from lightning_modules.ucos import UCoSModule

Method = Literal["auto", "ucos", "dps"]
#: set by the launching process so that re-launched DDP ranks write into the same temporary folder
WORKDIR_ENV = "DIFFPOST_SAMPLE_WORKDIR"
_SHARDS = "_shards"
COVERAGE_LEVEL = 0.9


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


# ============================================================================ configs and tasks
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


def _check_same_task(meas: Measurements, operator: LinearOperator, sigma_y: float, what: str) -> None:
    if operator.fingerprint() != meas.operator.fingerprint():
        raise InputError(f"{what} names {type(operator).__name__} {operator.config()} (fingerprint {operator.fingerprint()}), "
                         f"but the measurements were made with {type(meas.operator).__name__} {meas.operator.config()} "
                         f"(fingerprint {meas.operator.fingerprint()})")
    if not math.isclose(sigma_y, meas.sigma_y, rel_tol=1e-6):
        raise InputError(f"{what} says sigma_y = {sigma_y}, but the measurements have sigma_y = {meas.sigma_y}")


# ============================================================================ measurement sources
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
            _check_same_task(meas, task.build(), task.sigma_y, task.where)
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
    ds.prepare()
    items = [ds[k] for k in range(len(ds) if n is None else min(n, len(ds)))]
    record = {"format": FORMAT, "x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items]),
              "index": torch.stack([it["index"] for it in items]), "sigma_y": dm.sigma_y, "operator": operator_spec(dm.operator)}
    validate_measurements(record, where=f"data config {path}")
    return Measurements(y=record["y"], index=record["index"], x=record["x"], operator=dm.operator, sigma_y=dm.sigma_y,
                        source={"kind": "data_config", "paths": [str(Path(p).absolute()) for p in paths], "split": split,
                                "task": None if task is None else task.where})


# ============================================================================ models
def load_sampler(checkpoint: str, method: Method, meas: Measurements, zeta: float) -> tuple[str, pl.LightningModule, dict[str, Any]]:
    """``(method, module, checkpoint metadata)``: a UCoS module checked against the measurements'
    task, or a ``DPSModule`` on a prior checkpoint. ``auto`` picks by the checkpoint's module class."""
    ckpt = safe_load(checkpoint, mmap=True)  # cheap: tensors stay on disk; only the class is needed here
    cls = resolve_class(_module_class_path(ckpt, checkpoint), pl.LightningModule)
    meta = dict(ckpt.get("diffpost") or {})
    del ckpt
    if method == "auto":
        method = "ucos" if issubclass(cls, UCoSModule) else "dps" if issubclass(cls, ScorePriorModule) else ""
        if not method:
            raise InputError(f"{checkpoint} holds a {cls.__name__}: sample.py needs a UCoSModule or a ScorePriorModule (for DPS) checkpoint")
    if method == "ucos":
        module = load_module(checkpoint, expected=UCoSModule)
        saved = meta.get("operator_fingerprint")
        if saved is not None and saved != module.operator.fingerprint():
            raise InputError(f"{checkpoint} was trained for operator fingerprint {saved}, but its rebuilt operator has "
                             f"{module.operator.fingerprint()}: the operator's code changed since training")
        module.check_task(meas.operator, meas.sigma_y)  # OperatorMismatchError names both tasks
        return method, module, meta
    if not issubclass(cls, ScorePriorModule):
        raise InputError(f"DPS needs a prior (ScorePriorModule) checkpoint; {checkpoint} holds a {cls.__name__}")
    return method, DPSModule(str(checkpoint), meas.operator, meas.sigma_y, zeta=zeta), meta


# ============================================================================ sharded prediction
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


class ShardSampler(Sampler[int]):
    """Positions ``rank, rank + world, ...``: disjoint shards covering every position exactly once
    (``DistributedSampler`` pads with repeats instead, which would duplicate measurements)."""

    def __init__(self, n: int, rank: int, world: int):
        if world < 1 or not 0 <= rank < world or n < 0:
            raise ValueError(f"ShardSampler: need n >= 0 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class ShardedMeasurements(pl.LightningDataModule):
    """Builds the predict loader once the trainer knows this process's rank and the world size."""

    def __init__(self, meas: Measurements, batch_size: int):
        super().__init__()
        self.data, self.batch_size = MeasurementSet(meas), batch_size

    def predict_dataloader(self) -> DataLoader:
        t = self.trainer
        return DataLoader(self.data, batch_size=self.batch_size, sampler=ShardSampler(len(self.data), t.global_rank, t.world_size))


class PosteriorPredictor(pl.LightningModule):
    """Runs ``model.sample_posterior`` on each batch with the run's settings; a tqdm bar on rank 0
    advances with the sampler's per-step callback."""

    def __init__(self, model: pl.LightningModule, *, n_samples: int, num_steps: int, seed: int,
                 sampler: str | None = None, churn: float = 0.0, progress: bool | None = None):
        super().__init__()
        self.model, self.num_steps, self.progress = model, num_steps, progress
        self.sample_kwargs = dict(n_samples=n_samples, num_steps=num_steps, seed=seed)
        if isinstance(model, UCoSModule):  # DPS has its own step rule
            self.sample_kwargs.update(sampler=sampler, churn=churn)
        self._bar = None

    def on_predict_start(self) -> None:
        show = self.global_rank == 0 and (sys.stderr.isatty() if self.progress is None else self.progress)
        self._bar = tqdm(total=int(sum(self.trainer.num_predict_batches)) * self.num_steps, desc="sampling",
                         unit="step", disable=not show, file=sys.stderr)

    def _step(self, info: dict[str, Any]) -> None:
        self._bar.update(1)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.model.sample_posterior(batch["y"], index=batch["index"], callback=self._step, **self.sample_kwargs)
        _sync(self.device)
        return {"samples": out["samples"].float(), "nfe": int(out["nfe"]), "operator_calls": out["operator_calls"],
                "seconds": time.perf_counter() - t0}

    def on_predict_end(self) -> None:
        self._bar.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak bytes: ``torch.cuda.max_memory_allocated`` on a GPU, else the process's max RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "max_rss"


def measurement_metrics(samples: torch.Tensor, truth: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-measurement ``(B,)`` metrics of samples ``(B, S, ...)`` (METHODS §7): PSNR/SSIM of the mean,
    bias², summed variance and coverage of the central 90% interval, each where defined."""
    samples = samples.double()
    out: dict[str, torch.Tensor] = {}
    if truth is not None:
        truth = truth.double()
        mean = samples.mean(1)
        out["psnr"], out["ssim"], out["bias_squared"] = psnr(mean, truth), ssim(mean, truth), bias_squared(samples, truth)
    if samples.shape[1] >= 2:
        out["summed_variance"] = summed_variance(samples)
        if truth is not None:
            out["coverage_90"] = coverage(samples, truth, COVERAGE_LEVEL)
    return out


class ShardWriter(BasePredictionWriter):
    """Saves each batch to ``<workdir>/_shards/rank<r>-batch<b>.pt`` and draws its figures; at the end
    of prediction records the rank's peak memory and time."""

    def __init__(self, workdir: Path, figures: bool):
        super().__init__("batch")
        self.workdir, self.figures = Path(workdir), figures

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        (self.workdir / _SHARDS).mkdir(parents=True, exist_ok=True)
        if self.figures:
            (self.workdir / "figures").mkdir(exist_ok=True)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._t0 = time.perf_counter()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        samples = prediction["samples"].cpu()
        truth = batch["x"].cpu() if "x" in batch else None
        B = samples.shape[0]
        mean = samples.mean(1)
        std = samples.std(1) if samples.shape[1] > 1 else torch.zeros_like(mean)
        shard = {"rank": trainer.global_rank, "position": batch["position"].cpu(), "index": batch["index"].cpu(), "samples": samples, "mean": mean, "std": std,
                 "metrics": {k: v.cpu() for k, v in measurement_metrics(samples, truth).items()},
                 "nfe": prediction["nfe"], "seconds": prediction["seconds"],
                 # operators count per image: a batch's calls split evenly over its measurements
                 "operator_calls": {k: float(v) / B for k, v in prediction["operator_calls"].items()}}
        torch.save(shard, self.workdir / _SHARDS / f"rank{trainer.global_rank:05d}-batch{batch_idx:06d}.pt")
        if self.figures:
            backprojection = pl_module.model.operator.adjoint(batch["y"]).cpu()
            for k in range(B):
                measurement_figure(self.workdir / "figures" / f"measurement_{int(batch['index'][k])}.png",
                                   index=int(batch["index"][k]), mean=mean[k], std=std[k], samples=samples[k],
                                   backprojection=backprojection[k], truth=None if truth is None else truth[k])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mem, kind = peak_memory(pl_module.device)
        summary = {"rank": trainer.global_rank, "peak_memory_bytes": mem, "peak_memory_kind": kind,
                   "seconds": time.perf_counter() - self._t0}
        torch.save(summary, self.workdir / _SHARDS / f"rank{trainer.global_rank:05d}-summary.pt")


# ============================================================================ outputs
def merge_shards(workdir: Path, n: int) -> dict[str, Any]:
    """Concatenate all ranks' batches in input order; every position must appear exactly once."""
    files = sorted((workdir / _SHARDS).glob("rank*-batch*.pt"))
    shards = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    position = torch.cat([s["position"] for s in shards]) if shards else torch.zeros(0, dtype=torch.long)
    order = torch.argsort(position)
    if not torch.equal(position[order], torch.arange(n)):
        raise RuntimeError(f"prediction shards cover positions {position.tolist()}, expected each of 0..{n - 1} exactly once")

    def cat(get) -> torch.Tensor:
        return torch.cat([get(s) for s in shards])[order]

    def per_item(s: dict[str, Any], value: float) -> torch.Tensor:  # a batch-level number, one per measurement
        return torch.full((len(s["position"]),), float(value), dtype=torch.float64)

    merged = {key: cat(lambda s, key=key: s[key]) for key in ("index", "samples", "mean", "std")}
    merged["metrics"] = {k: cat(lambda s, k=k: s["metrics"][k]) for k in shards[0]["metrics"]}
    merged["nfe"] = cat(lambda s: per_item(s, s["nfe"]))
    merged["forward"] = cat(lambda s: per_item(s, s["operator_calls"].get("forward", 0)))
    merged["adjoint"] = cat(lambda s: per_item(s, s["operator_calls"].get("adjoint", 0)))
    per_rank: dict[int, float] = {}
    for s in shards:
        per_rank[s["rank"]] = per_rank.get(s["rank"], 0.0) + s["seconds"]
    merged["sampler_seconds_per_rank"] = per_rank
    merged["ranks"] = [torch.load(f, weights_only=True) for f in sorted((workdir / _SHARDS).glob("rank*-summary.pt"))]
    return merged


def _number(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


def _stats(values: torch.Tensor) -> dict[str, float | None]:
    v = values.double()
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else None}


def metrics_report(merged: dict[str, Any], *, n_samples: int, predict_seconds: float, total_seconds: float,
                   settings: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``: per measurement, aggregate (mean ± std over measurements), cost, settings, task."""
    names = list(merged["metrics"])
    per = []
    for i, index in enumerate(merged["index"].tolist()):
        row: dict[str, Any] = {"index": index}
        row.update({k: float(merged["metrics"][k][i]) for k in names})
        row["nfe"] = _number(merged["nfe"][i])
        row["operator_calls"] = {"forward": _number(merged["forward"][i]), "adjoint": _number(merged["adjoint"][i])}
        per.append(row)
    aggregate = {k: _stats(merged["metrics"][k]) for k in names}
    aggregate.update({"nfe": _stats(merged["nfe"]), "operator_calls_forward": _stats(merged["forward"]),
                      "operator_calls_adjoint": _stats(merged["adjoint"])})
    n = len(per)
    ranks = merged["ranks"]
    # sampling time: the slowest rank's time inside sample_posterior (no figure drawing or file I/O)
    sampling_seconds = max(merged["sampler_seconds_per_rank"].values())
    cost = {
        "nfe_per_sample_mean": float(merged["nfe"].mean()),
        "operator_calls": {"forward": _number(merged["forward"].sum()), "adjoint": _number(merged["adjoint"].sum())},
        "wall_time_s": total_seconds,
        "predict_wall_time_s": predict_seconds,
        "sampling_time_s": sampling_seconds,
        "wall_time_per_posterior_sample_s": sampling_seconds / (n * n_samples),
        "sampler_compute_s_all_ranks": sum(merged["sampler_seconds_per_rank"].values()),
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in ranks),
        "peak_memory_kind": ranks[0]["peak_memory_kind"],
        "peak_memory_bytes_per_rank": [r["peak_memory_bytes"] for r in ranks],
    }
    return {"n_measurements": n, "n_samples": n_samples, "coverage_level": COVERAGE_LEVEL, "aggregate": aggregate,
            "per_measurement": per, "cost": cost, "settings": settings, "task": task}


class OutputFolder:
    """Results appear all at once: written into a hidden temporary sibling, then renamed into place
    (an existing folder, with ``overwrite``, is swapped out and removed only after the rename)."""

    def __init__(self, output: str | os.PathLike, overwrite: bool):
        self.final = Path(output).absolute()
        self.overwrite = overwrite
        self.tmp = self.final.parent / f".{self.final.name}.tmp-{uuid.uuid4().hex[:12]}"
        self._made: list[Path] = []

    def check(self) -> None:
        if self.final.exists() or self.final.is_symlink():
            if not self.final.is_dir():
                raise InputError(f"--output {self.final} exists and is not a folder")
            if any(self.final.iterdir()) and not self.overwrite:
                raise InputError(f"--output {self.final} already holds results; pass --overwrite to replace them")

    def create(self) -> Path:
        missing = [p for p in [self.final.parent, *self.final.parent.parents] if not p.exists()]
        self.tmp.mkdir(parents=True)
        self._made = missing  # deepest first: removed in this order on failure
        return self.tmp

    def commit(self) -> Path:
        self.check()  # another run may have written there meanwhile
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(self.final, old)
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if old is not None:
                os.rename(old, self.final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for p in self._made:
            try:
                p.rmdir()
            except OSError:
                break


def _write_outputs(folder: Path, merged: dict[str, Any], report: dict[str, Any]) -> None:
    for key in ("samples", "mean", "std", "index"):
        torch.save(merged[key], folder / f"{key}.pt")
    (folder / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(folder / _SHARDS)


# ============================================================================ the run
def _positive_int(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def resolve_inputs(*, checkpoint: str, method: Method, measurements: str | None, data: str | list[str] | None, task: str | None,
                   operator: str | None, sigma_y: float | None, split: str, n: int | None,
                   zeta: float) -> tuple[Measurements, str, pl.LightningModule, dict[str, Any]]:
    """The measurements, the method, the sampling module (checked against the measurements' task) and
    the checkpoint's metadata. An explicit task (``task``, or ``operator`` + ``sigma_y``) is required
    for raw tensors, checked against an export, and layered over data configs (it sets the task the
    measurements are synthesised for)."""
    if (measurements is None) == (data is None):
        raise InputError("give exactly one measurement source: --measurements PATH or --data YAML")
    if (operator is None) != (sigma_y is None) or (operator is not None and task is not None):
        raise InputError("name the task either with --task YAML or with both --operator and --sigma-y")
    if not Path(checkpoint).is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    named = explicit_task(task, operator, sigma_y)
    if data is not None:
        meas = measurements_from_data_config([data] if isinstance(data, str) else list(data), split, n, named)
    else:
        meas = measurements_from_file(measurements, named)
        if n is not None:
            meas = Measurements(meas.y[:n], meas.index[:n], meas.operator, meas.sigma_y,
                                None if meas.x is None else meas.x[:n], meas.source)
    if len(meas) == 0:
        raise InputError("the measurement source holds no measurements")
    method, model, meta = load_sampler(checkpoint, method, meas, zeta)
    return meas, method, model, meta


def run_inference(*, checkpoint: str, output: str, measurements: str | None = None, data: str | list[str] | None = None,
                  method: Method = "auto", task: str | None = None, operator: str | None = None, sigma_y: float | None = None,
                  split: str = "test", n: int | None = None, sampler: str | None = None, steps: int | None = None,
                  n_samples: int = 8, batch_size: int = 4, seed: int = 0, churn: float = 0.0, zeta: float = 1.0,
                  devices: int = 1, accelerator: str = "auto", overwrite: bool = False, figures: bool = True,
                  progress: bool | None = None) -> Path | None:
    """Sample posteriors for a set of measurements; returns the output folder (``None`` on ranks > 0).

    Exactly one of ``measurements`` (a file) and ``data`` (data configs, layered) is the source;
    ``task`` or ``operator`` + ``sigma_y`` name the task (see ``resolve_inputs``). Raises
    ``InputError`` on bad input before anything is written.
    """
    t_start = time.perf_counter()
    child_workdir = os.environ.get(WORKDIR_ENV)  # set: we are a DDP rank re-launched by rank 0
    out = OutputFolder(output, overwrite)
    try:
        if child_workdir is None:
            out.check()
        for name, value, none_ok in (("--n-samples", n_samples, False), ("--batch-size", batch_size, False),
                                     ("--devices", devices, False), ("--steps", steps, True), ("--n", n, True)):
            _positive_int(name, value, none_ok)
        if not (math.isfinite(churn) and churn >= 0) or not (math.isfinite(zeta) and zeta > 0):
            raise InputError(f"--churn must be >= 0 and --zeta > 0, got churn={churn}, zeta={zeta}")
        meas, method, model, meta = resolve_inputs(checkpoint=checkpoint, method=method, measurements=measurements, data=data,
                                                   task=task, operator=operator, sigma_y=sigma_y, split=split, n=n, zeta=zeta)
        num_steps = steps or int(model.hparams.num_steps)
        if method == "ucos":
            sampler = sampler or model.hparams.sampler
        elif sampler is not None:
            print(f"sample.py: warning: --sampler {sampler} is ignored by DPS (it has its own step rule)", file=sys.stderr)
        workdir = Path(child_workdir) if child_workdir else out.tmp
        world = min(devices, len(meas))  # never an idle rank
        trainer = pl.Trainer(accelerator=accelerator, devices=world, strategy="ddp" if world > 1 else "auto",
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, use_distributed_sampler=False, default_root_dir=workdir,
                             callbacks=[ShardWriter(workdir, figures)])
    except InputError:
        raise
    except (ValueError, TypeError, OSError, MisconfigurationException) as e:  # CheckpointError, OperatorMismatchError, ...
        raise InputError(str(e)) from None
    if isinstance(trainer.accelerator, CPUAccelerator) and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # ranks share the cores

    predictor = PosteriorPredictor(model, n_samples=n_samples, num_steps=num_steps, seed=seed, sampler=sampler,
                                   churn=churn, progress=progress)
    if child_workdir is not None:
        trainer.predict(predictor, datamodule=ShardedMeasurements(meas, batch_size), return_predictions=False)
        trainer.strategy.barrier()
        return None
    out.create()
    os.environ[WORKDIR_ENV] = str(workdir)  # inherited by the ranks the ddp launcher starts
    try:
        t_predict = time.perf_counter()
        trainer.predict(predictor, datamodule=ShardedMeasurements(meas, batch_size), return_predictions=False)
        trainer.strategy.barrier()  # every rank's shards are on disk
        predict_seconds = time.perf_counter() - t_predict
        merged = merge_shards(workdir, len(meas))
        settings = {"checkpoint": str(Path(checkpoint).absolute()), "method": method, "module": meta.get("module"),
                    "sampler": sampler if method == "ucos" else f"dps-{model.hparams.step}",
                    "steps": num_steps, "n_samples": n_samples, "batch_size": batch_size, "seed": seed,
                    "churn": churn if method == "ucos" else None, "zeta": zeta if method == "dps" else None,
                    "devices": world, "accelerator": type(trainer.accelerator).__name__, "source": meas.source,
                    "versions": {"torch": torch.__version__, "lightning": pl.__version__}}
        task_info = {"operator": operator_spec(meas.operator), "sigma_y": meas.sigma_y,
                     "checkpoint_operator_fingerprint": meta.get("operator_fingerprint"),
                     "operator_fingerprint": meas.operator.fingerprint()}
        report = metrics_report(merged, n_samples=n_samples, predict_seconds=predict_seconds,
                                total_seconds=time.perf_counter() - t_start, settings=settings, task=task_info)
        _write_outputs(workdir, merged, report)
        return out.commit()
    except BaseException:
        out.discard()
        raise
    finally:
        os.environ.pop(WORKDIR_ENV, None)
