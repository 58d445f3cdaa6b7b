"""``python scripts/benchmark.py posterior``: every posterior method on trained models, six tasks, one run.

One unconditional prior is trained once on 32² ellipse phantoms and one UCoS model per task (the
same U-Net, the same wall-time budget each); the tasks are the repository's configs
(configs/task/{ct_sparse, ct_limited, blur_gauss, superres_x4, inpaint_random, mri_x4}.yaml). Every
method in configs/method/ runs
- at its paper's operating point (``default_num_steps``) and at one common NFE budget;
- with its key hyper-parameters (``PosteriorMethod.tuning``) chosen on the validation split by the
  recorded grid (posterior-mean PSNR of one sample per validation measurement at the common budget).
Reported per task: PSNR/SSIM of the mean of K samples and of one sample, 90 % coverage, NFE,
vector-Jacobian products and operator calls per sample, wall time per sample, its ratio to
unconditional sampling with the same prior and number of network calls, and UCoS's time relative to
the cheapest baseline that reaches UCoS's PSNR. Models are cached in ``--workdir`` and reused when
their settings match (``--retrain`` to force). ``--quick``: short training, few measurements.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TASKS = ("ct_sparse", "ct_limited", "blur_gauss", "superres_x4", "inpaint_random", "mri_x4")


# ============================================================================ models
def make_net(base_channels: int):
    from diffpost.nets import UNet

    return UNet(base_channels=base_channels, channel_mult=[1, 2, 2], attn_levels=[], num_res_blocks=1)


def task(name: str):
    """``(operator, sigma_y)`` of configs/task/<name>.yaml."""
    from diffpost.config import build

    args = yaml.safe_load((REPO / "configs" / "task" / f"{name}.yaml").read_text())["init_args"]
    return build(args["operator"]), float(args["sigma_y"])


def datamodule(op, sigma_y: float, args):
    from datamodules import Ellipses, InverseProblemDataModule

    return InverseProblemDataModule(Ellipses(size=args.size, length=200_000, seed=0), op, sigma_y=sigma_y,
                                    batch_size=args.batch_size, n_val=args.n_val, n_test=args.n_test)


def trained(kind: str, name: str, op, sigma_y: float, args) -> tuple[str, dict]:
    """Path of a trained checkpoint for ``kind`` ("prior" or "ucos"), trained now unless a cached one
    with the same settings exists."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from lightning_modules.prior import ScorePriorModule
    from lightning_modules.ucos import UCoSModule

    minutes = args.prior_minutes if kind == "prior" else args.ucos_minutes
    settings = {"kind": kind, "task": name, "minutes": minutes, "base_channels": args.base_channels,
                "size": args.size, "batch_size": args.batch_size}
    if kind == "ucos":  # the prior never sees y: one prior serves every task, whichever task a run starts with
        settings.update(operator=op.config(), sigma_y=sigma_y)
    ckpt, meta = Path(args.workdir) / f"{kind}_{name}.ckpt", Path(args.workdir) / f"{kind}_{name}.json"
    if ckpt.is_file() and meta.is_file() and not args.retrain:
        saved = json.loads(meta.read_text())
        if saved["settings"] == json.loads(json.dumps(settings)):
            return str(ckpt), saved["training"]
    pl.seed_everything(0, verbose=False)
    net = make_net(args.base_channels)
    module = ScorePriorModule(net) if kind == "prior" else UCoSModule(net, operator=op, sigma_y=sigma_y)
    trainer = pl.Trainer(accelerator="auto", devices=1, max_time={"minutes": minutes}, max_steps=10**7, logger=False,
                         enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False,
                         callbacks=[EMAWeightAveraging(decay=0.995)], gradient_clip_val=1.0, default_root_dir=args.workdir,
                         enable_progress_bar=False)
    t = time.time()
    trainer.fit(module, datamodule(op, sigma_y, args))
    training = {"steps": trainer.global_step, "seconds": time.time() - t}
    trainer.save_checkpoint(ckpt)
    meta.write_text(json.dumps({"settings": settings, "training": training}))
    print(f"trained {kind} {name}: {training['steps']} steps in {training['seconds']:.0f} s", flush=True)
    return str(ckpt), training


