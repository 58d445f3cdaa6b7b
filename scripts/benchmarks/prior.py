"""``python scripts/benchmark.py prior``: prior training throughput and denoiser evaluation time.

For each experiment config (default: the CPU quickstart and the 128² GPU config), built exactly as
``scripts/train.py`` builds it (GPU-only settings switched to this machine):

- training throughput, images/s: Lightning ``fit`` steps with the data pipeline, EMA update and
  gradient clipping, after warm-up steps (no validation, no checkpoints);
- compute-only throughput, images/s: forward + backward + AdamW step on a fixed batch (no data);
- data throughput, images/s: the training DataLoader alone;
- one denoiser evaluation ``D(x, σ)`` (no gradient), ms per call at batch 1 and at the training batch.

Prints a markdown table and writes JSON (machine, threads, load average: the numbers mean little
without them).

    python scripts/benchmark.py prior
    python scripts/benchmark.py prior --configs configs/experiments/quickstart_prior.yaml --steps 50 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import lightning.pytorch as pl
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIGS = ["configs/experiments/quickstart_prior.yaml", "configs/experiments/ellipses128_prior.yaml"]


def build(config: str, device: str):
    """Model and DataModule of an experiment, as the training CLI makes them (GPU settings off)."""
    from lightning_modules.cli import DiffpostCLI

    args = ["--config", config, f"--trainer.accelerator={device}", "--trainer.devices=1", "--trainer.strategy=auto",
            "--trainer.num_nodes=1", "--trainer.precision=32-true", "--trainer.logger=false",
            "--model.init_args.compile=false"]
    cli = DiffpostCLI(args=args, run=False, save_config_callback=None)
    return cli.model, cli.datamodule


class StepTimer(pl.Callback):
    """Wall time of each training step, from one batch start to the next (data loading included)."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.starts.append(time.perf_counter())


def training_throughput(model, dm, warmup: int, steps: int, device: str, precision: str) -> float:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    timer = StepTimer()
    trainer = pl.Trainer(accelerator=device, devices=1, precision=precision, max_steps=warmup + steps,
                         limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                         callbacks=[EMAWeightAveraging(decay=0.999), timer])
    trainer.fit(model, datamodule=dm)
    elapsed = timer.starts[-1] - timer.starts[warmup]
    return steps * dm.batch_size / elapsed


def compute_throughput(model, batch: torch.Tensor, steps: int, warmup: int) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=batch.device).manual_seed(0)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(batch.shape[0], generator=gen, device=batch.device))
    noise = torch.randn(batch.shape, generator=gen, device=batch.device)
    from diffpost.losses import edm_denoising_loss

    def step():
        loss = edm_denoising_loss(model.denoiser, batch, sigma, noise, model.hparams.sigma_data).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(batch.device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(batch.device)
    return steps * batch.shape[0] / (time.perf_counter() - t)


def data_throughput(dm, batches: int) -> float:
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)["x"].shape[0]
    return n / (time.perf_counter() - t)


@torch.no_grad()
def denoiser_ms(model, shape: tuple[int, ...], batch: int, reps: int) -> float:
    model.eval()
    device = next(model.parameters()).device
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(1)).to(device)
    sigma = torch.full((batch,), 0.5, device=device)
    model.denoiser(x, sigma)
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        model.denoiser(x, sigma)
        _sync(device)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine(threads: int) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py prior", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="experiment YAMLs (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default: 20 at ≤ 32², else 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=None,
                   help="override the config's batch (default: as configured at ≤ 32², 8 above on CPU)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: config, capped at the CPU count)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default=None, help="Lightning precision (default: 32-true on CPU, bf16-mixed on CUDA)")
    p.add_argument("--out", default="runs/benchmark_prior.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    os.environ.setdefault("WANDB_MODE", "disabled")
    report = {"machine": machine(threads), "load_average_before": os.getloadavg(), "args": vars(args), "results": []}
    for config in args.configs:
        path = config if os.path.isabs(config) else os.path.join(ROOT, config)
        model, dm = build(path, accelerator)
        size = dm.x_shape[-1]
        # the DataModule reads these when it makes its loaders
        if args.batch_size or (args.device == "cpu" and size > 32):
            dm.batch_size = args.batch_size or 8
        dm.num_workers = args.workers if args.workers is not None else min(dm.num_workers, os.cpu_count() or 1)
        steps = args.steps or (20 if size <= 32 else 3)
        n_params = sum(p.numel() for p in model.parameters())
        row = {"config": os.path.relpath(path, ROOT), "image_shape": list(dm.x_shape), "params": n_params,
               "batch_size": dm.batch_size, "workers": dm.num_workers, "precision": precision}
        print(f"[{row['config']}] {n_params / 1e6:.2f} M parameters, batch {dm.batch_size}, {steps} timed steps", flush=True)
        row["train_images_per_s"] = training_throughput(model, dm, args.warmup, steps, accelerator, precision)
        device = torch.device(args.device)
        model = model.to(device)
        ds = dm.dataset("train")
        batch = torch.stack([ds[k]["x"] for k in range(dm.batch_size)]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
            row["compute_images_per_s"] = compute_throughput(model, batch, steps, args.warmup)
            row["denoiser_ms_batch1"] = denoiser_ms(model, tuple(dm.x_shape), 1, reps=max(5, steps))
            row["denoiser_ms_batch"] = denoiser_ms(model, tuple(dm.x_shape), dm.batch_size, reps=max(3, steps // 2))
        row["data_images_per_s"] = data_throughput(dm, batches=max(3, steps // 2))
        report["results"].append(row)
        print(json.dumps(row), flush=True)
    report["load_average_after"] = os.getloadavg()
    print_table(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")
    return 0


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"\nmachine: {m.get('cpu_model') or m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']} "
          f"({m['torch_threads']} threads), CUDA: {m['cuda']}; load average before/after: "
          f"{report['load_average_before'][0]:.1f} / {report['load_average_after'][0]:.1f}\n")
    print("| config | image | params | batch | train img/s | compute img/s | data img/s | D(x,σ) ms (B=1) | D(x,σ) ms (B=batch) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in report["results"]:
        print(f"| {r['config']} | {'×'.join(map(str, r['image_shape']))} | {r['params'] / 1e6:.2f} M | {r['batch_size']} | "
              f"{r['train_images_per_s']:.1f} | {r['compute_images_per_s']:.1f} | {r['data_images_per_s']:.0f} | "
              f"{r['denoiser_ms_batch1']:.1f} | {r['denoiser_ms_batch']:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
