"""Callbacks: reconstruction metrics against scikit-image on closed-form reconstructions, posterior
samplers plugged in through ``sample_posterior``, EMA weights in use whatever the callback order,
image grids, prediction files and the W&B mode logic."""
from __future__ import annotations

import math
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
import yaml
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import callbacks
from callbacks import ImageLogger, PredictionWriter, ReconstructionMetrics, read_predictions
from callbacks.loggers import DiffpostWandbLogger, slurm_run_id, wandb_logged_in
from datamodules import Ellipses, InverseProblemDataModule
from diffpost.nets import UNet
from diffpost.operators import Denoising
from diffpost.posterior.base import PosteriorMethod, PriorModel
from lightning_modules.base import DiffpostModule
from lightning_modules.prior import ScorePriorModule
from lightning_modules.reconstruct import PosteriorSampling, Tikhonov

SIZE = 16


def tiny_dm(n_val: int = 6, batch_size: int = 4) -> InverseProblemDataModule:
    return InverseProblemDataModule(Ellipses(size=SIZE, length=40), Denoising((1, SIZE, SIZE)), sigma_y=0.2,
                                    batch_size=batch_size, n_val=n_val, n_test=4)


def tiny_prior() -> ScorePriorModule:
    return ScorePriorModule(UNet(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[]),
                            val_sigmas=[0.2], num_steps=3)


def trainer(tmp_path, callbacks_, **kw) -> pl.Trainer:
    kw.setdefault("logger", CSVLogger(str(tmp_path), name="t"))
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path), callbacks=callbacks_, **kw)


def unit_np(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] → [0, 1] (clipped), one (H, W) float64 array per image."""
    return ((x.double() + 1) / 2).clamp(0, 1)[:, 0].numpy()


def skimage_means(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    a, b = unit_np(x_hat), unit_np(x)
    p = [peak_signal_noise_ratio(t, e, data_range=1.0) for t, e in zip(b, a)]
    s = [structural_similarity(t, e, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
         for t, e in zip(b, a)]
    return float(np.mean(p)), float(np.mean(s))


def val_items(dm, n):
    ds = dm.dataset("val")
    ds.prepare()
    items = [ds[k] for k in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in ("x", "y", "index")}


# ---------------------------------------------------------------- ReconstructionMetrics
def test_tikhonov_metrics_match_scikit_image(tmp_path):
    """Denoising (A = I): Tikhonov is ``y / (1 + σ_y²/τ²)``; logged values are means of per-image
    PSNR/SSIM as scikit-image computes them."""
    dm = tiny_dm()
    cb = ReconstructionMetrics(Tikhonov(prior_std=0.5), n_images=5)
    t = trainer(tmp_path, [cb])
    (out,) = t.validate(tiny_prior(), datamodule=dm, verbose=False)
    batch = val_items(dm, 5)
    expected_psnr, expected_ssim = skimage_means(batch["y"] / (1 + 0.2**2 / 0.5**2), batch["x"])
    assert out["val/tikhonov/psnr"] == pytest.approx(expected_psnr, abs=1e-3)
    assert out["val/tikhonov/ssim"] == pytest.approx(expected_ssim, abs=1e-4)
    # shown in the progress bar too
    assert {"val/tikhonov/psnr", "val/tikhonov/ssim"} <= set(t.progress_bar_metrics)


class RecordingMethod(PosteriorMethod):
    """A stand-in posterior method whose 'samples' are a known function of y: ``Aᵀy + shift_s + w``."""

    def __init__(self, calls: list | None = None):
        self.calls = [] if calls is None else calls

    def sample(self, run):
        w = run.model.denoiser.w
        self.calls.append(dict(n_samples=run.n_samples, num_steps=run.num_steps, n_generators=len(run.generator),
                               sigma_y=run.sigma_y, w=float(w), grad=torch.is_grad_enabled()))
        shifts = torch.linspace(-0.1, 0.1, run.n_samples).repeat(run.y.shape[0]).view(-1, 1, 1, 1)
        return run.repeat(run.operator.adjoint(run.y)) + shifts + w.detach()


class PosteriorStandIn(DiffpostModule):
    """A module with the posterior interface (``posterior_model``, ``default_posterior_method``)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []
        self.method = RecordingMethod(self.calls)

    def posterior_model(self) -> PriorModel:
        return PriorModel(x_shape=(1, SIZE, SIZE), denoiser=self)

    def default_posterior_method(self) -> RecordingMethod:
        return self.method

    def training_step(self, batch, batch_idx):
        return -self.w  # the weight grows by lr each step (SGD)

    def validation_step(self, batch, batch_idx):
        pass

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_posterior_sampling_plugs_in_through_sample_posterior(tmp_path):
    dm, module = tiny_dm(), PosteriorStandIn()
    recon = PosteriorSampling(n_samples=3, num_steps=7, seed=5)
    (out,) = trainer(tmp_path, [ReconstructionMetrics(recon, n_images=4)]).validate(module, datamodule=dm, verbose=False)
    (call,) = module.calls
    assert call["n_samples"] == 3 and call["num_steps"] == 7 and call["n_generators"] == 4 * 3
    assert call["sigma_y"] == 0.2
    batch = val_items(dm, 4)
    expected, _ = skimage_means(batch["y"], batch["x"])  # the posterior mean of the stand-in is Aᵀy = y
    assert out["val/posterior/psnr"] == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("ema_first", [True, False])
