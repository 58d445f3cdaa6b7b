"""The pure parts of ``scripts/benchmark.py posterior`` (the run itself takes hours: docs/benchmarks.md).

- ``steps_for_nfe`` turns the common NFE budget into each method's step count: checked by running every
  shipped method config at the step count it returns and counting the network calls (catches a method
  whose NFE is not affine in its steps, or a changed step/NFE relation that would silently give methods
  different budgets in the table);
- ``--report`` renders the tables of a saved JSON report (the docs tables come from it).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from diffpost.config import build
from diffpost.posterior.base import PosteriorMethod

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("diffpost_benchmark_dispatcher", REPO / "scripts" / "benchmark.py")
dispatcher = importlib.util.module_from_spec(_spec)  # by path: PyPI has unrelated `benchmark` packages
_spec.loader.exec_module(dispatcher)
bench = dispatcher.load("posterior")

METHOD_CONFIGS = sorted((REPO / "configs" / "method").glob("*.yaml"))


def _nfe(method, steps: int) -> int:
    model, op, y = bench.stand_in(method, shape=(1, 4, 4))  # another size than steps_for_nfe's own
    return method(model, op, y, 0.1, num_steps=steps, n_samples=1).nfe


@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("budget", [50, 100])
def test_steps_for_nfe_meets_the_common_budget(path, budget):
    method = build(yaml.safe_load(path.read_text()), PosteriorMethod)
    steps = bench.steps_for_nfe(method, budget)
    nfe = _nfe(method, steps)
    if nfe <= 1:  # one-call estimators (UCoS's MMSE) have no step count to choose
        return
    per_step = _nfe(method, steps + 1) - nfe
    assert abs(nfe - budget) <= max(per_step / 2, 1), (steps, nfe, per_step)


def test_report_renders_the_saved_tables(tmp_path, capsys):
    rows = [{"method": "tikhonov (prior std 0.3)", "psnr": 26.4, "ssim": 0.84, "s_per_sample": 0.01, "nfe": 0},
            {"method": "ddrm", "note": "DDRM needs an operator with a closed-form SVD"},
            {"method": "dps (common, zeta=1.0)", "psnr": 32.6, "ssim": 0.94, "psnr_one": 30.4, "coverage90": 0.74,
             "nfe": 100, "vjp": 100, "forward": 100.0, "adjoint": 100.0, "s_per_sample": 2.2, "vs_unconditional": 3.1}]
    report = {"args": {"n_test": 4, "k": 4}, "prior_training": {"steps": 1299},
              "tasks": {"ct_sparse": {"task": "ct_sparse", "sigma_y": 0.03125, "ucos_training": {"steps": 632},
                                      "rows": rows, "summary": {"note": "none"}}},
              "rmp_curves": {"superres_x4": {"rows": [{"total_nfe": 50, "k": 4, "rmp": 20.5, "dps": 19.0, "diffpir": 21.0,
                                                       "daps": 18.0, "ucos": 22.0, "dps_10x": 23.0}],
                                              "ucos_mmse_psnr": 24.25}},
              "peak_memory": {"ct_sparse": {"idle_mb": 918.0, "over_idle_mb": {"dps": 100.4, "ddrm": float("nan")}}}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert dispatcher.main(["posterior", "--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "### ct_sparse (σ_y = 0.03125, 4 test measurements × 4 samples; UCoS trained 632 steps, prior 1299 steps)" in out
    assert "| dps (common, zeta=1.0) | 32.6 | 0.94 | 30.4 | 0.74 | 100 | 100 | 100 | 100 | 2.2 | 3.1 |" in out
    assert "| ddrm | DDRM needs an operator with a closed-form SVD |" in out
    assert "| 50 | 4 | 20.50 | – | 19.00 | 21.00 | 18.00 | 22.00 | 23.00 |" in out
    assert "UCoS one-call MMSE estimate: 24.25 dB" in out
    assert "| task | idle (MB) | dps | ddrm |" in out and "| ct_sparse | 918 | 100 | – |" in out  # NaN: cannot run there


def test_report_refuses_a_missing_or_foreign_file_in_one_line(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"args": {"n_test": 1, "k": 1}, "prior_training": {"steps": 1}, "tasks": {}}))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "other.json").write_text(json.dumps([1, 2]))
    for bad in ("missing.json", "broken.json", "other.json"):
        with pytest.raises(SystemExit, match=rf"--report .*{bad}: not a saved report"):
            dispatcher.main(["posterior", "--report", str(good), str(tmp_path / bad)])
        assert capsys.readouterr().out == ""  # nothing printed for the good file either
