"""Callbacks: reconstruction metrics against scikit-image on closed-form reconstructions, posterior
samplers plugged in through ``sample_posterior``, EMA weights in use whatever the callback order,
image grids, prediction files and the W&B mode logic."""
from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import callbacks
from callbacks import ImageLogger, PredictionWriter, ReconstructionMetrics, read_predictions
from callbacks.loggers import DiffpostWandbLogger, wandb_logged_in
from datamodules import Ellipses, InverseProblemDataModule
from diffpost.nets import UNet
from diffpost.operators import Denoising
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
    return pl.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=str(tmp_path), callbacks=callbacks_, **kw)


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
    (out,) = trainer(tmp_path, [cb]).validate(tiny_prior(), datamodule=dm, verbose=False)
    batch = val_items(dm, 5)
    expected_psnr, expected_ssim = skimage_means(batch["y"] / (1 + 0.2**2 / 0.5**2), batch["x"])
    assert out["val/tikhonov/psnr"] == pytest.approx(expected_psnr, abs=1e-3)
    assert out["val/tikhonov/ssim"] == pytest.approx(expected_ssim, abs=1e-4)


class PosteriorStandIn(DiffpostModule):
    """The interface posterior-sampling modules implement; its 'samples' are a known function of y."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    def sample_posterior(self, y, *, operator, sigma_y, index, n_samples, num_steps, sampler, seed):
        self.calls.append(dict(index=index.tolist(), n_samples=n_samples, num_steps=num_steps, sampler=sampler,
                               seed=seed, sigma_y=sigma_y, w=float(self.w), grad=torch.is_grad_enabled()))
        shifts = torch.linspace(-0.1, 0.1, n_samples).view(1, -1, 1, 1, 1)
        return {"samples": operator.adjoint(y)[:, None] + shifts + self.w}

    def training_step(self, batch, batch_idx):
        return -self.w  # the weight grows by lr each step (SGD)

    def validation_step(self, batch, batch_idx):
        pass

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_posterior_sampling_plugs_in_through_sample_posterior(tmp_path):
    dm, module = tiny_dm(), PosteriorStandIn()
    recon = PosteriorSampling(n_samples=3, num_steps=7, sampler="euler", seed=5)
    (out,) = trainer(tmp_path, [ReconstructionMetrics(recon, n_images=4)]).validate(module, datamodule=dm, verbose=False)
    (call,) = module.calls
    assert call["index"] == [0, 1, 2, 3] and call["n_samples"] == 3 and call["num_steps"] == 7
    assert call["sampler"] == "euler" and call["seed"] == 5 and call["sigma_y"] == 0.2
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
    assert module.calls[-1]["index"] == [6, 7]  # the first test items follow the 6 validation ones
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
    x = val_items(dm, 3)["x"]
    for c in range(3):
        truth = grid[1:1 + SIZE, 1 + c * cell:1 + c * cell + SIZE, 0]
        assert np.abs(truth - unit_np(x)[c]).max() < 1 / 255 + 1e-9


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


def test_callbacks_package_is_ours():
    """PyPI has an unrelated ``callbacks`` package; ours must be the one imported."""
    root = Path(__file__).resolve().parents[1]
    assert Path(callbacks.__file__).resolve().is_relative_to(root)
    assert os.path.basename(os.path.dirname(callbacks.__file__)) == "callbacks"
