"""``scripts/train.py`` on bad input and signals: every refusal is one line on stderr naming the
problem, a non-zero exit status (2), and no file written (no config.yaml, no log or checkpoint folder);
``--debug``/``DIFFPOST_DEBUG=1`` give the traceback; SIGTERM/SIGINT during training write a checkpoint
and exit with 128 + signal.

Bad-input cases run ``main`` in this process (fast); the signal cases need a real process. Bugs these
catch: tracebacks instead of a message, a refusal found only after the log folder or config.yaml was
written, a resume that trains on with a checkpoint for another operator/σ_y/shape/module, a signal
that exits 0 or stops without a checkpoint.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from resume_worker import (ROOT, assert_same_checkpoint, ckpt_dir, marker, prior_args, start_victim, train_here, ucos_args,
                           wait_for)

EXPERIMENTS = ROOT / "configs" / "experiments"


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} | {
        str(p.relative_to(root)) + "/": b"" for p in root.rglob("*") if p.is_dir()}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working folder (relative output paths land here) with a previous run's file in it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("DIFFPOST_DEBUG", raising=False)
    (work / "keep.txt").write_text("a previous run's file")
    return work


def refused(args: list[str], capsys, workdir: Path, first_line: str) -> str:
    """Run train.py's main; assert exit status 2, one stderr line starting ``train.py: error: `` and
    containing ``first_line``, nothing written under ``workdir``. Returns the line."""
    from lightning_modules.train_cli import main

    before = tree(workdir)
    capsys.readouterr()
    status = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    assert len(err) == 1 and err[0].startswith("train.py: error: "), err
    assert first_line in err[0], err[0]
    assert tree(workdir) == before
    return err[0]


def tiny_ucos(workdir: Path, *extra: str) -> list[str]:
    return ["fit", *ucos_args(workdir / "runs", 4), *extra]


@pytest.fixture(scope="module")
def ucos_checkpoint(tmp_path_factory) -> Path:
    """last.ckpt of a 4-step UCoS run (sparse-view CT on 8² images, σ_y from the quickstart config)."""
    run = tmp_path_factory.mktemp("ucos_run") / "run"
    run.mkdir()
    os.environ.setdefault("WANDB_MODE", "disabled")
    train_here(ucos_args(run, 4))
    return ckpt_dir(run, 0) / "last.ckpt"


# ------------------------------------------------------------------------------- configuration values
@pytest.mark.parametrize("override, message", [
    ("--data.init_args.sigma_y=-1", "sigma_y must be positive and finite, got -1.0"),
    ("--trainer.max_steps=-5", "`max_steps` must be a non-negative integer or -1"),
    ("--data.init_args.batch_size=0", "InverseProblemDataModule: batch_size must be an integer >= 1, got 0"),
    ("--data.init_args.batch_size=x", "data.init_args.batch_size: Expected a <class 'int'>. Got value: x"),
    ("--model.init_args.learning_rate=0.1", "model.init_args: Option 'learning_rate' is not accepted"),
    ("--trainer.max_stepz=3", "unrecognized arguments: --trainer.max_stepz=3"),
    ("--data.init_args.n_val=1000000000", "n_val + n_test + n_train = "),
    ("--model.init_args.net.init_args.base_channels=x",
     "model.init_args.net.init_args.base_channels: Expected a <class 'int'>. Got value: x"),
    ("--model.init_args.sigma_y=0.7", "model.init_args.sigma_y = 0.7 differs from data.init_args.sigma_y"),
])
def test_bad_configuration_values(override, message, capsys, workdir):
    refused(tiny_ucos(workdir, override), capsys, workdir, message)


def test_default_config_with_wandb_logger_writes_nothing(capsys, workdir):
    """The prior quickstart as shipped (CSV + W&B loggers, relative runs/ folder): bug caught, the W&B
    logger making its folder when built, before the run is known to start."""
    refused(["fit", "--config", str(EXPERIMENTS / "quickstart_prior.yaml"), "--data.init_args.sigma_y=-1"], capsys,
            workdir, "sigma_y must be a finite non-negative number")


def test_missing_config_file(capsys, workdir):
    refused(["fit", "--config", str(workdir / "nope.yaml")], capsys, workdir, "nope.yaml")


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_image_folder_missing_or_empty(kind, capsys, workdir, tmp_path):
    root = tmp_path / "images"
    if kind == "empty":
        root.mkdir()
        (root / "notes.txt").write_text("not an image")
    message = "does not exist" if kind == "missing" else "no images with extensions"
    line = refused(["fit", "--config", str(EXPERIMENTS / "imagefolder_prior.yaml"),
                    f"--data.init_args.images.init_args.root={root}", "--trainer.accelerator=cpu",
                    "--trainer.precision=32-true", "--model.init_args.compile=false",
                    "--trainer.logger=" + str(ROOT / "configs/logger/csv.yaml")], capsys, workdir, message)
    assert str(root) in line


# ------------------------------------------------------------------------------------ output folders
@pytest.mark.parametrize("folder, message", [
    ("keep.txt/runs", "cannot be created: "),  # a file where a folder must go
    ("/proc/diffpost_runs", "is not writable"),  # a file system this process cannot write to
])
def test_unwritable_output_folder(folder, message, capsys, workdir):
    line = refused(tiny_ucos(workdir, f"--trainer.default_root_dir={folder}"), capsys, workdir, message)
    assert "trainer.default_root_dir" in line


def test_unwritable_checkpoint_folder(capsys, workdir):
    refused(tiny_ucos(workdir, "--trainer.logger.init_args.save_dir=keep.txt/logs"), capsys, workdir,
            "CSVLogger save_dir")


# ---------------------------------------------------------------------------------------- checkpoints
def test_bad_checkpoint_files(capsys, workdir, ucos_checkpoint):
    refused(tiny_ucos(workdir, f"--ckpt_path={workdir / 'missing.ckpt'}"), capsys, workdir, "checkpoint not found")
    truncated = workdir / "truncated.ckpt"
    truncated.write_bytes(ucos_checkpoint.read_bytes()[:3000])
    refused(tiny_ucos(workdir, f"--ckpt_path={truncated}"), capsys, workdir, "corrupt")
    flipped = workdir / "flipped.ckpt"
    data = bytearray(ucos_checkpoint.read_bytes())
    mid = len(data) // 2
    data[mid - 2048:mid + 2048] = bytes(b ^ 0xFF for b in data[mid - 2048:mid + 2048])
    flipped.write_bytes(bytes(data))
    refused(tiny_ucos(workdir, f"--ckpt_path={flipped}"), capsys, workdir, "fails its CRC check")


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
@pytest.mark.parametrize("change, message", [
    (["--data.init_args.operator=diffpost.operators.Blur", "--data.init_args.operator.init_args.shape=[1,8,8]",
      "--data.init_args.operator.init_args.kernel_size=3"],
     "data operator: CT "),
    (["--data.init_args.sigma_y=0.25"], "data sigma_y: "),
    (["--data.init_args.images.init_args.size=16", "--data.init_args.operator.init_args.shape=[1,16,16]"],
     "data x_shape: [1, 8, 8] in the checkpoint, [1, 16, 16] here"),
], ids=["operator", "sigma_y", "image-shape"])
def test_checkpoint_for_another_task_is_refused_before_writing(subcommand, change, message, capsys, workdir,
                                                               ucos_checkpoint):
    """Resuming (fit) or validating a CT UCoS checkpoint with data for another operator, σ_y or image
    shape: the model would be used for a task it was not trained for."""
    args = [subcommand, *ucos_args(workdir / "runs", 8)[:], *change, f"--ckpt_path={ucos_checkpoint}"]
    line = refused(args, capsys, workdir, message)
    assert str(ucos_checkpoint) in line and "was made for another task or model" in line


def test_checkpoint_of_another_module_is_refused(capsys, workdir, ucos_checkpoint):
    args = ["fit", "--config", str(EXPERIMENTS / "quickstart_prior.yaml"),
            "--trainer.logger=" + str(ROOT / "configs/logger/csv.yaml"), f"--ckpt_path={ucos_checkpoint}"]
    refused(args, capsys, workdir, "holds a UCoSModule, but this run builds a ScorePriorModule")


def test_debug_shows_the_traceback(capsys, workdir, monkeypatch):
    from lightning_modules.train_cli import main

    with pytest.raises(ValueError, match="sigma_y must be positive and finite"):
        main([*tiny_ucos(workdir, "--data.init_args.sigma_y=-1"), "--debug"])
    monkeypatch.setenv("DIFFPOST_DEBUG", "1")
    with pytest.raises(ValueError, match="sigma_y must be positive and finite"):
        main(tiny_ucos(workdir, "--data.init_args.sigma_y=-1"))


# -------------------------------------------------------------------------------------------- signals
def _signalled(tmp: Path, signum: int, pause_step: int, final_step: int):
    proc = start_victim(tmp, ucos_args(tmp, final_step), pause_step)
    wait_for([marker(tmp, 0)], proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, err.strip().splitlines()


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    """SIGTERM (scancel, docker stop) while training: the step in progress finishes, last.ckpt is written
    at that step, one line says where, and the exit status is 128 + 15."""
    run = tmp_path / "run"
    run.mkdir()
    status, err = _signalled(run, signal.SIGTERM, pause_step=4, final_step=10)
    last = ckpt_dir(run, 0) / "last.ckpt"
    assert status == 128 + signal.SIGTERM, err[-20:]
    assert err[-1] == (f"train.py: interrupted by SIGTERM after step 5; checkpoint saved to {last} "
                       f"(resume with --ckpt_path {last})")
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert not (ckpt_dir(run, 0) / "step=006.ckpt").exists()


@pytest.mark.slow
def test_sigint_checkpoint_resumes_bit_identical(tmp_path):
    """Ctrl-C mid-epoch: status 130, and resuming the checkpoint it wrote (step 5, an odd step that no
    ModelCheckpoint wrote) ends exactly like an uninterrupted run."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    straight.mkdir(), run.mkdir()
    status, err = _signalled(run, signal.SIGINT, pause_step=4, final_step=10)
    assert status == 128 + signal.SIGINT and "interrupted by SIGINT after step 5" in err[-1], err[-20:]
    train_here(ucos_args(straight, 10))
    train_here([*ucos_args(run, 10), f"--ckpt_path={ckpt_dir(run, 0) / 'last.ckpt'}"])
    assert_same_checkpoint(ckpt_dir(straight, 0) / "last.ckpt", ckpt_dir(run, 1) / "last.ckpt", 10)


