"""``SamplingProgress``: a tqdm bar over sampler steps on rank 0 during ``Trainer.predict``.

Posterior methods call their ``callback`` once per step; this callback hands the module a
``step_callback`` that advances the bar (``PosteriorModule.predict_step`` passes it on).
"""
from __future__ import annotations

import sys

import lightning.pytorch as pl
from tqdm.auto import tqdm


class SamplingProgress(pl.Callback):
    def __init__(self, num_steps: int, enabled: bool = True):
        self.num_steps, self.enabled = num_steps, enabled
        self._bar = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        show = self.enabled and trainer.is_global_zero
        self._bar = tqdm(total=int(sum(trainer.num_predict_batches)) * self.num_steps, desc="sampling", unit="step",
                         disable=not show, file=sys.stderr)
        pl_module.step_callback = lambda info: self._bar.update(1)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bar.close()
        pl_module.step_callback = None
