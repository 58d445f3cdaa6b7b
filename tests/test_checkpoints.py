"""Checkpoints: EMA weights stored and reloaded from the file alone (weights_only, no YAML); bad files,
bad configs and bad data fail with a clear message and leave nothing written."""
from __future__ import annotations

import io
import os
from contextlib import redirect_stderr
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from datamodules import Ellipses, InverseProblemDataModule
from diffpost.nets import UNet
from diffpost.operators import Denoising
from lightning_modules.checkpoint import CheckpointError, load_module, safe_load
from lightning_modules.cli import DiffpostCLI
from lightning_modules.prior import ScorePriorModule

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "experiments" / "quickstart_prior.yaml"
DECAY = 0.7


class RecordWeights(Callback):
    """The raw (trained) value of one weight after every optimiser step."""

    def __init__(self):
        self.values: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(pl_module.denoiser.net.conv_in.weight.detach().clone())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step fit with EMA (decay 0.7) and ModelCheckpoint(save_last): its last.ckpt and the raw weights."""
    tmp = tmp_path_factory.mktemp("ckpt")
    module = ScorePriorModule(UNet(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[]),
                              lr=1e-2, val_sigmas=[0.2], num_steps=3)
    dm = InverseProblemDataModule(Ellipses(size=16, length=24), Denoising((1, 16, 16)), sigma_y=0.1,
                                  batch_size=4, n_val=4, n_test=4)
    rec = RecordWeights()
    ckpt_cb = ModelCheckpoint(dirpath=str(tmp / "ckpt"), save_last=True, every_n_epochs=1, save_top_k=-1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=4, limit_train_batches=2, limit_val_batches=1,
                         num_sanity_val_steps=0, logger=CSVLogger(str(tmp)), enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[EMAWeightAveraging(decay=DECAY), rec, ckpt_cb])
    trainer.fit(module, datamodule=dm)
    return tmp / "ckpt" / "last.ckpt", rec.values


def test_checkpoint_holds_ema_weights_and_loads_from_itself(trained):
    path, raw = trained
    assert len(raw) == 4
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain torch, weights_only
    assert ckpt["diffpost"]["module"] == "lightning_modules.prior.ScorePriorModule"
    assert ckpt["hyper_parameters"]["net"]["class_path"] == "diffpost.nets.unet.UNet"
    # EMA of the raw weights (the first update copies): e_1 = w_1, e_k = d e_(k-1) + (1 - d) w_k
    ema = raw[0]
    for w in raw[1:]:
        ema = DECAY * ema + (1 - DECAY) * w
    key = "denoiser.net.conv_in.weight"
    assert torch.allclose(ckpt["state_dict"][key], ema, atol=1e-6)
    assert torch.allclose(ckpt["current_model_state"][key], raw[-1])
    assert not torch.allclose(ema, raw[-1])

    module = load_module(path)  # no YAML: class, network and shapes from the file
    assert isinstance(module, ScorePriorModule) and not module.training
    assert torch.equal(module.denoiser.net.conv_in.weight, ckpt["state_dict"][key])
    assert module.image_shape == (1, 16, 16)
    samples, nfe = module.sample(2)
    assert samples.shape == (2, 1, 16, 16) and torch.isfinite(samples).all() and nfe == 5


def test_load_module_checks_the_expected_class(trained):
    from lightning_modules.ucos import UCoSModule

    with pytest.raises(CheckpointError, match="holds a ScorePriorModule, but a UCoSModule is needed"):
        load_module(trained[0], expected=UCoSModule)


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_corrupt_and_truncated_files(trained, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(2048))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(_bytes(trained[0])[:5000])
    for bad in (junk, truncated):
        before = _bytes(bad)
        with pytest.raises(CheckpointError, match="corrupt or not a PyTorch checkpoint"):
            safe_load(bad)
        with pytest.raises(CheckpointError, match="corrupt"):
            load_module(bad)
        assert _bytes(bad) == before
    with pytest.raises(CheckpointError, match="not found"):
        safe_load(tmp_path / "missing.ckpt")


class Payload:
    """Stands for any pickled object: a weights_only load must refuse to construct it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(trained, tmp_path):
    ckpt = torch.load(trained[0], weights_only=True)
    ckpt["hyper_parameters"]["extra"] = Payload()
    bad = tmp_path / "pickled.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="refusing to load .*pickled Python objects.*print"):
        load_module(bad)


