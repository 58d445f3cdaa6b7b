#!/usr/bin/env python
"""What a GPU measures that this CPU cannot (issue 12): one prepared run, < 8 minutes on one H200.

    python scripts/gpu_benchmark.py --out runs/gpu_benchmark          # on a CUDA machine
    python scripts/gpu_benchmark.py --dry-run --out /tmp/gpu_dry       # tiny sizes, any machine (a test runs it)

For each image size (default 256², CT with 180 angles, σ_y = 0.03125, the U-Net of
configs/model/prior_unet128.yaml, as in configs/experiments/ucos_ct256_gpu.yaml):
- the UCoS preconditioner's build time on the device (``auto``: low-rank plus diagonal);
- UCoS training throughput (images/s, ``UCoSModule.ucos_loss`` + AdamW step, phantoms pre-rendered so
  data loading is excluded) and peak memory for fp32, bf16 autocast, and bf16 + ``torch.compile``
  (compiled in place, as ``compile: true`` does; the first steps, which compile, are timed apart);
- sampling: posterior samples/s for UCoS (Heun) and DPS and DiffPIR at the same NFE with the same
  (untrained: timing only) network, in bf16 autocast, with peak memory and operator calls.
Writes ``results.json`` and ``results.md`` (a markdown table for docs/benchmarks.md) under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIGMA_Y = 0.03125


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def autocast(device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def net_spec(dry: bool) -> dict:
    if dry:
        return {"class_path": "diffpost.nets.UNet",
                "init_args": {"base_channels": 8, "channel_mult": [1, 2], "attn_levels": [1], "num_res_blocks": 1}}
    import yaml

    net = yaml.safe_load((ROOT / "configs" / "model" / "prior_unet128.yaml").read_text())["init_args"]["net"]
    return {"class_path": net["class_path"], "init_args": dict(net["init_args"], in_channels=1, out_channels=1)}


def make_module(size: int, n_angles: int, dry: bool, device, compile_net: bool = False):
    """A ``UCoSModule`` as the GPU configs build it; ``compile_net``: in place, as ``compile: true`` does
    (the dry run traces with TorchDynamo's ``eager`` backend: inductor's C++ build takes minutes on a CPU)."""
    from diffpost.config import build
    from diffpost.operators import CT
    from lightning_modules.ucos import UCoSModule

    op = CT((1, size, size), n_angles=n_angles)
    module = UCoSModule(build(net_spec(dry)), operator=op, sigma_y=SIGMA_Y, lr=2e-4).to(device)
    if compile_net:
        module.aux.net.compile(**({"backend": "eager"} if dry else {}))
    return module


def phantoms(size: int, n: int, device) -> torch.Tensor:
    from datamodules.sources import Ellipses

    src = Ellipses(size=size, length=10_000, seed=0)
    t = time.perf_counter()
    x = torch.stack([src[i] for i in range(n)])
    return x.to(device), n / (time.perf_counter() - t)


def train_throughput(module, x, *, bf16: bool, warmup: int, steps: int, device) -> dict:
    from diffpost.random import make_generator

    opt = torch.optim.AdamW(module.parameters(), lr=2e-4)
    module.train()
    g = make_generator(0, device=device)

    def step():
        sigma = module.density.sample(x.shape[0], g, dtype=x.dtype, device=device)
        with autocast(device, bf16):
            loss = module.ucos_loss(x, sigma, g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    reset_peak(device)
    t = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    secs = time.perf_counter() - t
    return {"images_per_s": steps * x.shape[0] / secs, "step_ms": 1e3 * secs / steps, "warmup_s": first,
            "peak_mem_MB": peak_mb(device), "loss": loss.item()}


def sampling(module, x, *, heun_steps: int, chains: int, device) -> list[dict]:
    """UCoS vs DPS vs DiffPIR, one measurement repeated over ``chains`` chains, bf16 autocast."""
    from diffpost.posterior import PriorModel
    from diffpost.posterior.diffpir import DiffPIR
    from diffpost.posterior.dps import DPS
    from diffpost.precond import EDMDenoiser
    from diffpost.random import make_generator

    module.eval()
    op = module.operator
    y = op(x[:1]) + SIGMA_Y * torch.randn(1, *op.y_shape, generator=make_generator(1, device=device), device=device)
    nfe = 2 * heun_steps - 1
    prior = PriorModel(x_shape=op.x_shape, denoiser=EDMDenoiser(module.aux.net), device=device)
    ucos = module.posterior_model()
    from diffpost.posterior.ucos import UCoS

    runs = {"UCoS (Heun)": (UCoS(sampler="heun"), ucos, heun_steps), "DPS": (DPS(zeta=1.0), prior, nfe),
            "DiffPIR": (DiffPIR(), prior, nfe)}
    rows = []
    for name, (method, model, steps) in runs.items():
        reset_peak(device)
        gens = [make_generator(100 + i, device=device) for i in range(chains)]
        with autocast(device, True):
            sync(device)
            t = time.perf_counter()
            out = method(model, op, y, SIGMA_Y, num_steps=steps, n_samples=chains, generator=gens)
            sync(device)
        secs = time.perf_counter() - t
        rows.append({"method": name, "nfe": out.nfe, "vjp": out.vjp, "operator_calls": out.operator_calls,
                     "samples_per_s": chains / secs, "seconds_per_sample": secs / chains, "peak_mem_MB": peak_mb(device)})
    return rows


def markdown(report: dict) -> str:
    lines = [f"Device: {report['machine']['device']}; torch {report['machine']['torch']}; "
             f"command: `{report['command']}`", ""]
    for size, r in report["sizes"].items():
        lines += [f"**{size}²** (CT {r['n_angles']} angles; preconditioner `{r['preconditioner']}` built in {r['precond_build_s']:.1f} s, "
                  f"{r['precond_MB']:.1f} MB; phantom rendering {r['phantoms_per_s']:.0f} images/s on one CPU process)", "",
                  "| training | images/s | step ms | first steps s | peak MB |", "|---|---|---|---|---|"]
        for name, t in r["training"].items():
            lines.append(f"| {name} | {t['images_per_s']:.1f} | {t['step_ms']:.1f} | {t['warmup_s']:.1f} | {t['peak_mem_MB'] or '–'} |")
        lines += ["", "| sampling (untrained net) | NFE | VJP | A / Aᵀ calls | samples/s | s per sample | peak MB |",
                  "|---|---|---|---|---|---|---|"]
        for s in r["sampling"]:
            calls = f"{s['operator_calls']['forward']} / {s['operator_calls']['adjoint']}"
            lines.append(f"| {s['method']} | {s['nfe']} | {s['vjp']} | {calls} | {s['samples_per_s']:.2f} | "
                         f"{s['seconds_per_sample']:.3f} | {s['peak_mem_MB'] or '–'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (results.json, results.md)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256])
    p.add_argument("--batch", type=int, default=16, help="training batch")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    p.add_argument("--heun-steps", type=int, default=20, help="UCoS Heun steps; DPS/DiffPIR get the same NFE (2k−1)")
    p.add_argument("--chains", type=int, default=16, help="posterior samples per timed sampling call")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes and network on any device (checks the script)")
    args = p.parse_args(argv)
    dry = args.dry_run
    device = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    if device.type != "cuda" and not dry:
        print("gpu_benchmark.py: no CUDA device; use --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    if dry:
        args.sizes, args.batch, args.steps, args.heun_steps, args.chains = [16], 2, 2, 2, 2
    n_angles, warmup = (8, 1) if dry else (180, 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python scripts/gpu_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                          "torch": torch.__version__, "platform": platform.platform()}, "sizes": {}}
    variants = {"fp32": (False, False), "bf16": (True, False), "bf16 + compile": (True, True)}
    t_all = time.perf_counter()
    for size in args.sizes:
        x, per_s = phantoms(size, args.batch, device)
        module = make_module(size, n_angles, dry, device)
        sync(device)
        t = time.perf_counter()
        module.aux.preconditioner.build() if hasattr(module.aux.preconditioner, "build") else None
        sync(device)
        r = {"n_angles": n_angles, "preconditioner": type(module.aux.preconditioner).__name__, "precond_build_s": time.perf_counter() - t,
             "precond_MB": sum(v.numel() * v.element_size() for v in module.aux.preconditioner.state_dict().values()) / 1e6,
             "phantoms_per_s": per_s, "training": {}}
        state = {k: v.clone() for k, v in module.aux.preconditioner.state_dict().items()}
        for name, (bf16, comp) in variants.items():
            m = make_module(size, n_angles, dry, device, compile_net=comp)
            m.aux.preconditioner.load_state_dict(state)  # the same factors, not rebuilt
            r["training"][name] = train_throughput(m, x, bf16=bf16, warmup=warmup, steps=args.steps, device=device)
            print(f"{size}² {name}: {r['training'][name]['images_per_s']:.1f} images/s", flush=True)
            del m
        r["sampling"] = sampling(module, x, heun_steps=args.heun_steps, chains=args.chains, device=device)
        report["sizes"][size] = r
    report["wall_s"] = time.perf_counter() - t_all
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, out / "results.json")
    (out / "results.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
