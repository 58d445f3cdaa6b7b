"""Every YAML in configs/ instantiates and runs one fast_dev_run step on CPU; task arguments given once.

- experiments/*.yaml run alone; every concern file (model/, data/, task/, trainer/, logger/,
  callbacks/) is layered onto a quickstart experiment with the flag it is the value of (UCoS callback
  files onto the UCoS quickstart, the rest onto the prior quickstart); method/*.yaml (posterior
  methods for scripts/sample.py) build; sweeps/ are checked by tests/test_sweeps.py;
- GPU-only settings (accelerator, devices, num_nodes, strategy, bf16, torch.compile) and machine
  settings (workers, pinned memory) are overridden to one CPU process; splits are shrunk for speed;
- on-disk datasets (MNIST, CIFAR-10, an image folder) are replaced by tiny fakes in the same layout.
"""
from __future__ import annotations

import io
import json
import pickle
import struct
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from diffpost.operators import LinearOperator
from lightning_modules.base import DiffpostModule
from lightning_modules.cli import DiffpostCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BASE = CONFIGS / "experiments" / "quickstart_prior.yaml"
UCOS_BASE = CONFIGS / "experiments" / "quickstart_ucos.yaml"
#: config folders that are not layered through train.py here (they have their own checks)
NOT_LAYERED = {"experiments", "sweeps", "method"}
#: how a concern file is layered onto the base experiment (the flag it is the value of)
FLAG = {"model": "--model", "data": "--data", "task": "--data", "trainer": "--trainer",
        "logger": "--trainer.logger", "callbacks": "--trainer.callbacks"}
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
       "--trainer.precision=32-true", "--trainer.benchmark=false"]
NO_COMPILE = ["--model.init_args.compile=false"]  # torch.compile is a GPU setting here
ONE_SIGMA = ["--model.init_args.val_sigmas=[0.2]"]  # ScorePriorModule: one validation noise level is enough
SMALL = ["--data.init_args.num_workers=0", "--data.init_args.pin_memory=false", "--data.init_args.batch_size=2",
         "--data.init_args.n_val=2", "--data.init_args.n_test=2", "--data.init_args.n_train=4",
         "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _write_idx(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # IDX: magic (0, 0, ubyte, ndim), big-endian dims, bytes
        f.write(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim))
        f.write(struct.pack(f">{arr.ndim}i", *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    """data/MNIST, data/cifar-10-batches-py and data/images with a few random images each."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    raw = data / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 12), ("t10k", 4)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    cifar = data / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(cifar / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [0, 1, 2]}, f)
    with open(cifar / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    import torchvision.datasets.cifar as cifar_module

    monkeypatch.setattr(cifar_module, "check_integrity", lambda *a, **k: True)  # fakes have no true md5
    from PIL import Image

    (data / "images").mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(data / "images" / f"{i}.png")
    from pydicom.data import get_testdata_file  # data/dicom: a CT series for configs/data/dicom128.yaml

    (data / "dicom").mkdir()
    for i in range(10):
        (data / "dicom" / f"{i}.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    monkeypatch.chdir(tmp_path)  # the configs' relative roots (data/...) and run folders (runs/) land here
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return tmp_path


def run_cli(args: list[str]) -> DiffpostCLI:
    return DiffpostCLI(args=args)


def concern_files() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in NOT_LAYERED)


def base_for(path: Path) -> Path:
    """The experiment a concern file is layered onto: UCoS callback files need a UCoS model."""
    return UCOS_BASE if path.parent.name == "callbacks" and path.stem.startswith("ucos") else BASE


def experiment_files() -> list[Path]:
    return sorted((CONFIGS / "experiments").glob("*.yaml"))


def _id(p: Path) -> str:
    return str(p.relative_to(CONFIGS))


def test_config_tree_is_complete():
    names = {_id(p) for p in CONFIGS.rglob("*.yaml")}
    for task in ("ct_sparse", "ct_limited", "blur_gauss", "inpaint_random", "superres_x2", "mri_x4", "denoise"):
        assert f"task/{task}.yaml" in names
    for needed in ("experiments/quickstart_prior.yaml", "experiments/ellipses128_prior.yaml",
                   "experiments/digits32_prior.yaml", "experiments/mnist32_prior.yaml",
                   "experiments/cifar10_prior.yaml", "experiments/imagefolder_prior.yaml",
                   "trainer/ddp.yaml", "trainer/multinode.yaml", "logger/wandb.yaml", "logger/csv.yaml"):
        assert needed in names
    unknown = {p.parent.name for p in CONFIGS.rglob("*.yaml")} - set(FLAG) - NOT_LAYERED
    assert not unknown, f"configs/{unknown} has no layering rule in this test"


def model_class(experiment: Path) -> str:
    """The class_path of an experiment's model (inline, or in the model file it names)."""
    model = yaml.safe_load(experiment.read_text())["model"]
    if isinstance(model, str):
        model = yaml.safe_load((experiment.parent / model).read_text())
    return model["class_path"]


def large_ucos(experiment: Path) -> bool:
    """A UCoS experiment above 64²: building its preconditioner and validation sampling take minutes on
    a CPU, so the fast suite runs it at 32² (same classes and wiring) and a slow test at full size."""
    data = yaml.safe_load(experiment.read_text())["data"]
    if isinstance(data, str):
        data = yaml.safe_load((experiment.parent / data).read_text())
    return model_class(experiment).endswith("UCoSModule") and data["init_args"]["images"]["init_args"]["size"] > 64


#: the fast-suite size of a large UCoS experiment (images and operator together)
SHRINK = ["--data.init_args.images.init_args.size=32", "--data.init_args.operator.init_args.shape=[1,32,32]"]


@pytest.mark.parametrize("path", experiment_files(), ids=_id)
def test_experiment_runs_alone(path, fake_data):
    prior = model_class(path).endswith("ScorePriorModule")
    shrink = SHRINK if large_ucos(path) else []
    cli = run_cli(["fit", "--config", str(path), *CPU, *NO_COMPILE, *(ONE_SIGMA if prior else []), *SMALL, *shrink])
    assert cli.trainer.global_step == 1
    if prior:
        assert "val/denoise_psnr_sigma0.2" in cli.trainer.callback_metrics


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in experiment_files() if large_ucos(p)], ids=_id)
def test_large_ucos_experiment_runs_at_full_size(path, fake_data):
    cli = run_cli(["fit", "--config", str(path), *CPU, *NO_COMPILE, *SMALL])
    assert cli.trainer.global_step == 1
    assert cli.model.aux.preconditioner._built  # built at the first step, at the config's size