@pytest.mark.slow
def test_sigterm_under_ddp_stops_every_rank_at_one_step(tmp_path):
    """2 gloo processes under torchrun, SIGTERM to each (as srun/torchrun deliver it): both ranks finish
    the same step (the stop decision is reduced across ranks, so none waits forever in a collective),
    rank 0 writes last.ckpt at that step, and the job fails (non-zero) instead of reporting success."""
    run = tmp_path / "run"
    run.mkdir()
    args = [*ucos_args(run, 10), "--data.init_args.n_train=12", "--data.init_args.batch_size=2",
            "--trainer.val_check_interval=2", "--trainer.strategy=ddp", "--trainer.devices=2"]
    proc = start_victim(run, args, pause_step=2, nproc=2)
    markers = [marker(run, r) for r in range(2)]
    wait_for(markers, proc)
    for m in markers:
        os.kill(int(m.read_text()), signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err[-3000:]
    assert "interrupted by SIGTERM after step 3" in err, err[-3000:]
    assert torch.load(ckpt_dir(run, 0) / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_failure_after_the_start_keeps_its_traceback(workdir, monkeypatch):
    """A TypeError raised by training code (a bug, not bad input) must not be dressed up as a one-line
    input error with exit status 2: main raises TrainingFailed with the original as its cause."""
    from lightning_modules.prior import ScorePriorModule
    from lightning_modules.train_cli import TrainingFailed, main

    def broken(self, batch, batch_idx):
        raise TypeError("a bug in training_step")

    monkeypatch.setattr(ScorePriorModule, "training_step", broken)
    with pytest.raises(TrainingFailed, match="training failed: TypeError: a bug in training_step") as info:
        main(["fit", *prior_args(workdir / "runs", 2)])
    assert isinstance(info.value.__cause__, TypeError)
