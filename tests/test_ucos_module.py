"""UCoSModule through Lightning: training step, checkpoint identity, sampling contract."""
import math

import lightning.pytorch as pl
import pytest
import torch

from datamodules import InverseProblemDataModule
from datamodules.sources import Ellipses
from diffpost.nets import UNet
from diffpost.operators import CT, Blur
from lightning_modules.checkpoint import CheckpointError, load_module, safe_load
from lightning_modules.ucos import OperatorMismatchError, UCoSModule


def tiny_net():
    return UNet(base_channels=8, channel_mult=[1, 2], attn_levels=[], num_res_blocks=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pl.seed_everything(0, verbose=False)
    op = CT((1, 16, 16), n_angles=8)
    dm = InverseProblemDataModule(Ellipses(size=16, length=64), op, sigma_y=0.02, batch_size=8, n_val=8, n_test=8)
    model = UCoSModule(tiny_net(), operator=op, sigma_y=0.02)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    path = tmp_path_factory.mktemp("ucos") / "ucos.ckpt"
    trainer.save_checkpoint(path)
    return path, dm, model


def test_checkpoint_records_task_and_loads_weights_only(trained):
    path, dm, model = trained
    ckpt = safe_load(path)  # weights_only=True
    meta = ckpt["diffpost"]
    assert meta["operator_fingerprint"] == dm.operator.fingerprint()
    assert meta["sigma_y"] == 0.02
    assert meta["operator"]["class_path"] == "diffpost.operators.ct.CT"
    assert any(k.startswith("aux.preconditioner.") for k in ckpt["state_dict"])
    loaded = load_module(path, expected=UCoSModule)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.cpu(), b), k


def test_sampling_makes_no_operator_call_in_the_loop(trained):
    path, dm, _ = trained
    model = load_module(path, expected=UCoSModule)
    items = dm.val_subset(3)
    y = torch.stack([d["y"] for d in items])
    op = model.operator
    op.reset_counts()
    with torch.no_grad():
        out = model.sample_posterior(y, n_samples=2, num_steps=4, sampler="euler_maruyama")
    # exactly one Aᵀ per measurement (b = Aᵀy/σ_y²), no forward call at all
    assert dict(op.counts) == {"adjoint": 3}
    assert out["operator_calls"] == {"forward": 0, "adjoint": 3}
    assert out["samples"].shape == (3, 2, 1, 16, 16) and out["nfe"] == 4
    assert torch.isfinite(out["samples"]).all()


def test_samples_do_not_depend_on_batch_composition(trained):
    path, dm, _ = trained
    model = load_module(path, expected=UCoSModule)
    items = dm.val_subset(3)
    y, index = torch.stack([d["y"] for d in items]), torch.stack([d["index"] for d in items])
    with torch.no_grad():
        full = model.sample_posterior(y, index=index, n_samples=2, num_steps=3, sampler="edm", churn=5.0)["samples"]
        one = model.sample_posterior(y[1:2], index=index[1:2], n_samples=2, num_steps=3, sampler="edm", churn=5.0)["samples"]
    assert torch.allclose(full[1:2], one, atol=1e-6)


def test_wrong_operator_sigma_y_or_shape_fail_loudly(trained):
    path, dm, _ = trained
    model = load_module(path, expected=UCoSModule)
    y = torch.stack([d["y"] for d in dm.val_subset(1)])
    with pytest.raises(OperatorMismatchError, match="fingerprint"):
        model.sample_posterior(y, operator=CT((1, 16, 16), n_angles=9), sigma_y=0.02)
    with pytest.raises(OperatorMismatchError, match="sigma_y"):
        model.sample_posterior(y, operator=CT((1, 16, 16), n_angles=8), sigma_y=0.05)
    with pytest.raises(ValueError, match="shape"):
        model.sample_posterior(y[:, :, :3])
    bad = y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.sample_posterior(bad)


def test_checkpoint_for_other_module_type_is_refused(trained, tmp_path):
    path, _, _ = trained
    from lightning_modules.prior import ScorePriorModule

    with pytest.raises(CheckpointError, match="UCoSModule"):
        load_module(path, expected=ScorePriorModule)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_module(corrupt)


def test_mmse_is_one_network_call_and_beats_nothing_silly(trained):
    path, dm, _ = trained
    model = load_module(path, expected=UCoSModule)
    y = torch.stack([d["y"] for d in dm.val_subset(2)])
    with torch.no_grad():
        est = model.mmse(y)
    assert est.shape == (2, 1, 16, 16) and torch.isfinite(est).all()


def test_ucos_loss_at_exact_gaussian_aux_denoiser_is_its_expected_error():
    """The loss the module optimises, evaluated at D*, equals λ·E‖D* − x0‖² (Gaussian, closed form)."""
    from diffpost.priors import GaussianPrior
    from diffpost.random import make_generator
    from diffpost.schedules import edm_loss_weight
    from diffpost.ucos import GaussianAuxiliaryDenoiser, auxiliary_sample

    op = Blur((1, 4, 4), kernel_size=3, blur_sigma=1.0).to(torch.float64)
    d, sigma, sigma_y, n = 16, 0.4, 0.1, 40_000
    g = make_generator(0)
    L = torch.randn(d, d, generator=g, dtype=torch.float64) / 4
    prior = GaussianPrior(torch.zeros(d, dtype=torch.float64), L @ L.T + 0.1 * torch.eye(d, dtype=torch.float64), (1, 4, 4))
    x0 = prior.sample(n, g)
    s = torch.full((n,), sigma, dtype=torch.float64)
    z = auxiliary_sample(x0, s, op, sigma_y, g)
    err = ((GaussianAuxiliaryDenoiser(prior.mean, prior.cov, op, sigma_y)(z, s) - x0) ** 2).flatten(1).mean(1)
    A = op.to_dense()
    post_cov = torch.linalg.inv(torch.linalg.inv(prior.cov) + torch.eye(d, dtype=torch.float64) / sigma**2 + A.T @ A / sigma_y**2)
    expected = post_cov.trace() / d
    assert abs(err.mean() - expected) < 5 * err.std() / math.sqrt(n)
    assert edm_loss_weight(torch.tensor(sigma), 0.5) > 0
