"""A training process for the kill/resume and signal tests (not a test module).

    python tests/resume_worker.py MARKER_DIR PAUSE_STEP -- <scripts/train.py arguments>

Runs ``scripts/train.py``'s ``main`` with one extra callback that, when training reaches global step
``PAUSE_STEP`` (i.e. after that step's checkpoint was written), writes ``MARKER_DIR/paused_rank<r>``
(holding its pid) and waits: forever, so a test can SIGKILL the process at a known point, or until a
signal arrives (``GracefulStop`` has set its flag), so a test can check what SIGTERM/SIGINT do there.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def marker(marker_dir: Path, rank: int) -> Path:
    return marker_dir / f"paused_rank{rank}"


def wait_for(paths: list[Path], proc, timeout: float = 300.0) -> None:
    """Until every path exists; fails with the process output if it exits first."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if proc.poll() is not None:
            out = proc.communicate()[0] if proc.stdout else ""
            raise AssertionError(f"the training process exited ({proc.returncode}) before pausing:\n{(out or '')[-4000:]}")
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
