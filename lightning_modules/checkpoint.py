"""Loading checkpoints safely: ``weights_only=True`` always, clear errors, models rebuilt from specs.

A diffpost checkpoint carries ``checkpoint["diffpost"] = {"module": class_path, "format": ...}`` and
hyper-parameters whose object-valued entries are specs (``diffpost.config``). Nothing is unpickled.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from diffpost.config import build, is_spec, resolve_class

CHECKPOINT_FORMAT = "diffpost.checkpoint/v1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, untrusted or for another task."""


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file.

    ``mmap=True`` unpickles the structure but maps tensor data lazily: a cheap check that a large
    checkpoint is readable and holds only tensors and plain types, before a run starts.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {p}")
    corrupt = f"cannot read checkpoint {p}: the file is corrupt or not a PyTorch checkpoint"
    if not zipfile.is_zipfile(p):  # torch.save (and Lightning) write zip archives; a truncated one is not
        raise CheckpointError(f"{corrupt} (not a complete zip archive: truncated or overwritten?)")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "Unsupported global" in ln or "GLOBAL" in ln), None)
        if detail is None:
            raise CheckpointError(f"{corrupt} ({lines[0] if lines else e})") from None
        raise CheckpointError(
            f"refusing to load {p}: it contains pickled Python objects that are not plain tensors or types "
            f"(only weights_only checkpoints are accepted). Detail: {detail}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{corrupt} ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p} does not hold a checkpoint dictionary (got {type(obj).__name__})")
    return obj


def _module_class_path(ckpt: dict[str, Any], path: Any) -> str:
    meta = ckpt.get("diffpost")
    if isinstance(meta, dict) and isinstance(meta.get("module"), str):
        return meta["module"]
    hp = ckpt.get("hyper_parameters") or {}
    if isinstance(hp.get("_class_path"), str):
        return hp["_class_path"]
    raise CheckpointError(f"{path} is not a diffpost checkpoint (no 'diffpost' metadata)")


def load_module(path: str | os.PathLike, expected: type | None = None, map_location: str | torch.device = "cpu"):
    """Rebuild a diffpost LightningModule from its checkpoint alone (no YAML needed).

    ``expected``: a base class the checkpoint's module must derive from (e.g. ``UCoSModule``).
    """
    import lightning.pytorch as pl

    ckpt = safe_load(path, map_location)
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path} has no 'state_dict'")
    cls = resolve_class(_module_class_path(ckpt, path), pl.LightningModule)
    if expected is not None and not issubclass(cls, expected):
        raise CheckpointError(f"{path} holds a {cls.__name__}, but a {expected.__name__} is needed here")
    hp = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    args = {k: build(v) if is_spec(v) else v for k, v in hp.items()}
    try:
        module = cls(**args)
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: saved configuration and weights do not fit {cls.__name__}: {e}") from None
    if hasattr(module, "on_load_diffpost_checkpoint"):
        module.on_load_diffpost_checkpoint(ckpt)
    return module.to(map_location).eval()
