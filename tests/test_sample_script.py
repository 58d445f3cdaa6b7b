"""scripts/sample.py: checkpoint inference end to end (subprocesses), bad inputs, sharding.

Tiny checkpoints (a UNet with 8 base channels on 16² ellipses, CT with 8 angles, 3 training steps)
are built once per session; the network is untrained, so the tests check plumbing, bookkeeping and
invariances (batch size, device count), never reconstruction quality. Most bad-input cases call the
script's ``main`` in-process (a subprocess costs a Lightning import, ~10 s on 2 cores); one of them
runs as a real subprocess to check the exit status and stderr.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from datamodules import Ellipses, InverseProblemDataModule
from diffpost.image_quality import calibrated_coverage
from diffpost.nets.unet import UNet
from diffpost.operators.ct import CT
from lightning_modules.checkpoint import load_module, safe_load
from lightning_modules.prior import ScorePriorModule
from lightning_modules.ucos import UCoSModule

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "sample.py"
_spec = importlib.util.spec_from_file_location("diffpost_sample_script", SCRIPT)
sample = importlib.util.module_from_spec(_spec)  # the script as a module: main(argv) in-process
_spec.loader.exec_module(sample)

N_MEAS, N_SAMPLES, STEPS, SIGMA_Y = 5, 3, 3, 0.05


def _tiny_net() -> UNet:
    return UNet(1, 1, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[])


def _datamodule(operator: CT, sigma_y: float = SIGMA_Y) -> InverseProblemDataModule:
    return InverseProblemDataModule(Ellipses(size=16, length=40), operator, sigma_y=sigma_y, batch_size=4, n_val=2, n_test=8)


def _fit_and_save(module, dm, path: Path) -> Path:
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, dm)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def art(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints, measurement exports (the trained task and two other tasks) and a data config."""
    d = tmp_path_factory.mktemp("sample_script")
    op = CT((1, 16, 16), n_angles=8)
    with torch.random.fork_rng():  # network init and Lightning seed the global RNG: keep it out of other tests
        torch.manual_seed(0)
        dm = _datamodule(op)
        paths = {"ucos": _fit_and_save(UCoSModule(_tiny_net(), op, SIGMA_Y, num_steps=STEPS), dm, d / "ucos.ckpt"),
                 "prior": _fit_and_save(ScorePriorModule(_tiny_net(), num_steps=STEPS), dm, d / "prior.ckpt"),
                 # the repository's data configs are 32² ellipses: a prior of that shape
                 "prior32": _fit_and_save(ScorePriorModule(_tiny_net(), num_steps=STEPS),
                                          InverseProblemDataModule(Ellipses(size=32, length=8), CT((1, 32, 32), n_angles=8),
                                                                   sigma_y=SIGMA_Y, batch_size=4, n_val=2, n_test=2),
                                          d / "prior32.ckpt")}
    paths["meas"] = Path(dm.export_measurements(str(d / "meas.pt"), n=N_MEAS))
    paths["meas_other_op"] = Path(_datamodule(CT((1, 16, 16), n_angles=6)).export_measurements(str(d / "other_op.pt"), n=2))
    paths["meas_other_sigma"] = Path(_datamodule(op, 0.1).export_measurements(str(d / "other_sigma.pt"), n=2))
    # the configs/ layout: a bare DataModule spec (here with another task) and a task file on top
    data = {"class_path": "datamodules.InverseProblemDataModule", "init_args": {
        "images": {"class_path": "datamodules.Ellipses", "init_args": {"size": 16, "length": 40}},
        "operator": {"class_path": "diffpost.operators.Denoising", "init_args": {"shape": [1, 16, 16]}},
        "sigma_y": 0.2, "n_val": 2, "n_test": 8}}
    task = {"init_args": {"operator": {"class_path": "diffpost.operators.CT", "init_args": {"shape": [1, 16, 16], "n_angles": 8}},
                          "sigma_y": SIGMA_Y}}
    for name, cfg in (("config", data), ("task", task)):
        paths[name] = d / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(cfg))
    paths["dir"] = d
    return paths


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(REPO))


