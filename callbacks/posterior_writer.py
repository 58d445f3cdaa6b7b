"""``PosteriorWriter``: saves what ``PosteriorModule.predict_step`` returns, per batch and per rank, and
merges it into the files ``scripts/sample.py`` promises.

- ``setup``: rank 0 creates the run's temporary folder and broadcasts its path, so every rank (one
  process or many, launched by Lightning, ``torchrun`` or ``srun``) writes into the same place;
- each batch: ``_shards/rank<r>-batch<b>.pt`` (position, index, samples, per-measurement metrics,
  cost) and its figures, drawn in parallel on all ranks;
- ``merge``/``write_outputs`` (rank 0, after every rank is done): samples, mean, std, index and
  ``metrics.json`` in input order, each position checked to appear exactly once, and a calibration plot.
"""
from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from diffpost.image_quality import bias_squared, calibrated_coverage, coverage_at_levels, psnr, ssim, summed_variance
from lightning_modules.figures import calibration_figure, measurement_figure
from lightning_modules.output_folder import OutputFolder

SHARDS = "_shards"
#: nominal levels of the central credible intervals whose coverage is reported
COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)


def measurement_metrics(samples: torch.Tensor, truth: torch.Tensor | None, mean_only: bool) -> dict[str, torch.Tensor]:
    """Per-measurement ``(B,)`` metrics of samples ``(B, S, ...)`` (METHODS §7): PSNR/SSIM of the mean,
    bias², and with two or more samples the summed variance and the coverage at ``COVERAGE_LEVELS``."""
    samples = samples.double()
    out: dict[str, torch.Tensor] = {}
    if truth is not None:
        truth = truth.double()
        mean = samples.mean(1)
        out["psnr"], out["ssim"], out["bias_squared"] = psnr(mean, truth), ssim(mean, truth), bias_squared(samples, truth)
    if samples.shape[1] >= 2 and not mean_only:
        out["summed_variance"] = summed_variance(samples)
        if truth is not None:
            per_level = coverage_at_levels(samples, truth, COVERAGE_LEVELS)
            for k, level in enumerate(COVERAGE_LEVELS):
                out[f"coverage_{round(100 * level)}"] = per_level[:, k]
    return out


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak bytes: ``torch.cuda.max_memory_allocated`` on a GPU, else the process's max RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "max_rss"


class PosteriorWriter(BasePredictionWriter):
    """Writes each predicted batch into ``folder``'s temporary folder (shared by all ranks)."""

    def __init__(self, folder: OutputFolder, figures: bool = True, progress_lines: bool = False):
        super().__init__("batch")
        self.folder, self.figures, self.progress_lines = folder, figures, progress_lines
        self.workdir: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            self.folder.create()
        # every rank learns rank 0's folder (torchrun/srun ranks each made up their own name)
        self.workdir = Path(trainer.strategy.broadcast(str(self.folder.tmp), src=0))
        self.folder.tmp = self.workdir

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        (self.workdir / SHARDS).mkdir(parents=True, exist_ok=True)
        if self.figures:
            (self.workdir / "figures").mkdir(exist_ok=True)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._t0 = time.perf_counter()
        self._done = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        samples = prediction["samples"].cpu()
        truth = batch["x"].cpu() if "x" in batch else None
        B, mean_only = samples.shape[0], bool(pl_module.method.mean_estimator)
        mean = samples.mean(1)
        std = samples.std(1) if samples.shape[1] > 1 and not mean_only else None
        shard = {"rank": trainer.global_rank, "position": batch["position"].cpu(), "index": batch["index"].cpu(),
                 "samples": samples, "mean": mean, "std": torch.zeros_like(mean) if std is None else std,
                 "metrics": {k: v.cpu() for k, v in measurement_metrics(samples, truth, mean_only).items()},
                 "nfe": int(prediction["nfe"]), "vjp": int(prediction["vjp"]), "seconds": float(prediction["seconds"]),
                 # operators count per image: a batch's calls split evenly over its measurements
                 "operator_calls": {k: float(prediction[k]) / B for k in ("forward", "adjoint")}}
        torch.save(shard, self.workdir / SHARDS / f"rank{trainer.global_rank:05d}-batch{batch_idx:06d}.pt")
        if self.figures:
            backprojection = pl_module.operator.adjoint(batch["y"].to(samples.dtype)).cpu()
            for k in range(B):
                measurement_figure(self.workdir / "figures" / f"measurement_{int(batch['index'][k])}.png",
                                   index=int(batch["index"][k]), mean=mean[k], std=None if std is None else std[k],
                                   samples=samples[k], backprojection=backprojection[k],
                                   truth=None if truth is None else truth[k])
        self._done += B
        if self.progress_lines and trainer.is_global_zero:  # a log line per batch when no bar is drawn
            total = len(trainer.predict_dataloaders.dataset) if trainer.predict_dataloaders is not None else "?"
            print(f"sampling: rank 0 finished batch {batch_idx + 1} ({self._done} of its measurements; {total} in all) "
                  f"in {float(prediction['seconds']):.1f} s", file=sys.stderr, flush=True)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mem, kind = peak_memory(pl_module.device)
        summary = {"rank": trainer.global_rank, "peak_memory_bytes": mem, "peak_memory_kind": kind,
                   "seconds": time.perf_counter() - self._t0}
        torch.save(summary, self.workdir / SHARDS / f"rank{trainer.global_rank:05d}-summary.pt")


