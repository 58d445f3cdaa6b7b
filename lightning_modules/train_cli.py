"""The training command (``scripts/train.py``): ``DiffpostCLI`` plus what a batch job needs.

- **Bad input** (a config value, a missing image folder, a corrupt checkpoint, a checkpoint made for
  another model or task, an output folder that cannot be written) is found before anything is
  written and reported as one line (``script_support.run_main``; ``--debug`` or ``DIFFPOST_DEBUG=1``
  for the traceback). Lightning's start-up messages are held back until these checks pass.
- **SIGTERM / SIGINT** during training (``scancel``, ``docker stop``, Ctrl-C): the current step
  finishes, a checkpoint is written where ``ModelCheckpoint`` keeps ``last.ckpt`` (so the usual
  ``--ckpt_path .../last.ckpt`` resumes it exactly), and the process exits with ``128 + signal``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from jsonargparse import Namespace

from datamodules.inverse_problem import task_record
from diffpost.config import build, class_path, resolve_class
from lightning_modules.checkpoint import check_checkpoint_matches, safe_load
from lightning_modules.cli import _SPECIAL_CKPT, DiffpostCLI
from lightning_modules.script_support import (INPUT_ERRORS, Interrupted, debug_requested, install_signal_handlers,
                                              run_main)

SUBCOMMANDS = ("fit", "validate", "test", "predict")
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


class TrainingInterrupted(Interrupted):
    """A signal stopped training at a step boundary, after a checkpoint was written."""

    def __init__(self, signum: int, step: int, path: str):
        super().__init__(signum)
        self.step, self.path = step, path

    def __str__(self) -> str:
        return (f"interrupted by {signal.Signals(self.signum).name} after step {self.step}; checkpoint saved to "
                f"{self.path} (resume with --ckpt_path {self.path})")


class GracefulStop(Callback):
    """Turns SIGTERM/SIGINT during ``fit`` into: finish the step, save a checkpoint, raise ``TrainingInterrupted``.

    The handlers only set a flag; the stop happens in ``on_train_batch_end`` (after the optimiser step
    and the EMA update, which run before this callback), where a checkpoint is what an
    ``every_n_train_steps`` checkpoint would be, and resumes exactly. A signal during validation stops
    at the next training step. Under DDP every rank stops at the same step (the flag is reduced).
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _flag(self, signum, frame) -> None:
        self.signum = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after Lightning's own SIGTERM handler is installed: ours replaces it during training, so that
        # it never raises in the middle of validation (with EMA weights swapped in)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._flag)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        raise TrainingInterrupted(self.signum or signal.SIGTERM, trainer.global_step, path)

    @staticmethod
    def checkpoint_path(trainer: pl.Trainer) -> str:
        """``last.ckpt`` of the first ``ModelCheckpoint`` that has a folder, else ``interrupted.ckpt`` in
        the trainer's ``default_root_dir``."""
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
        return os.path.join(trainer.default_root_dir, "interrupted.ckpt")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._previous = {}


def _config_class(model: Any) -> str:
    """The full class path a parsed ``model`` section builds (a re-export names its defining module)."""
    path = model.get("class_path") if isinstance(model, Namespace) else None
    return class_path(resolve_class(path)) if isinstance(path, str) else str(path)


def _config_task(data: Any) -> dict[str, Any] | None:
    """The ``task_record`` of a parsed ``data`` section with ``operator`` and ``sigma_y`` (built from the
    operator's spec alone: images are not loaded); ``None`` for other data sections."""
    args = data.get("init_args") if isinstance(data, Namespace) else None
    operator, sigma_y = (args.get("operator"), args.get("sigma_y")) if isinstance(args, Namespace) else (None, None)
    if not isinstance(operator, Namespace) or not isinstance(sigma_y, (int, float)):
        return None
    return task_record(build(operator.as_dict()), sigma_y)


def _root_cause(e: BaseException) -> BaseException:
    """The innermost explicit cause: jsonargparse wraps an ``__init__``'s ``ValueError`` in a long
    'does not validate against any of the Union subtypes' message; the cause is the useful line."""
    while e.__cause__ is not None:
        e = e.__cause__
    return e


_NOISE_LINES = ("Given value", "Subtypes:", "Errors:", "Does not validate", "Expected a <class 'NoneType'>")