def test_reconstructions_use_the_ema_weights_whatever_the_callback_order(tmp_path, ema_first):
    module = PosteriorStandIn()
    ema, recon = EMAWeightAveraging(decay=0.5), ReconstructionMetrics(PosteriorSampling(n_samples=1), n_images=2)
    t = trainer(tmp_path, [ema, recon] if ema_first else [recon, ema], max_steps=3, limit_val_batches=1,
                num_sanity_val_steps=0)
    t.fit(module, datamodule=tiny_dm(batch_size=12))  # one epoch of 3 steps, then validation
    # raw weights after each step: 0.1, 0.2, 0.3; EMA (first update copies): 0.1, 0.15, 0.225
    (call,) = module.calls
    assert call["w"] == pytest.approx(0.225, abs=1e-6)
    assert call["grad"] is False  # reconstructions run under no_grad (samplers enable it locally)


def test_every_n_epochs_and_test_split(tmp_path):
    module = PosteriorStandIn()
    cb = ReconstructionMetrics(PosteriorSampling(n_samples=1), n_images=2, every_n_epochs=2)
    t = trainer(tmp_path, [cb], max_epochs=3, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0)
    t.fit(module, datamodule=tiny_dm())
    assert len(module.calls) == 2  # epochs 0 and 2
    (out,) = t.test(module, datamodule=tiny_dm(), verbose=False)
    assert "test/posterior/psnr" in out


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_images"):
        ReconstructionMetrics(n_images=0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        ImageLogger(every_n_epochs=0)
    with pytest.raises(ValueError, match="prior_std"):
        Tikhonov(prior_std=0.0)


# ---------------------------------------------------------------- ImageLogger
def test_image_logger_grid_rows(tmp_path):
    dm, module = tiny_dm(), tiny_prior()
    t = trainer(tmp_path, [ImageLogger(n_images=3, sample_steps=2)], max_epochs=1, limit_train_batches=1,
                limit_val_batches=1, num_sanity_val_steps=0)
    t.fit(module, datamodule=dm)
    (png,) = list(Path(t.log_dir, "images").glob("*.png"))
    grid = np.asarray(Image.open(png)).astype(np.float64) / 255
    cell = SIZE + 1  # padding 1
    assert grid.shape[:2] == (4 * cell + 1, 3 * cell + 1)  # truth, Aᵀy, reconstruction, samples
    items = val_items(dm, 3)
    x, y = items["x"], items["y"]
    for c in range(3):
        truth = grid[1:1 + SIZE, 1 + c * cell:1 + c * cell + SIZE, 0]
        assert np.abs(truth - unit_np(x)[c]).max() < 1 / 255 + 1e-9
        # Aᵀy = y (denoising) min-max scaled per image: catches a row normalised over the whole grid
        back = grid[1 + cell:1 + cell + SIZE, 1 + c * cell:1 + c * cell + SIZE, 0]
        yc = y[c, 0].double().numpy()
        assert np.abs(back - (yc - yc.min()) / (yc.max() - yc.min())).max() < 1 / 255 + 1e-9


def test_image_logger_shows_the_ucos_one_call_estimate(tmp_path):
    """UCoS runs log images too: truth | Aᵀy | D_θ(b, σ_max) with b = Aᵀy/σ_y² (the one-call MMSE
    estimate, computed here by hand for A = I), no unconditional-sample row."""
    from diffpost.posterior.ucos import UCoSMMSE
    from lightning_modules.ucos import UCoSModule

    dm = tiny_dm()
    module = UCoSModule(UNet(base_channels=8, channel_mult=[1], num_res_blocks=1, attn_levels=[]),
                        Denoising((1, SIZE, SIZE)), sigma_y=0.2)
    logger_cb = ImageLogger(n_images=2, reconstructor=PosteriorSampling(method=UCoSMMSE(), n_samples=1), log_samples=False)
    t = trainer(tmp_path, [logger_cb], max_steps=1, val_check_interval=1, limit_val_batches=1, num_sanity_val_steps=0)
    t.fit(module, datamodule=dm)
    (png,) = list(Path(t.log_dir, "images").glob("*.png"))
    grid = np.asarray(Image.open(png)).astype(np.float64) / 255
    cell = SIZE + 1
    assert grid.shape[:2] == (3 * cell + 1, 2 * cell + 1)
    y = val_items(dm, 2)["y"]
    with torch.no_grad():
        mmse = module.aux(y / 0.2**2, torch.full((2,), module.hparams.sigma_max))
    for c in range(2):
        row = grid[1 + 2 * cell:1 + 2 * cell + SIZE, 1 + c * cell:1 + c * cell + SIZE, 0]
        assert np.abs(row - unit_np(mmse)[c]).max() < 1 / 255 + 1e-6


# ---------------------------------------------------------------- predictions
def test_prediction_files_merge_in_index_order(tmp_path):
    for rank, idx in ((0, [4, 0, 2]), (1, [1, 3])):
        torch.save({"index": torch.tensor(idx), "samples": torch.tensor(idx, dtype=torch.float32)[:, None] * 10},
                   tmp_path / f"predictions_rank{rank}.pt")
    merged = read_predictions(str(tmp_path))
    assert merged["index"].tolist() == [0, 1, 2, 3, 4]
    assert merged["samples"][:, 0].tolist() == [0, 10, 20, 30, 40]
    torch.save({"index": torch.tensor([0]), "samples": torch.zeros(1, 1)}, tmp_path / "predictions_rank2.pt")
    with pytest.raises(ValueError, match="duplicated"):
        read_predictions(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        read_predictions(str(tmp_path / "nowhere"))


def test_prediction_writer_is_atomic_and_plain(tmp_path):
    writer = PredictionWriter(str(tmp_path), png=False)
    fake = type("T", (), {"global_rank": 0, "is_global_zero": True})()
    outs = [{"index": torch.tensor([0, 1]), "samples": torch.ones(2, 1, 4, 4), "nfe": torch.tensor(3)},
            {"index": torch.tensor([2]), "samples": torch.zeros(1, 1, 4, 4), "nfe": torch.tensor(3)}]
    writer.write_on_epoch_end(fake, None, [outs], None)
    data = torch.load(tmp_path / "predictions_rank0.pt", weights_only=True)
    assert data["index"].tolist() == [0, 1, 2] and data["nfe"].item() == 6
    assert [p.name for p in tmp_path.iterdir()] == ["predictions_rank0.pt"]  # no temporary file left


# ---------------------------------------------------------------- loggers and packaging
def test_wandb_mode_offline_unless_logged_in(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert not wandb_logged_in()
    assert DiffpostWandbLogger(save_dir=str(tmp_path))._offline is True
    assert DiffpostWandbLogger(save_dir=str(tmp_path), mode="online")._offline is False
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logged_in()
    assert DiffpostWandbLogger(save_dir=str(tmp_path))._offline is False
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment wins (tests, CI)
    assert DiffpostWandbLogger(save_dir=str(tmp_path), mode="online")._offline is True


SLURM_KEYS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "WANDB_RUN_ID", "WANDB_SWEEP_ID")


def test_wandb_run_id_comes_from_the_slurm_job(tmp_path, monkeypatch):
    """A requeued SLURM job keeps its job id: the W&B run id derived from it continues the run."""
    assert slurm_run_id({}) is None
    assert slurm_run_id({"SLURM_JOB_ID": "4242"}) == "slurm-4242"
    # array tasks: the array's job id and the task id (every task its own run, stable over requeues)
    assert slurm_run_id({"SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7"}) == "slurm-4242_7"
    # inside a W&B sweep the agent chooses the run id (one job may run many trials)
    assert slurm_run_id({"SLURM_JOB_ID": "4242", "WANDB_SWEEP_ID": "abc"}) is None
    assert slurm_run_id({"SLURM_JOB_ID": "4242", "WANDB_RUN_ID": "xyz"}) is None
    for key in SLURM_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    init = DiffpostWandbLogger(save_dir=str(tmp_path))._wandb_init
    assert init["id"] == "slurm-4242" and init["resume"] == "allow"
    assert DiffpostWandbLogger(save_dir=str(tmp_path), id="mine")._wandb_init["id"] == "mine"
    assert DiffpostWandbLogger(save_dir=str(tmp_path), id_from_slurm=False)._wandb_init.get("id") is None


def test_wandb_disabled_in_the_environment_stays_disabled(tmp_path, monkeypatch):
    """WandbLogger(offline=True) would switch WANDB_MODE to dryrun and write run files."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = DiffpostWandbLogger(save_dir=str(tmp_path), mode="offline")
    assert logger._wandb_init["mode"] == "disabled" and os.environ["WANDB_MODE"] == "disabled"


def test_logged_config_has_the_cli_config_and_the_network_spec(tmp_path, monkeypatch):
    """The W&B run config gets the full config.yaml and the module's network spec (Lightning's own
    hyper-parameter logging sends the __init__ arguments before the network is replaced by its spec)."""
    from lightning.pytorch.loggers import WandbLogger

    from lightning_modules.cli import DiffpostCLI

    logged: list[dict] = []
    monkeypatch.setattr(WandbLogger, "log_hyperparams", lambda self, params: logged.append(dict(params)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[1]
    cli = DiffpostCLI(args=[
        "fit", "--config", str(root / "configs" / "experiments" / "quickstart_prior.yaml"),
        "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", "--data.init_args.n_train=2",
        "--data.init_args.batch_size=2", "--model.init_args.net.init_args.base_channels=8"])
    full = [p for p in logged if "cli" in p]
    assert len(full) == 1, [sorted(p) for p in logged]
    params = full[0]
    saved = yaml.safe_load(Path(cli.trainer.log_dir, "config.yaml").read_text())
    assert params["cli"] == saved  # the config.yaml LightningCLI saves, whole
    assert params["cli"]["model"]["init_args"]["net"]["init_args"]["base_channels"] == 8
    assert params["net"]["class_path"] == "diffpost.nets.unet.UNet"
    assert params["net"]["init_args"]["base_channels"] == 8
    assert params["n_parameters"] == sum(p.numel() for p in cli.model.parameters())


# ---------------------------------------------------------------- learning-rate schedule
class LinearStandIn(DiffpostModule):
    """One weight, AdamW through ``build_optimizer``; records the rate each optimiser step uses."""

    def __init__(self, warmup_steps: int = 4, lr_schedule: str = "cosine", seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.rates: list[float] = []

    def training_step(self, batch, batch_idx):
        self.rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return (self.w * batch["x"].mean()) ** 2

    def configure_optimizers(self):
        return self.build_optimizer(0.1, 0.0, self.hparams.warmup_steps, self.hparams.lr_schedule)


class StopAt(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = trainer.global_step >= self.step


def schedule_formula(t: int, lr: float, warmup: int, total: int, cosine: bool) -> float:
    """docs: lr (t+1)/W during the warm-up, then lr or lr ½(1 + cos(π (t − W)/(T − W)))."""
    if t < warmup:
        return lr * (t + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) if cosine else lr


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_schedule_matches_the_formula_and_resumes(tmp_path, schedule):
    """Catches a warm-up off by one step, a cosine over the wrong length, and a resumed run that
    restarts its schedule (the scheduler state must come back from the checkpoint)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    total, warmup = 10, 4
    dm = tiny_dm(batch_size=2)
    full = LinearStandIn(warmup, schedule)
    trainer(tmp_path / "full", [], max_steps=total, limit_val_batches=0).fit(full, datamodule=dm)
    expected = [schedule_formula(t, 0.1, warmup, total, schedule == "cosine") for t in range(total)]
    assert full.rates == pytest.approx(expected, abs=1e-12)
    # the same run stopped after step 6 (its checkpoint written), then resumed from that checkpoint
    first = LinearStandIn(warmup, schedule)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=6, save_top_k=-1)
    trainer(tmp_path / "first", [StopAt(6), ckpt], max_steps=total, limit_val_batches=0,
            enable_checkpointing=True).fit(first, datamodule=dm)
    (path,) = list((tmp_path / "ckpt").glob("*.ckpt"))
    resumed = LinearStandIn(warmup, schedule)
    trainer(tmp_path / "resumed", [], max_steps=total, limit_val_batches=0).fit(resumed, datamodule=dm,
                                                                              ckpt_path=str(path))
    assert first.rates + resumed.rates == pytest.approx(expected, abs=1e-12)


