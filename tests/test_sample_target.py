"""scripts/sample_target.py: samples of trained diffusion samplers from checkpoints, metrics, bad input.

Tiny DDS checkpoints are built once per module: one trained for a few steps (plumbing, invariances)
and two untrained ones, whose zero-initialised control makes the sampler the reference chain, so the
written log-weights have a closed form, ``log w = log π̃(x) − log N(x; 0, σ_r² I)`` (METHODS §6.2),
checked against the written samples. Bad-input cases call ``main`` in-process; one subprocess run
checks the real exit status.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from diffpost.targets import Funnel, FourMode2D, GaussianMixture
from lightning_modules.dds import DDSModule

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "sample_target.py"
_spec = importlib.util.spec_from_file_location("diffpost_sample_target_script", SCRIPT)
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

STEPS = 8


def _save(module: DDSModule, path: Path, steps: int) -> Path:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sample_target")
    small = dict(n_steps=STEPS, hidden=16, batch_size=64, eval_samples=64, steps_per_epoch=4)
    with torch.random.fork_rng(devices=[]):  # network init and Lightning seed the global RNG
        torch.manual_seed(0)
        paths = {
            "trained": _save(DDSModule(FourMode2D(3.0), lr=1e-2, **small), d / "trained.ckpt", 4),
            "funnel0": _save(DDSModule(Funnel(3), sigma_r=1.5, **small), d / "funnel0.ckpt", 0),
            "normal0": _save(DDSModule(GaussianMixture([1.0], [[0.0, 0.0]], 1.0), **small), d / "normal0.ckpt", 0),
        }
    paths["dir"] = d
    return paths


def _run(ckpt: Path, out: Path, *extra) -> int:
    return script.main(["--checkpoint", str(ckpt), "--output", str(out), "--device", "cpu", *map(str, extra)])


def _load(out: Path, name: str) -> torch.Tensor:
    return torch.load(out / f"{name}.pt", weights_only=True)


def _no_leftovers(parent: Path, name: str) -> None:
    stray = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    assert not stray, f"temporary folders left behind: {stray}"


# ------------------------------------------------------------------------------------------ results
def test_outputs_metrics_and_figure(ckpts):
    out = ckpts["dir"] / "trained_out"
    assert _run(ckpts["trained"], out, "--n", 400, "--batch-size", 128, "--reference-samples", 3000) == 0
    assert sorted(p.name for p in out.iterdir()) == ["log_weights.pt", "metrics.json", "samples.png", "samples.pt"]
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _no_leftovers(out.parent, out.name)
    x, log_w = _load(out, "samples").double(), _load(out, "log_weights").double()
    assert x.shape == (400, 2) and log_w.shape == (400,) and torch.isfinite(x).all() and torch.isfinite(log_w).all()
    m = json.loads((out / "metrics.json").read_text())
    # estimators recomputed independently (numpy) from the written files
    lw = log_w.numpy()
    mx = lw.max()
    assert m["log_Z_hat"] == pytest.approx(mx + math.log(np.exp(lw - mx).mean()), abs=1e-9)
    w = np.exp(lw - mx)
    assert m["ess_fraction"] == pytest.approx(w.sum() ** 2 / (len(w) * (w**2).sum()), rel=1e-9)
    assert m["log_Z"] == 0.0 and m["log_Z_error"] == pytest.approx(m["log_Z_hat"], abs=1e-12)
    modes = np.array([[3.0, 3.0], [-3.0, 3.0], [-3.0, -3.0], [3.0, -3.0]])
    nearest = ((x.numpy()[:, None, :] - modes[None]) ** 2).sum(-1).argmin(1)
    masses = np.bincount(nearest, minlength=4) / 400
    np.testing.assert_allclose(m["mode_masses"], masses, atol=1e-12)
    assert m["mode_weights"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert m["mode_mass_error"] == pytest.approx(np.abs(masses - [0.1, 0.2, 0.3, 0.4]).max())
    assert sum(m["mode_masses_weighted"]) == pytest.approx(1.0)
    assert m["sw2"] > 0 and m["reference_samples"] == 3000 and m["mmd_points"] == 400 and "mmd2" in m
    # cost: K control evaluations and K target gradients per sample, one log-density at the end
    assert m["cost_per_sample"] == {"network_evals": STEPS, "target_grad_evals": STEPS, "target_log_prob_evals": 1, "steps": STEPS}
    assert m["training"]["global_step"] == 4 and m["training"]["paths_simulated"] == 4 * 64
    assert m["settings"]["kind"] == "dds" and m["settings"]["target"]["class_path"] == "diffpost.targets.toy.FourMode2D"
    assert m["wall_time_s"] > 0


def test_samples_do_not_depend_on_batch_size(ckpts):
    """Project rule (issue 10): same machine and batch size → bit-identical; other batch sizes → equal in
    float64 (to rounding) and within a stated tolerance in float32, where matrix kernels may depend on
    the batch size (seen on AMD EPYC). Every sample has its own seed, so only rounding may differ."""
    outs = {}
    for name, bs in (("a", 3), ("b", 3), ("c", 7)):
        outs[name] = ckpts["dir"] / f"bs_{name}"
        assert _run(ckpts["trained"], outs[name], "--n", 10, "--batch-size", bs, "--seed", 5, "--no-figure") == 0
    assert torch.equal(_load(outs["a"], "samples"), _load(outs["b"], "samples"))
    assert torch.equal(_load(outs["a"], "log_weights"), _load(outs["b"], "log_weights"))
    x3, x7 = _load(outs["a"], "samples"), _load(outs["c"], "samples")
    w3, w7 = _load(outs["a"], "log_weights"), _load(outs["c"], "log_weights")
    # float32: 1e-4 of the scale over 8 steps of a small MLP (measured differences are ≤ 1e-6 or zero)
    assert torch.allclose(x3, x7, rtol=0, atol=1e-4 * float(x3.abs().max()))
    assert torch.allclose(w3, w7, rtol=0, atol=1e-4 * float(w3.abs().max()))
    assert not (outs["a"] / "samples.png").exists()
    # float64 through the module the script loads: equal to rounding
    module, _ = script.load_sampler(str(ckpts["trained"]), torch.device("cpu"))
    module = module.double()
    with torch.no_grad():
        a, la = module.sample(10, seed=5, batch_size=3)
        b, lb = module.sample(10, seed=5, batch_size=7)
    assert a.dtype == torch.float64
    assert torch.allclose(a, b, rtol=0, atol=1e-12) and torch.allclose(la, lb, rtol=0, atol=1e-10)


def test_untrained_sampler_gives_reference_importance_weights(ckpts):
    """u ≡ 0: the sampler is the stationary reference N(0, σ_r² I) and log w = log π̃(x) − log N(x; 0, σ_r²);
    for the funnel (d = 3, not plotted) and σ_r = 1.5 this is checked on the written files."""
    out = ckpts["dir"] / "funnel0_out"
    assert _run(ckpts["funnel0"], out, "--n", 3000) == 0
    assert sorted(p.name for p in out.iterdir()) == ["log_weights.pt", "metrics.json", "samples.pt"]  # 3-D: no figure
    x, log_w = _load(out, "samples").double(), _load(out, "log_weights").double()
    x1, rest = x[:, 0], x[:, 1:]
    log_pi = (-x1**2 / 18 - math.log(3.0) - 0.5 * math.log(2 * math.pi)
              - 0.5 * rest.square().sum(1) * torch.exp(-x1) - x1 - math.log(2 * math.pi))  # Neal's funnel, d = 3
    log_ref = -0.5 * x.square().sum(1) / 1.5**2 - 3 * math.log(1.5) - 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(log_w, log_pi - log_ref, rtol=0, atol=2e-4)
    # the samples are the reference law: per-coordinate std 1.5 (3000 samples: ±4%)
    assert torch.allclose(x.std(0), torch.full((3,), 1.5, dtype=torch.float64), rtol=0.06)
    m = json.loads((out / "metrics.json").read_text())
    assert "mode_masses" not in m and "sw2" in m  # the funnel has exact samples but no modes


def test_target_equal_to_reference_gives_exact_evidence(ckpts):
    """π = N(0, I) = the untrained DDS's law: every weight is Z = 1, so log Ẑ = 0 and ESS = N exactly."""
    out = ckpts["dir"] / "normal0_out"
    assert _run(ckpts["normal0"], out, "--n", 50, "--no-figure") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert abs(m["log_Z_hat"]) < 1e-5 and m["ess_fraction"] == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(_load(out, "log_weights"), torch.zeros(50), atol=1e-5)