def test_untrusted_class_paths_are_refused(trained, tmp_path):
    ckpt = torch.load(trained[0], weights_only=True)
    ckpt["diffpost"]["module"] = "subprocess.Popen"
    bad = tmp_path / "foreign.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="refusing to import 'subprocess.Popen'"):
        load_module(bad)
    ckpt = torch.load(trained[0], weights_only=True)
    ckpt["hyper_parameters"]["net"]["class_path"] = "os.system"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="refusing to import 'os.system'"):
        load_module(bad)


# ---------------------------------------------------------------- the CLI: fail before writing anything
CPU = ["--trainer.accelerator=cpu", "--trainer.max_steps=1", "--trainer.enable_progress_bar=false",
       "--trainer.logger=false", "--data.init_args.n_val=2", "--data.init_args.n_test=2"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (tmp_path / "keep.txt").write_text("a previous run's file")
    return tmp_path


@pytest.mark.parametrize("kind", ["corrupt", "pickled"])
def test_cli_refuses_a_bad_ckpt_path_before_writing(run_dir, trained, kind):
    bad = run_dir / "bad.ckpt"
    if kind == "corrupt":
        bad.write_bytes(_bytes(trained[0])[:3000])
    else:
        ckpt = torch.load(trained[0], weights_only=True)
        ckpt["loops"] = Payload()
        torch.save(ckpt, bad)
    before = _tree(run_dir)
    with pytest.raises(CheckpointError, match="corrupt" if kind == "corrupt" else "refusing to load"):
        DiffpostCLI(args=["fit", "--config", str(BASE), *CPU, f"--ckpt_path={bad}"])
    assert _tree(run_dir) == before


def test_cli_unknown_key_is_named(run_dir):
    before = _tree(run_dir)
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        DiffpostCLI(args=["fit", "--config", str(BASE), *CPU, "--model.init_args.learning_rate=0.1"])
    assert exit_info.value.code == 2
    assert "learning_rate" in err.getvalue()
    # the same in a YAML file
    cfg = run_dir / "typo.yaml"
    cfg.write_text("model:\n  init_args:\n    net_typo: 3\n")
    before = _tree(run_dir)
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit):
        DiffpostCLI(args=["fit", "--config", str(BASE), "--config", str(cfg), *CPU])
    assert "net_typo" in err.getvalue()
    assert _tree(run_dir) == before


def test_cli_image_folder_without_images(run_dir):
    empty = run_dir / "no_images"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    before = _tree(run_dir)
    err = io.StringIO()
    # raised while jsonargparse instantiates the data section: a ValueError that carries the message
    with redirect_stderr(err), pytest.raises((SystemExit, ValueError, FileNotFoundError)) as info:
        DiffpostCLI(args=["fit", "--config", str(ROOT / "configs" / "experiments" / "imagefolder_prior.yaml"),
                          f"--data.init_args.images.init_args.root={empty}", *CPU, "--trainer.accelerator=cpu",
                          "--trainer.precision=32-true", "--model.init_args.compile=false"])
    message = err.getvalue() + str(info.value)
    assert "no images with extensions" in message and str(empty) in message
    assert _tree(run_dir) == before


def test_safe_load_rejects_non_dicts(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="does not hold a checkpoint dictionary"):
        safe_load(path)
    not_diffpost = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, not_diffpost)
    with pytest.raises(CheckpointError, match="not a diffpost checkpoint"):
        load_module(not_diffpost)


# ---------------------------------------------------------------- integrity: CRC and recorded fingerprints
def _flip_middle(src: Path, dst: Path, n: int = 4096) -> None:
    """``n`` bytes in the middle of ``src`` inverted (a damaged disk block or a bad copy)."""
    data = bytearray(src.read_bytes())
    mid = len(data) // 2 - n // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    dst.write_bytes(bytes(data))


def test_flipped_bytes_are_refused_on_every_load(trained, tmp_path):
    """4 KiB of flipped bytes in the middle of a real checkpoint: a memory-mapped torch.load reads it
    without complaint (tensor bytes are not checked), so we check the zip CRCs on every load. Bug
    caught: a corrupt checkpoint that loads and samples NaN (or is resumed into the next last.ckpt)."""
    bad = tmp_path / "flipped.ckpt"
    _flip_middle(trained[0], bad)
    torch.load(bad, weights_only=True, mmap=True)  # the damage is invisible here: the test is not vacuous
    for load in (lambda p: safe_load(p, mmap=True), safe_load, load_module):  # mmap: the CLI's and sample.py's check
        with pytest.raises(CheckpointError, match=f"{bad}.*corrupt") as info:
            load(bad)
        assert "\n" not in str(info.value)
    # Lightning's own loading reads the file without mmap: torch then checks the CRCs itself
    with pytest.raises(RuntimeError, match="corrupted"):
        torch.load(bad, weights_only=True)


