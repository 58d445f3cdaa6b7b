"""``python scripts/benchmark.py unnormalised``: samplers of densities known up to a constant (METHODS §6).

Table 1, every sampler on every target at a matched budget of evaluations per sample, over seeds:

- ULA, MALA (per-chain step adaptation in the first half), started at ``N(0, scale² I)``; sample ``i``
  is the last state of chain ``i``; one evaluation = one gradient (MALA: density and gradient together);
- DDS and PIS (``lightning_modules.dds.DDSModule``, trained per target and seed): ``K`` network and
  ``K`` gradient evaluations plus one density per sample at sampling (``2K + 1 ≤ budget``); training
  cost (steps × paths × evaluations, seconds) is reported separately; optionally the Schrödinger-bridge
  refinement of DDS (``--bridge``) and of PIS (``--bridge-pis``), ``BridgeModule`` by IPF from scratch;
- ``exact``: the target's own sampler, the Monte Carlo floor of each metric at this sample size.

Table 2, rdMC at its DEFAULT settings (its inner sample sizes follow from its tolerance, so its cost is
an output) against ULA and MALA given the same number of evaluations per sample (rdMC's measured
cost, seed by seed), on ``--rdmc-targets``.

Targets: the 2-D four-mode mixture at radius 8 (where ULA misses modes), the 40-mode mixture, Neal's
funnel (d = 10), a linear-Gaussian posterior (d = 10), a GMM posterior (d = 6, three modes with mass),
Bayesian logistic regression (d = 6; reference samples from long MALA runs, log Z by importance
sampling from the Laplace approximation), the 2-D biochemical-oxygen-demand posterior (reference: long
MALA runs; log Z by quadrature) and a 32² Gaussian-random-field deblurring posterior (d = 1024; ULA,
MALA). Metrics (``diffpost.metrics``): sliced W2 and MMD² against reference samples, per-mode mass error
(largest over modes, nearest-mode assignment), |log Ẑ − log Z| where the method estimates Z, ESS
(importance ESS fraction for DDS/PIS/bridge; for ULA/MALA the autocorrelation ESS per kept draw of the
second half of the chains, smallest over coordinates), the RMS error of the sample mean, wall time.

Prints markdown, writes JSON and a PNG grid of samples over the true density for the 2-D targets.

    python scripts/benchmark.py unnormalised --quick          # small sizes, one seed: minutes on 2 CPU cores
    python scripts/benchmark.py unnormalised                  # default (about an hour on a loaded 2-core CPU)
    python scripts/benchmark.py unnormalised --targets four_mode funnel --samplers ula mala dds --seeds 5
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ._unnormalised_runs import (REFERENCE_SEED, SAMPLERS, TARGETS, Case, Run, make_case, prepare_reference, run_diffusion,
                                 run_exact, run_mala, run_rdmc, run_ula)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: table 2's targets (rdMC at its defaults against ULA/MALA at its cost)
RDMC_TARGETS = ("four_mode", "forty_mode", "linear_gaussian", "funnel", "gmm_posterior", "logistic", "bod")


def _script(name: str):
    """``scripts/<name>.py`` as a module (sample_target's metric and figure helpers)."""
    spec = importlib.util.spec_from_file_location(f"_diffpost_script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ================================================================================ metrics
def evaluate(case: Case, run: Run, metrics_fn, seed: int, mmd_points: int) -> dict[str, Any]:
    """Metrics of one run against the case's reference samples (fixed projections for SW2)."""
    x = run.x.detach().double()
    row: dict[str, Any] = {"seconds": run.seconds, "evals_per_sample": run.evals, "ess": run.ess, **run.extra}
    if not bool(torch.isfinite(x).all()):
        row["failed"] = "non-finite samples"
        return row
    ref = case.reference.double()
    m = metrics_fn(case.target, x, run.log_w, seed=REFERENCE_SEED, mmd_points=mmd_points, reference=ref)
    row["sw2"], row["mmd2"] = m["sw2"], m["mmd2"]
    if "mode_masses" in m and len(m["mode_masses"]) > 1:
        row["mode_masses"] = m["mode_masses"]
        row["mode_mass_error"] = m["mode_mass_error"]
    if run.log_w is not None and case.ref_log_Z is not None:
        row["log_Z_hat"] = m["log_Z_hat"]
        row["log_Z_error"] = abs(m["log_Z_hat"] - case.ref_log_Z)
    row["mean_rmse"] = float((x.mean(0) - ref.mean(0)).norm() / math.sqrt(x.shape[1]))
    return row


# ================================================================================ report
COLUMNS = [("sw2", "SW2"), ("mmd2", "MMD²"), ("mode_mass_error", "mode-mass err"), ("log_Z_error", "abs. log Z err"),
           ("ess", "ESS"), ("mean_rmse", "mean RMSE"), ("evals_per_sample", "evals/sample"), ("seconds", "wall s"),
           ("train_seconds", "train s")]


def _fmt(values: list[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "—"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return f"{mean:.3g}"
    if max(vals) == min(vals):  # e.g. fixed evaluation counts
        return f"{mean:.6g}"
    return f"{mean:.3g} ± {statistics.stdev(vals):.2g}"


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, _ in COLUMNS:
        vals = [r.get(key) for r in rows if r.get(key) is not None]
        if vals:
            out[key] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
    failed = [r["failed"] for r in rows if "failed" in r]
    if failed:
        out["failed"] = failed
    return out


def markdown(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    head = "| target | sampler | " + " | ".join(c for _, c in COLUMNS) + " |\n|---|---|" + "---|" * len(COLUMNS) + "\n"
    lines, notes = [], []
    for tname, by_sampler in results.items():
        for sname, rows in by_sampler.items():
            if not rows:  # e.g. ULA/MALA at the cost of an rdMC run that stopped with an error
                continue
            cells = [_fmt([r.get(k) for r in rows]) for k, _ in COLUMNS]
            failed = sum("failed" in r for r in rows)
            label = sname + (f" ({failed}/{len(rows)} failed)" if failed else "")
            lines.append(f"| {tname} | {label} | " + " | ".join(cells) + " |")
            notes += [f"- {tname}, {sname}, seed {r.get('seed')}: {r['failed'][:160]}" for r in rows if "failed" in r]
    return head + "\n".join(lines) + "\n" + ("\nFailed runs:\n" + "\n".join(notes) + "\n" if notes else "")


def figure(path: Path, cases: dict[str, Case], samples: dict[str, dict[str, torch.Tensor]], plot_fn) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [n for n in samples if cases[n].target.dim == 2]
    if not names:
        return
    cols = [s for s in SAMPLERS if any(s in samples[n] for n in names)]
    fig = Figure(figsize=(2.6 * len(cols), 2.6 * len(names)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), len(cols), squeeze=False)
    for i, n in enumerate(names):
        ref = cases[n].reference.double()  # one frame per row: the target's mass, wherever the samples went
        lo, hi = torch.quantile(ref, 0.001, dim=0), torch.quantile(ref, 0.999, dim=0)
        pad = 0.15 * (hi - lo)
        frame = ((float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1])))
        for j, s in enumerate(cols):
            ax = axes[i][j]
            if s not in samples[n]:
                ax.set_axis_off()
                continue
            plot_fn(ax, cases[n].target, samples[n][s], max_points=1000, title=f"{n}: {s}", bounds=frame)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(os.fspath(tmp))
    os.replace(tmp, path)


def _write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o)) + "\n")
    os.replace(tmp, path)


