"""DDP on CPU: 2 processes (gloo) started by ``torchrun`` in a subprocess (never plain ``ddp``
re-executing pytest). This file is also the worker those processes run.

Checked: a short fit finishes; its EMA checkpoint loads in one process; the logged validation
metrics (denoising PSNR, reconstruction PSNR/SSIM) equal the single-process values on the same
data, with a validation set that does not divide the world size (the sampler pads it); training
noise differs across ranks and a rerun draws it again exactly; predictions cover every test item
once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "experiments" / "quickstart_prior.yaml"
N_VAL, N_TEST = 5, 5  # odd: DistributedSampler pads validation to 6, predict shards without padding


def cli_args(out: Path, max_steps: int) -> list[str]:
    return ["--config", str(BASE), "--trainer.logger", str(ROOT / "configs" / "logger" / "csv.yaml"),
            f"--trainer.default_root_dir={out}", f"--trainer.max_steps={max_steps}", "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.num_sanity_val_steps=0",
            "--model.init_args.net.init_args.base_channels=8", "--model.init_args.net.init_args.channel_mult=[1,2]",
            "--model.init_args.net.init_args.attn_levels=[]", "--model.init_args.num_steps=3",
            "--data.init_args.images.init_args.size=16", "--data.init_args.operator.init_args.shape=[1,16,16]",
            f"--data.init_args.n_val={N_VAL}", f"--data.init_args.n_test={N_TEST}", "--data.init_args.n_train=12",
            "--data.init_args.batch_size=2"]


# ------------------------------------------------------------------------------------- the worker
def worker(out: Path, max_steps: int, validate_and_predict: bool) -> None:
    import lightning.pytorch as pl

    from callbacks import PredictionWriter
    from lightning_modules.cli import DiffpostCLI

    class NoiseRecorder(pl.Callback):
        """The (σ, n) each training step of this rank draws (``training_noise`` is what training_step uses)."""

        def __init__(self):
            self.sigma, self.noise, self.index = [], [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sigma, noise = pl_module.training_noise(batch["x"], batch_idx)
            self.sigma.append(sigma)
            self.noise.append(noise)
            self.index.append(batch["index"])

    args = cli_args(out, max_steps) + ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]
    if not validate_and_predict:
        args.append("--trainer.limit_val_batches=0")
    cli = DiffpostCLI(args=args, run=False)
    recorder = NoiseRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    rank = cli.trainer.global_rank
    torch.save({"sigma": torch.stack(recorder.sigma), "noise": torch.stack(recorder.noise),
                "index": torch.stack(recorder.index), "world_size": cli.trainer.world_size},
               out / f"noise_rank{rank}.pt")
    if validate_and_predict:
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
        (out / f"metrics_rank{rank}.json").write_text(json.dumps(metrics))
        cli.trainer.callbacks.append(PredictionWriter(str(out / "predictions"), png=False))
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)


# ------------------------------------------------------------------------------------- the tests
def torchrun(out: Path, max_steps: int, validate_and_predict: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           str(out), str(max_steps), str(int(validate_and_predict))]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    torchrun(out, max_steps=3, validate_and_predict=True)
    return out


def test_ddp_fit_finishes_and_ema_checkpoint_loads_in_one_process(ddp_run):
    from lightning_modules.checkpoint import load_module
    from lightning_modules.prior import ScorePriorModule

    (last,) = list(ddp_run.rglob("last.ckpt"))
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 3
    module = load_module(last)
    assert isinstance(module, ScorePriorModule)
    for name, value in module.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][name])  # the EMA weights ...
    assert any(not torch.equal(ckpt["state_dict"][n], ckpt["current_model_state"][n]) for n in ckpt["state_dict"])
    samples, _ = module.sample(2)  # ... usable at once, shape from the checkpoint
    assert samples.shape == (2, 1, 16, 16)


def test_ddp_noise_differs_across_ranks_and_is_reproducible(ddp_run, tmp_path):
    r0, r1 = (torch.load(ddp_run / f"noise_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["noise"].shape == r1["noise"].shape == (3, 2, 1, 16, 16)
    assert not torch.equal(r0["noise"][0], r1["noise"][0]) and not torch.equal(r0["sigma"], r1["sigma"])
    assert set(r0["index"].flatten().tolist()).isdisjoint(r1["index"].flatten().tolist())  # data sharded too
    torchrun(tmp_path, max_steps=1, validate_and_predict=False)  # a rerun, one step
    for r, first in ((0, r0), (1, r1)):
        again = torch.load(tmp_path / f"noise_rank{r}.pt", weights_only=True)
        assert torch.equal(again["noise"][0], first["noise"][0]) and torch.equal(again["sigma"][0], first["sigma"][0])


def test_ddp_validation_metrics_equal_single_process(ddp_run, monkeypatch):
    from lightning_modules.cli import DiffpostCLI

    ddp = [json.loads((ddp_run / f"metrics_rank{r}.json").read_text()) for r in (0, 1)]
    assert ddp[0] == ddp[1]  # every rank logs the synced value
    (last,) = list(ddp_run.rglob("last.ckpt"))
    monkeypatch.chdir(ddp_run)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    single = DiffpostCLI(args=["validate", *cli_args(ddp_run / "single", 3), "--trainer.devices=1",
                               f"--ckpt_path={last}"])
    got = {k: float(v) for k, v in single.trainer.callback_metrics.items()}
    keys = {"val/denoise_psnr_sigma0.2", "val/loss", "val/tikhonov/psnr", "val/tikhonov/ssim"}
    assert keys <= set(ddp[0]) and keys <= set(got)
    for k in ddp[0]:
        assert got[k] == pytest.approx(ddp[0][k], rel=1e-5, abs=1e-6), k


def test_ddp_predictions_cover_every_test_item_once(ddp_run):
    from callbacks import read_predictions

    files = sorted((ddp_run / "predictions").glob("predictions_rank*.pt"))
    assert len(files) == 2
    sizes = [torch.load(f, weights_only=True)["index"].numel() for f in files]
    assert sorted(sizes) == [2, 3]  # 5 items over 2 ranks: no padding duplicates
    pred = read_predictions(str(ddp_run / "predictions"))
    assert pred["index"].tolist() == list(range(N_VAL, N_VAL + N_TEST))
    assert pred["samples"].shape == (N_TEST, 1, 16, 16) and torch.isfinite(pred["samples"]).all()


if __name__ == "__main__":  # under torchrun: python -m torch.distributed.run ... test_ddp.py OUT STEPS VALIDATE
    sys.path.insert(0, str(ROOT))
    worker(Path(sys.argv[1]), int(sys.argv[2]), bool(int(sys.argv[3])))
