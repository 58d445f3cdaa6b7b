"""Tiny training runs for the kill/resume and signal tests (not a test module): the CLI arguments of a
shrunk UCoS and prior quickstart, and a training process that pauses at a chosen step:

    python tests/resume_worker.py MARKER_DIR PAUSE_STEP -- <scripts/train.py arguments>

Runs ``scripts/train.py``'s ``main`` with one extra callback that, when training reaches global step
``PAUSE_STEP`` (i.e. after that step's checkpoint was written), writes ``MARKER_DIR/paused_rank<r>``
(holding its pid) and waits: forever, so a test can SIGKILL the process at a known point, or until a
signal arrives (``GracefulStop`` has set its flag), so a test can check what SIGTERM/SIGINT do there.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

CALLBACKS = ("- class_path: lightning.pytorch.callbacks.EMAWeightAveraging\n  init_args: {decay: 0.9}\n"
             "- class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
             "  init_args: {save_last: true, every_n_train_steps: 2, save_top_k: -1, filename: '{step:03d}'}\n")


def ucos_args(tmp: Path, max_steps: int) -> list[str]:
    """The UCoS quickstart shrunk: sparse-view CT on 8² images, 6 steps of 4 images per epoch,
    validation every 3 steps (inside the epoch, as in the quickstart)."""
    return ["--config", str(ROOT / "configs/experiments/quickstart_ucos.yaml"), f"--trainer.max_steps={max_steps}",
            "--trainer.max_time=null", "--trainer.val_check_interval=3", "--trainer.log_every_n_steps=1",
            "--model.init_args.net.init_args.base_channels=8", "--model.init_args.net.init_args.channel_mult=[1,2]",
            "--data.init_args.images.init_args.size=8", "--data.init_args.operator.init_args.shape=[1,8,8]",
            "--data.init_args.operator.init_args.n_angles=4", "--data.init_args.n_val=4", "--data.init_args.n_test=2",
            "--data.init_args.n_train=24", "--data.init_args.batch_size=4", *_common(tmp)]


def prior_args(tmp: Path, max_steps: int) -> list[str]:
    """The prior quickstart shrunk: 8² images, a U-Net with dropout (global-RNG draws), 4 steps per epoch."""
    return ["--config", str(ROOT / "configs/experiments/quickstart_prior.yaml"), f"--trainer.max_steps={max_steps}",
            "--trainer.max_epochs=-1", "--model.init_args.net.init_args.base_channels=8",
            "--model.init_args.net.init_args.channel_mult=[1,2]", "--model.init_args.net.init_args.attn_levels=[]",
            "--model.init_args.net.init_args.dropout=0.2", "--model.init_args.warmup_steps=3",
            "--model.init_args.val_sigmas=[0.5]", "--data.init_args.images.init_args.size=8",
            "--data.init_args.operator.init_args.shape=[1,8,8]", "--data.init_args.n_val=2",
            "--data.init_args.n_test=2", "--data.init_args.n_train=8", "--data.init_args.batch_size=2", *_common(tmp)]


def _common(tmp: Path) -> list[str]:
    callbacks = tmp.parent / "callbacks.yaml"
    callbacks.write_text(CALLBACKS)
    return ["--trainer.logger=" + str(ROOT / "configs/logger/csv.yaml"), f"--trainer.logger.init_args.save_dir={tmp}",
            "--trainer.logger.init_args.name=run", f"--trainer.default_root_dir={tmp}", f"--trainer.callbacks={callbacks}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0"]


def ckpt_dir(tmp: Path, version: int) -> Path:
    return tmp / "run" / f"version_{version}" / "checkpoints"


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT)}


def start_victim(tmp: Path, args: list[str], pause_step: int, nproc: int = 1) -> subprocess.Popen:
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    cmd = [*launcher, str(Path(__file__).resolve()), str(tmp), str(pause_step), "--", "fit", *args]
    return subprocess.Popen(cmd, cwd=tmp, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def train_here(args: list[str]) -> None:
    from lightning_modules.train_cli import main

    assert main(["fit", *args]) == 0


def tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, by its path in the nested dicts/lists."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def assert_same_checkpoint(a_path: Path, b_path: Path, final_step: int) -> None:
    a, b = (torch.load(p, weights_only=True) for p in (a_path, b_path))
    assert a["global_step"] == b["global_step"] == final_step
    # no partial epoch counted twice: epochs done, batches of this epoch, optimiser steps. (Lightning's
    # ready/started epoch counters and validation totals differ after an epoch-end resume: its bookkeeping.)
    la, lb = a["loops"]["fit_loop"], b["loops"]["fit_loop"]
    assert a["epoch"] == b["epoch"]
    for key in ("epoch_loop.batch_progress", "epoch_loop.state_dict", "epoch_loop.automatic_optimization.optim_progress"):
        assert la[key] == lb[key], key
    for part in ("total", "current"):
        for count in ("processed", "completed"):
            assert la["epoch_progress"][part][count] == lb["epoch_progress"][part][count]
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 20
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ, e.g. {differ[:5]}"
    assert a["InverseProblemDataModule"] == b["InverseProblemDataModule"]


def marker(marker_dir: Path, rank: int) -> Path:
    return marker_dir / f"paused_rank{rank}"


def wait_for(paths: list[Path], proc, timeout: float = 300.0) -> None:
    """Until every path exists; fails with the process output if it exits first."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if proc.poll() is not None:
            out = "".join(o or "" for o in proc.communicate())
            raise AssertionError(f"the training process exited ({proc.returncode}) before pausing:\n{out[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {[p.name for p in paths]} within {timeout} s")
        time.sleep(0.02)


def _run(marker_dir: Path, pause_step: int, args: list[str]) -> int:
    import lightning.pytorch as pl

    from lightning_modules import train_cli

    class PauseAtStep(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step != pause_step:
                return
            stop = next(cb for cb in trainer.callbacks if isinstance(cb, train_cli.GracefulStop))
            marker(marker_dir, trainer.global_rank).write_text(str(os.getpid()))
            while stop.signum is None:
                time.sleep(0.01)

    original = train_cli.TrainCLI.instantiate_trainer

    def instantiate_trainer(self, **kwargs):
        trainer = original(self, **kwargs)
        trainer.callbacks.append(PauseAtStep())
        return trainer

    train_cli.TrainCLI.instantiate_trainer = instantiate_trainer
    return train_cli.main(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sep = sys.argv.index("--")
    sys.exit(_run(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[sep + 1:]))
