"""``python scripts/benchmark.py scale``: UCoS at the sizes CT users work at (issue 12).

Sections (all in one process, so ratios are measured side by side on the same machine state):

- ``costs``: per-call CT ``A``/``Aᵀ`` (parallel and fan beam, 90–720 angles) against one forward of each
  U-Net config in configs/model/ at 64², 128², 256², 512² (a config is skipped where its attention
  would hold more than ``--max-attn-tokens`` tokens);
- ``precond``: UCoS preconditioners on 180-angle CT at 64², 128², 256² (``_scale_precond``);
- ``posterior``: UCoS vs DPS vs DiffPIR wall time per posterior sample, same untrained network
  (configs/model/prior_unet128.yaml) and same NFE; timing only, the network is NOT trained;
- ``training``: UCoS trained at 64² for a stated CPU budget, posterior-mean PSNR against tuned
  Tikhonov and DPS on a prior trained for the same budget (``_scale_study``).

``--quick`` shrinks every section (sizes, angles, budgets) to a few minutes. Prints markdown tables and
writes JSON (``--out``). Timings on a shared CPU are noisy: compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from . import _scale_precond as precond_part
from .ucos import _write, md_table

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIGS = ("prior_unet_small", "prior_unet32", "prior_unet64_rgb", "prior_unet128")
REF_NET = "prior_unet128"
SIGMA_Y = 0.03125  # the CT tasks' σ_y (physical units: the same noise level at every resolution)


def timed(fn, repeats: int = 2) -> float:
    """Seconds per call: one warm-up, then the best of ``repeats`` (the least disturbed by other jobs)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def unet_spec(name: str) -> dict:
    """The network spec of configs/model/<name>.yaml for one grey channel."""
    import yaml

    net = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())["init_args"]["net"]
    args = dict(net["init_args"], in_channels=1, out_channels=1)
    args.pop("dropout", None)
    return {"class_path": net["class_path"], "init_args": args}


def build_net(name: str):
    from diffpost.config import build

    return build(unet_spec(name)).eval()


def attention_tokens(name: str, size: int) -> int:
    args = unet_spec(name)["init_args"]
    levels = args.get("attn_levels", [])
    return max([(size >> lv) ** 2 for lv in levels], default=0)


def operators(size: int, n_angles: int):
    from diffpost.operators import CT, FanBeamCT

    return {"parallel": CT((1, size, size), n_angles=n_angles),
            "fan": FanBeamCT((1, size, size), n_angles=n_angles)}


def costs(sizes, angles, configs, max_tokens: int, log) -> tuple[list, list]:
    net_rows, op_rows = [], []
    for size in sizes:
        x = torch.randn(1, 1, size, size)
        sig = torch.ones(1)
        ref = None
        for name in configs:
            tokens = attention_tokens(name, size)
            if tokens > max_tokens:
                net_rows.append({"size": size, "config": name, "forward_ms": None,
                                 "note": f"skipped: attention over {tokens} tokens"})
                continue
            net = build_net(name)
            with torch.no_grad():
                ms = 1e3 * timed(lambda: net(x, sig))
            xg = x.clone().requires_grad_(True)
            ms_vjp = 1e3 * timed(lambda: torch.autograd.grad(net(xg, sig).sum(), xg))
            n_par = sum(p.numel() for p in net.parameters())
            net_rows.append({"size": size, "config": name, "params_M": n_par / 1e6, "forward_ms": ms,
                             "forward_backward_ms": ms_vjp})
            log(f"  {size}² {name}: forward {ms:.0f} ms, forward+backward {ms_vjp:.0f} ms")
            if name == REF_NET:
                ref = ms
            del net
        for n_angles in angles:
            for geometry, op in operators(size, n_angles).items():
                y = op(x)
                row = {"size": size, "angles": n_angles, "geometry": geometry,
                       "A_ms": 1e3 * timed(lambda: op(x)), "At_ms": 1e3 * timed(lambda: op.adjoint(y))}
                if ref:
                    row["A_over_unet128"], row["At_over_unet128"] = row["A_ms"] / ref, row["At_ms"] / ref
                op_rows.append(row)
                log(f"  {size}² {geometry} {n_angles} angles: A {row['A_ms']:.0f} ms, Aᵀ {row['At_ms']:.0f} ms")
    return net_rows, op_rows


def random_factors(pre) -> None:
    """Fill a lazy preconditioner with random factors of its real shapes (timing only, no build)."""
    g = torch.Generator().manual_seed(0)
    state = {k: torch.rand(v.shape, generator=g, dtype=v.dtype) for k, v in pre.state_dict().items()}
    if "basis" in state:
        state["basis"] = torch.linalg.qr(state["basis"])[0]
    pre.load_state_dict(state)