# ============================================================================ evaluation
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def module_for(method, prior, ucos):
    """The module ``method`` runs on: the UCoS model for UCoS methods, else the prior."""
    from diffpost.posterior.base import UCoSModel

    return ucos if issubclass(method.model_type, UCoSModel) else prior


def shipped_method(name: str):
    """``configs/method/<name>.yaml``, built (read by ``resolve_method``, as ``sample.py --method`` does)."""
    from diffpost.config import build
    from diffpost.posterior.base import PosteriorMethod
    from lightning_modules.inference import resolve_method

    return build(resolve_method(name), PosteriorMethod)


def stand_in(method, shape=(1, 2, 2)) -> tuple:
    """``(model, operator, y)``: a zero-cost model of the kind ``method`` needs (its denoiser returns 0),
    a denoising operator and a zero measurement, float64; for counting network calls."""
    from diffpost.operators import Denoising
    from diffpost.posterior.base import PriorModel, UCoSModel

    op = Denoising(shape)
    prior = PriorModel(denoiser=lambda x, s: 0 * x, x_shape=shape, dtype=torch.float64)
    ucos = UCoSModel(aux=lambda z, s: 0 * z, operator=op, sigma_y=0.1, x_shape=shape, dtype=torch.float64)
    return module_for(method, prior, ucos), op, torch.zeros(1, *shape, dtype=torch.float64)


def steps_for_nfe(method, target: int) -> int:
    """The step count that gives about ``target`` network calls (NFE is affine in the step count for
    every method; measured on the zero-cost ``stand_in``)."""
    model, op, y = stand_in(method)
    n2, n4 = (method(model, op, y, 0.1, num_steps=k, n_samples=1).nfe for k in (2, 4))
    slope = (n4 - n2) / 2
    return max(1, round((target - (n2 - 2 * slope)) / slope)) if slope > 0 else 1


def run_method(module, method, x, y, op, sigma_y, steps: int, k: int, seed: int) -> dict:
    from diffpost.image_quality import coverage, psnr, ssim
    from lightning_modules.sampling import sample_posterior

    op.reset_counts()
    rss0 = _rss_mb()
    t = time.perf_counter()
    out = sample_posterior(module, y, method=method, operator=op, sigma_y=sigma_y, index=torch.arange(len(y)),
                           n_samples=k, num_steps=steps, seed=seed)
    seconds = time.perf_counter() - t
    s, n = out.samples.float(), out.samples.shape[0] * out.samples.shape[1]
    row = {"steps": steps, "psnr": psnr(s.mean(1), x).mean().item(), "ssim": ssim(s.mean(1), x).mean().item(),
           "psnr_one": psnr(s[:, 0], x).mean().item(), "nfe": out.nfe, "vjp": out.vjp,
           "forward": out.operator_calls["forward"] / n, "adjoint": out.operator_calls["adjoint"] / n,
           "s_per_sample": seconds / n, "rss_growth_mb": _rss_mb() - rss0}
    if s.shape[1] > 1 and not out.mean_only:
        row["coverage90"] = coverage(s, x, 0.9).mean().item()
    return row


def unconditional_seconds_per_nfe(prior_module, n: int) -> float:
    """Wall time of one network call per sample in plain unconditional sampling with the same prior."""
    t = time.perf_counter()
    with torch.no_grad():
        _, nfe = prior_module.sample(n, num_steps=10, sampler="euler")
    return (time.perf_counter() - t) / (n * nfe)