def run_rdmc_table(targets, cases, n_samples, n_image, n_ref, n_rdmc, seeds, st, mmd_points, report, t_start):
    """Table 2: per target and seed, rdMC at its defaults, then ULA and MALA with the budget rdMC used."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for tname in targets:
        if tname not in cases:
            cases[tname] = make_case(tname, n_samples, n_image)
            prepare_reference(cases[tname], n_ref if tname != "image" else min(n_ref, 2000))
        base = cases[tname]
        case = Case(base.name, base.target, base.scale, base.step, n_rdmc, base.samplers, base.reference, base.ref_log_Z,
                    base.ref_info)
        rows: dict[str, list[dict[str, Any]]] = {"rdmc": [], "ula": [], "mala": []}
        for seed in range(seeds):
            try:
                run = run_rdmc(case, seed)
            except Exception as e:  # noqa: BLE001 - a diverging sampler is a result, not a crash
                rows["rdmc"].append({"seed": seed, "failed": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            rows["rdmc"].append({"seed": seed, **evaluate(case, run, st.sample_metrics, seed, mmd_points)})
            budget = max(3, round(run.evals))
            for sname, fn in (("ula", run_ula), ("mala", run_mala)):
                try:
                    rows[sname].append({"seed": seed, **evaluate(case, fn(case, budget, seed), st.sample_metrics, seed, mmd_points)})
                except Exception as e:  # noqa: BLE001
                    rows[sname].append({"seed": seed, "failed": f"{type(e).__name__}: {str(e)[:200]}"})
        out[tname] = rows
        for sname, r in rows.items():
            print(f"[{time.perf_counter() - t_start:6.0f}s]   {tname} (rdMC's cost): {sname:5s} " + ", ".join(
                f"{c} {_fmt([x.get(k) for x in r])}" for k, c in COLUMNS[:3] + COLUMNS[6:7] if any(x.get(k) is not None for x in r)), flush=True)
        report["rdmc"][tname] = {"n_samples": n_rdmc, "samplers": {s: {"runs": r, "summary": aggregate(r)} for s, r in rows.items()}}
    return out


# ================================================================================ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py unnormalised", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small budgets and sample sizes, one seed: minutes on 2 CPU cores")
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=None,
                   help="default: all but the bridges (add them with --bridge, --bridge-pis)")
    p.add_argument("--bridge", action="store_true", help="add the Schrödinger-bridge refinement of DDS (BridgeModule)")
    p.add_argument("--bridge-pis", action="store_true", help="add the Schrödinger-bridge refinement of PIS")
    p.add_argument("--seeds", type=int, default=None, help="seeds per (target, sampler) (default 3; quick 1)")
    p.add_argument("--budget", type=int, default=None, help="evaluations per sample (default 128; quick 32)")
    p.add_argument("--n-samples", type=int, default=None, help="samples per run (default 1000; quick 400)")
    p.add_argument("--n-image", type=int, default=None, help="samples per run on the image posterior (default 64; quick 32)")
    p.add_argument("--train-steps", type=int, default=None, help="DDS/PIS optimiser steps (default 150; quick 30)")
    p.add_argument("--train-batch", type=int, default=128, help="DDS/PIS paths per training step (default 128)")
    p.add_argument("--hidden", type=int, default=64, help="control network width (default 64)")
    p.add_argument("--rdmc-targets", nargs="*", choices=TARGETS, default=None,
                   help="targets of table 2, rdMC at its defaults vs ULA/MALA at its cost (default "
                        f"{' '.join(RDMC_TARGETS)}; none: skip)")
    p.add_argument("--rdmc-samples", type=int, default=None, help="samples per run in table 2 (default 500; quick 200)")
    p.add_argument("--n-reference", type=int, default=None, help="reference samples (default 5000; quick 2000)")
    p.add_argument("--mmd-points", type=int, default=1000, help="points per sample set in the MMD (default 1000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--out", default=None, help="JSON report (default runs/benchmark_unnormalised[_quick].json)")
    p.add_argument("--figure", default=None, help="PNG grid (default runs/benchmark_unnormalised[_quick].png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    q = args.quick
    budget = args.budget or (32 if q else 128)
    n_samples = args.n_samples or (400 if q else 1000)
    n_image = args.n_image or (32 if q else 64)
    train_steps = args.train_steps or (30 if q else 150)
    seeds = args.seeds or (1 if q else 3)
    rdmc_targets = list(RDMC_TARGETS) if args.rdmc_targets is None else args.rdmc_targets
    n_rdmc = args.rdmc_samples or (200 if q else 500)
    n_ref = args.n_reference or (2000 if q else 5000)
    stem = "runs/benchmark_unnormalised" + ("_quick" if q else "")
    args.out = args.out or stem + ".json"
    args.figure = args.figure or stem + ".png"
    samplers = list(args.samplers or [s for s in SAMPLERS if not s.startswith("bridge")])
    for flag, name in ((args.bridge, "bridge"), (args.bridge_pis, "bridge_pis")):
        if flag and name not in samplers:
            samplers.append(name)
    if min(budget, n_samples, n_image, train_steps, seeds, n_ref, n_rdmc, args.threads) < 1 or budget < 3:
        print("benchmark.py unnormalised: budgets, sizes, steps and seeds must be positive (budget >= 3)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  - sets its loggers' levels on import; quiet them afterwards

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(treespec|weights_only|does not have many workers|max_epochs).*")
    st = _script("sample_target")
    t_start = time.perf_counter()
    settings = {"budget": budget, "n_samples": n_samples, "n_image": n_image, "train_steps": train_steps,
                "train_batch": args.train_batch, "hidden": args.hidden, "seeds": seeds, "rdmc_targets": rdmc_targets,
                "rdmc_samples": n_rdmc, "n_reference": n_ref, "mmd_points": args.mmd_points, "samplers": samplers,
                "targets": args.targets, "bridge_phase_steps": max(1, train_steps // 2)}
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "threads": torch.get_num_threads(), "load_average_start": os.getloadavg(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "settings": settings, "command": " ".join(["python scripts/benchmark.py unnormalised", *(sys.argv[1:] if argv is None else argv)]),
        "targets": {}, "rdmc": {}}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    figure_samples: dict[str, dict[str, torch.Tensor]] = {}
    cases: dict[str, Case] = {}
    for tname in args.targets:
        case = make_case(tname, n_samples, n_image)
        prepare_reference(case, n_ref if tname != "image" else min(n_ref, 2000))
        cases[tname] = case
        results[tname] = {}
        figure_samples[tname] = {}
        print(f"[{time.perf_counter() - t_start:6.0f}s] {tname} (d = {case.target.dim}): {case.ref_info.get('reference')}", flush=True)
        for sname in samplers:
            if sname not in case.samplers or (sname == "exact" and not case.target.has("sample")):
                continue
            rows = []
            for seed in range(seeds):
                try:
                    if sname == "exact":
                        run = run_exact(case, seed)
                    elif sname == "ula":
                        run = run_ula(case, budget, seed)
                    elif sname == "mala":
                        run = run_mala(case, budget, seed)
                    else:
                        run = run_diffusion(case, sname, seed, budget, train_steps, args.train_batch, args.hidden,
                                            settings["bridge_phase_steps"])
                except Exception as e:  # noqa: BLE001 - a diverging sampler is a result, not a crash
                    rows.append({"seed": seed, "failed": f"{type(e).__name__}: {str(e)[:200]}"})
                    continue
                row = {"seed": seed, **evaluate(case, run, st.sample_metrics, seed, args.mmd_points)}
                rows.append(row)
                if seed == 0:
                    figure_samples[tname][sname] = run.x.detach().double()
            results[tname][sname] = rows
            print(f"[{time.perf_counter() - t_start:6.0f}s]   {sname:7s} " + ", ".join(
                f"{c} {_fmt([r.get(k) for r in rows])}" for k, c in COLUMNS[:5] if any(r.get(k) is not None for r in rows)), flush=True)
        report["targets"][tname] = {"dim": case.target.dim, "spec": _spec_or_none(case.target), "reference": case.ref_info,
                                    "log_Z": case.ref_log_Z, "samplers": {s: {"runs": r, "summary": aggregate(r)}
                                                                          for s, r in results[tname].items()}}
    rdmc_results = run_rdmc_table(rdmc_targets, cases, n_samples, n_image, n_ref, n_rdmc, seeds, st, args.mmd_points,
                                  report, t_start)
    report["seconds"] = time.perf_counter() - t_start
    report["machine"]["load_average_end"] = os.getloadavg()

    print(f"\n## Samplers at {budget} evaluations per sample ({seeds} seeds, mean ± std; "
          f"{n_samples} samples per run, image {n_image})\n")
    table = markdown(results)
    print(table)
    report["markdown"] = table
    if rdmc_results:
        print(f"\n## rdMC at its defaults against ULA and MALA at rdMC's cost ({n_rdmc} samples per run)\n")
        table2 = markdown(rdmc_results)
        print(table2)
        report["markdown_rdmc"] = table2
    _write_json(Path(args.out), report)
    fig_path = Path(args.figure)
    figure(fig_path, cases, figure_samples, st.plot_samples_2d)
    print(f"wrote {args.out} and {fig_path} in {report['seconds']:.0f} s")
    return 0


def _spec_or_none(target) -> dict[str, Any] | None:
    from diffpost.config import spec_of

    try:
        return spec_of(target)
    except TypeError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