@pytest.mark.parametrize("path", concern_files(), ids=_id)
def test_concern_file_layers_onto_the_base(path, fake_data):
    base = base_for(path)
    args = ["fit", "--config", str(base), FLAG[path.parent.name], str(path)]
    extra: list[str] = []
    if path.parent.name == "model":
        # a model for other images: pair it with data of its channel count and a size its levels divide
        net = yaml.safe_load(path.read_text())["init_args"]["net"]["init_args"]
        c, levels = net["in_channels"], len(net["channel_mult"])
        size = max(32, 2 ** (levels - 1))
        extra = [f"--data.init_args.images.init_args.size={size}", f"--data.init_args.images.init_args.channels={c}",
                 f"--data.init_args.operator.init_args.shape=[{c},{size},{size}]"]
    if path.parent.name == "data":
        # the base network (3 levels) fits every size here; it needs the data's channel count
        c = yaml.safe_load(path.read_text())["init_args"]["operator"]["init_args"]["shape"][0]
        extra = [f"--model.init_args.net.init_args.in_channels={c}", f"--model.init_args.net.init_args.out_channels={c}"]
    cli = run_cli([*args, *extra, *CPU, *NO_COMPILE, *(ONE_SIGMA if base == BASE else []), *SMALL])
    assert cli.trainer.global_step == 1
    # the layered file took effect
    section = yaml.safe_load(path.read_text())
    kind = path.parent.name
    if kind == "model":
        assert cli.model.hparams.net["init_args"]["base_channels"] == section["init_args"]["net"]["init_args"]["base_channels"]
    if kind == "data":
        wanted = section["init_args"]["images"]["class_path"].rsplit(".", 1)[1]
        assert type(cli.datamodule.images).__name__ == wanted
    if kind == "task":
        op = cli.datamodule.operator
        assert type(op).__name__ == section["init_args"]["operator"]["class_path"].rsplit(".", 1)[1]
        assert cli.datamodule.sigma_y == section["init_args"]["sigma_y"]
    if kind == "logger":  # fast_dev_run swaps the loggers for a dummy after building them: check the config
        assert [lg["class_path"] for lg in cli.config["fit"]["trainer"]["logger"]] == [s["class_path"] for s in section]
    if kind == "callbacks":
        names = {type(cb).__name__ for cb in cli.trainer.callbacks}
        assert {s["class_path"].rsplit(".", 1)[1] for s in section} <= names


