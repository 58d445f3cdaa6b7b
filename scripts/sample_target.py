#!/usr/bin/env python
"""Samples from a trained diffusion sampler (DDS, PIS or Schrödinger bridge) of a density known up to a constant.

    # 10 000 samples of a DDS/PIS checkpoint trained with scripts/train.py (lightning_modules.dds.DDSModule)
    python scripts/sample_target.py --checkpoint runs/dds_funnel/last.ckpt --n 10000 --output out/dds_funnel
    # a bridge checkpoint on a GPU, 4096 paths at a time, another seed, replacing earlier results
    python scripts/sample_target.py --checkpoint bridge.ckpt --n 100000 --batch-size 4096 --seed 1 \\
        --device cuda --output out/bridge --overwrite

The checkpoint alone rebuilds the module and its target (``lightning_modules.checkpoint.load_module``).
Writes into --output, all at once (a temporary sibling folder renamed into place; nothing on error):
samples.pt (N, d), log_weights.pt (N,) (importance weights of the samples: E[w] = Z), metrics.json
(log Ẑ, ESS; where the target knows them: log Z error, sliced W2 and MMD against exact samples,
per-mode masses; wall time and evaluations per sample) and, for 2-D targets, samples.png (samples over
the target's density contours). Sample i uses its own seed, so results do not depend on --batch-size.
Bad input (missing, corrupt or non-sampler checkpoint, existing output): one line on stderr, exit 2;
a diverging sampler: exit 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: stream of the exact reference samples (the sampler uses its own streams of the same seed)
REFERENCE_STREAM = 7


class InputError(ValueError):
    """Bad input: reported in one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample_target.py", description=__doc__.split("\n\n")[0].strip(),
                                epilog="examples:\n" + __doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a DDSModule (DDS or PIS) or BridgeModule checkpoint (e.g. --checkpoint runs/dds/last.ckpt)")
    p.add_argument("--n", type=int, default=10000, metavar="N", help="number of samples (default 10000; e.g. --n 2000)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="paths simulated at a time (default: all; results do not depend on it; e.g. --batch-size 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample noise streams (default 0; e.g. --seed 1)")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda, cuda:1 ... (e.g. --device cpu)")
    p.add_argument("--reference-samples", type=int, default=None, metavar="M",
                   help="exact target samples for SW2/MMD (default: as many as --n; e.g. --reference-samples 20000)")
    p.add_argument("--mmd-points", type=int, default=2000, metavar="K",
                   help="points of each sample set used for the MMD, a quadratic-cost U-statistic (default 2000)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (e.g. --output out/dds_funnel)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results already in --output (swapped out only once the new ones are complete)")
    p.add_argument("--no-figure", dest="figure", action="store_false", help="skip samples.png for 2-D targets")
    return p


# ------------------------------------------------------------------------------------------ metrics
def sample_metrics(target: Any, x, log_w=None, *, seed: int = 0, reference_samples: int | None = None,
                   mmd_points: int = 2000, reference=None) -> dict[str, Any]:
    """Quality of samples ``x (N, d)`` against what ``target`` knows: log Ẑ / ESS from ``log_w`` (when
    given), log Z error, SW2 and MMD² against exact samples (its own seed stream; or ``reference``
    samples when given), per-mode masses (nearest mode; importance-weighted too when ``log_w`` is
    given). Missing answers are left out."""
    import torch

    from diffpost.metrics import effective_sample_size, mmd, mode_masses, sliced_wasserstein2
    from diffpost.random import make_generator, seed_for
    from diffpost.samplers.dds import log_evidence

    x = x.detach().to("cpu", torch.float64)
    out: dict[str, Any] = {"n_samples": int(x.shape[0]), "dim": int(x.shape[1])}
    log_Z = getattr(target, "log_Z", None)
    out["log_Z"] = log_Z
    if log_w is not None:
        log_w = log_w.detach().to("cpu", torch.float64)
        out["log_Z_hat"] = float(log_evidence(log_w))
        out["ess_fraction"] = float(effective_sample_size(log_w))  # (Σw)²/(N Σw²)
        out["ess"] = out["ess_fraction"] * x.shape[0]
        if log_Z is not None:
            out["log_Z_error"] = out["log_Z_hat"] - log_Z
            out["log_Z_abs_error"] = abs(out["log_Z_error"])
    if (reference is not None or target.has("sample")) and x.shape[0] >= 2:
        if reference is None:
            m = reference_samples or x.shape[0]
            ref = target.sample(m, make_generator(seed_for(seed, REFERENCE_STREAM))).detach().to("cpu", torch.float64)
        else:
            ref = reference.detach().to("cpu", torch.float64)
            m = ref.shape[0]
        out["reference_samples"] = m
        out["sw2"] = float(sliced_wasserstein2(x, ref, n_projections=256, generator=make_generator(seed_for(seed, REFERENCE_STREAM, 1))))
        k = min(mmd_points, x.shape[0], m)
        out["mmd2"] = float(mmd(x[:k], ref[:k]))  # samples are i.i.d.: the first k are a fair subset
        out["mmd_points"] = k
    modes, weights = getattr(target, "modes", None), getattr(target, "mode_weights", None)
    if modes is not None and weights is not None and x.shape[0] >= 2:
        modes = torch.as_tensor(modes, dtype=torch.float64).cpu()
        weights = torch.as_tensor(weights, dtype=torch.float64).cpu()
        masses = mode_masses(x, modes)
        out["mode_weights"] = weights.tolist()
        out["mode_masses"] = masses.tolist()
        out["mode_mass_error"] = float((masses - weights).abs().max())  # worst mode
        out["mode_mass_tv"] = float(0.5 * (masses - weights).abs().sum())  # total variation over modes
        if log_w is not None:
            nearest = torch.cdist(x, modes).argmin(1)
            w = torch.softmax(log_w, 0)
            weighted = torch.zeros(len(modes), dtype=torch.float64).index_add_(0, nearest, w)
            out["mode_masses_weighted"] = weighted.tolist()
            out["mode_mass_error_weighted"] = float((weighted - weights).abs().max())
    return out


# ------------------------------------------------------------------------------------------ figure
def plot_samples_2d(ax, target: Any, x, *, max_points: int = 2000, title: str | None = None,
                    bounds: tuple[tuple[float, float], tuple[float, float]] | None = None) -> None:
    """Samples ``x (N, 2)`` (the first ``max_points``) over contours of the target's log-density on a
    grid covering the samples, exact samples and the modes (or ``bounds`` ``((x0, x1), (y0, y1))``, to
    share one frame between panels); modes marked where known."""
    import torch

    from diffpost.random import make_generator

    x = x.detach().to("cpu", torch.float64)
    pts = [x]
    if target.has("sample"):  # the frame covers the target's mass, not only where the samples went
        pts.append(target.sample(2000, make_generator(0)).detach().to("cpu", torch.float64))
    modes = getattr(target, "modes", None)
    if modes is not None:
        pts.append(torch.as_tensor(modes, dtype=torch.float64).cpu())
    allp = torch.cat(pts)
    finite = allp[torch.isfinite(allp).all(1)]
    lo = torch.quantile(finite, 0.002, dim=0) if finite.shape[0] > 10 else finite.min(0).values
    hi = torch.quantile(finite, 0.998, dim=0) if finite.shape[0] > 10 else finite.max(0).values
    if modes is not None:
        m = torch.as_tensor(modes, dtype=torch.float64).cpu()
        lo, hi = torch.minimum(lo, m.min(0).values), torch.maximum(hi, m.max(0).values)
    pad = 0.08 * (hi - lo).clamp_min(1.0)
    lo, hi = lo - pad, hi + pad
    if bounds is not None:
        lo = torch.tensor([bounds[0][0], bounds[1][0]], dtype=torch.float64)
        hi = torch.tensor([bounds[0][1], bounds[1][1]], dtype=torch.float64)
    gx = torch.linspace(float(lo[0]), float(hi[0]), 160, dtype=torch.float64)
    gy = torch.linspace(float(lo[1]), float(hi[1]), 160, dtype=torch.float64)
    X, Y = torch.meshgrid(gx, gy, indexing="xy")
    grid = torch.stack([X.reshape(-1), Y.reshape(-1)], 1).to(getattr(target, "device", "cpu"))
    with torch.no_grad():
        lp = target.log_prob(grid.to(getattr(target, "dtype", torch.float64))).detach().cpu().reshape(X.shape)
    lp = torch.nan_to_num(lp - lp.max(), nan=-1e3, neginf=-1e3)
    levels = sorted({-v for v in (0.5, 1, 2, 4, 8, 16)})
    ax.contour(X.numpy(), Y.numpy(), lp.numpy(), levels=levels, colors="0.35", linewidths=0.6, linestyles="solid")
    shown = x[: max_points]
    ax.scatter(shown[:, 0].numpy(), shown[:, 1].numpy(), s=2, alpha=0.35, color="tab:blue", rasterized=True)
    if modes is not None:
        m = torch.as_tensor(modes, dtype=torch.float64).cpu()
        ax.scatter(m[:, 0].numpy(), m[:, 1].numpy(), marker="x", s=18, color="tab:red", linewidths=0.8)
    ax.set_xlim(float(lo[0]), float(hi[0]))
    ax.set_ylim(float(lo[1]), float(hi[1]))
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize=6)
    if title:
        ax.set_title(title, fontsize=7)