# ------------------------------------------------------------------------------------------ refusals
def test_refuses_to_overwrite_unless_asked(ckpts, capsys):
    out = ckpts["dir"] / "ow"
    assert _run(ckpts["trained"], out, "--n", 6, "--seed", 1, "--no-figure") == 0
    first = _load(out, "samples")
    assert _run(ckpts["trained"], out, "--n", 6, "--seed", 2, "--no-figure") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert torch.equal(_load(out, "samples"), first)
    assert _run(ckpts["trained"], out, "--n", 6, "--seed", 2, "--no-figure", "--overwrite") == 0
    assert not torch.equal(_load(out, "samples"), first)
    _no_leftovers(out.parent, out.name)


def _bad_checkpoints(ckpts) -> dict[str, tuple[Path, str]]:
    d = ckpts["dir"]
    good = ckpts["trained"].read_bytes()
    (d / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    torch.save({"state_dict": {}, "diffpost": {"module": "lightning_modules.prior.ScorePriorModule"}}, d / "prior.ckpt")
    torch.save(torch.zeros(3), d / "tensor.ckpt")
    ck = torch.load(ckpts["trained"], weights_only=True)
    ck["hyper_parameters"]["target"] = {"class_path": "os.system", "init_args": {}}
    torch.save(ck, d / "untrusted.ckpt")
    return {"missing": (d / "nope.ckpt", "not found"), "truncated": (d / "truncated.ckpt", "corrupt"),
            "other_module": (d / "prior.ckpt", "DiffusionSamplerBase"), "not_a_dict": (d / "tensor.ckpt", "dictionary"),
            "untrusted_target": (d / "untrusted.ckpt", "refusing")}


def test_bad_checkpoints_exit_2_and_write_nothing(ckpts, capsys):
    for name, (path, message) in _bad_checkpoints(ckpts).items():
        out = ckpts["dir"] / f"bad_{name}"
        assert _run(path, out, "--n", 4) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("sample_target.py: error:") and message in err, (name, err)
        assert not out.exists(), name
        _no_leftovers(out.parent, out.name)


def test_bad_options_exit_2(ckpts, capsys):
    for extra in (["--n", 1], ["--batch-size", 0], ["--mmd-points", -3], ["--device", "nonsense"]):
        assert _run(ckpts["trained"], ckpts["dir"] / "bad_opt", *extra) == 2, extra
        assert "error" in capsys.readouterr().err
    assert not (ckpts["dir"] / "bad_opt").exists()


def test_divergence_exits_1_without_partial_results(ckpts, monkeypatch, capsys):
    """A target whose gradient turns NaN from its 4th call: the real simulation guard (not a mocked
    error) raises at step 3, and the script prints one line naming the sampler and step, exits 1 and
    writes nothing. Catches: a guard missing from the path, or results written before sampling ends."""
    calls = {"n": 0}
    real = FourMode2D.grad_log_prob

    def poisoned(self, x):
        calls["n"] += 1
        g = real(self, x)
        return g if calls["n"] < 4 else torch.full_like(g, float("nan"))

    monkeypatch.setattr(FourMode2D, "grad_log_prob", poisoned)
    out = ckpts["dir"] / "diverged"
    assert _run(ckpts["trained"], out, "--n", 4) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("sample_target.py: error: the sampler diverged: DDS diffusion sampler step 3/8"), err
    assert "gradient is not finite (NaN" in err
    assert not out.exists()
    _no_leftovers(out.parent, out.name)


def test_command_line_exit_status(ckpts):
    out = ckpts["dir"] / "cli_missing"
    r = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", str(ckpts["dir"] / "missing.ckpt"), "--output", str(out)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120, cwd=str(REPO))
    assert r.returncode == 2 and "checkpoint not found" in r.stderr and not out.exists()
    assert len(r.stderr.strip().splitlines()) == 1


def test_benchmark_reuses_the_metrics_and_figure_helpers(tmp_path):
    """scripts/benchmark.py unnormalised (which calls sample_metrics with fixed reference samples and
    plot_samples_2d with a shared frame), tiny: exact and ULA on the four-mode target (table 1), and
    table 2 on the BOD posterior: rdMC at its defaults, then ULA and MALA given exactly rdMC's cost."""
    spec = importlib.util.spec_from_file_location("diffpost_benchmark_dispatcher", REPO / "scripts" / "benchmark.py")
    dispatcher = importlib.util.module_from_spec(spec)  # by path: PyPI has unrelated `benchmark` packages
    spec.loader.exec_module(dispatcher)
    out, fig = tmp_path / "b.json", tmp_path / "b.png"
    rc = dispatcher.main(["unnormalised", "--quick", "--targets", "four_mode", "--samplers", "exact", "ula",
                          "--rdmc-targets", "bod", "--rdmc-samples", "20", "--n-reference", "200",
                          "--n-samples", "200", "--out", str(out), "--figure", str(fig)])
    assert rc == 0 and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads(out.read_text())
    runs = {s: v["runs"][0] for s, v in rep["targets"]["four_mode"]["samplers"].items()}
    assert set(runs) == {"exact", "ula"}
    assert runs["ula"]["evals_per_sample"] == 32
    assert sum(runs["exact"]["mode_masses"]) == pytest.approx(1.0) and runs["exact"]["mode_mass_error"] < 0.1
    assert rep["markdown"].count("| four_mode |") == 2
    t2 = {s: v["runs"][0] for s, v in rep["rdmc"]["bod"]["samplers"].items()}
    assert t2["ula"]["evals_per_sample"] == round(t2["rdmc"]["evals_per_sample"])  # equal budget, seed by seed
    assert t2["mala"]["evals_per_sample"] == round(t2["rdmc"]["evals_per_sample"])
    assert rep["markdown_rdmc"].count("| bod |") == 3


def test_sigterm_stops_sampling_cleanly(ckpts, tmp_path):
    """SIGTERM (scancel, docker stop) while the script imports or samples: exit 128 + 15, one line saying
    so, nothing written. Catches a script that installs no handler (killed by the default action: exit
    −15 and a possible half-written folder) or one that swallows the signal and finishes (exit 0)."""
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--checkpoint", str(ckpts["trained"]), "--output", str(out),
                             "--device", "cpu", "--n", "20000", "--no-figure"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=str(REPO))
    time.sleep(1.5)  # still importing torch/Lightning (several seconds here): the handler must already be in place
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("sample_target.py: interrupted by SIGTERM; nothing was written"), err
    assert list(tmp_path.iterdir()) == []
