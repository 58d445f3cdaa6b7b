"""``diffpost`` is the framework-free math core: importing any of its modules must not pull in
Lightning, W&B or torchvision (checked in a fresh interpreter, so other tests' imports do not mask it)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import diffpost

BANNED = ("lightning", "pytorch_lightning", "wandb", "torchvision")
PKG_DIR = Path(diffpost.__file__).resolve().parent


def _all_modules() -> list[str]:
    """Every module under diffpost/ from the file tree (pkgutil skips folders without __init__.py)."""
    mods = []
    for path in sorted(PKG_DIR.rglob("*.py")):
        rel = path.relative_to(PKG_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if "__pycache__" in parts or parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods.append(".".join(parts))
    return mods


_SCRIPT = """
import importlib, json, sys
banned, mods = json.loads(sys.argv[1])
for m in mods:
    importlib.import_module(m)
    hit = [b for b in banned if b in sys.modules]
    if hit:
        print(json.dumps({"module": m, "banned": hit}))
        sys.exit(3)
print(json.dumps({"ok": len(mods)}))
"""


def test_module_list_is_complete():
    mods = _all_modules()
    assert "diffpost" in mods and "diffpost.random" in mods and "diffpost.samplers.base" in mods


def test_diffpost_imports_no_training_stack():
    mods = _all_modules()
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps([BANNED, mods])],
        capture_output=True, text=True, timeout=300, cwd=str(PKG_DIR.parent),
    )
    assert proc.returncode == 0, (
        f"import isolation failed (rc={proc.returncode}): {proc.stdout.strip()}\n{proc.stderr[-3000:]}"
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ok": len(mods)}