@pytest.mark.parametrize("path", sorted((CONFIGS / "method").glob("*.yaml")), ids=_id)
def test_method_file_builds(path):
    """configs/method/ holds posterior methods (values of scripts/sample.py --method): each builds."""
    from diffpost.config import build
    from diffpost.posterior.base import PosteriorMethod

    assert isinstance(build(yaml.safe_load(path.read_text()), PosteriorMethod), PosteriorMethod)


def test_print_config_shows_the_resolved_layers(fake_data):
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(BASE), "--data", str(CONFIGS / "task" / "ct_sparse.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    cfg = yaml.safe_load(out.getvalue())
    assert cfg["data"]["init_args"]["operator"]["class_path"] == "diffpost.operators.CT"
    assert cfg["data"]["init_args"]["operator"]["init_args"]["n_angles"] == 16
    assert cfg["model"]["init_args"]["net"]["init_args"]["base_channels"] == 16


def test_sweep_style_dotted_overrides(fake_data):
    """W&B sweep agents pass ``--key=value``: they reach the nested init args."""
    cli = run_cli(["fit", "--config", str(BASE), *CPU, *NO_COMPILE, *ONE_SIGMA, *SMALL, "--model.init_args.lr=0.0005",
                   "--model.init_args.net.init_args.base_channels=8"])
    assert cli.model.hparams.lr == 0.0005
    assert cli.model.hparams.net["init_args"]["base_channels"] == 8


# ---------------------------------------------------------------- task arguments given once (UCoS)
class TaskModule(DiffpostModule):
    """A stand-in for UCoSModule: takes ``operator`` and ``sigma_y`` like it does."""

    def __init__(self, net: nn.Module, operator: LinearOperator, sigma_y: float, lr: float = 1e-3, seed: int = 0):
        super().__init__()
        self._save_config({"net": net, "operator": operator})
        self.net, self.operator = net, operator

    def training_step(self, batch, batch_idx):
        x = batch["x"]
        return (self.net(x, torch.zeros(x.shape[0])) - x).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _task_module_args(tmp_path) -> list[str]:
    model = {"class_path": f"{__name__}.TaskModule",
             "init_args": {"net": {"class_path": "diffpost.nets.UNet",
                                   "init_args": {"base_channels": 8, "channel_mult": [1], "attn_levels": []}}}}
    path = tmp_path / "task_model.yaml"
    path.write_text(yaml.safe_dump(model))
    return ["fit", "--config", str(BASE), "--model", str(path), "--data", str(CONFIGS / "task" / "blur_gauss.yaml"),
            *CPU, *SMALL, "--trainer.callbacks=[]"]


def test_task_arguments_come_from_the_data_section(fake_data):
    cli = run_cli(_task_module_args(fake_data))
    model, dm = cli.model, cli.datamodule
    assert isinstance(model, TaskModule)
    assert model.hparams.sigma_y == dm.sigma_y == 0.01
    assert type(model.operator).__name__ == "Blur" and model.operator.fingerprint() == dm.operator.fingerprint()
    assert model.hparams.operator["class_path"] == "diffpost.operators.blur.Blur"


def test_task_arguments_are_written_once_in_print_config(fake_data):
    """The resolved config names the task once, in the data section; the model's copy is a link
    (jsonargparse drops linked targets from dumps, so a saved config cannot disagree with itself)."""
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        run_cli([*_task_module_args(fake_data), "--print_config"])
    cfg = yaml.safe_load(out.getvalue())
    assert cfg["data"]["init_args"]["sigma_y"] == 0.01
    assert cfg["data"]["init_args"]["operator"]["class_path"] == "diffpost.operators.Blur"
    assert "sigma_y" not in cfg["model"]["init_args"] and "operator" not in cfg["model"]["init_args"]


def test_another_task_layers_over_the_ucos_experiment(fake_data):
    """README's "another task": a task file over the UCoS quickstart retrains UCoS for that task (the
    model gets the task's operator and sigma_y from the data section)."""
    cli = run_cli(["fit", "--config", str(UCOS_BASE), "--data", str(CONFIGS / "task" / "blur_gauss.yaml"),
                   "--trainer.max_time=00:00:20:00", *CPU, *SMALL])
    assert type(cli.model).__name__ == "UCoSModule" and cli.model.sigma_y == cli.datamodule.sigma_y == 0.01
    assert type(cli.model.operator).__name__ == "Blur"
    assert cli.model.operator.fingerprint() == cli.datamodule.operator.fingerprint()


def test_ucos_experiment_runs_the_test_subcommand(fake_data):
    """`train.py test` on a UCoS experiment logs test/mmse_psnr: the mean per-image PSNR of the one-call
    estimate D_θ(Aᵀy/σ_y², σ_max) on the test split (computed here with scikit-image)."""
    from skimage.metrics import peak_signal_noise_ratio

    cli = run_cli(["test", "--config", str(UCOS_BASE), "--data", str(CONFIGS / "task" / "blur_gauss.yaml"),
                   *CPU, *SMALL])
    model, dm = cli.model, cli.datamodule
    ds = dm.dataset("test")
    items = [ds[k] for k in range(2)]  # fast_dev_run: one batch of 2
    x, y = torch.stack([it["x"] for it in items]), torch.stack([it["y"] for it in items])
    with torch.no_grad():
        est = model.aux(dm.operator.adjoint(y) / dm.sigma_y**2, torch.full((2,), model.hparams.sigma_max))
    unit = [((t.double() + 1) / 2).clamp(0, 1).numpy() for t in (x, est)]
    expected = np.mean([peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(*unit)])
    assert float(cli.trainer.callback_metrics["test/mmse_psnr"]) == pytest.approx(expected, abs=1e-3)
    assert "test/input_estimate_psnr" in cli.trainer.callback_metrics


@pytest.mark.parametrize("name, value", [("sigma_y", "0.5"), ("operator", json.dumps(
    {"class_path": "diffpost.operators.Blur", "init_args": {"shape": [1, 32, 32], "blur_sigma": 1.0}}))])
def test_task_arguments_that_disagree_are_an_error(fake_data, capsys, name, value):
    """Catches a link that silently replaces the model's explicit value by the data's."""
    with pytest.raises(SystemExit):
        run_cli([*_task_module_args(fake_data), f"--model.init_args.{name}={value}"])
    err = capsys.readouterr().err
    assert f"model.init_args.{name}" in err and f"differs from data.init_args.{name}" in err


def test_explicit_equal_task_arguments_are_accepted(fake_data):
    op = json.dumps({"class_path": "diffpost.operators.Blur",
                     "init_args": {"shape": [1, 32, 32], "kernel": "gaussian", "kernel_size": 13, "blur_sigma": 2.0}})
    cli = run_cli([*_task_module_args(fake_data), "--model.init_args.sigma_y=0.01", f"--model.init_args.operator={op}"])
    assert cli.model.hparams.sigma_y == 0.01


def test_prior_module_gets_no_task_arguments(fake_data):
    cli = run_cli(["fit", "--config", str(BASE), "--data", str(CONFIGS / "task" / "ct_sparse.yaml"), *CPU, *NO_COMPILE,
                   *ONE_SIGMA, *SMALL])
    assert "operator" not in cli.model.hparams and "sigma_y" not in cli.model.hparams


# ---------------------------------------------------------------- scripts/benchmark.py dispatch
def test_benchmark_dispatcher_loads_subcommands_lazily(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_benchmark_script", ROOT / "scripts" / "benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "helpers.py").write_text("VALUE = 7\n")
    (tmp_path / "prior.py").write_text("from . import helpers\n\ndef main(argv):\n    return helpers.VALUE + len(argv)\n")
    monkeypatch.setattr(bench, "HERE", str(tmp_path))
    monkeypatch.setattr(bench, "PACKAGE", "_test_benchmarks")
    monkeypatch.delitem(sys.modules, "_test_benchmarks", raising=False)
    monkeypatch.delitem(sys.modules, "_test_benchmarks.prior", raising=False)
    monkeypatch.delitem(sys.modules, "_test_benchmarks.helpers", raising=False)
    assert bench.main(["prior", "a", "b"]) == 9  # relative imports work; arguments pass through
    with pytest.raises(SystemExit, match="'ucos' is not available: .*ucos.py does not exist"):
        bench.main(["ucos"])
    with pytest.raises(SystemExit, match="unknown subcommand 'nope'"):
        bench.main(["nope"])