def posterior_times(sizes, heun_steps: int, n_angles: int, log) -> list[dict]:
    """Seconds per posterior sample (one measurement, one sample) with the same untrained U-Net."""
    from diffpost.posterior import PriorModel, UCoSModel
    from diffpost.posterior.diffpir import DiffPIR
    from diffpost.posterior.dps import DPS
    from diffpost.posterior.ucos import UCoS
    from diffpost.precond import EDMDenoiser
    from diffpost.random import make_generator
    from diffpost.ucos import LowRankDiagonalPreconditioner, UCoSDenoiser, default_preconditioner

    rows = []
    nfe = 2 * heun_steps - 1
    for size in sizes:
        op = operators(size, n_angles)["parallel"]
        net = build_net(REF_NET)
        y = op(torch.zeros(1, *op.x_shape)) + SIGMA_Y * torch.randn(1, *op.y_shape, generator=make_generator(0))
        pre = default_preconditioner(op, SIGMA_Y, 4.0)
        if isinstance(pre, LowRankDiagonalPreconditioner):
            random_factors(pre)  # its apply cost is what counts here; the build is timed in `precond`
        ucos_model = UCoSModel(x_shape=op.x_shape, aux=UCoSDenoiser(net, pre), operator=op, sigma_y=SIGMA_Y)
        prior_model = PriorModel(x_shape=op.x_shape, denoiser=EDMDenoiser(net))
        runs = {"UCoS (Heun)": (UCoS(sampler="heun"), ucos_model, heun_steps),
                "DPS": (DPS(zeta=1.0), prior_model, nfe),
                "DiffPIR": (DiffPIR(), prior_model, nfe)}
        base = None
        for name, (method, model, steps) in runs.items():
            t = time.perf_counter()
            out = method(model, op, y, SIGMA_Y, num_steps=steps, n_samples=1, generator=make_generator(1))
            secs = time.perf_counter() - t
            base = base or secs
            rows.append({"size": size, "method": name, "nfe": out.nfe, "vjp": out.vjp,
                         "forward_calls": out.operator_calls["forward"], "adjoint_calls": out.operator_calls["adjoint"],
                         "seconds_per_sample": secs, "over_ucos": secs / base})
            log(f"  {size}² {name}: {secs:.1f} s per sample, NFE {out.nfe}, A/Aᵀ {out.operator_calls}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["costs", "precond", "posterior", "training"],
                   choices=["costs", "precond", "posterior", "training"])
    p.add_argument("--quick", action="store_true", help="small sizes and budgets (a few minutes)")
    p.add_argument("--sizes", type=int, nargs="+", help="costs: default 64 128 256 512 (quick: 64 128)")
    p.add_argument("--angles", type=int, nargs="+", help="costs: default 90 180 360 720 (quick: 90 180)")
    p.add_argument("--precond-sizes", type=int, nargs="+", help="default 64 128 256 (quick: 32 64)")
    p.add_argument("--precond-kinds", nargs="+", default=list(precond_part.KINDS), choices=precond_part.KINDS)
    p.add_argument("--posterior-sizes", type=int, nargs="+", help="default 64 128 256 (quick: 64)")
    p.add_argument("--heun-steps", type=int, default=3, help="posterior timing: UCoS Heun steps; DPS/DiffPIR get 2k−1")
    p.add_argument("--max-attn-tokens", type=int, default=4096)
    p.add_argument("--train-minutes", type=float, help="training: per model (default 6; quick 1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (the sandbox shares 2 cores)")
    p.add_argument("--out", default="runs/benchmark_scale.json")
    args = p.parse_args(argv)
    q = args.quick
    sizes = args.sizes or ([64, 128] if q else [64, 128, 256, 512])
    angles = args.angles or ([90, 180] if q else [90, 180, 360, 720])
    psizes = args.precond_sizes or ([32, 64] if q else [64, 128, 256])
    post_sizes = args.posterior_sizes or ([64] if q else [64, 128, 256])
    minutes = args.train_minutes or (1.0 if q else 6.0)
    torch.set_num_threads(args.threads)
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                          "threads": args.threads, "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "args": vars(args), "sigma_y": SIGMA_Y}
    t0 = time.time()
    if "costs" in args.sections:
        print("## Operator and denoiser cost per call (batch 1)")
        net_rows, op_rows = costs(sizes, angles, MODEL_CONFIGS[-1:] if q else MODEL_CONFIGS, args.max_attn_tokens, print)
        report["denoisers"], report["operators"] = net_rows, op_rows
        print(md_table(net_rows, ["size", "config", "params_M", "forward_ms", "forward_backward_ms", "note"]))
        print(md_table(op_rows, ["size", "angles", "geometry", "A_ms", "At_ms", "A_over_unet128", "At_over_unet128"]))
    if "precond" in args.sections:
        print("## UCoS preconditioners (CT, 180 angles)")
        rows = []
        for size in psizes:
            net_ms = None
            if attention_tokens(REF_NET, size) <= args.max_attn_tokens:
                net = build_net(REF_NET)
                with torch.no_grad():
                    net_ms = 1e3 * timed(lambda: net(torch.randn(1, 1, size, size), torch.ones(1)))
            rows += precond_part.compare(size, 180, net_ms=net_ms, sigma_y=SIGMA_Y, quick=q, kinds=args.precond_kinds,
                                         log=print)
        report["preconditioners"] = rows
        print(md_table(rows, precond_part.COLUMNS))
        print("today's `auto` beyond 64² (randomized SVD, rank 8√d, float64), bytes from shapes: " + ", ".join(
            f"{s}²: {precond_part.todays_default_bytes(s):.0f} MB" for s in (128, 256, 512)))
    if "posterior" in args.sections:
        print("## Wall time per posterior sample (untrained prior_unet128 network, same NFE)")
        report["posterior"] = posterior_times(post_sizes, args.heun_steps, 180, print)
        print(md_table(report["posterior"], ["size", "method", "nfe", "vjp", "forward_calls", "adjoint_calls",
                                             "seconds_per_sample", "over_ucos"]))
    if "training" in args.sections:
        from . import _scale_study

        print(f"## Training study at 64² ({minutes:g} CPU minutes per model)")
        report["training"] = _scale_study.run(minutes, quick=q, sigma_y=SIGMA_Y, log=print)
        print(md_table(report["training"]["rows"], _scale_study.COLUMNS))
    report["wall_seconds"] = time.time() - t0
    _write(args.out, report)
    return 0
