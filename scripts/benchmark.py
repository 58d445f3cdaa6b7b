#!/usr/bin/env python
"""Benchmarks (timings belong here, never in tests). A thin dispatcher:

    python scripts/benchmark.py prior [options]          # prior training throughput, denoiser time
    python scripts/benchmark.py ucos [options]           # UCoS vs baselines
    python scripts/benchmark.py unnormalised [options]   # samplers for densities known up to a constant
    python scripts/benchmark.py oracle [options]         # every posterior method on exact posteriors
    python scripts/benchmark.py posterior [options]      # every posterior method on trained models, 6 tasks
    python scripts/benchmark.py rmp [options]            # RMP on exact oracles: error vs NFE, plug-in bias
    python scripts/benchmark.py scale [options]          # CT/U-Net cost at 64²–512², UCoS preconditioners, UCoS vs DPS vs DiffPIR
    python scripts/benchmark.py <subcommand> --help

Each subcommand is ``scripts/benchmarks/<name>.py`` with ``main(argv) -> int`` (adding a file adds the
subcommand; ``python scripts/benchmark.py --help`` lists them), imported only when asked for (one subcommand's dependencies never slow down or break another).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "scripts", "benchmarks")
#: every ``scripts/benchmarks/<name>.py`` is a subcommand (files starting with ``_`` are helpers)
SUBCOMMANDS = tuple(sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and not f.startswith("_")))
#: the name the benchmark modules are loaded under (PyPI has unrelated `scripts`/`benchmarks` packages)
PACKAGE = "_diffpost_benchmarks"


def load(name: str):
    """Import ``scripts/benchmarks/<name>.py`` as ``_diffpost_benchmarks.<name>``."""
    path = os.path.join(HERE, f"{name}.py")
    if not os.path.isfile(path):
        present = sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and not f.startswith("_"))
        raise SystemExit(f"benchmark.py: subcommand {name!r} is not available: {path} does not exist "
                         f"(present: {', '.join(present) or 'none'})")
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(HERE, "__init__.py"),
                                                      submodule_search_locations=[HERE])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.{name}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + f"\nsubcommands here: {', '.join(SUBCOMMANDS)}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        raise SystemExit(f"benchmark.py: unknown subcommand {name!r}; choose one of {', '.join(SUBCOMMANDS)}")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    module = load(name)
    if not callable(getattr(module, "main", None)):
        raise SystemExit(f"benchmark.py: scripts/benchmarks/{name}.py has no main(argv) function")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