def test_recorded_fingerprints_are_recomputed(trained, tmp_path):
    """A file whose contents disagree with the fingerprints it records (a bit-exact copy with a tampered
    spec or buffer passes the CRC check) is refused, naming the part. Bug caught: fingerprints written
    but never compared."""
    ckpt = torch.load(trained[0], weights_only=True)
    assert set(ckpt["diffpost"]) >= {"network_fingerprint", "data"}
    ckpt["hyper_parameters"]["net"]["init_args"]["dropout"] = 0.5  # same weights, another network
    bad = tmp_path / "tampered.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"does not match the fingerprints it records: network \(recorded"):
        load_module(bad)


def test_ucos_operator_and_preconditioner_fingerprints_are_recomputed(tmp_path):
    from diffpost.operators import CT
    from lightning_modules.ucos import UCoSModule

    op = CT((1, 8, 8), n_angles=4)
    model = UCoSModule(UNet(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[]), operator=op,
                       sigma_y=0.1)
    dm = InverseProblemDataModule(Ellipses(size=8, length=16), op, sigma_y=0.1, batch_size=4, n_val=4, n_test=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    good = tmp_path / "ucos.ckpt"
    trainer.save_checkpoint(good)
    assert isinstance(load_module(good), UCoSModule)
    for part in ("preconditioner", "operator"):
        ckpt = torch.load(good, weights_only=True)
        if part == "preconditioner":  # a factor that no longer belongs to the recorded operator
            key = next(k for k in ckpt["state_dict"] if k.startswith("aux.preconditioner.eigenvalues"))
            ckpt["state_dict"][key] = ckpt["state_dict"][key] * 1.01
        else:  # the spec that rebuilds the operator, edited
            ckpt["hyper_parameters"]["operator"]["init_args"]["angle_range"] = 170.0
        bad = tmp_path / f"bad_{part}.ckpt"
        torch.save(ckpt, bad)
        with pytest.raises(CheckpointError, match=rf"{bad}.*fingerprints it records: {part} \(recorded"):
            load_module(bad)


# ---------------------------------------------------------------- reuse for another task or model
def test_check_checkpoint_matches_names_what_differs(trained):
    """Module class, network spec and image shape always; the data's operator/σ_y only when resuming a
    prior (a prior may be validated on another task), always for a task-bound model (UCoS)."""
    from datamodules.inverse_problem import task_record
    from diffpost.config import class_path
    from diffpost.operators import Blur
    from lightning_modules.checkpoint import check_checkpoint_matches

    ckpt = torch.load(trained[0], weights_only=True)
    cls = "lightning_modules.prior.ScorePriorModule"
    same = ScorePriorModule(UNet(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[]), lr=1e-2,
                            val_sigmas=[0.2], num_steps=3)
    assert class_path(same) == cls
    task = task_record(Denoising((1, 16, 16)), 0.1)
    check_checkpoint_matches(ckpt, "p.ckpt", module_class=cls, model=same, data_task=task, resuming=True)
    with pytest.raises(CheckpointError, match="p.ckpt holds a ScorePriorModule, but this run builds a UCoSModule"):
        check_checkpoint_matches(ckpt, "p.ckpt", module_class="lightning_modules.ucos.UCoSModule")
    wider = ScorePriorModule(UNet(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[]))
    with pytest.raises(CheckpointError, match=r"network spec: net.init_args.base_channels = 8 in the checkpoint, 16 here"):
        check_checkpoint_matches(ckpt, "p.ckpt", module_class=cls, model=wider)
    with pytest.raises(CheckpointError, match=r"data x_shape: \[1, 16, 16\] in the checkpoint, \[1, 32, 32\] here"):
        check_checkpoint_matches(ckpt, "p.ckpt", module_class=cls, data_task=task_record(Denoising((1, 32, 32)), 0.1))
    blur = task_record(Blur((1, 16, 16), blur_sigma=1.0), 0.1)
    check_checkpoint_matches(ckpt, "p.ckpt", module_class=cls, data_task=blur)  # validating a prior on blur: fine
    with pytest.raises(CheckpointError, match="data operator: Denoising .* in the checkpoint, Blur .* here"):
        check_checkpoint_matches(ckpt, "p.ckpt", module_class=cls, data_task=blur, resuming=True)
    with pytest.raises(CheckpointError, match="data sigma_y: 0.1 in the checkpoint, 0.2 here"):
        check_checkpoint_matches(ckpt, "p.ckpt", module_class=cls, data_task=task_record(Denoising((1, 16, 16)), 0.2),
                                 resuming=True)
