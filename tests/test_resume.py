"""Crash and resume: a training run killed with SIGKILL after its second checkpoint and resumed from
last.ckpt ends with exactly the weights (raw and EMA) and optimiser state of an uninterrupted run.
Each run is its own ``scripts/train.py`` process (CPU, deterministic mode)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "experiments" / "quickstart_prior.yaml"
EPOCHS = 6  # 2 steps each; the kill comes right after the checkpoint of epoch 1


def _write_configs(tmp: Path) -> list[str]:
    # the quickstart experiment, shrunk: 16² images, an 8-channel U-Net, 2 steps of 4 images per epoch
    (tmp / "callbacks.yaml").write_text(
        "- class_path: lightning.pytorch.callbacks.EMAWeightAveraging\n"
        "  init_args: {decay: 0.9}\n"
        "- class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "  init_args: {save_last: true, save_top_k: -1, every_n_epochs: 1, save_on_train_epoch_end: true,"
        " filename: '{epoch:03d}'}\n"
        "- class_path: callbacks.ReconstructionMetrics\n"
        "  init_args: {n_images: 2}\n"
    )
    return ["--config", str(BASE), "--trainer.logger", str(ROOT / "configs" / "logger" / "csv.yaml"),
            "--trainer.callbacks", str(tmp / "callbacks.yaml"), f"--trainer.max_epochs={EPOCHS}",
            "--trainer.deterministic=true", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--model.init_args.net.init_args.base_channels=8", "--model.init_args.net.init_args.channel_mult=[1,2]",
            "--model.init_args.net.init_args.attn_levels=[]", "--model.init_args.warmup_steps=2",
            "--data.init_args.images.init_args.size=16", "--data.init_args.operator.init_args.shape=[1,16,16]",
            "--data.init_args.n_val=2", "--data.init_args.n_test=2", "--data.init_args.n_train=8",
            "--data.init_args.batch_size=4"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _train(cwd: Path, args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), "fit", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _ckpt_dir(cwd: Path, version: int) -> Path:
    return cwd / "runs" / "diffpost" / f"version_{version}" / "checkpoints"


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    args = _write_configs(tmp_path)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    straight.mkdir(), crashed.mkdir()

    uninterrupted = _train(straight, args)
    victim = _train(crashed, args)
    second = _ckpt_dir(crashed, 0) / "epoch=001.ckpt"
    deadline = time.monotonic() + 240
    while not second.exists():
        assert victim.poll() is None, victim.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no second checkpoint within 4 minutes"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    final_name = f"epoch={EPOCHS - 1:03d}.ckpt"
    assert not (_ckpt_dir(crashed, 0) / final_name).exists(), "the run finished before it was killed"
    last = _ckpt_dir(crashed, 0) / "last.ckpt"
    resumed_from = torch.load(last, weights_only=True)["epoch"]
    # usually 0 or 1 (the kill may land before or after last.ckpt is refreshed); later if this
    # process was starved of CPU while the victim ran on: any epoch before the last one will do
    assert 0 <= resumed_from < EPOCHS - 1

    _finish(_train(crashed, [*args, f"--ckpt_path={last}"]))
    _finish(uninterrupted)

    a = torch.load(_ckpt_dir(straight, 0) / "last.ckpt", weights_only=True)
    b = torch.load(_ckpt_dir(crashed, 1) / "last.ckpt", weights_only=True)  # the resumed run's new version dir
    assert a["global_step"] == b["global_step"] == 2 * EPOCHS
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert torch.equal(a["averaging_state"]["n_averaged"], b["averaging_state"]["n_averaged"])
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # a test that could not fail would prove nothing: training did move the weights
    first = torch.load(_ckpt_dir(straight, 0) / "epoch=000.ckpt", weights_only=True)
    assert not all(torch.equal(first["state_dict"][n], a["state_dict"][n]) for n in a["state_dict"])
