"""``DiffpostCLI``: LightningCLI with our conventions (fit/validate/test/predict, --print_config,
layered --config files, dotted overrides as W&B sweep agents pass them).

Additions to LightningCLI:
- task arguments given once: a model whose ``__init__`` takes ``operator`` and/or ``sigma_y`` (UCoS)
  receives the DataModule's ``data.init_args.operator``/``sigma_y`` unless set explicitly (and a
  different explicit value is an error: the model would be trained for another task than the data's);
- ``--ckpt_path`` is checked before anything is built or written (readable, ``weights_only``-safe),
  with a message that says what is wrong with the file.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import sys
from typing import Any

import lightning.pytorch as pl
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from lightning_modules.base import DiffpostModule
from lightning_modules.checkpoint import safe_load

#: model ``__init__`` parameters filled from ``data.init_args`` when not given
TASK_ARGUMENTS = ("operator", "sigma_y")
#: ``ckpt_path`` values Lightning resolves itself
_SPECIAL_CKPT = ("last", "best", "hpc")


def _lenient_context():
    """jsonargparse's lenient mode (required init arguments may be missing); a private API, so an
    absent one degrades to a strict probe (the task link then only works when the probe parses)."""
    try:
        from jsonargparse._common import parser_context

        return parser_context(lenient_check=True)
    except (ImportError, TypeError):  # pragma: no cover - other jsonargparse versions
        return contextlib.nullcontext()


def _plain(v: Any) -> Any:
    """A parsed value as plain JSON types, without jsonargparse's ``__path__`` bookkeeping."""
    v = v.as_dict() if isinstance(v, Namespace) else v
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if not k.startswith("__")}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class DiffpostCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("model_class", DiffpostModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("datamodule_class", pl.LightningDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        # seeds network init and dataloader workers; noise draws use their own seeded generators
        kwargs.setdefault("seed_everything_default", 0)
        # the resolved config is saved in the (per-run, versioned) log dir
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ parsing
    def parse_arguments(self, parser, args) -> None:
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            argv = list(sys.argv[1:] if args is None else args)
            self.config = parser.parse_args(argv + self._task_arguments(parser, argv))
        self._check_ckpt_path()

    def _task_arguments(self, parser, argv: list[str]) -> list[str]:
        """``--model.init_args.operator=...``/``sigma_y=...`` copied from the data section, as extra
        command-line arguments (so they appear in the saved config like any other value)."""
        probe = [a for a in argv if a not in ("-h", "--help") and a.split("=")[0] != "--print_config"]
        try:  # a probe parse; the real parse below reports any error in the arguments
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), _lenient_context():
                cfg = parser.parse_args(probe, _skip_validation=True)
        except SystemExit:
            return []
        sub = cfg.get("subcommand")
        section = cfg.get(sub) if sub else cfg
        model, data = section.get("model"), section.get("data")
        if not isinstance(model, Namespace) or not isinstance(data, Namespace) or not model.get("class_path"):
            return []
        module_name, _, cls_name = model.class_path.rpartition(".")
        try:
            params = inspect.signature(getattr(importlib.import_module(module_name), cls_name).__init__).parameters
        except (ImportError, AttributeError, TypeError, ValueError):
            return []
        extra = []
        for name in TASK_ARGUMENTS:
            theirs = _plain((data.get("init_args") or Namespace()).get(name))
            if name not in params or theirs is None:
                continue
            mine = _plain((model.get("init_args") or Namespace()).get(name))
            if mine is None:
                extra.append(f"--model.init_args.{name}={json.dumps(theirs)}")
            elif mine != theirs:
                parser.error(
                    f"model.init_args.{name} = {json.dumps(mine)} differs from data.init_args.{name} = "
                    f"{json.dumps(theirs)}: the model would be trained for another task than the data's. "
                    f"Set it only in the data section (the model receives it from there)."
                )
        return extra

    def _check_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and str(ckpt) not in _SPECIAL_CKPT and not str(ckpt).startswith("registry"):
            safe_load(ckpt, mmap=True)  # CheckpointError naming the problem