def tune(module, method, x_val, y_val, op, sigma_y, steps: int, seed: int):
    """The grid point of ``method.tuning`` with the best validation PSNR (one sample each)."""
    from itertools import product

    from diffpost.config import build, class_path

    grid = dict(method.tuning)
    if not grid:
        return method, {}
    best, record = None, []
    for values in product(*grid.values()):
        cand = build({"class_path": class_path(method), "init_args": {**method.init_config, **dict(zip(grid, values))}})
        try:
            p = run_method(module, cand, x_val, y_val, op, sigma_y, steps, 1, seed)["psnr"]
        except Exception as e:  # a diverging setting is a result of the grid, not a crash of the benchmark
            p = float("nan")
            print(f"  tune {cand.name} {dict(zip(grid, values))}: {type(e).__name__}: {e}"[:200], flush=True)
        record.append({**dict(zip(grid, values)), "val_psnr": p})
        if p == p and (best is None or p > best[0]):
            best = (p, cand)
    return (best[1] if best else method), {"grid": {k: list(v) for k, v in grid.items()}, "results": record}


def tikhonov(op, sigma_y, x_val, y_val, x, y) -> dict:
    from diffpost.image_quality import psnr, ssim

    def solve(yy, std):
        return op.normal_solve(op.adjoint(yy), sigma_y**2 / std**2, tol=1e-6, max_iter=300)

    std = max((0.05, 0.1, 0.2, 0.3, 0.5, 1.0), key=lambda s: psnr(solve(y_val, s), x_val).mean().item())
    t = time.perf_counter()
    xh = solve(y, std)
    return {"method": f"tikhonov (prior std {std})", "psnr": psnr(xh, x).mean().item(), "ssim": ssim(xh, x).mean().item(),
            "s_per_sample": (time.perf_counter() - t) / len(x), "nfe": 0}


def evaluate_task(name: str, prior_ckpt: str, args, names: list[str]) -> dict:
    from diffpost.posterior.base import OperatorMismatchError
    from lightning_modules.checkpoint import load_module

    op, sigma_y = task(name)
    dm = datamodule(op, sigma_y, args)
    val, test = dm.first_items("val", args.n_tune), dm.first_items("test", args.n_test)
    x_val, y_val, x, y = val["x"], val["y"], test["x"], test["y"]
    ucos_ckpt, ucos_training = trained("ucos", name, op, sigma_y, args)
    prior, ucos = load_module(prior_ckpt), load_module(ucos_ckpt)
    per_nfe = unconditional_seconds_per_nfe(prior, args.n_test * args.k)
    rows, tuning = [tikhonov(op, sigma_y, x_val, y_val, x, y)], {}
    for mname in names:
        method = shipped_method(mname)
        module = module_for(method, prior, ucos)
        try:
            method.check_setup(module.posterior_model(), op, sigma_y)
        except OperatorMismatchError as e:
            rows.append({"method": mname, "note": str(e)[:120]})
            continue
        common = steps_for_nfe(method, args.nfe)
        method, tuning[mname] = tune(module, method, x_val, y_val, op, sigma_y, common, args.seed)
        points = {"common": common}
        if method.default_num_steps and not args.quick:
            points["paper"] = method.default_num_steps
        for label, steps in points.items():
            try:
                row = run_method(module, method, x, y, op, sigma_y, steps, args.k, args.seed)
            except Exception as e:
                rows.append({"method": f"{mname} ({label})", "note": f"{type(e).__name__}: {e}"[:120]})
                continue
            row["method"] = f"{mname} ({label}{', ' + ', '.join(f'{k}={getattr(method, k)}' for k in method.tuning) if method.tuning else ''})"
            row["vs_unconditional"] = row["s_per_sample"] / max(per_nfe * row["nfe"], 1e-12)
            rows.append(row)
            print(f"  {name}: {row['method']}: PSNR {row['psnr']:.2f}, {row['nfe']} NFE, {row['s_per_sample']:.3g} s/sample",
                  flush=True)
    ucos_rows = [r for r in rows if r["method"].startswith("ucos (") and "psnr" in r]
    summary = {}
    if ucos_rows:
        u = ucos_rows[0]
        reach = [r for r in rows if "psnr" in r and r.get("nfe") and not r["method"].startswith("ucos")
                 and r["psnr"] >= u["psnr"]]
        summary = ({"ucos_over_best_reaching_baseline": u["s_per_sample"] / min(r["s_per_sample"] for r in reach),
                    "baseline": min(reach, key=lambda r: r["s_per_sample"])["method"]} if reach
                   else {"note": f"no prior-based method reaches UCoS's PSNR {u['psnr']:.2f} dB"})
    return {"task": name, "sigma_y": sigma_y, "operator": op.config(), "ucos_training": ucos_training,
            "unconditional_s_per_nfe": per_nfe, "rows": rows, "tuning": tuning, "summary": summary}


