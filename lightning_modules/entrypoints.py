"""Console commands (pyproject ``[project.scripts]``): ``diffpost-train``, ``diffpost-sample`` and
``diffpost-sample-target`` run ``scripts/train.py``, ``scripts/sample.py`` and
``scripts/sample_target.py``.

Each command loads its script by path (``runpy.run_path``) and calls the script's ``main()``, so the
command and ``python scripts/<name>.py`` are one program with the same arguments, messages and exit
codes, and the scripts stay where the README shows them. ``scripts/`` is not an installed package
(PyPI's unrelated ``scripts`` would clash), so the commands need the source checkout that
``pip install -e .`` installs from; from a plain wheel they say so in one line and exit 2.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name: str) -> int:
    """Run ``scripts/<name>``'s ``main()`` with this process's ``sys.argv``; its exit status."""
    path = SCRIPTS / name
    if not path.is_file():
        print(f"{Path(sys.argv[0]).name}: {path} not found: the diffpost-* commands run the scripts of a source "
              "checkout installed with `pip install -e .`", file=sys.stderr)
        return 2
    main = runpy.run_path(str(path), run_name=f"__diffpost_{path.stem}__")["main"]
    status = main()
    return status if isinstance(status, int) else 0  # train.py's main returns its LightningCLI


def train() -> int:
    return run_script("train.py")


def sample() -> int:
    return run_script("sample.py")


def sample_target() -> int:
    return run_script("sample_target.py")
