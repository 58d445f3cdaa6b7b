"""scripts/gpu_benchmark.py is prepared for a GPU this sandbox does not have: its ``--dry-run`` (tiny
sizes, any device) runs every measurement path and writes the JSON and markdown it would write there."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("_gpu_benchmark", ROOT / "scripts" / "gpu_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_measures_every_variant_and_method(tmp_path):
    assert load_script().main(["--dry-run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    (size, r), = report["sizes"].items()
    assert set(r["training"]) == {"fp32", "bf16", "bf16 + compile"}
    assert all(t["images_per_s"] > 0 and torch.isfinite(torch.tensor(t["loss"])) for t in r["training"].values())
    methods = {s["method"]: s for s in r["sampling"]}
    assert set(methods) == {"UCoS (Heun)", "DPS", "DiffPIR"}
    assert len({s["nfe"] for s in methods.values()}) == 1  # the same NFE for every method
    assert methods["UCoS (Heun)"]["operator_calls"]["forward"] == 0 and methods["DPS"]["vjp"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "| bf16 + compile |" in md and "| DPS |" in md


def test_without_cuda_it_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_script().main(["--out", str(tmp_path / "out")]) == 2
    assert "no CUDA device; use --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