RMP_TASKS = ("superres_x4", "inpaint_random")
RMP_BUDGETS = (50, 100, 200, 400, 600)


#: the columns of the RMP comparison: mean estimators (one run each) and K-sample means, then DPS at 10×
CURVE_MEANS = ("rmp", "rmp_vp")
CURVE_SAMPLERS = ("dps", "diffpir", "daps", "ucos")
CURVE_COLUMNS = (*CURVE_MEANS, *CURVE_SAMPLERS, "dps_10x")


def rmp_curves(name: str, prior_ckpt: str, args) -> dict:
    """Issue 9's comparison on a trained prior: RMP's posterior mean (VE and VP chains) at total budgets
    of 50–600 NFE against the mean of K samples of DPS, DiffPIR, DAPS and UCoS with the SAME total NFE
    (K × NFE per sample), DPS also at 10× that total, and UCoS's one-call MMSE estimate. Key weights as
    shipped. ``args.curve_columns`` picks the columns (a later run can add one to a saved report)."""
    from diffpost.config import build
    from diffpost.image_quality import psnr
    from diffpost.posterior.base import PosteriorMethod
    from lightning_modules.checkpoint import load_module
    from lightning_modules.sampling import sample_posterior

    op, sigma_y = task(name)
    dm = datamodule(op, sigma_y, args)
    test = dm.first_items("test", args.n_test)
    ucos_ckpt, _ = trained("ucos", name, op, sigma_y, args)
    prior, ucos = load_module(prior_ckpt), load_module(ucos_ckpt)
    columns = list(args.curve_columns)
    names = {c.removesuffix("_10x") for c in columns}
    methods = {n: shipped_method(n) for n in names}

    def mean_psnr(method, k: int, nfe: int) -> float:
        out = sample_posterior(module_for(method, prior, ucos), test["y"], method=method, operator=op, sigma_y=sigma_y, index=test["index"],
                               n_samples=k, num_steps=steps_for_nfe(method, nfe), seed=args.seed)
        return psnr(out.samples.float().mean(1), test["x"]).mean().item()

    rows = []
    for budget in RMP_BUDGETS:
        row = {"total_nfe": budget, "k": args.k}
        for c in columns:
            if c in CURVE_MEANS:
                row[c] = mean_psnr(methods[c], 1, budget)
            elif c == "dps_10x":
                row[c] = mean_psnr(methods["dps"], args.k, 10 * budget // args.k)
            else:  # K samples of budget/K NFE each
                row[c] = mean_psnr(methods[c], args.k, max(1, budget // args.k))
        rows.append(row)
        print(f"  {name} RMP curve: {row}", flush=True)
    res = {"task": name, "rows": rows}
    if "ucos" in names:
        mmse = build({"class_path": "diffpost.posterior.ucos.UCoSMMSE", "init_args": {}}, PosteriorMethod)
        res["ucos_mmse_psnr"] = mean_psnr(mmse, 1, 1)
    return res


def md_curves(res: dict) -> str:
    cols = ["total_nfe", "k", *CURVE_COLUMNS]
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else ("–" if v is None else str(v))  # noqa: E731
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in res["rows"]]
    mmse = res.get("ucos_mmse_psnr")
    return "\n".join(out) + (f"\n\nUCoS one-call MMSE estimate: {mmse:.2f} dB" if mmse is not None else "")


def memory_probe(name: str, method_name: str | None, args) -> float:
    """In this (fresh) process: load the task's models and test data, run ``method_name`` at the common
    budget on them (nothing when None), return the process's peak resident size in MB."""
    from diffpost.posterior.base import OperatorMismatchError
    from diffpost.samplers.errors import SamplerDivergedError
    from lightning_modules.checkpoint import load_module

    op, sigma_y = task(name)
    test = datamodule(op, sigma_y, args).first_items("test", args.n_test)
    prior_ckpt, _ = trained("prior", "all", op, sigma_y, args)
    ucos_ckpt, _ = trained("ucos", name, op, sigma_y, args)
    prior, ucos = load_module(prior_ckpt), load_module(ucos_ckpt)
    if method_name is not None:
        method = shipped_method(method_name)
        module = module_for(method, prior, ucos)
        try:
            method.check_setup(module.posterior_model(), op, sigma_y)
        except OperatorMismatchError:
            return float("nan")
        try:
            run_method(module, method, test["x"], test["y"], op, sigma_y, steps_for_nfe(method, args.nfe), args.k, args.seed)
        except SamplerDivergedError:  # at its shipped weight (not tuned here): the peak up to the divergence
            pass
    return _rss_mb()


def peak_memory(name: str, names: list[str], args) -> dict:
    """Each method's peak memory at the common budget, in its own process (a process that trained or ran
    other methods keeps their peak), over a process that only loaded the same models and data."""
    import subprocess
    import sys

    def probe(method_name: str | None) -> float:
        cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "posterior", "--tasks", name,
               "--memory-probe", method_name or "-", *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                                                       ("prior_minutes", "ucos_minutes", "size", "base_channels", "batch_size",
                                                        "n_val", "n_test", "k", "nfe", "seed", "workdir"))]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])["maxrss_mb"]

    idle = probe(None)
    rows = {m: probe(m) - idle for m in names}
    for m, mb in rows.items():
        print(f"  {name}: {m}: peak memory {mb:.1f} MB over {idle:.0f} MB", flush=True)
    return {"idle_mb": idle, "over_idle_mb": rows}


