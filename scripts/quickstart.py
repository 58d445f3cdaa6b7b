#!/usr/bin/env python
"""Quickstart: train UCoS for sparse-view CT on 32² ellipse phantoms (CPU, ~5 min), then sample the
posterior of held-out measurements with NO forward-operator call in the sampling loop.

    python scripts/quickstart.py                 # train + sample (≈ 6–8 min on 2 cores)
    python scripts/quickstart.py --minutes 1     # a shorter, rougher run
    python scripts/quickstart.py --skip-train    # sample again from the newest run's last.ckpt

Each training run gets its own folder runs/quickstart_ucos/version_N/ (config.yaml, metrics.csv,
checkpoints/, images/) and the posterior of that run goes to its posterior/ (samples, mean, std, one PNG
per measurement, metrics.json): a second quickstart samples its own model, never an older last.ckpt.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "experiments", "quickstart_ucos.yaml")
#: where the config's CSV logger puts the runs (save_dir/name), one version_N folder each
RUNS = os.path.join(ROOT, "runs", "quickstart_ucos")


def run_versions() -> dict[int, str]:
    """``{N: folder}`` of the ``version_N`` run folders under ``RUNS``."""
    found = {}
    if os.path.isdir(RUNS):
        for name in os.listdir(RUNS):
            m = re.fullmatch(r"version_(\d+)", name)
            if m and os.path.isdir(os.path.join(RUNS, name)):
                found[int(m.group(1))] = os.path.join(RUNS, name)
    return found


def new_run(before: dict[int, str]) -> str:
    """The one run folder that training created (Lightning numbers runs; a re-run gets a new folder)."""
    created = sorted(set(run_versions()) - set(before))
    if len(created) != 1:
        sys.exit(f"quickstart: expected training to create one new run folder in {RUNS}, found {len(created)}")
    return run_versions()[created[0]]


def newest_trained_run() -> str:
    """The highest-numbered run folder that has a ``checkpoints/last.ckpt`` (for ``--skip-train``)."""
    for _, folder in sorted(run_versions().items(), reverse=True):
        if os.path.isfile(os.path.join(folder, "checkpoints", "last.ckpt")):
            return folder
    sys.exit(f"quickstart: no run with checkpoints/last.ckpt in {RUNS}; run without --skip-train first")


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    # Small 32² networks gain little from intra-op threads, and on a 2-core machine two OpenMP threads
    # competing with anything else ran 10-16x slower than one (measured); the user's setting wins.
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc != 0:
        sys.exit(f"quickstart: step failed with exit code {rc}: {' '.join(cmd)}")


def tikhonov_baseline(n: int) -> dict:
    """Best Tikhonov on the same held-out measurements (prior std tuned on validation data)."""
    import yaml

    from diffpost.config import build
    from diffpost.image_quality import psnr, ssim

    with open(CONFIG) as f:
        dm = build(yaml.safe_load(f)["data"])
    op, sy = dm.operator, dm.sigma_y

    def stack(split, k):
        items = dm.first_items(split, min(k, len(dm.dataset(split))))
        return items["x"], items["y"]

    xv, yv = stack("val", 16)
    x, y = stack("test", n)
    best = max((psnr(op.normal_solve(op.adjoint(yv), sy**2 / t**2, tol=1e-6, max_iter=300), xv).mean().item(), t)
               for t in (0.1, 0.2, 0.3, 0.5, 1.0))
    xh = op.normal_solve(op.adjoint(y), sy**2 / best[1] ** 2, tol=1e-6, max_iter=300)
    return {"psnr": psnr(xh, x).mean().item(), "ssim": ssim(xh, x).mean().item(), "prior_std": best[1]}


def sample_command(ckpt: str, out: str, args: argparse.Namespace) -> list[str]:
    """The ``scripts/sample.py`` call of step 2 (tests parse it with sample.py's own parser)."""
    return [sys.executable, "scripts/sample.py", "--checkpoint", ckpt, "--data", CONFIG, "--split", "test",
            "--n", str(args.n), "--n-samples", str(args.n_samples), "--steps", str(args.steps), "--method", "ucos",
            "--output", out, "--overwrite"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="training wall-time budget")
    p.add_argument("--n", type=int, default=16, help="held-out measurements to sample")
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip-train", action="store_true", help="sample the newest run's last.ckpt again")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    if args.skip_train:
        run_dir = newest_trained_run()
    else:
        mins = int(args.minutes)
        secs = int(round((args.minutes - mins) * 60))
        before = run_versions()
        run([sys.executable, "scripts/train.py", "fit", "--config", CONFIG,
             f"--trainer.max_time=00:00:{mins:02d}:{secs:02d}"])
        run_dir = new_run(before)
    ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
    if not os.path.exists(ckpt):
        sys.exit(f"quickstart: training wrote no checkpoint at {ckpt}")
    out = os.path.join(run_dir, "posterior")
    run(sample_command(ckpt, out, args))
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    agg = m.get("aggregate", m)
    tik = tikhonov_baseline(args.n)

    def val(key):
        v = agg.get(key)
        return v.get("mean") if isinstance(v, dict) else v

    print("\n=== UCoS quickstart: sparse-view CT (16 angles), 32² ellipses, σ_y = 0.03125 ===")
    print(f"held-out measurements: {args.n}, posterior samples each: {args.n_samples}, Heun steps: {args.steps}")
    cal = m.get("calibration", {})
    ref = dict(zip(cal.get("levels", []), cal.get("calibrated_reference", []))).get(0.9)
    reference = f" (a calibrated sampler: {ref:.2f} with {args.n_samples} samples)" if ref is not None else ""
    print(f"UCoS posterior mean : PSNR {val('psnr'):.2f} dB   SSIM {val('ssim'):.3f}   90% coverage {val('coverage_90'):.2f}{reference}")
    print(f"Tikhonov (tuned)    : PSNR {tik['psnr']:.2f} dB   SSIM {tik['ssim']:.3f}")
    print(f"operator calls while sampling: {m.get('cost', {}).get('operator_calls', agg.get('operator_calls'))}")
    print(f"checkpoint: {ckpt}")
    print(f"figures: {os.path.join(out, 'figures')}   metrics: {os.path.join(out, 'metrics.json')}")
    print(f"total time: {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
