"""Checkpoint-based posterior inference: the run behind ``scripts/sample.py``.

1. Everything checkable is checked before anything is written: the options, the output folder (it
   must be writable, and empty unless ``overwrite``), the measurements (``datamodules.measurements``),
   the checkpoint (read once, ``weights_only``) and the task against the method and the model
   (``PosteriorModule``, once). Bad input raises an ``INPUT_ERRORS`` exception with one line.
2. ``Trainer.predict`` runs ``PosteriorModule.predict_step`` over the measurements, sharded by
   Lightning across ranks (one process, ``--devices N`` on one machine, or ranks started by
   ``torchrun``/``srun`` with ``--num-nodes``); ``PosteriorWriter`` saves each batch into one
   temporary folder that rank 0 created and broadcast.
3. Rank 0 merges the shards in input order, writes ``samples.pt``/``mean.pt``/``std.pt``/
   ``index.pt``/``metrics.json``/figures and renames the folder into place; on any failure (or
   SIGTERM/SIGINT) the temporary folder is removed: a run leaves complete results or nothing.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities import rank_zero_only

from callbacks.posterior_writer import PosteriorWriter, merge_shards, metrics_report, write_outputs
from callbacks.sampling_progress import SamplingProgress
from datamodules.inverse_problem import operator_spec
from datamodules.measurements import (
    InputError,
    MeasurementDataModule,
    Measurements,
    explicit_task,
    measurements_from_data_config,
    measurements_from_file,
    read_yaml,
)
from diffpost.config import build, class_path
from diffpost.posterior.base import PosteriorMethod
from lightning_modules.output_folder import OutputFolder
from lightning_modules.posterior import PosteriorModule

#: where the shipped method configs live (``--method dps`` reads configs/method/dps.yaml)
METHOD_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "method"


# ============================================================================ the method
def method_names() -> list[str]:
    """Names ``--method`` accepts besides paths and class paths: the files in configs/method/."""
    return sorted(p.stem for p in METHOD_CONFIGS.glob("*.yaml"))


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--method-arg must look like KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise InputError(f"--method-arg {text!r}: cannot read the value: {e}") from None
    if isinstance(parsed, str):  # YAML 1.1 reads 1e30 (no dot) as a string
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return key.strip(), parsed


def resolve_method(method: str, overrides: list[str] | None = None) -> dict[str, Any] | None:
    """The method's spec ``{class_path, init_args}`` from a name in configs/method/, a YAML file, inline
    YAML/JSON or a class path; ``auto`` gives ``None`` (the checkpoint's default method). ``overrides``
    (``KEY=VALUE``) replace ``init_args`` entries."""
    extra = dict(_override(o) for o in overrides or [])
    if method == "auto":
        if extra:
            raise InputError("--method-arg needs an explicit --method (e.g. --method dps --method-arg zeta=0.5)")
        return None
    shipped = METHOD_CONFIGS / f"{method}.yaml"
    if shipped.is_file():
        spec = read_yaml(str(shipped), "method config")
    elif method.lstrip().startswith("{") or method.endswith((".yaml", ".yml", ".json")):
        spec = read_yaml(method, "method config")
    elif "." in method and "/" not in method:
        spec = {"class_path": method}
    else:
        raise InputError(f"--method {method!r} is neither a method name ({', '.join(method_names())}), "
                         "a YAML/JSON file, inline JSON nor a class path")
    if not isinstance(spec.get("class_path"), str):
        raise InputError(f"--method {method!r}: a method config needs class_path (and init_args)")
    spec = {"class_path": spec["class_path"], "init_args": {**(spec.get("init_args") or {}), **extra}}
    try:
        build(spec, PosteriorMethod)  # fail now on an unknown class or a bad argument
    except (ValueError, TypeError, ImportError, AttributeError) as e:
        raise InputError(f"--method {method!r}: {e}") from None
    return spec


# ============================================================================ checks
def _positive_int(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def load_measurements(*, measurements: str | None, data: str | list[str] | None, task: str | None,
                      operator: str | None, sigma_y: float | None, split: str, n: int | None) -> Measurements:
    """The measurements of exactly one source, with an explicit task (``task``, or ``operator`` +
    ``sigma_y``) required for raw tensors, checked against an export, layered over data configs."""
    if (measurements is None) == (data is None):
        raise InputError("give exactly one measurement source: --measurements PATH or --data YAML")
    if (operator is None) != (sigma_y is None) or (operator is not None and task is not None):
        raise InputError("name the task either with --task YAML or with both --operator and --sigma-y")
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
    return meas


# ============================================================================ the run
def run_inference(*, checkpoint: str, output: str, measurements: str | None = None, data: str | list[str] | None = None,
                  method: str = "auto", method_arg: list[str] | None = None, task: str | None = None,
                  operator: str | None = None, sigma_y: float | None = None, split: str = "test", n: int | None = None,
                  steps: int | None = None, n_samples: int = 8, batch_size: int = 4, seed: int = 0, devices: int = 1,
                  num_nodes: int = 1, accelerator: str = "auto", precision: str = "32-true", overwrite: bool = False, figures: bool = True,
                  progress: bool | None = None, log=print) -> Path | None:
    """Sample posteriors for a set of measurements; returns the output folder (``None`` on ranks > 0)."""
    t_start = time.perf_counter()
    rank_zero = rank_zero_only.rank == 0  # from the launcher's environment (torchrun, srun, Lightning's ddp)
    for name, value, none_ok in (("--n-samples", n_samples, False), ("--batch-size", batch_size, False),
                                 ("--devices", devices, False), ("--num-nodes", num_nodes, False),
                                 ("--steps", steps, True), ("--n", n, True)):
        _positive_int(name, value, none_ok)
    out = OutputFolder(output, overwrite)
    out.check()  # before the model loads: an unwritable or occupied output fails at once
    if rank_zero:
        for message in out.clean_stale():
            log(f"sample.py: note: {message}", file=sys.stderr)
    spec = resolve_method(method, method_arg)
    meas = load_measurements(measurements=measurements, data=data, task=task, operator=operator, sigma_y=sigma_y,
                             split=split, n=n)
    if not Path(checkpoint).is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    module = PosteriorModule(str(checkpoint), None if spec is None else build(spec, PosteriorMethod), meas.operator,
                             meas.sigma_y, num_steps=steps, n_samples=n_samples, seed=seed)
    launched = any(k in os.environ for k in ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS")) and num_nodes * devices > 1
    world = devices if launched else min(devices, len(meas))  # never an idle rank we started ourselves
    show_bar = sys.stderr.isatty() if progress is None else progress
    writer = PosteriorWriter(out, figures, progress_lines=not show_bar)
    trainer = pl.Trainer(accelerator=accelerator, devices=world, num_nodes=num_nodes, precision=precision,
                         strategy="ddp" if world * num_nodes > 1 else "auto", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                         default_root_dir=str(out.final.parent), callbacks=[writer, SamplingProgress(module.num_steps, show_bar)])
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // trainer.num_devices))  # ranks share the cores
    try:
        t_predict = time.perf_counter()
        trainer.predict(module, datamodule=MeasurementDataModule(meas, batch_size), return_predictions=False)
        trainer.strategy.barrier()  # every rank's shards are on disk
        if not trainer.is_global_zero:
            return None
        predict_seconds = time.perf_counter() - t_predict
        merged = merge_shards(writer.workdir, len(meas))
        settings = {"checkpoint": str(Path(checkpoint).absolute()), "method": module.method.name,
                    "method_spec": {"class_path": class_path(module.method), "init_args": module.method.init_config},
                    "model": class_path(module.model), "steps": module.num_steps, "n_samples": n_samples,
                    "batch_size": batch_size, "seed": seed, "devices": trainer.num_devices, "num_nodes": trainer.num_nodes,
                    "world_size": trainer.world_size, "accelerator": type(trainer.accelerator).__name__, "precision": precision,
                    "source": meas.source, "versions": {"torch": torch.__version__, "lightning": pl.__version__}}
        task_info = {"operator": operator_spec(meas.operator), "sigma_y": meas.sigma_y,
                     "operator_fingerprint": meas.operator.fingerprint()}
        report = metrics_report(merged, n_samples=merged["samples"].shape[1], mean_only=module.method.mean_estimator,
                                predict_seconds=predict_seconds, total_seconds=time.perf_counter() - t_start,
                                settings=settings, task=task_info)
        write_outputs(writer.workdir, merged, report, figures)
        final = out.commit()
        log(summary_line(report, final), file=sys.stderr)
        return final
    except BaseException:
        if trainer.is_global_zero:
            out.discard()
        raise


def summary_line(report: dict[str, Any], folder: Path) -> str:
    """``sample.py: 16 measurements × 8 samples with dps (1000 NFE each): PSNR 27.41 dB, ... → folder``."""
    agg, cost = report["aggregate"], report["cost"]
    parts = [f"{report['n_measurements']} measurements × {report['n_samples']} samples with {report['settings']['method']} "
             f"({cost['nfe_per_sample_mean']:.0f} NFE each, {cost['wall_time_s']:.1f} s)"]
    quality = [f"{name} {agg[key]['mean']:{fmt}}" for key, name, fmt in
               (("psnr", "PSNR", ".2f"), ("ssim", "SSIM", ".3f"), ("coverage_90", "coverage90", ".2f")) if key in agg]
    if quality:
        parts.append(", ".join(quality))
    return f"sample.py: {'; '.join(parts)} → {folder}"
