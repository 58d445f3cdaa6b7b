#!/usr/bin/env python
"""Posterior samples (or posterior means) from a checkpoint, with any posterior method.

    # UCoS on measurements exported by the DataModule (operator and sigma_y are in the file)
    python scripts/sample.py --checkpoint runs/ucos_ct/last.ckpt --measurements test.pt --output out/ct
    # synthesise 16 test measurements from a data config with a task on top; 4 GPUs
    python scripts/sample.py --checkpoint ucos.ckpt --data configs/data/ellipses32.yaml \\
        --task configs/task/ct_sparse.yaml --n 16 --devices 4 --output out/ct
    # DPS on a prior checkpoint (configs/method/dps.yaml), one hyper-parameter changed
    python scripts/sample.py --checkpoint prior.ckpt --task configs/task/ct_sparse.yaml --measurements test.pt \\
        --method dps --method-arg zeta=0.5 --steps 200 --output out/dps
    # a raw (N, *y_shape) tensor: name the operator and noise level
    python scripts/sample.py --checkpoint ucos.ckpt --measurements y.npy --sigma-y 0.05 \\
        --operator '{"class_path": "diffpost.operators.ct.CT", "init_args": {"shape": [1, 32, 32], "n_angles": 16}}' \\
        --output out/raw
    # 2 nodes x 4 GPUs under SLURM (srun starts one process per GPU): see docs/training.md
    srun python scripts/sample.py --checkpoint ucos.ckpt --measurements test.pt --devices 4 --num-nodes 2 --output out/ct

Writes samples.pt (N, S, C, H, W), mean.pt, std.pt, index.pt, metrics.json (PSNR/SSIM, coverage of
central credible intervals, cost) and figures/ into --output, all at once (or nothing on error or
SIGTERM). Bad input: one line on stderr, exit status 2 (--debug for the traceback).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__.split("\n\n")[0].strip(),
                                epilog="examples:\n" + __doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a UCoS checkpoint, or a prior (ScorePriorModule) checkpoint for the prior-based methods "
                        "(e.g. --checkpoint runs/ucos/last.ckpt)")
    p.add_argument("--method", default="auto", metavar="NAME",
                   help="posterior method: a name from configs/method/ (ucos, dps, pigdm, ddrm, ddnm, diffpir, daps, ald, rmp, "
                        "...), a YAML file, inline JSON {class_path, init_args} or a class path; auto (default): UCoS for a "
                        "UCoS checkpoint, DPS for a prior (e.g. --method diffpir)")
    p.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the method's arguments; repeat for more (e.g. --method-arg zeta=0.3)")
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
    smp.add_argument("--steps", type=int, metavar="N",
                     help="steps (default: the method's paper setting, else the checkpoint's; e.g. --steps 50)")
    smp.add_argument("--n-samples", type=int, default=8, metavar="S",
                     help="posterior samples per measurement (default 8; >= 2 for std and coverage; mean estimators "
                          "such as RMP give one; e.g. --n-samples 32)")
    smp.add_argument("--batch-size", type=int, default=4, metavar="B",
                     help="measurements per sampler call (each with S samples; default 4; e.g. --batch-size 16)")
    smp.add_argument("--seed", type=int, default=0,
                     help="seed; per-(index, sample) streams make results independent of batch size and devices (e.g. --seed 1)")
    run = p.add_argument_group("run")
    run.add_argument("--devices", type=int, default=1,
                     help="devices per node; > 1 runs Lightning DDP with measurements sharded across ranks (e.g. --devices 4)")
    run.add_argument("--num-nodes", type=int, default=1,
                     help="nodes, under srun or torchrun (one process per device on each; e.g. --num-nodes 2)")
    run.add_argument("--accelerator", choices=["auto", "cpu", "gpu", "cuda", "mps"], default="auto",
                     help="Lightning accelerator (default auto; e.g. --accelerator cpu)")
    run.add_argument("--precision", choices=["32-true", "64-true", "bf16-mixed", "16-mixed"], default="32-true",
                     help="Lightning precision; 64-true makes samples equal (to ~1e-12) across batch sizes and devices, "
                          "float32 only to a tolerance (e.g. --precision 64-true)")
    run.add_argument("--output", required=True, metavar="DIR", help="output folder (e.g. --output out/ct_ucos)")
    run.add_argument("--overwrite", action="store_true", help="replace results already in --output (the old folder goes only once "
                     "the new one is complete; e.g. --output out/ct --overwrite)")
    run.add_argument("--no-figures", dest="figures", action="store_false",
                     help="skip the PNGs figures/measurement_<index>.png and figures/calibration.png (e.g. --no-figures)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a bar over sampler steps (default: when stderr is a terminal; otherwise a line per batch; "
                          "e.g. --progress)")
    run.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors (also DIFFPOST_DEBUG=1; e.g. --debug)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = vars(build_parser().parse_args(argv))
    debug = args.pop("debug")
    from lightning_modules.script_support import debug_requested, run_main

    def body() -> None:
        # imported here: --help and argument errors answer at once, and a signal during the import is handled
        from lightning_modules.inference import run_inference

        run_inference(**args)

    return run_main("sample.py", body, debug=debug or debug_requested([]), interrupted_note="; nothing was written")


if __name__ == "__main__":
    from lightning_modules.script_support import install_signal_handlers, quiet_lightning

    quiet_lightning()
    install_signal_handlers()
    sys.exit(main())
