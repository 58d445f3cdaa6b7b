#!/usr/bin/env python
"""Posterior samples from a checkpoint: UCoS (no forward operator in the loop) or DPS on a prior.

    # UCoS on measurements exported by the DataModule (operator and sigma_y are in the file)
    python scripts/sample.py --checkpoint runs/ucos_ct/last.ckpt --measurements test.pt --output out/ct
    # synthesise 16 test measurements from a data config with a task on top; 4 GPUs
    python scripts/sample.py --checkpoint ucos.ckpt --data configs/data/ellipses32.yaml \\
        --task configs/task/ct_sparse.yaml --n 16 --devices 4 --output out/ct
    # DPS on a prior checkpoint, for the task of configs/task/ (operator + sigma_y)
    python scripts/sample.py --checkpoint prior.ckpt --task configs/task/ct_sparse.yaml --measurements test.pt \\
        --zeta 0.5 --steps 200 --output out/dps
    # a raw (N, *y_shape) tensor: name the operator and noise level
    python scripts/sample.py --checkpoint ucos.ckpt --measurements y.npy --sigma-y 0.05 \\
        --operator '{"class_path": "diffpost.operators.ct.CT", "init_args": {"shape": [1, 32, 32], "n_angles": 16}}' \\
        --output out/raw

Writes samples.pt (N, S, C, H, W), mean.pt, std.pt, index.pt, metrics.json and figures/ into --output,
all at once (or nothing on error). Bad input: one line on stderr, exit status 2.
"""
import argparse
import logging
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__.split("\n\n")[0].strip(),
                                epilog="examples:\n" + __doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="UCoS checkpoint, or a ScorePriorModule checkpoint for DPS (e.g. --checkpoint runs/ucos/last.ckpt)")
    p.add_argument("--method", choices=["auto", "ucos", "dps"], default="auto",
                   help="posterior sampler; auto picks by the checkpoint's module class (e.g. --method dps)")
    p.add_argument("--task", metavar="YAML",
                   help="operator and sigma_y, layout init_args: {operator, sigma_y} as in configs/task/: the task of a raw "
                        "tensor, checked against an export, layered over --data (e.g. --task configs/task/ct_sparse.yaml)")
    src = p.add_argument_group("measurement source (exactly one)")
    src.add_argument("--measurements", metavar="PATH",
                     help="a DataModule export .pt, or a raw .pt/.npy tensor (N, *y_shape) with --operator and --sigma-y "
                          "(e.g. --measurements test_measurements.pt)")
    src.add_argument("--data", metavar="YAML", action="append",
                     help="synthesise measurements from a data config (the DataModule spec, bare or under data:); "
                          "repeat to layer configs (e.g. --data configs/data/ellipses32.yaml)")
    src.add_argument("--operator", metavar="SPEC",
                     help="operator of a raw tensor: a YAML/JSON file or inline JSON {class_path, init_args} "
                          "(e.g. --operator ct16.yaml)")
    src.add_argument("--sigma-y", type=float, metavar="FLOAT",
                     help="measurement noise std of a raw tensor, in the [-1, 1] data range (e.g. --sigma-y 0.05)")
    src.add_argument("--split", choices=["train", "val", "test"], default="test",
                     help="split to synthesise with --data (default test; e.g. --split val)")
    src.add_argument("--n", type=int, metavar="N", help="use only the first N measurements (e.g. --n 16)")
    smp = p.add_argument_group("sampling")
    smp.add_argument("--sampler", choices=["heun", "euler", "euler_maruyama", "edm"],
                     help="sigma-space sampler for UCoS (default: the checkpoint's; DPS ignores it) (e.g. --sampler edm)")
    smp.add_argument("--steps", type=int, metavar="N", help="sampler steps (default: the checkpoint's; e.g. --steps 50)")
    smp.add_argument("--n-samples", type=int, default=8, metavar="S",
                     help="posterior samples per measurement (default 8; >= 2 for std and coverage; e.g. --n-samples 32)")
    smp.add_argument("--batch-size", type=int, default=4, metavar="B",
                     help="measurements per sampler call (each with S samples; default 4; e.g. --batch-size 16)")
    smp.add_argument("--seed", type=int, default=0,
                     help="seed; per-(index, sample) streams make results independent of batch size and devices (e.g. --seed 1)")
    smp.add_argument("--churn", type=float, default=0.0, help="EDM churn for --sampler edm (default 0; e.g. --churn 10)")
    smp.add_argument("--zeta", type=float, default=1.0, help="DPS guidance step size (default 1.0; e.g. --zeta 0.3)")
    run = p.add_argument_group("run")
    run.add_argument("--devices", type=int, default=1,
                     help="devices; > 1 runs Lightning DDP with measurements sharded across ranks (e.g. --devices 4)")
    run.add_argument("--accelerator", choices=["auto", "cpu", "gpu", "cuda", "mps"], default="auto",
                     help="Lightning accelerator (default auto; e.g. --accelerator cpu)")
    run.add_argument("--output", required=True, metavar="DIR", help="output folder (e.g. --output out/ct_ucos)")
    run.add_argument("--overwrite", action="store_true", help="replace results already in --output (the old folder goes only once the new one is complete; "
                          "e.g. --output out/ct --overwrite)")
    run.add_argument("--no-figures", dest="figures", action="store_false",
                     help="skip the per-measurement PNGs figures/measurement_<index>.png (faster for large N; e.g. --no-figures)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar over sampler steps (default: when stderr is a terminal; e.g. --progress in a SLURM log)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # imported here so that --help and argument errors answer at once
    from lightning_modules.inference import InputError, run_inference

    try:
        run_inference(**vars(args))
    except InputError as e:
        print(f"sample.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # e.g. DPS diverging: say so plainly, nothing was written
        print(f"sample.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


def _quiet_lightning() -> None:
    """Only for the command line (tests calling ``main`` keep their process's logging as it is)."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning's own deprecation notice about torch's pytree API: nothing a user of this script can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


if __name__ == "__main__":
    _quiet_lightning()
    sys.exit(main())
