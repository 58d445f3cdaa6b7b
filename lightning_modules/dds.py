"""``DDSModule``: denoising diffusion sampler (or PIS) trained from an unnormalised density alone.

No data: the training "batches" are step indices from a dummy loader; each step simulates fresh paths
from a generator seeded by (seed, stream, rank, epoch, batch), so ranks differ and reruns reproduce.
The math lives in ``diffpost.samplers.dds`` (METHODS §6.2); this module adds the control network,
optimisation, validation (loss, log Ẑ, ESS), batch-size-independent sampling and checkpoints that
rebuild their target from a plain spec (``{"class_path", "init_args"}``, trusted packages only).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from diffpost.config import build, is_spec, spec_of
from diffpost.nets.control import ControlNet
from diffpost.random import make_generator, per_sample_generators, seed_for
from diffpost.samplers.dds import (
    Discretisation,
    Paths,
    dds_discretisation,
    effective_sample_size,
    log_evidence,
    pis_discretisation,
    simulate,
)
from diffpost.targets.base import Target
from lightning_modules.base import DiffpostModule

_TRAIN_STREAM, _VAL_STREAM, _PREDICT_STREAM = 0, 1, 2


class _Steps(Dataset):
    """``n`` step indices: the 'data' of a sampler trained from a density alone."""

    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _positive(name: str, v: float, integer: bool = False) -> None:
    ok = isinstance(v, int) and not isinstance(v, bool) if integer else isinstance(v, (int, float))
    if not ok or not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {v!r}")


def _cli_spec(name: str) -> dict | None:
    """The spec LightningCLI instantiated argument ``name`` from: while it builds a module, Lightning
    keeps the config in a context variable (what ``save_hyperparameters`` saves under the CLI)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - private Lightning API
        return None
    value = (_given_hyperparameters.get() or {}).get(name)
    return value if is_spec(value) else None