def _ucos_args(art, out: Path, *extra) -> list[str]:
    return ["--checkpoint", art["ucos"], "--measurements", art["meas"], "--steps", STEPS, "--n-samples", N_SAMPLES,
            "--accelerator", "cpu", "--output", out, *extra]


def _load(folder: Path, name: str) -> torch.Tensor:
    return torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)


def _no_leftovers(parent: Path, name: str) -> None:
    stray = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    assert not stray, f"temporary folders left behind: {stray}"


@pytest.fixture(scope="module")
def ucos_runs(art) -> dict[str, Path]:
    """The same UCoS job with batch size 1 (with figures) and 3 (without)."""
    outs = {}
    for bs, extra in ((1, []), (3, ["--no-figures"])):
        out = art["dir"] / f"ucos_bs{bs}"
        r = run_script(*_ucos_args(art, out, "--batch-size", bs, *extra))
        assert r.returncode == 0, r.stderr
        outs[bs] = out
    return outs


# ----------------------------------------------------------------------------------- successful runs
def test_outputs_complete_and_loadable(art, ucos_runs):
    out = ucos_runs[1]
    export = torch.load(art["meas"], weights_only=True)
    samples, mean, std, index = (_load(out, k) for k in ("samples", "mean", "std", "index"))
    assert samples.shape == (N_MEAS, N_SAMPLES, 1, 16, 16) and samples.dtype == torch.float32
    assert torch.isfinite(samples).all()
    torch.testing.assert_close(mean, samples.mean(1))
    torch.testing.assert_close(std, samples.std(1))
    assert torch.equal(index, export["index"])
    # distinct chains: per-(index, sample) seeds really differ
    assert (samples[:, 0] - samples[:, 1]).abs().amax() > 1e-3 and (samples[0] - samples[1]).abs().amax() > 1e-3
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == sorted(["calibration.png"] + [f"measurement_{i}.png" for i in export["index"].tolist()])
    assert all((out / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert sorted(p.name for p in out.iterdir()) == ["figures", "index.pt", "mean.pt", "metrics.json", "samples.pt", "std.pt"]
    _no_leftovers(out.parent, out.name)


def test_metrics_json(art, ucos_runs):
    out = ucos_runs[1]
    m = json.loads((out / "metrics.json").read_text())
    assert {"n_measurements", "n_samples", "aggregate", "per_measurement", "cost", "settings", "task"} <= set(m)
    assert m["n_measurements"] == N_MEAS and m["n_samples"] == N_SAMPLES
    export = torch.load(art["meas"], weights_only=True)
    x = export["x"].double().numpy()
    samples = _load(out, "samples").double().numpy()
    per = m["per_measurement"]
    assert [row["index"] for row in per] == export["index"].tolist()
    for i, row in enumerate(per):
        assert {"psnr", "ssim", "bias_squared", "summed_variance", "coverage_50", "coverage_80", "coverage_90", "coverage_95",
                "nfe", "vjp", "operator_calls"} <= set(row)
        # independent recomputation (numpy, from the definitions in METHODS §7)
        unit = lambda a: np.clip((a + 1) / 2, 0, 1)  # noqa: E731
        mse = np.mean((unit(samples[i].mean(0)) - unit(x[i])) ** 2)
        assert row["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-6)
        assert row["bias_squared"] == pytest.approx(np.sum((samples[i].mean(0) - x[i]) ** 2), rel=1e-6)
        assert row["summed_variance"] == pytest.approx(np.sum(samples[i].var(0, ddof=1)), rel=1e-6)
        for level in (50, 80, 90, 95):
            lo, hi = np.quantile(samples[i], [(1 - level / 100) / 2, (1 + level / 100) / 2], axis=0)
            assert row[f"coverage_{level}"] == pytest.approx(np.mean((x[i] >= lo) & (x[i] <= hi)), abs=1e-6)
        assert -1 <= row["ssim"] <= 1
        # UCoS: Aᵀ once per measurement, never A; Heun: 2 network calls per step but the last
        assert row["operator_calls"] == {"forward": 0, "adjoint": 1}
        assert row["nfe"] == 2 * STEPS - 1 and row["vjp"] == 0
    agg = m["aggregate"]
    for k in ("psnr", "ssim", "bias_squared", "summed_variance", "coverage_90", "nfe"):
        vals = np.array([row[k] for row in per])
        assert agg[k]["mean"] == pytest.approx(vals.mean()) and agg[k]["std"] == pytest.approx(vals.std(ddof=1), abs=1e-12)
    cost = m["cost"]
    assert cost["operator_calls"] == {"forward": 0, "adjoint": N_MEAS}
    assert cost["peak_memory_bytes"] > 0 and cost["peak_memory_kind"] == "max_rss"
    assert 0 < cost["wall_time_per_posterior_sample_s"] * N_MEAS * N_SAMPLES <= cost["wall_time_s"]
    cal = m["calibration"]
    assert cal["levels"] == [0.5, 0.8, 0.9, 0.95]
    assert cal["coverage"] == pytest.approx([agg[f"coverage_{lv}"]["mean"] for lv in (50, 80, 90, 95)])
    assert cal["calibrated_reference"] == list(calibrated_coverage(N_SAMPLES, cal["levels"]))
    s = m["settings"]
    assert (s["method"], s["method_spec"]["init_args"]["sampler"], s["steps"], s["n_samples"], s["batch_size"], s["devices"]) \
        == ("ucos", "heun", STEPS, N_SAMPLES, 1, 1)
    assert m["task"]["operator_fingerprint"] == safe_load(art["ucos"])["diffpost"]["operator_fingerprint"]
    assert m["task"]["sigma_y"] == SIGMA_Y


def test_batch_size_does_not_change_samples(art, ucos_runs, tmp_path):
    """The reproducibility contract (README): other batch sizes give the same samples in float64 (to
    rounding, 1e-9); float32 batched convolutions round differently by batch size on some CPUs (AMD),
    so float32 runs are compared only with the same batch size, where they are bit-identical."""
    runs = {}
    for bs in (1, 3):
        runs[bs] = tmp_path / f"f64_bs{bs}"
        assert sample.main([str(a) for a in _ucos_args(art, runs[bs], "--batch-size", bs, "--precision", "64-true",
                                                        "--no-figures")]) == 0
    a, b = _load(runs[1], "samples"), _load(runs[3], "samples")
    assert a.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert torch.equal(_load(runs[1], "index"), _load(runs[3], "index"))
    again = tmp_path / "f32_bs3_again"
    assert sample.main([str(a) for a in _ucos_args(art, again, "--batch-size", 3, "--no-figures")]) == 0
    assert torch.equal(_load(again, "samples"), _load(ucos_runs[3], "samples"))


@pytest.mark.slow
def test_two_devices_shard_without_loss_or_duplicates(art, ucos_runs):
    out = art["dir"] / "ucos_ddp"
    r = run_script(*_ucos_args(art, out, "--devices", 2, "--batch-size", 2, "--no-figures"))
    assert r.returncode == 0, r.stderr
    index = _load(out, "index")
    assert sorted(index.tolist()) == sorted(set(index.tolist())) and len(index) == N_MEAS  # all 5, once each
    # same batch size as the 1-device run with batch size 1? no: each rank batches 2 → compare loosely in float32
    torch.testing.assert_close(_load(out, "samples"), _load(ucos_runs[1], "samples"), rtol=0, atol=0.05)
    assert torch.equal(index, _load(ucos_runs[1], "index"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["devices"] == 2 and len(m["cost"]["peak_memory_bytes_per_rank"]) == 2
    _no_leftovers(out.parent, out.name)


@pytest.mark.gpu
def test_gpu_run_reports_cuda_memory(art, ucos_runs):
    out = art["dir"] / "ucos_gpu"
    args = [str(a) for a in _ucos_args(art, out, "--no-figures")]
    args[args.index("--accelerator") + 1] = "gpu"
    r = run_script(*args)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["cost"]["peak_memory_kind"] == "cuda_max_memory_allocated" and m["cost"]["peak_memory_bytes"] > 0
    assert m["cost"]["operator_calls"] == {"forward": 0, "adjoint": N_MEAS}
    # the noise is drawn on CPU generators: only the network's arithmetic (TF32 convolutions) differs
    cpu = _load(ucos_runs[1], "samples")
    assert (_load(out, "samples") - cpu).abs().amax() < 0.05 * cpu.abs().amax()


def test_dps_with_task_config(art):
    out = art["dir"] / "dps"
    r = run_script("--checkpoint", art["prior"], "--task", art["task"], "--measurements", art["meas"], "--n", 2,
                   "--steps", STEPS, "--n-samples", 2, "--method", "dps", "--method-arg", "zeta=0.5", "--accelerator", "cpu",
                   "--no-figures", "--output", out)
    assert r.returncode == 0, r.stderr
    assert _load(out, "samples").shape == (2, 2, 1, 16, 16)
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["method"] == "dps" and m["settings"]["method_spec"]["init_args"]["zeta"] == 0.5
    # DPS: one A, one Aᵀ and one VJP through the network per chain and step
    assert m["cost"]["operator_calls"] == {"forward": 2 * 2 * STEPS, "adjoint": 2 * 2 * STEPS}
    assert m["aggregate"]["vjp"]["mean"] == STEPS and m["aggregate"]["nfe"]["mean"] == STEPS


def test_raw_npy_with_inline_operator_and_progress(art, capsys):
    """In-process: a raw tensor with --operator/--sigma-y; samples equal a direct ``sample_posterior`` call
    with the same settings (the script passes seed, steps and sampler through unchanged). float64, so the
    script's batches of 1 and the direct call's batch of 2 agree to rounding on any CPU."""
    y = torch.load(art["meas"], weights_only=True)["y"][:2]
    raw = art["dir"] / "raw.npy"
    np.save(raw, y.numpy())
    spec = json.dumps({"class_path": "diffpost.operators.ct.CT", "init_args": {"shape": [1, 16, 16], "n_angles": 8}})
    out = art["dir"] / "raw_out"
    assert sample.main(["--checkpoint", str(art["ucos"]), "--measurements", str(raw), "--operator", spec,
                        "--sigma-y", str(SIGMA_Y), "--steps", "2", "--n-samples", "2", "--method", "ucos",
                        "--method-arg", "sampler=euler_maruyama", "--seed", "7", "--batch-size", "1", "--accelerator", "cpu",
                        "--precision", "64-true", "--no-figures", "--progress", "--output", str(out)]) == 0
    assert "4/4" in capsys.readouterr().err  # 2 batches × 2 sampler steps on the progress bar
    assert torch.equal(_load(out, "index"), torch.arange(2))  # raw tensors carry no indices: positions
    with torch.no_grad():
        direct = load_module(art["ucos"]).double().sample_posterior(y.double(), index=torch.arange(2), n_samples=2, num_steps=2,
                                                                    sampler="euler_maruyama", seed=7)["samples"]
    torch.testing.assert_close(_load(out, "samples"), direct, rtol=1e-9, atol=1e-9)
    m = json.loads((out / "metrics.json").read_text())
    assert "psnr" not in m["aggregate"] and "summed_variance" in m["aggregate"]  # no truth; 2 samples
    assert m["calibration"]["levels"] == [] and "truth" in m["calibration"]["note"]
    assert m["settings"]["source"]["kind"] == "raw" and m["settings"]["method_spec"]["init_args"]["sampler"] == "euler_maruyama"


def test_data_config_with_task_layer_reproduces_the_export(art, ucos_runs, capsys):
    """--data synthesises the same items and noise as the DataModule's export: with the CT task layered
    over the config's denoising task, the samples equal those of the export run. Without the task
    layer the config's own task (denoising) does not fit the UCoS model: exit 2. --overwrite replaces."""
    out = art["dir"] / "from_data"
    common = ["--checkpoint", str(art["ucos"]), "--data", str(art["config"]), "--steps", str(STEPS), "--n-samples",
              str(N_SAMPLES), "--accelerator", "cpu", "--no-figures", "--output", str(out)]
    assert sample.main([*common, "--n", "3"]) == 2
    assert "Denoising" in capsys.readouterr().err and not out.exists()
    assert sample.main([*common, "--n", "3", "--task", str(art["task"]), "--batch-size", "1"]) == 0
    assert torch.equal(_load(out, "samples"), _load(ucos_runs[1], "samples")[:3])  # same batch size: bit-identical
    assert torch.equal(_load(out, "index"), _load(ucos_runs[1], "index")[:3])
    assert sample.main([*common, "--n", "2", "--task", str(art["task"]), "--overwrite"]) == 0
    assert _load(out, "samples").shape[0] == 2
    _no_leftovers(out.parent, out.name)


def test_repository_data_and_task_configs(art, tmp_path):
    """The layering users run: configs/data/ellipses32.yaml with configs/task/ct_sparse.yaml on top (DPS:
    a prior checkpoint works for any operator of its image shape; a 16² prior on 32² data is refused)."""
    out = tmp_path / "out"
    common = ["--data", str(REPO / "configs/data/ellipses32.yaml"), "--task", str(REPO / "configs/task/ct_sparse.yaml"),
              "--n", "1", "--steps", "1", "--accelerator", "cpu", "--output", str(out)]
    assert sample.main(["--checkpoint", str(art["prior"]), *common]) == 2
    assert not out.exists()
    assert sample.main(["--checkpoint", str(art["prior32"]), "--data", str(REPO / "configs/data/ellipses32.yaml"),
                        "--task", str(REPO / "configs/task/ct_sparse.yaml"), "--n", "1", "--steps", "1", "--n-samples", "1",
                        "--accelerator", "cpu", "--no-figures", "--output", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    task = yaml.safe_load((REPO / "configs/task/ct_sparse.yaml").read_text())["init_args"]
    assert m["task"]["sigma_y"] == task["sigma_y"]
    assert m["task"]["operator"]["init_args"]["n_angles"] == task["operator"]["init_args"]["n_angles"]
    assert m["cost"]["operator_calls"]["forward"] == 1
    assert _load(out, "samples").shape == (1, 1, *task["operator"]["init_args"]["shape"])


# ----------------------------------------------------------------------------------- bad input
def _corrupt(art) -> Path:
    p = art["dir"] / "corrupt.pt"
    p.write_bytes(art["meas"].read_bytes()[:200])
    return p


def _nan_export(art) -> Path:
    p = art["dir"] / "nan.pt"
    d = torch.load(art["meas"], weights_only=True)
    d["y"][1, 0, 2, 3] = float("nan")
    torch.save(d, p)
    return p


def _inf_npy(art) -> Path:
    p = art["dir"] / "inf.npy"
    y = torch.load(art["meas"], weights_only=True)["y"].numpy().copy()
    y[0, 0, 0, 0] = np.inf
    np.save(p, y)
    return p


def _wrong_shape_npy(art) -> Path:
    p = art["dir"] / "wrong_shape.npy"
    np.save(p, np.zeros((2, 1, 8, 22), dtype=np.float32))
    return p


def _wrong_shape_export(art) -> Path:
    p = art["dir"] / "wrong_shape_export.pt"
    d = torch.load(art["meas"], weights_only=True)
    d["y"] = d["y"][..., :22].contiguous()
    torch.save(d, p)
    return p


RAW_TASK = ["--operator", '{"class_path": "diffpost.operators.ct.CT", "init_args": {"shape": [1, 16, 16], "n_angles": 8}}',
            "--sigma-y", str(SIGMA_Y)]
BAD_CASES = {
    # name: (measurement file maker, extra args, words the message must contain)
    "other operator": (lambda a: a["meas_other_op"], [], ["trained for", "CT"]),
    "other sigma_y": (lambda a: a["meas_other_sigma"], [], ["sigma_y = 0.05", "sigma_y = 0.1"]),
    "wrong shape": (_wrong_shape_npy, RAW_TASK, ["shape", "(2, 1, 8, 22)"]),
    "wrong shape in export": (_wrong_shape_export, [], ["'y' has shape (5, 1, 8, 22)"]),
    "NaN in export": (_nan_export, [], ["non-finite"]),
    "Inf in raw": (_inf_npy, RAW_TASK, ["non-finite"]),
    "corrupt file": (_corrupt, [], ["corrupt"]),
    "missing file": (lambda a: a["dir"] / "nope.pt", [], ["not found", "nope.pt"]),
    "raw without task": (_wrong_shape_npy, [], ["--operator", "--sigma-y"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_exits_2_and_writes_nothing(art, case, capsys, tmp_path):
    make, extra, words = BAD_CASES[case]
    out = tmp_path / "out"
    code = sample.main(["--checkpoint", str(art["ucos"]), "--measurements", str(make(art)), "--steps", "1",
                        "--accelerator", "cpu", "--output", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("sample.py: error: "), err
    assert all(w in err[-1] for w in words), err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output folder, no temporary sibling


def test_bad_checkpoint_and_method(art, capsys, tmp_path):
    out = tmp_path / "out"
    bad_ckpt = tmp_path / "bad.ckpt"
    bad_ckpt.write_bytes(art["ucos"].read_bytes()[:1000])
    cases = [(["--checkpoint", str(tmp_path / "missing.ckpt")], "not found"),
             (["--checkpoint", str(bad_ckpt)], "corrupt"),
             (["--checkpoint", str(art["ucos"]), "--method", "dps"], "DPS runs on a PriorModel"),
             (["--checkpoint", str(art["prior"]), "--method", "ucos"], "UCoS runs on a UCoSModel"),
             (["--checkpoint", str(art["prior"]), "--method", "nonesuch"], "neither a method name"),
             (["--checkpoint", str(art["prior"]), "--method", "dps", "--method-arg", "zeta=-1"], "zeta must be"),
             (["--checkpoint", str(art["prior"]), "--method", "dps", "--method-arg", "zeta=nan"], "zeta must be"),
             (["--checkpoint", str(art["prior"]), "--method", "dps", "--method-arg", "nope=1"], "nope"),
             (["--checkpoint", str(art["prior"]), "--method-arg", "zeta=1"], "explicit --method")]
    for args, word in cases:
        code = sample.main([*args, "--measurements", str(art["meas"]), "--output", str(out), "--steps", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and word in err[-1], (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


def test_existing_results_are_kept_without_overwrite(art, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "samples.pt").write_bytes(b"earlier results")
    code = sample.main(["--checkpoint", str(art["ucos"]), "--measurements", str(art["meas"]), "--output", str(out)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "samples.pt").read_bytes() == b"earlier results"


def test_failure_while_sampling_leaves_nothing(art, capsys, tmp_path):
    """DPS with an absurd step size diverges mid-run: exit 1 with a message, the temporary folder removed."""
    out = tmp_path / "deep" / "out"  # missing parents are created for the run and removed again
    code = sample.main(["--checkpoint", str(art["prior"]), "--measurements", str(art["meas"]), "--n", "1", "--steps", "3",
                        "--n-samples", "1", "--method", "dps", "--method-arg", "zeta=1e30", "--accelerator", "cpu",
                        "--output", str(out)])
    assert code == 1 and "diverged" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_input_subprocess_exit_status(art, tmp_path):
    """The real process: exit status 2, one line on stderr, nothing written."""
    out = tmp_path / "out"
    r = run_script("--checkpoint", art["ucos"], "--measurements", art["meas_other_op"], "--output", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sample.py: error: this UCoS model was trained for"), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_documents_every_option_with_an_example():
    parser = sample.build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"checkpoint", "method", "method_arg", "task", "measurements", "data", "operator",
                                         "sigma_y", "split", "n", "steps", "n_samples", "batch_size", "seed", "devices",
                                         "num_nodes", "accelerator", "precision", "output", "overwrite", "debug"}
    assert [a.option_strings[0] for a in options if "e.g." not in (a.help or "")] == []


# ----------------------------------------------------------------------------------- signals, stale folders, output checks
def _temporaries(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")] if parent.exists() else []


def test_sigterm_stops_sampling_and_leaves_nothing(art, tmp_path):
    """SIGTERM (scancel, docker stop) mid-run: exit 128 + 15, one line saying so, the temporary folder
    removed. Catches: a handler that is never installed (the run finishes and exits 0) or a clean-up
    that skips the temporary folder."""
    import signal
    import time

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(a) for a in _ucos_args(art, out, "--no-figures")]
    args[args.index("--steps") + 1] = "3000"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    deadline = time.time() + 120
    while not _temporaries(tmp_path, "out") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert _temporaries(tmp_path, "out"), "the run never started sampling"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_folder_of_a_killed_run_is_removed(art, capsys, tmp_path):
    """A folder left by SIGKILL (its owner process is gone) is removed and reported by the next run; one
    owned by a live process is left alone."""
    import json as _json
    import socket

    dead = tmp_path / ".out.tmp-deadbeef0000"
    dead.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer exists
    (dead / ".owner.json").write_text(_json.dumps({"host": socket.gethostname(), "pid": child.pid}))
    alive = tmp_path / ".out.tmp-a11ve0000000"
    alive.mkdir()
    (alive / ".owner.json").write_text(_json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    out = tmp_path / "out"
    assert sample.main([str(a) for a in _ucos_args(art, out, "--n", 1, "--no-figures")]) == 0
    err = capsys.readouterr().err
    assert f"removed {dead}" in err and f"{alive} belongs to a running process" in err
    assert not dead.exists() and alive.exists() and (out / "samples.pt").exists()


@pytest.mark.parametrize("where", ["under a file", "file itself"])
def test_unusable_output_is_refused_before_the_model_loads(art, capsys, tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "out" if where == "under a file" else blocker
    code = sample.main(["--checkpoint", str(tmp_path / "no_such.ckpt"), "--measurements", str(art["meas"]), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    # the output is checked first: the missing checkpoint is not even looked at
    assert code == 2 and "--output" in err[-1] and "no_such" not in err[-1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_torchrun_two_processes_shard_without_loss_or_duplicates(art, ucos_runs, tmp_path):
    """``torchrun --nproc-per-node 2`` starts both ranks itself (as srun does): they agree on one work
    folder, every measurement is sampled exactly once, and the result equals the one-process run
    (float32, batch size 1 on both: bit-identical)."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
           *map(str, _ucos_args(art, out, "--devices", 2, "--batch-size", 1, "--no-figures"))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=str(REPO))
    assert r.returncode == 0, r.stderr[-3000:]
    index = _load(out, "index")
    assert index.tolist() == _load(ucos_runs[1], "index").tolist()  # all 5, once each, in input order
    assert torch.equal(_load(out, "samples"), _load(ucos_runs[1], "samples"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["world_size"] == 2 and len(m["cost"]["peak_memory_bytes_per_rank"]) == 2
    assert f"→ {out}" in r.stderr  # the summary names the output
    assert list(tmp_path.iterdir()) == [out]


def test_quickstart_calls_sample_py_with_arguments_it_accepts():
    """scripts/quickstart.py's sampling step, parsed by sample.py's own parser (a renamed or removed flag
    broke the quickstart once: ``--sampler`` after the switch to ``--method``)."""
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "scripts" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    args = quickstart.build_parser().parse_args([])
    cmd = quickstart.sample_command("last.ckpt", "out", args)
    assert cmd[1] == "scripts/sample.py"
    parsed = sample.build_parser().parse_args(cmd[2:])
    assert (parsed.method, parsed.steps, parsed.n_samples) == ("ucos", args.steps, args.n_samples)