def argument_message(text: str) -> str:
    """jsonargparse's nested report ('Parser key "model": Does not validate against any of the Union
    subtypes ... Errors: - Problem with given class_path ...: Parser key "net": ...') as one line:
    the dotted key and the innermost message, e.g. ``model.init_args.net.init_args.base_channels:
    Expected a <class 'int'>. Got value: x``."""
    path, message = [], ""
    for raw in text.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or line.startswith(_NOISE_LINES):
            continue
        if line.startswith('Parser key "') and line.endswith('":'):
            path.append(line[len('Parser key "'):-2])
        elif line.startswith("Problem with given class_path") and line.endswith(":"):
            path.append("init_args")
        else:
            message = line
    if not message:
        return " ".join(text.split())
    return f"{'.'.join(path)}: {message}" if path else message


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """``OSError`` unless files can be created in ``folder`` (or in the folder it would be created in).
    Probes with an anonymous temporary file: nothing is left behind, and root on a read-only mount fails too."""
    p = Path(folder).expanduser().absolute()
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {str(p)!r} cannot be created: {str(existing)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise PermissionError(f"{what} {str(p)!r} is not writable ({str(existing)!r}: {e.strerror})") from None


def output_folders(trainer: pl.Trainer) -> list[tuple[str, str]]:
    """``(what, folder)`` for everything a run writes: root dir, loggers, checkpoints, writers."""
    out = [("trainer.default_root_dir", trainer.default_root_dir)]
    out += [(f"{type(lg).__name__} save_dir", lg.save_dir) for lg in trainer.loggers if getattr(lg, "save_dir", None)]
    for cb in trainer.callbacks:
        for attr in ("dirpath", "output_dir"):
            value = getattr(cb, attr, None)
            if isinstance(value, (str, os.PathLike)):
                out.append((f"{type(cb).__name__} {attr}", value))
    return out


class _HeldLogs(logging.Handler):
    """Keeps Lightning's start-up messages ('Seed set to 0', 'GPU available: ...') until the run is
    known to start, so that a refused run prints only its error line."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
                       for name in _LIGHTNING_LOGGERS}
        for name in _LIGHTNING_LOGGERS:
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = [self], False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def done(self, replay: bool) -> None:
        if self._saved is None:
            return
        for name, (handlers, propagate) in self._saved.items():
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = handlers, propagate
        self._saved = None
        for record in self.records if replay else ():
            logging.getLogger(record.name).handle(record)


class TrainingFailed(RuntimeError):
    """A failure after the run started (a bug, a NaN, a device error): reported with its traceback."""


class TrainCLI(DiffpostCLI):
    """``DiffpostCLI`` with one-line argument errors, a preflight before any subcommand runs and
    ``GracefulStop`` on the trainer."""

    last_started = False  # whether the latest TrainCLI got past its preflight (main reads it)

    def __init__(self, *args, **kwargs):
        no_exit = {"exit_on_error": False}  # argument errors raise (one line) instead of printing usage
        kwargs.setdefault("parser_kwargs", {**no_exit, **{sub: dict(no_exit) for sub in SUBCOMMANDS}})
        self._held = _HeldLogs()
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._held.done(replay=False)  # a refused run ends here; a started one released them already

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            raise ValueError(argument_message(str(e))) from None
        self._checkpoint = None
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and str(ckpt) not in _SPECIAL_CKPT and not str(ckpt).startswith("registry"):  # Lightning resolves these
            # before LightningCLI replaces the model section with the checkpoint's hyper-parameters:
            # the model class and task the config asks for are compared with the file's
            self._checkpoint = safe_load(ckpt, mmap=True)
            section = self.config[sub]
            check_checkpoint_matches(self._checkpoint, ckpt, module_class=_config_class(section.get("model")),
                                     data_task=_config_task(section.get("data")), resuming=sub == "fit")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as e:  # noqa: BLE001 - reported as its root cause, one line
            cause = _root_cause(e)
            raise (cause if isinstance(cause, INPUT_ERRORS) else ValueError(str(cause))) from None

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(GracefulStop())
        return trainer

    def preflight(self, subcommand: str) -> None:
        """Everything that would otherwise fail after the run has written its first file."""
        for what, folder in output_folders(self.trainer):
            check_writable(folder, what)
        if self._checkpoint is not None:
            task = self.datamodule.task_record() if hasattr(self.datamodule, "task_record") else None
            check_checkpoint_matches(self._checkpoint, self.config[subcommand].get("ckpt_path"),
                                     module_class=class_path(self.model), model=self.model, data_task=task,
                                     resuming=subcommand == "fit")
            self._checkpoint = None  # Lightning loads the file itself
        check = getattr(self.datamodule, "check", None)
        if callable(check):
            check()
        self._held.done(replay=True)
        TrainCLI.last_started = True  # from here on a failure is not bad input


def _before(subcommand: str):
    def hook(self: TrainCLI) -> None:
        self.preflight(subcommand)
        parent = getattr(super(TrainCLI, self), f"before_{subcommand}", None)
        if callable(parent):
            parent()

    hook.__name__ = f"before_{subcommand}"
    return hook


for _sub in SUBCOMMANDS:
    setattr(TrainCLI, f"before_{_sub}", _before(_sub))


def main(args: list[str] | None = None) -> int:
    """``scripts/train.py``: returns the exit status (0, 2 for bad input, 128 + signal when interrupted)."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]

    def body() -> None:
        TrainCLI.last_started = False
        try:
            with warnings.catch_warnings():  # we pass sys.argv (less --debug) as args on purpose
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
                TrainCLI(args=argv)
        except SIGTERMException:  # Lightning's own stop (a SystemExit with status 0): report it as a signal
            raise Interrupted(signal.SIGTERM) from None
        except INPUT_ERRORS as e:
            if TrainCLI.last_started:  # not bad input: keep the traceback (exit status 1)
                raise TrainingFailed(f"training failed: {type(e).__name__}: {e}") from e
            raise

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    install_signal_handlers()  # until training starts (GracefulStop takes over), a signal stops at once
    try:
        return run_main("train.py", body, debug=debug)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