def md_memory(res: dict) -> str:
    out = ["| task | idle (MB) | " + " | ".join(next(iter(res.values()))["over_idle_mb"]) + " |",
           "|" + "---|" * (2 + len(next(iter(res.values()))["over_idle_mb"]))]
    for name, r in res.items():
        cells = ["–" if v != v else f"{v:.0f}" for v in r["over_idle_mb"].values()]
        out.append(f"| {name} | {r['idle_mb']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


COLUMNS = ["method", "psnr", "ssim", "psnr_one", "coverage90", "nfe", "vjp", "forward", "adjoint", "s_per_sample",
           "vs_unconditional"]


def md(rows: list[dict]) -> str:
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else ("–" if v is None else str(v))  # noqa: E731
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        out.append(f"| {r['method']} | {r['note']} |" + " |" * (len(COLUMNS) - 2) if "note" in r
                   else "| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |")
    return "\n".join(out)


def task_markdown(res: dict, n_test: int, k: int, prior_training: dict) -> str:
    return (f"\n### {res['task']} (σ_y = {res['sigma_y']}, {n_test} test measurements × {k} samples; UCoS trained "
            f"{res['ucos_training']['steps']} steps, prior {prior_training['steps']} steps)\n\n{md(res['rows'])}\n"
            f"\n{res['summary']}\n")


def curves_markdown(name: str, res: dict) -> str:
    return f"\n### RMP against K-sample means at equal total NFE: {name} (PSNR of the mean, dB)\n\n{md_curves(res)}\n"


def report_markdown(report: dict) -> str:
    a = report["args"]
    out = [task_markdown(res, a["n_test"], a["k"], report["prior_training"]) for res in report["tasks"].values()]
    out += [curves_markdown(name, res) for name, res in report.get("rmp_curves", {}).items()]
    if report.get("peak_memory"):
        out.append("\n### Peak memory over loading (MB, one process per method)\n\n" + md_memory(report["peak_memory"]))
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py posterior", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"configs/task names (default: {' '.join(TASKS)})")
    p.add_argument("--methods", nargs="+", help="configs/method names (default: all)")
    p.add_argument("--prior-minutes", type=float, default=20.0, help="prior training budget (default 20)")
    p.add_argument("--ucos-minutes", type=float, default=6.0, help="training budget per UCoS model (default 6)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--n-tune", type=int, default=8, help="validation measurements used for tuning (default 8)")
    p.add_argument("--n-test", type=int, default=16)
    p.add_argument("--k", type=int, default=4, help="samples per measurement (default 4)")
    p.add_argument("--nfe", type=int, default=100, help="the common NFE budget (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1-minute training, 4 test and 4 tuning measurements, "
                   "2 samples, common budget only (about 20 minutes on 2 CPU cores)")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--rmp-curves", choices=["yes", "no", "only"], default="yes",
                   help="RMP against K-sample means at equal total NFE on super-resolution and inpainting (issue 9)")
    p.add_argument("--curve-columns", nargs="+", choices=CURVE_COLUMNS, default=list(CURVE_COLUMNS),
                   help="the RMP comparison's columns (default: all; e.g. --curve-columns rmp_vp)")
    p.add_argument("--workdir", default="runs/benchmark_posterior")
    p.add_argument("--out", default="outputs/benchmark_posterior.json")
    p.add_argument("--peak-memory", action="store_true",
                   help="only each method's peak memory at the common budget, one process per method (cached models)")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    p.add_argument("--report", nargs="+", metavar="JSON",
                   help="print the markdown tables of earlier runs' JSON files and exit (e.g. --report outputs/benchmark_posterior_*.json)")
    args = p.parse_args(argv)
    if args.report:
        tables = []
        for path in args.report:  # all read before anything is printed: one bad file, one line, no tables
            try:
                tables.append(report_markdown(json.loads(Path(path).read_text())))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise SystemExit(f"benchmark.py posterior: --report {path}: not a saved report ({type(e).__name__}: {e})") from None
        print("\n".join(tables))
        return 0
    if args.quick:
        args.prior_minutes, args.ucos_minutes, args.n_test, args.n_tune, args.k, args.n_val = 1.0, 1.0, 4, 4, 2, 4
        args.workdir += "_quick"
    from lightning_modules.inference import method_names

    if args.memory_probe:  # the child of --peak-memory
        print(json.dumps({"maxrss_mb": memory_probe(args.tasks[0], None if args.memory_probe == "-" else args.memory_probe, args)}))
        return 0
    names = args.methods or method_names()
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.time()
    op, sigma_y = task(args.tasks[0])
    prior_ckpt, prior_training = trained("prior", "all", op, sigma_y, args)  # the prior never sees y
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "args": vars(args), "prior_training": prior_training, "tasks": {}}

    def save() -> None:  # after every task: a long run that stops keeps what it finished
        report["seconds"] = time.time() - t0
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        tmp = Path(f"{args.out}.tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(args.out)

    if args.peak_memory:
        report["peak_memory"] = {name: peak_memory(name, names, args) for name in args.tasks}
        save()
        print("\n### Peak memory over loading (MB, one process per method)\n\n" + md_memory(report["peak_memory"]), flush=True)
        print(f"wrote {args.out}")
        return 0
    for name in args.tasks if args.rmp_curves != "only" else ():
        report["tasks"][name] = res = evaluate_task(name, prior_ckpt, args, names)
        save()
        print(task_markdown(res, args.n_test, args.k, prior_training), flush=True)
    if args.rmp_curves != "no":
        report["rmp_curves"] = {}
        for name in [t for t in args.tasks if t in RMP_TASKS]:
            report["rmp_curves"][name] = res = rmp_curves(name, prior_ckpt, args)
            save()
            print(curves_markdown(name, res), flush=True)
    save()
    print(f"wrote {args.out} ({report['seconds'] / 60:.1f} min)")
    return 0
