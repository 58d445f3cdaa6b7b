"""ScorePriorModule and DiffpostModule: specs in hyper-parameters, noise streams, the optimiser
schedule, evaluation metrics and sampling, checked against closed forms where one exists."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from callbacks import PredictionWriter, read_predictions
from datamodules import Ellipses, InverseProblemDataModule
from diffpost.config import build
from diffpost.nets import UNet
from diffpost.operators import Denoising
from lightning_modules.metrics import IndexedMean
from lightning_modules.prior import ScorePriorModule


def tiny_net() -> UNet:
    return UNet(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[])


def tiny_dm(batch_size: int = 4, n_val: int = 5, size: int = 16, length: int = 40) -> InverseProblemDataModule:
    return InverseProblemDataModule(Ellipses(size=size, length=length), Denoising((1, size, size)), sigma_y=0.1,
                                    batch_size=batch_size, n_val=n_val, n_test=3)


def cpu_trainer(tmp_path, **kw) -> pl.Trainer:
    kw.setdefault("logger", CSVLogger(str(tmp_path), name="t"))
    return pl.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=str(tmp_path), **kw)


def attach_stub_trainer(module, rank=0, epoch=0):
    module._trainer = SimpleNamespace(global_rank=rank, current_epoch=epoch, estimated_stepping_batches=20)


# ---------------------------------------------------------------- configuration
def test_hyperparameters_are_plain_and_rebuild_the_network():
    module = ScorePriorModule(tiny_net(), lr=1e-3)
    spec = module.hparams["net"]
    assert spec["class_path"] == "diffpost.nets.unet.UNet"
    assert spec["init_args"]["base_channels"] == 8 and spec["init_args"]["channel_mult"] == [1, 2]
    json.dumps(dict(module.hparams))  # only plain types
    rebuilt = build(spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in module.denoiser.net.state_dict().items()}
    # the network is registered once: one set of keys in checkpoints, whatever torch.compile does later
    assert all(k.startswith("denoiser.net.") for k in module.state_dict())


def test_objects_without_a_spec_are_refused():
    class Plain(nn.Module):
        def forward(self, x, c):
            return x

    with pytest.raises(TypeError, match="cannot record how to rebuild `net`"):
        ScorePriorModule(Plain())


@pytest.mark.parametrize("bad", [dict(val_sigmas=[]), dict(val_sigmas=[0.2, -1.0]), dict(num_steps=0),
                                 dict(sigma_min=1.0, sigma_max=0.5), dict(sigma_data=0.0)])
def test_bad_arguments_fail_at_construction(bad):
    with pytest.raises(ValueError):
        ScorePriorModule(tiny_net(), **bad)


# ---------------------------------------------------------------- randomness
def test_training_noise_is_per_rank_per_step_and_reproducible():
    module = ScorePriorModule(tiny_net(), seed=3)
    x0 = torch.zeros(4, 1, 8, 8)

    def draw(rank, epoch, batch_idx):
        attach_stub_trainer(module, rank, epoch)
        return module.training_noise(x0, batch_idx)

    s0, n0 = draw(0, 0, 5)
    s0b, n0b = draw(0, 0, 5)
    assert torch.equal(s0, s0b) and torch.equal(n0, n0b)
    for other in (draw(1, 0, 5), draw(0, 1, 5), draw(0, 0, 6)):
        assert not torch.equal(n0, other[1]) and not torch.equal(s0, other[0])
    # σ follows the EDM density: ln σ ~ N(-1.2, 1.2²) (loose check on 4000 draws)
    attach_stub_trainer(module)
    big = torch.cat([module.training_noise(torch.zeros(200, 1, 2, 2), b)[0] for b in range(20)]).log()
    assert abs(big.mean().item() + 1.2) < 0.1 and abs(big.std().item() - 1.2) < 0.1


def test_lr_schedule_warmup_then_cosine():
    module = ScorePriorModule(tiny_net(), lr=1e-2, warmup_steps=4, lr_schedule="cosine")
    attach_stub_trainer(module)  # 20 optimiser steps in the run
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and cfg["lr_scheduler"]["interval"] == "step"
    for k in range(21):  # warm-up (k+1)/W, then a cosine over the remaining T − W steps, 0 at k = T
        expected = 1e-2 * ((k + 1) / 4 if k < 4 else 0.5 * (1 + math.cos(math.pi * (k - 4) / (20 - 4))))
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
    module._trainer.estimated_stepping_batches = float("inf")
    with pytest.raises(ValueError, match="max_steps or trainer.max_epochs"):
        module.configure_optimizers()


# ---------------------------------------------------------------- denoiser and sampling against closed forms
def test_untrained_module_is_the_exact_gaussian_denoiser():
    """Zero-initialised output layer: F = 0, so D(x, σ) = σ_d²/(σ² + σ_d²) x, the exact denoiser of
    N(0, σ_d² I) data. Sampling it must then return N(0, σ_d²) samples (mean 0, std 0.5)."""
    module = ScorePriorModule(tiny_net(), num_steps=18).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for s in (0.01, 0.5, 3.0, 80.0):
        expected = 0.25 / (s**2 + 0.25) * x
        assert torch.allclose(module(x, torch.full((3,), s)), expected, rtol=1e-5, atol=1e-6)
    # 64 Heun steps: the discretisation bias of the std is 0.4% here (18 steps: 5.5%)
    samples, nfe = module.sample(256, shape=(1, 8, 8), num_steps=64)
    assert nfe == 2 * 64 - 1  # Heun: two evaluations per step except the last (σ → 0)
    assert abs(samples.mean().item()) < 0.01
    assert samples.std().item() == pytest.approx(0.5, rel=0.02)
    _, nfe_euler = module.sample(torch.arange(2), shape=(1, 8, 8), sampler="euler", num_steps=5)
    assert nfe_euler == 5


def test_samples_do_not_depend_on_batching():
    module = ScorePriorModule(tiny_net(), num_steps=4).eval()
    whole, _ = module.sample(torch.arange(6), shape=(1, 8, 8), sampler="euler_maruyama")
    parts = torch.cat([module.sample(torch.tensor(ix), shape=(1, 8, 8), sampler="euler_maruyama")[0]
                       for ix in ([0, 1, 2], [3], [4, 5])])
    assert torch.equal(whole, parts)
    other_seed, _ = module.sample(torch.arange(6), shape=(1, 8, 8), sampler="euler_maruyama", seed=1)
    assert not torch.equal(whole, other_seed)
    with pytest.raises(RuntimeError, match="image shape unknown"):
        module.sample(2)


# ---------------------------------------------------------------- evaluation metrics
def test_indexed_mean_counts_each_item_once():
    m = IndexedMean()
    m.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 2]))
    m.update(torch.tensor([1.0, 2.0, 10.0]), torch.tensor([0, 1, 3]))  # 0 and 1 again: padding repeats
    assert m.compute().item() == pytest.approx((1 + 2 + 3 + 10) / 4)
    m.reset()
    with pytest.raises(ValueError, match="no values"):
        m.compute()
    with pytest.raises(ValueError, match="3 values for 2 indices"):
        m.update(torch.ones(3), torch.arange(2))


def _validate(tmp_path, batch_size: int, module) -> dict[str, float]:
    trainer = cpu_trainer(tmp_path / f"b{batch_size}")
    (out,) = trainer.validate(module, datamodule=tiny_dm(batch_size=batch_size), verbose=False)
    return out


def test_validation_metrics_do_not_depend_on_the_batch_size(tmp_path):
    module = ScorePriorModule(tiny_net(), val_sigmas=[0.1, 0.5])
    a, b = _validate(tmp_path, 2, module), _validate(tmp_path, 5, module)
    assert set(a) == {"val/denoise_psnr_sigma0.1", "val/denoise_psnr_sigma0.5", "val/loss"}
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6)
    # the untrained denoiser shrinks: PSNR must fall as the noise grows
    assert a["val/denoise_psnr_sigma0.1"] > a["val/denoise_psnr_sigma0.5"]


def test_short_fit_improves_denoising(tmp_path):
    module = ScorePriorModule(tiny_net(), lr=3e-3, val_sigmas=[0.2])
    before = _validate(tmp_path, 4, module)["val/denoise_psnr_sigma0.2"]
    trainer = cpu_trainer(tmp_path / "fit", max_steps=30, gradient_clip_val=1.0, limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_dm(batch_size=8, length=100))
    after = _validate(tmp_path, 4, module)["val/denoise_psnr_sigma0.2"]
    assert after > before + 1.0, (before, after)


# ---------------------------------------------------------------- predict
def test_predict_writes_one_sample_per_test_item(tmp_path):
    module = ScorePriorModule(tiny_net(), num_steps=3, sampler="euler")
    dm = tiny_dm(batch_size=2)
    trainer = cpu_trainer(tmp_path, callbacks=[PredictionWriter(str(tmp_path / "pred"))], logger=False)
    trainer.predict(module, datamodule=dm, return_predictions=False)
    pred = read_predictions(str(tmp_path / "pred"))
    assert pred["index"].tolist() == list(dm.split_indices["test"])
    assert pred["samples"].shape == (3, 1, 16, 16)
    expected, _ = module.sample(pred["index"], shape=(1, 16, 16))  # same per-index seeds
    assert torch.allclose(pred["samples"], expected)
    assert (tmp_path / "pred" / "samples_rank0.png").exists()


@pytest.mark.slow
def test_compile_flag_trains_and_keeps_checkpoint_keys(tmp_path):
    """torch.compile (a GPU setting in the configs) works with EMA and leaves state_dict keys alone,
    so compiled and plain runs share checkpoints. Slow: inductor compiles C++ on CPU."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    module = ScorePriorModule(tiny_net(), compile=True, val_sigmas=[0.2])
    trainer = cpu_trainer(tmp_path, max_steps=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                          callbacks=[EMAWeightAveraging(decay=0.9)])
    trainer.fit(module, datamodule=tiny_dm())
    assert module._compiled and trainer.global_step == 2
    assert set(module.state_dict()) == set(ScorePriorModule(tiny_net()).state_dict())
    assert math.isfinite(trainer.callback_metrics["val/denoise_psnr_sigma0.2"].item())
