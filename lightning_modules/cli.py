"""``DiffpostCLI``: LightningCLI with our conventions (fit/validate/test/predict, --print_config,
layered --config files, dotted overrides as W&B sweep agents pass them)."""
from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from lightning_modules.base import DiffpostModule


class DiffpostCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("model_class", DiffpostModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("datamodule_class", pl.LightningDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        # seeds network init and dataloader workers; noise draws use their own seeded generators
        kwargs.setdefault("seed_everything_default", 0)
        # the resolved config is saved beside the logs; a rerun into the same dir replaces it
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)
