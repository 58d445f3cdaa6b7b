"""``PosteriorModule``: a checkpoint plus any method by ``class_path``, through LightningCLI's ``predict``,
validation callbacks and direct use; the task is checked once, when the module is built."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks import ReconstructionMetrics
from datamodules import Ellipses, InverseProblemDataModule
from diffpost.nets.unet import UNet
from diffpost.operators import CT, Blur
from diffpost.posterior.base import OperatorMismatchError
from diffpost.posterior.dps import DPS
from diffpost.posterior.ucos import UCoS
from lightning_modules.posterior import PosteriorModule
from lightning_modules.prior import ScorePriorModule
from lightning_modules.reconstruct import PosteriorSampling
from lightning_modules.train_cli import main as train_main

REPO = Path(__file__).resolve().parents[1]
SIZE = 16


def _dm(op=None) -> InverseProblemDataModule:
    op = op or CT((1, SIZE, SIZE), n_angles=8)
    return InverseProblemDataModule(Ellipses(size=SIZE, length=24), op, sigma_y=0.05, batch_size=4, n_val=4, n_test=4)


@pytest.fixture(scope="module")
def prior_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("posterior_module") / "prior.ckpt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = ScorePriorModule(UNet(1, 1, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[]),
                                  num_steps=3, val_sigmas=[0.2])
        trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(module, _dm())
        trainer.save_checkpoint(path)
    return path


def test_cli_predict_runs_any_method_with_the_data_task_linked(prior_ckpt, tmp_path):
    """``train.py predict --model PosteriorModule --model.method configs/method/dps.yaml``: the CLI links
    the data's operator and σ_y into the module (as for UCoS training) and the prediction writer gets
    samples, indices and the cost. Catches: nested checkpoint loading that picks up the CLI's
    hyper-parameters (a KeyError), or predict outputs a writer cannot save."""
    data = tmp_path / "data.yaml"
    data.write_text(
        "class_path: datamodules.InverseProblemDataModule\ninit_args:\n"
        f"  images: {{class_path: datamodules.Ellipses, init_args: {{size: {SIZE}, length: 24}}}}\n"
        f"  operator: {{class_path: diffpost.operators.CT, init_args: {{shape: [1, {SIZE}, {SIZE}], n_angles: 8}}}}\n"
        "  sigma_y: 0.05\n  n_val: 2\n  n_test: 3\n  batch_size: 2\n")
    code = train_main(["predict", "--model", "lightning_modules.posterior.PosteriorModule",
                       f"--model.checkpoint={prior_ckpt}", f"--model.method={REPO / 'configs/method/dps.yaml'}",
                       "--model.num_steps=2", "--model.n_samples=2", "--data", str(data),
                       "--trainer.callbacks+=callbacks.PredictionWriter", f"--trainer.callbacks.output_dir={tmp_path / 'pred'}",
                       "--trainer.logger=false", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"])
    assert code == 0
    pred = torch.load(tmp_path / "pred" / "predictions_rank0.pt", weights_only=True)
    assert pred["samples"].shape == (3, 2, 1, SIZE, SIZE) and pred["index"].tolist() == [2, 3, 4]  # test follows 2 val items
    # DPS: one A and one Aᵀ per chain and step, summed over the 2 batches: 3 measurements × 2 samples × 2 steps
    assert int(pred["forward"]) == int(pred["adjoint"]) == 3 * 2 * 2
    assert int(pred["vjp"]) == 2 * 2  # per chain: 2 steps, summed over 2 batches


def test_task_is_checked_once_when_the_module_is_built(prior_ckpt):
    blur32 = Blur((1, 32, 32), kernel_size=5, blur_sigma=1.0)
    with pytest.raises(OperatorMismatchError, match="shape"):  # a prior of another image shape
        PosteriorModule(str(prior_ckpt), DPS(), blur32, 0.05)
    with pytest.raises(OperatorMismatchError, match="UCoS runs on a UCoSModel"):  # a method for another model
        PosteriorModule(str(prior_ckpt), UCoS(), CT((1, SIZE, SIZE), n_angles=8), 0.05)
    with pytest.raises(ValueError, match="needs the task"):
        PosteriorModule(str(prior_ckpt), DPS())
    m = PosteriorModule(str(prior_ckpt), None, CT((1, SIZE, SIZE), n_angles=8), 0.05)
    assert isinstance(m.method, DPS) and m.num_steps == DPS.default_num_steps  # the prior's default: DPS, paper steps


def test_validation_callback_runs_a_prior_based_method_on_a_prior(prior_ckpt, tmp_path):
    """``ReconstructionMetrics(PosteriorSampling(method=DPS(...)))`` on the prior being validated logs
    ``val/dps/psnr``: every method plugs into validation without a module of its own."""
    from lightning_modules.checkpoint import load_module

    prior = load_module(prior_ckpt)
    cb = ReconstructionMetrics(PosteriorSampling(method=DPS(zeta=0.5), n_samples=2, num_steps=2), n_images=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb], default_root_dir=str(tmp_path))
    (out,) = trainer.validate(prior, datamodule=_dm(), verbose=False)
    assert "val/dps/psnr" in out and torch.isfinite(torch.tensor(out["val/dps/psnr"]))