class DiffusionSamplerBase(DiffpostModule):
    """What DDS, PIS and the Schrödinger-bridge refinement share: the target (rebuilt from a spec), the
    reference chain, the forward control, simulation, importance weights, validation and sampling.
    Subclasses call ``_record_target`` and ``_build_sampler`` from their ``__init__``."""

    target: Any
    disc: Discretisation
    control: ControlNet

    def _record_target(self, target: Any, frame) -> Any:
        """Save hyper-parameters with ``target`` as its spec; return the target object."""
        self.save_hyperparameters(ignore=["target"], frame=frame)
        if is_spec(target):
            self.hparams["target"] = {"class_path": target["class_path"], "init_args": dict(target.get("init_args") or {})}
            target = build(target)
        elif _cli_spec("target") is not None:  # LightningCLI built the object from this spec
            self.hparams["target"] = _cli_spec("target")
        else:
            try:
                self.hparams["target"] = spec_of(target)
            except TypeError as e:
                raise TypeError(
                    f"{type(self).__name__}: the target must be rebuildable from the checkpoint: pass it as a spec "
                    "{'class_path': 'diffpost.targets.Funnel', 'init_args': {...}} or give it a config() method "
                    f"({e})"
                ) from None
        for attr in ("dim", "log_prob"):
            if not hasattr(target, attr):
                raise TypeError(f"{type(self).__name__}: target {type(target).__name__} has no `{attr}`")
        return target

    def _build_sampler(self, target: Any, kind: str, n_steps: int, T: float, alpha: float, sigma_r: float,
                       time_power: float, hidden: int, batch_size: int, lr: float, eval_samples: int) -> None:
        if kind not in ("dds", "pis"):
            raise ValueError(f"kind must be 'dds' or 'pis', got {kind!r}")
        for name, v in (("n_steps", n_steps), ("hidden", hidden), ("batch_size", batch_size), ("eval_samples", eval_samples)):
            _positive(name, v, integer=True)
        for name, v in (("T", T), ("alpha", alpha), ("sigma_r", sigma_r), ("lr", lr)):
            _positive(name, v)
        make = dds_discretisation if kind == "dds" else pis_discretisation
        self.disc = make(n_steps, float(T), float(alpha), float(sigma_r), float(time_power))
        if isinstance(target, torch.nn.Module):
            # registered: follows .to(device) and its buffers travel in the state_dict; a target is a
            # fixed density, never trained
            self.target = target.requires_grad_(False)
        else:
            object.__setattr__(self, "target", target)
        self.control = ControlNet(int(target.dim), hidden, float(T))

    # ------------------------------------------------------------------ simulation
    def simulate(self, n: int, generator, keep_path: bool = False) -> Paths:
        return simulate(self.control, self._target_on_device(), self.disc, n, generator=generator, dtype=self.dtype,
                        device=self.device, keep_path=keep_path)

    def _target_on_device(self) -> Any:
        """The target with its tensors on the module's device. ``.to(device)`` moves parameters and
        buffers only; a ``diffpost.targets.Target`` is a plain object, so it is moved (copied) here,
        once per device change (its spec in the hyper-parameters is unchanged)."""
        t = self.target
        if isinstance(t, Target) and t.device != self.device:
            object.__setattr__(self, "target", t.to(self.device))
        return self.target

    def log_weights(self, paths: Paths) -> torch.Tensor:
        """Importance log-weights ``log w`` with ``E[w] = Z``; DDS/PIS: ``−(C + S + G)``."""
        return paths.log_weights

    def _needs_path(self) -> bool:
        return False

    def _evaluate_paths(self, n: int, generator) -> tuple[Paths, torch.Tensor]:
        """Paths and their log-weights without autograd (Lightning may run us under inference mode;
        target gradients by autograd need normal tensors, hence ``inference_mode(False)``)."""
        with torch.inference_mode(False), torch.no_grad():
            paths = self.simulate(n, generator, keep_path=self._needs_path())
            return paths, self.log_weights(paths)

    # ------------------------------------------------------------------ data: step indices only
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(self._train_length()), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(1), batch_size=None)

    def _train_length(self) -> int:
        return self.hparams.steps_per_epoch

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        n = self.hparams.eval_samples
        g = make_generator(seed_for(self.hparams.seed, _VAL_STREAM, self.global_rank))
        paths, log_w = self._evaluate_paths(n, g)
        log_z = log_evidence(log_w)
        known = getattr(self.target, "log_Z", None)
        # E[−log w] + log Z ≥ KL(Q_K || π); with Z unknown log Ẑ stands in (then the estimate is ≥ 0)
        kl = -log_w.mean() + (log_z if known is None else known)
        self.log("val/loss", paths.kl_terms.mean(), sync_dist=True, batch_size=n)
        self.log("val/log_Z_hat", log_z, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("val/ess", effective_sample_size(log_w) / n, sync_dist=True, batch_size=n)
        self.log("val/kl_bound", kl, sync_dist=True, batch_size=n)
        if known is not None:
            self.log("val/log_Z_error", log_z - known, sync_dist=True, batch_size=n)

    # ------------------------------------------------------------------ sampling
    def sample(self, n_or_index: int | torch.Tensor, seed: int | None = None,
               batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``(n, d)`` and importance log-weights ``(n,)`` (``log Ẑ = log_evidence(log_w)``).

        Sample ``i`` uses its own generator seeded by ``(seed, stream, i)``: results do not depend on
        ``batch_size`` (chunks simulated at a time; default all) or on how indices are sharded.
        """
        index = torch.arange(n_or_index) if isinstance(n_or_index, int) else torch.as_tensor(n_or_index).reshape(-1)
        if index.numel() == 0:
            raise ValueError("sample: need at least one index")
        seed = self.hparams.seed if seed is None else int(seed)
        bs = index.numel() if batch_size is None else batch_size
        _positive("batch_size", bs, integer=True)
        xs, ws = [], []
        for chunk in index.split(bs):
            gens = per_sample_generators([seed_for(seed, _PREDICT_STREAM, int(i)) for i in chunk])
            paths, log_w = self._evaluate_paths(len(gens), gens)
            xs.append(paths.x)
            ws.append(log_w)
        return torch.cat(xs), torch.cat(ws)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """``batch``: sample indices ``(B,)`` (or a dict with ``"index"``), e.g. from
        ``DataLoader(torch.arange(n), batch_size=...)``; shards over ranks without duplicates."""
        index = batch["index"] if isinstance(batch, dict) else batch
        x, log_w = self.sample(index)
        return {"samples": x, "log_weights": log_w, "index": torch.as_tensor(index)}


class DDSModule(DiffusionSamplerBase):
    """Trains ``u_θ`` by minimising ``E_Q[C + G]`` (reverse KL to the target path measure, up to log Z).

    Args:
        target: an object with ``dim``, ``log_prob`` (and optionally ``grad_log_prob``) plus ``config()``
            or ``Configurable`` (any ``diffpost.targets.Target`` whose arguments have plain-typed forms),
            or its spec ``{"class_path": ..., "init_args": ...}`` (how checkpoints and YAML configs give
            it). A ``Target`` follows the module to its device on the first simulation.
        kind: ``"dds"`` (OU reference started in ``N(0, σ_r² I)``) or ``"pis"`` (Brownian motion from 0).
        n_steps: number of steps ``K``.
        T, alpha: horizon and ``β_k = min(1, α √Δt_k)`` (DDS; PIS without the cap).
        sigma_r: reference scale (DDS: invariant std).
        time_power: ``t_k = T(1 − (1 − k/K)^p)``; ``p > 1`` refines steps near the target end.
        hidden: control network width.
        batch_size: paths per training step.
        lr, lr_schedule: AdamW learning rate (no weight decay) and its schedule.
        steps_per_epoch: length of the dummy training loader (validation runs once per epoch).
        eval_samples: paths per validation (log Ẑ, ESS).
        seed: seeds all path noise (training, validation, sampling).
    """

    def __init__(
        self,
        target: Any,
        kind: Literal["dds", "pis"] = "dds",
        n_steps: int = 64,
        T: float = 1.0,
        alpha: float = 3.0,
        sigma_r: float = 1.0,
        time_power: float = 2.0,
        hidden: int = 64,
        batch_size: int = 256,
        lr: float = 1e-3,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        steps_per_epoch: int = 100,
        eval_samples: int = 2000,
        seed: int = 0,
    ):
        super().__init__()
        target = self._record_target(target, inspect.currentframe())
        _positive("steps_per_epoch", steps_per_epoch, integer=True)
        self._build_sampler(target, kind, n_steps, T, alpha, sigma_r, time_power, hidden, batch_size, lr, eval_samples)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        paths = self.simulate(self.hparams.batch_size, self.step_generator(batch_idx, _TRAIN_STREAM))
        loss = paths.kl_terms.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=self.hparams.batch_size)
        return loss

    def configure_optimizers(self):
        return self.build_optimizer(self.hparams.lr, 0.0, 0, self.hparams.lr_schedule)