def test_callbacks_package_is_ours():
    """PyPI has an unrelated ``callbacks`` package; ours must be the one imported."""
    root = Path(__file__).resolve().parents[1]
    assert Path(callbacks.__file__).resolve().is_relative_to(root)
    assert os.path.basename(os.path.dirname(callbacks.__file__)) == "callbacks"


def test_calibration_is_logged_when_the_reconstructor_has_samples(tmp_path):
    """The stand-in's 3 samples per pixel are ``y − 0.1, y, y + 0.1`` (denoising: A = I), so the central
    p-interval (linear quantiles) is ``[y − 0.1p, y + 0.1p]`` and its coverage is the fraction of pixels
    with ``|x − y| ≤ 0.1p``, computed here with numpy. Catches swapped quantiles, a wrong level → coverage
    key, or coverage logged for reconstructors without samples (Tikhonov)."""
    dm, module = tiny_dm(), PosteriorStandIn()
    cbs = [ReconstructionMetrics(PosteriorSampling(n_samples=3, num_steps=2), n_images=4),
           ReconstructionMetrics(Tikhonov(), n_images=4)]
    (out,) = trainer(tmp_path, cbs).validate(module, datamodule=dm, verbose=False)
    batch = val_items(dm, 4)
    gap = (batch["x"] - batch["y"]).abs().double().numpy()
    for level in (50, 80, 90, 95):
        expected = float(np.mean([np.mean(g <= 0.1 * level / 100 + 1e-9) for g in gap]))
        assert out[f"val/posterior/coverage{level}"] == pytest.approx(expected, abs=1e-6)
    assert not any(k.startswith("val/tikhonov/coverage") for k in out)
