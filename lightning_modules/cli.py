"""``DiffpostCLI``: LightningCLI with our conventions (fit/validate/test/predict, --print_config,
layered --config files, dotted overrides as W&B sweep agents pass them).

Additions to LightningCLI:
- task arguments given once: a model whose ``__init__`` takes ``operator`` and/or ``sigma_y`` (UCoS)
  receives the DataModule's ``data.init_args.operator``/``sigma_y`` through jsonargparse's
  ``link_arguments`` (a model without the parameter is left alone; an explicit model value that differs
  from the data's is an error: the model would be trained for another task than the data's);
- the run's full config (the ``config.yaml`` LightningCLI saves) and the module's complete
  hyper-parameters, network and operator specs included, go to every logger (W&B's run config);
- ``--ckpt_path`` is checked before anything is built or written (readable, ``weights_only``-safe),
  with a message that says what is wrong with the file.
"""
from __future__ import annotations

import json
from typing import Any

import lightning.pytorch as pl
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightning_modules.base import DiffpostModule
from lightning_modules.checkpoint import safe_load, same_task_value

#: model ``__init__`` parameters filled from ``data.init_args`` when the model has them
TASK_ARGUMENTS = ("operator", "sigma_y")
#: ``ckpt_path`` values Lightning resolves itself
_SPECIAL_CKPT = ("last", "best", "hpc")


def _plain(v: Any) -> Any:
    """A parsed value as plain JSON types, without jsonargparse's ``__path__`` bookkeeping."""
    v = v.as_dict() if isinstance(v, Namespace) else v
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if not k.startswith("__")}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _same_task(name: str):
    """The link's value: the data's, unless the model was given a different one (then an error)."""

    def link(data_value: Any, model_value: Any) -> Any:
        mine, theirs = _plain(model_value), _plain(data_value)
        if mine is not None and not same_task_value(mine, theirs):  # a checkpoint's spec may spell it differently
            raise ValueError(
                f"model.init_args.{name} = {json.dumps(mine)} differs from data.init_args.{name} = "
                f"{json.dumps(theirs)}: the model would be trained for another task than the data's. "
                f"Set it only in the data section (the model receives it from there)."
            )
        return data_value

    link.__name__ = f"same_{name}"
    return link


class LoggedConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the run folder (LightningCLI's behaviour) and logs, on rank 0, the full
    CLI config as ``cli`` and the module's hyper-parameters including the network/operator specs that
    Lightning's own hyper-parameter logging leaves out (it logs the ``__init__`` arguments as given,
    before objects are replaced by their specs)."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        params = {"cli": yaml.safe_load(self.parser.dump(self.config, skip_none=False))}
        params.update(_plain(dict(pl_module.hparams)))
        params["n_parameters"] = sum(p.numel() for p in pl_module.parameters())
        for logger in trainer.loggers:
            logger.log_hyperparams(params)


class DiffpostCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("model_class", DiffpostModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("datamodule_class", pl.LightningDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        # seeds network init and dataloader workers; noise draws use their own seeded generators
        kwargs.setdefault("seed_everything_default", 0)
        # the resolved config is saved in the (per-run, versioned) log dir and logged to the loggers
        kwargs.setdefault("save_config_callback", LoggedConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model's own value is a source too, so that an explicit different value is reported, not
        # silently replaced. jsonargparse skips a link whose source or target the chosen model class
        # does not have (ScorePriorModule has no operator/sigma_y).
        for name in TASK_ARGUMENTS:
            parser.link_arguments((f"data.init_args.{name}", f"model.init_args.{name}"), f"model.init_args.{name}",
                                  compute_fn=_same_task(name), apply_on="parse")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        self._check_ckpt_path()

    def _check_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and str(ckpt) not in _SPECIAL_CKPT and not str(ckpt).startswith("registry"):
            safe_load(ckpt, mmap=True)  # CheckpointError naming the problem