# ============================================================================ merging (rank 0)
def merge_shards(workdir: Path, n: int) -> dict[str, Any]:
    """Concatenate all ranks' batches in input order; every position must appear exactly once."""
    files = sorted((workdir / SHARDS).glob("rank*-batch*.pt"))
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
    for key in ("nfe", "vjp"):
        merged[key] = cat(lambda s, key=key: per_item(s, s[key]))
    for key in ("forward", "adjoint"):
        merged[key] = cat(lambda s, key=key: per_item(s, s["operator_calls"].get(key, 0)))
    per_rank: dict[int, float] = {}
    for s in shards:
        per_rank[s["rank"]] = per_rank.get(s["rank"], 0.0) + s["seconds"]
    merged["sampler_seconds_per_rank"] = per_rank
    merged["ranks"] = [torch.load(f, weights_only=True) for f in sorted((workdir / SHARDS).glob("rank*-summary.pt"))]
    return merged


def _number(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


def _stats(values: torch.Tensor) -> dict[str, float | None]:
    v = values.double()
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else None}


def metrics_report(merged: dict[str, Any], *, n_samples: int, mean_only: bool, predict_seconds: float,
                   total_seconds: float, settings: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``: per measurement, aggregate (mean ± std over measurements), calibration, cost,
    settings, task."""
    names = list(merged["metrics"])
    per = []
    for i, index in enumerate(merged["index"].tolist()):
        row: dict[str, Any] = {"index": index}
        row.update({k: float(merged["metrics"][k][i]) for k in names})
        row["nfe"], row["vjp"] = _number(merged["nfe"][i]), _number(merged["vjp"][i])
        row["operator_calls"] = {"forward": _number(merged["forward"][i]), "adjoint": _number(merged["adjoint"][i])}
        per.append(row)
    aggregate = {k: _stats(merged["metrics"][k]) for k in names}
    for key in ("nfe", "vjp"):
        aggregate[key] = _stats(merged[key])
    aggregate.update({"operator_calls_forward": _stats(merged["forward"]), "operator_calls_adjoint": _stats(merged["adjoint"])})
    levels = [lv for lv in COVERAGE_LEVELS if f"coverage_{round(100 * lv)}" in merged["metrics"]]
    per_level = [merged["metrics"][f"coverage_{round(100 * lv)}"].double() for lv in levels]
    calibration = {"levels": levels, "coverage": [float(c.mean()) for c in per_level],
                   # standard error across measurements (pixels of one image are correlated, images are not)
                   "stderr": [float(c.std() / c.numel() ** 0.5) if c.numel() > 1 else None for c in per_level],
                   "max_gap": max((abs(float(c.mean()) - lv) for c, lv in zip(per_level, levels)), default=None),
                   # what a calibrated sampler scores with this many samples (0.557 for 90 % with 4): compare with this
                   "calibrated_reference": list(calibrated_coverage(n_samples, levels)) if levels else []}
    if mean_only:
        calibration["note"] = "the method estimates the posterior mean only: no std map, no coverage"
    elif not levels:
        calibration["note"] = "coverage needs the truth and at least 2 samples per measurement"
    n, ranks = len(per), merged["ranks"]
    sampling_seconds = max(merged["sampler_seconds_per_rank"].values())  # the slowest rank, sampling only
    cost = {
        "nfe_per_sample_mean": float(merged["nfe"].mean()),
        "vjp_per_sample_mean": float(merged["vjp"].mean()),
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
    return {"n_measurements": n, "n_samples": n_samples, "mean_only": mean_only, "coverage_levels": levels,
            "aggregate": aggregate, "calibration": calibration, "per_measurement": per, "cost": cost,
            "settings": settings, "task": task}


def write_outputs(folder: Path, merged: dict[str, Any], report: dict[str, Any], figures: bool) -> None:
    """The final files of a run (``std.pt`` only where samples give one), into ``folder``."""
    keys = ("samples", "mean", "index") if report["mean_only"] or report["n_samples"] < 2 else ("samples", "mean", "std", "index")
    for key in keys:
        torch.save(merged[key], folder / f"{key}.pt")
    (folder / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    cal = report["calibration"]
    if figures and cal["levels"]:
        calibration_figure(folder / "figures" / "calibration.png", cal["levels"], cal["coverage"],
                           title=f"{report['settings'].get('method', '')}: {report['n_measurements']} measurements",
                           reference=cal["calibrated_reference"], n_samples=report["n_samples"])
    shutil.rmtree(folder / SHARDS)
