"""Exact resume: a ``scripts/train.py`` process killed with SIGKILL after a given checkpoint, resumed
from ``last.ckpt``, ends with exactly the checkpoint of an uninterrupted run (every tensor: raw and EMA
weights, optimiser and scheduler state, loop counters, the data loader's position), for the UCoS
module and the prior, mid-epoch and at an epoch boundary, in one process and with 2-process DDP.

The victim is a real subprocess (``tests/resume_worker.py``) that pauses when it reaches the chosen
step, so the kill lands at a known point; reference and resumed runs run in this process where they
can (CPU, one thread: bit-identical to a subprocess) to keep the fast case fast.

Bugs these catch: a resumed epoch that restarts its data order (the loader position not saved or not
applied, or applied twice), training noise or dropout drawn from a stream that does not depend on the
position, and an epoch-end checkpoint resumed into the same epoch.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resume_worker import (assert_same_checkpoint, ckpt_dir, env, marker, prior_args, start_victim, train_here,
                           ucos_args, wait_for)

ROOT = Path(__file__).resolve().parents[1]


def kill_when_paused(proc: subprocess.Popen, tmp: Path, step: int, nproc: int = 1) -> Path:
    """SIGKILL the victim (every rank, and the launcher) once it waits at ``step``, after the checkpoint of
    that step exists; returns that checkpoint's ``last.ckpt``."""
    markers = [marker(tmp, r) for r in range(nproc)]
    wait_for([*markers, ckpt_dir(tmp, 0) / f"step={step:03d}.ckpt"], proc)
    for m in markers:
        os.kill(int(m.read_text()), signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    last = ckpt_dir(tmp, 0) / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == step
    return last


def check_kill_and_resume(tmp_path: Path, make_args, pause_step: int, final_step: int, nproc: int = 1) -> None:
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    straight.mkdir(), crashed.mkdir()
    victim = start_victim(crashed, make_args(crashed, final_step), pause_step, nproc)
    if nproc == 1:  # meanwhile, the uninterrupted run
        train_here(make_args(straight, final_step))
    else:
        run_torchrun(straight, make_args(straight, final_step), nproc)
    last = kill_when_paused(victim, crashed, pause_step, nproc)
    resumed = [*make_args(crashed, final_step), f"--ckpt_path={last}"]
    train_here(resumed) if nproc == 1 else run_torchrun(crashed, resumed, nproc)
    assert_same_checkpoint(ckpt_dir(straight, 0) / "last.ckpt", ckpt_dir(crashed, 1) / "last.ckpt", final_step)
    # the test could not pass by accident: training moved the weights after the kill
    at_kill, final = (torch.load(p, weights_only=True) for p in (last, ckpt_dir(crashed, 1) / "last.ckpt"))
    assert any(not torch.equal(at_kill["state_dict"][k], final["state_dict"][k]) for k in final["state_dict"])


def run_torchrun(tmp: Path, args: list[str], nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "scripts" / "train.py"), "fit", *args, "--trainer.strategy=ddp", f"--trainer.devices={nproc}"]
    proc = subprocess.run(cmd, cwd=tmp, env=env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]


# ------------------------------------------------------------------------------------------ the cases
def test_ucos_killed_mid_epoch_resumes_bit_identical(tmp_path):
    """Killed after step 4 of a 6-step epoch (between validations at steps 3 and 6), resumed to step 10:
    the resumed epoch must start at its 5th batch, and epoch 1 must follow in its own order."""
    check_kill_and_resume(tmp_path, ucos_args, pause_step=4, final_step=10)


@pytest.mark.slow
def test_ucos_killed_at_an_epoch_boundary_resumes_bit_identical(tmp_path):
    check_kill_and_resume(tmp_path, ucos_args, pause_step=6, final_step=10)


@pytest.mark.slow
@pytest.mark.parametrize("pause_step", [6, 8], ids=["mid-epoch-1", "epoch-boundary"])
def test_prior_killed_resumes_bit_identical(tmp_path, pause_step):
    """The prior with EMA, a warm-up schedule and dropout (global RNG), 4 steps per epoch: killed in the
    middle of its second epoch, or at the end of it."""
    check_kill_and_resume(tmp_path, prior_args, pause_step=pause_step, final_step=12)


@pytest.mark.slow
def test_ddp_two_processes_killed_mid_epoch_resume_bit_identical(tmp_path):
    """2 gloo processes under torchrun: each rank takes its share of the (seed, epoch) order; killed
    after step 2 of a 3-step epoch (12 images, 2 per rank per step), resumed under torchrun."""
    def args(tmp, steps):
        return [*ucos_args(tmp, steps), "--data.init_args.n_train=12", "--data.init_args.batch_size=2",
                "--trainer.val_check_interval=2", "--trainer.strategy=ddp", "--trainer.devices=2"]

    check_kill_and_resume(tmp_path, args, pause_step=2, final_step=6, nproc=2)
