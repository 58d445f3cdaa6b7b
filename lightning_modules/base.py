"""Shared Lightning plumbing: optimiser/schedule, per-rank generators, spec-based checkpoints."""
from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from diffpost.config import Configurable, class_path, is_spec, spec_of
from diffpost.random import seed_for
from lightning_modules.checkpoint import CHECKPOINT_FORMAT


class DiffpostModule(pl.LightningModule):
    """Base for diffpost modules.

    - hyper-parameters hold only plain types and specs (``object_args`` are replaced by their specs),
      so checkpoints load with ``weights_only=True`` and rebuild without YAML;
    - ``step_generator`` gives a generator seeded by (seed, rank, epoch, batch): ranks draw different
      noise, reruns and resumed runs draw the same.
    """

    def _save_config(self, object_args: dict[str, Any]) -> None:
        import inspect

        frame = inspect.currentframe().f_back  # the subclass __init__, whose arguments we record
        self.save_hyperparameters(ignore=list(object_args), frame=frame)
        for name, obj in object_args.items():
            if obj is None:
                self.hparams[name] = None
            elif hasattr(obj, "config") or isinstance(obj, Configurable):
                self.hparams[name] = spec_of(obj)
            elif not is_spec(self.hparams.get(name)):  # LightningCLI already gave its class_path spec
                raise TypeError(
                    f"{type(self).__name__}: cannot record how to rebuild `{name}` ({class_path(obj)}); "
                    "derive it from diffpost.config.Configurable or give it a config() method"
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["diffpost"] = {"module": class_path(self), "format": CHECKPOINT_FORMAT, **self.checkpoint_metadata()}

    def checkpoint_metadata(self) -> dict[str, Any]:
        """Extra plain-typed facts stored with the checkpoint (e.g. the operator fingerprint)."""
        return {}

    def step_generator(self, batch_idx: int, stream: int = 0) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(seed_for(self.hparams.seed, stream, self.global_rank, self.current_epoch, batch_idx))
        return g

    def build_optimizer(self, lr: float, weight_decay: float, warmup_steps: int, lr_schedule: Literal["constant", "cosine"]):
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        total = None
        if lr_schedule == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1

        def factor(step: int) -> float:
            f = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
            if total is not None:
                f *= 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
            return f

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