def write_figure(path: Path, target: Any, x, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    plot_samples_2d(fig.add_subplot(1, 1, 1), target, x, title=title)
    fig.tight_layout()
    fig.savefig(os.fspath(path))


# ------------------------------------------------------------------------------------------ run
def _positive(name: str, v: int | None, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{name} must be a positive integer, got {v!r}")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise InputError(f"--device {name!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return dev


class _Counts:
    """Rows evaluated by the control networks (forward hooks): network evaluations per sample."""

    def __init__(self, modules):
        self.rows = 0
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, inputs, output) -> None:
        self.rows += int(inputs[0].shape[0])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def load_sampler(checkpoint: str, device):
    """The sampler module from its checkpoint (on ``device``) and the checkpoint's training facts."""
    from lightning_modules.checkpoint import CheckpointError, load_module, safe_load
    from lightning_modules.dds import DiffusionSamplerBase

    try:
        ckpt = safe_load(checkpoint)
        module = load_module(checkpoint, expected=DiffusionSamplerBase)
    except CheckpointError as e:
        raise InputError(str(e)) from None
    except (ValueError, TypeError) as e:  # e.g. an untrusted class path or a target that cannot be rebuilt
        raise InputError(f"cannot rebuild the sampler from {checkpoint}: {e}") from None
    hp = dict(module.hparams)
    training = {"global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"), "batch_size": hp.get("batch_size"),
                "paths_simulated": (ckpt.get("global_step") or 0) * int(hp.get("batch_size") or 0)}
    if "ipf_history" in ckpt:
        training["ipf_history"] = ckpt["ipf_history"]
    return module.to(device), training


def run(*, checkpoint: str, output: str, n: int = 10000, batch_size: int | None = None, seed: int = 0,
        device: str = "auto", reference_samples: int | None = None, mmd_points: int = 2000,
        overwrite: bool = False, figure: bool = True) -> Path:
    """Sample, measure and write (see the module docstring); returns the output folder."""
    t_start = time.perf_counter()
    from lightning_modules.output_folder import OutputFolder
    from lightning_modules.output_folder import OutputFolderError as FolderError

    _positive("--n", n)
    _positive("--batch-size", batch_size, allow_none=True)
    _positive("--reference-samples", reference_samples, allow_none=True)
    _positive("--mmd-points", mmd_points)
    if n < 2:
        raise InputError("--n must be at least 2 (ESS and sample metrics need two samples)")
    out = OutputFolder(output, overwrite)
    try:
        out.check()
    except FolderError as e:
        raise InputError(str(e)) from None
    dev = _device(device)
    module, training = load_sampler(checkpoint, dev)

    import torch

    from diffpost.config import class_path

    with torch.no_grad():
        target = module._target_on_device()
        nets = [module.control] + ([module.backward_control] if hasattr(module, "backward_control") else [])
        counts = _Counts(nets)
        from diffpost.targets.base import EvalCounter, Target

        counter = EvalCounter(target) if isinstance(target, Target) else None
        if counter is not None:
            object.__setattr__(module, "target", counter)
        try:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            x, log_w = module.sample(n, seed=seed, batch_size=batch_size)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            wall = time.perf_counter() - t0
        finally:
            counts.remove()
            if counter is not None:
                object.__setattr__(module, "target", target)
    metrics = sample_metrics(target, x, log_w, seed=seed, reference_samples=reference_samples, mmd_points=mmd_points)
    hp = dict(module.hparams)
    kind = hp.get("kind", "dds")
    if hasattr(module, "backward_control"):  # the Schrödinger-bridge refinement of DDS or PIS
        kind = "bridge" if kind == "dds" else "bridge_pis"
    metrics.update({
        "wall_time_s": wall,
        "time_per_sample_s": wall / n,
        "cost_per_sample": {
            "network_evals": counts.rows / n,
            **({f"target_{k}_evals": v for k, v in counter.per_sample(n).items()} if counter is not None else {}),
            "steps": int(module.disc.n_steps),
        },
        "training": training,
        "settings": {"checkpoint": str(Path(checkpoint).absolute()), "module": class_path(module), "kind": kind,
                     "target": hp.get("target"), "n": n, "batch_size": batch_size, "seed": seed, "device": str(dev),
                     "hyper_parameters": {k: v for k, v in hp.items() if k != "target"},
                     "versions": {"torch": torch.__version__}},
    })
    folder = out.create()
    try:
        torch.save(x.detach().cpu(), folder / "samples.pt")
        torch.save(log_w.detach().cpu(), folder / "log_weights.pt")
        if figure and x.shape[1] == 2:
            bits = [f"{kind.upper()} on {type(target).__name__}, N={n}", f"log Ẑ={metrics['log_Z_hat']:.3f}"]
            if "log_Z_error" in metrics:
                bits[-1] += f" (err {metrics['log_Z_error']:+.3f})"
            bits.append(f"ESS={metrics['ess_fraction']:.2f}")
            if "sw2" in metrics:
                bits.append(f"SW2={metrics['sw2']:.3f}")
            write_figure(folder / "samples.png", target, x, "  ".join(bits[:2]) + "\n" + "  ".join(bits[2:]))
        metrics["total_time_s"] = time.perf_counter() - t_start
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        return out.commit()
    except BaseException:
        out.discard()
        raise


def main(argv: list[str] | None = None) -> int:
    """Exit status 0; 2 for bad input, 1 when the sampler diverges, 128 + signal on SIGTERM/SIGINT (one
    line on stderr each, nothing written; ``DIFFPOST_DEBUG=1`` for the traceback)."""
    args = build_parser().parse_args(argv)
    from lightning_modules.script_support import debug_requested, run_main

    done: dict[str, Path] = {}

    def body() -> None:
        from diffpost.samplers.errors import SamplerDivergedError

        try:
            done["folder"] = run(**vars(args))
        except SamplerDivergedError as e:  # say which kind of failure this is, then the sampler's own line
            raise SamplerDivergedError(f"the sampler diverged: {e}") from None

    # the summary is printed outside: "nothing was written" stays true for every signal run_main reports
    code = run_main("sample_target.py", body, debug=debug_requested([]), interrupted_note="; nothing was written")
    if code:
        return code
    m = json.loads((done["folder"] / "metrics.json").read_text())
    summary = [f"log Ẑ = {m['log_Z_hat']:.4f}", f"ESS = {m['ess_fraction']:.3f}"]
    summary += [f"{k} = {m[k]:.4g}" for k in ("log_Z_error", "sw2", "mmd2", "mode_mass_error") if k in m]
    print(f"wrote {done['folder']}: " + ", ".join(summary))
    return 0


if __name__ == "__main__":
    from lightning_modules.script_support import install_signal_handlers, quiet_lightning

    quiet_lightning()
    install_signal_handlers()
    sys.exit(main())
