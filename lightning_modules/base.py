"""Shared Lightning plumbing: optimiser/schedule, per-rank generators, spec-based checkpoints."""
from __future__ import annotations

import inspect
import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from diffpost.config import Configurable, class_path, spec_of
from diffpost.random import seed_for
from lightning_modules.checkpoint import CHECKPOINT_FORMAT, check_checkpoint_matches, spec_digest

#: seed key of the global RNG during a training step (dropout and any other global-RNG draw)
_GLOBAL_RNG_STREAM = 1_000_003


class DiffpostModule(pl.LightningModule):
    """Base for diffpost modules.

    - hyper-parameters hold only plain types and specs (``object_args`` are replaced by their specs),
      so checkpoints load with ``weights_only=True`` and rebuild without YAML;
    - ``step_generator`` gives a generator seeded by (seed, stream, rank, epoch, batch): ranks draw
      different noise, reruns and resumed runs draw the same; the global RNG is reseeded from the same
      key before each training step, so global draws (dropout) resume exactly too;
    - checkpoints record fingerprints (network spec, and e.g. operator and preconditioner) and the
      data's task; loading recomputes and compares them.
    """

    def _save_config(self, object_args: dict[str, Any]) -> None:
        """``save_hyperparameters`` of the calling ``__init__``, with each object in ``object_args``
        (networks, operators) stored as its spec. Objects must be ``Configurable`` or have ``config()``:
        a checkpoint has to rebuild them from plain types, importing only this project's classes."""
        frame = inspect.currentframe().f_back  # the subclass __init__, whose arguments we record
        code = frame.f_code
        names = code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount]
        # passed as one mapping: Lightning would otherwise take the hyper-parameters LightningCLI is
        # instantiating (a context variable) for every module built meanwhile, e.g. the prior that a
        # PosteriorModule loads inside its own __init__
        self.save_hyperparameters({k: frame.f_locals[k] for k in names if k not in object_args})
        # what LightningCLI records when it builds the module: on --ckpt_path it rebuilds the model
        # section from the checkpoint's hyper-parameters and needs the class (resume fails without it)
        self.hparams["_class_path"] = class_path(self)
        for name, obj in object_args.items():
            if obj is None:
                self.hparams[name] = None
            elif (hasattr(obj, "config") and callable(obj.config)) or isinstance(obj, Configurable):
                self.hparams[name] = spec_of(obj)
            else:
                raise TypeError(
                    f"{type(self).__name__}: cannot record how to rebuild `{name}` ({class_path(obj)}); "
                    "derive it from diffpost.config.Configurable or give it a config() method"
                )

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = {"module": class_path(self), "format": CHECKPOINT_FORMAT, **self.checkpoint_metadata(), **self.fingerprints()}
        dm = self._trainer.datamodule if self._trainer is not None else None
        if hasattr(dm, "task_record"):
            meta["data"] = dm.task_record()
        checkpoint["diffpost"] = meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning's own loading (resume, --ckpt_path; its torch.load checks the zip CRCs): the same
        # refusals as train.py's preflight, for runs started from Python, then what load_module restores
        trainer = self._trainer
        if trainer is not None:
            task = trainer.datamodule.task_record() if hasattr(trainer.datamodule, "task_record") else None
            check_checkpoint_matches(checkpoint, trainer.ckpt_path, module_class=class_path(self), model=self,
                                     data_task=task, resuming=trainer.state.fn == "fit")
        self.on_load_diffpost_checkpoint(checkpoint)

    def checkpoint_metadata(self) -> dict[str, Any]:
        """Extra plain-typed facts stored with the checkpoint (e.g. the operator fingerprint)."""
        return {}

    def fingerprints(self) -> dict[str, str]:
        """The fingerprints a checkpoint records and every load recomputes: the network spec's, and
        those of ``checkpoint_metadata`` (operator, preconditioner)."""
        out = {k: v for k, v in self.checkpoint_metadata().items() if k.endswith("_fingerprint")}
        if self.hparams.get("net") is not None:
            out["network_fingerprint"] = spec_digest(self.hparams["net"])
        return out

    def on_load_diffpost_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what ``checkpoint_metadata`` stored (called by ``load_module`` and on resume)."""

    # ------------------------------------------------------------------ randomness
    def step_generator(self, batch_idx: int, stream: int = 0) -> torch.Generator:
        """A generator for one training step. ``seed_everything`` alone would give every rank the same
        stream; the rank in the key makes them differ, and (epoch, batch) make a resumed run redraw
        exactly what the uninterrupted run drew."""
        g = torch.Generator(device=self.device)
        g.manual_seed(seed_for(self.hparams.seed, stream, self.global_rank, self.current_epoch, batch_idx))
        return g

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning does not save the global RNG; reseeding it per step makes its draws a function of
        # the position, like step_generator's
        key = (self.hparams.get("seed", 0), _GLOBAL_RNG_STREAM, self.global_rank, self.current_epoch, batch_idx)
        torch.manual_seed(seed_for(*key))

    # ------------------------------------------------------------------ optimisation
    def build_optimizer(self, lr: float, weight_decay: float, warmup_steps: int, lr_schedule: Literal["constant", "cosine"]):
        """AdamW, stepped every optimiser step, with torch's schedulers: a linear warm-up (``LinearLR``)
        then a constant rate or a cosine decay (``CosineAnnealingLR``), chained by ``SequentialLR``.

        With ``W = warmup_steps`` (0 and 1 mean none) and ``T`` the trainer's total optimiser steps, the
        rate at step ``t`` (0-based) is ``lr (t + 1)/W`` for ``t < W``, then ``lr`` (constant) or
        ``lr ½(1 + cos(π (t − W)/(T − W)))`` (cosine; 0 at ``t = T``). The schedulers' state is in the
        checkpoint, so a resumed run continues the same schedule."""
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        sched = torch.optim.lr_scheduler
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        warmup = warmup_steps if warmup_steps > 1 else 0
        if lr_schedule == "cosine":
            estimated = self.trainer.estimated_stepping_batches if self._trainer is not None else float("inf")
            if not math.isfinite(estimated):
                raise ValueError("lr_schedule='cosine' needs a finite run: set trainer.max_steps or trainer.max_epochs")
            after = sched.CosineAnnealingLR(opt, T_max=max(1, int(estimated) - warmup), eta_min=0.0)
        else:
            after = sched.ConstantLR(opt, factor=1.0, total_iters=0)
        scheduler = after
        if warmup:
            ramp = sched.LinearLR(opt, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
            scheduler = sched.SequentialLR(opt, [ramp, after], milestones=[warmup])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
