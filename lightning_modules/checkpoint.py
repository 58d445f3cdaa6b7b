"""Loading checkpoints safely: ``weights_only=True`` always, clear errors, models rebuilt from specs.

A diffpost checkpoint carries ``checkpoint["diffpost"] = {"module": class_path, "format": ...,
"network_fingerprint": ..., "data": {...}, ...}`` and hyper-parameters whose object-valued entries are
specs (``diffpost.config``). Nothing is unpickled. Every load checks the zip archive's CRCs (a damaged
file is refused, not sampled from) and recomputes the fingerprints the file records; reusing a
checkpoint with a model or data of another kind is refused before a run writes anything
(``check_checkpoint_matches``).
"""
from __future__ import annotations

import hashlib
import json
import math
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
    verify_archive(p)
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


def verify_archive(path: str | os.PathLike) -> None:
    """Check every member of the zip archive against its stored CRC-32 (torch.save writes them; a
    memory-mapped torch.load never checks them, a plain one only as it reads). Reads the file once."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:  # a damaged directory or header
        raise CheckpointError(f"cannot read checkpoint {p}: the file is corrupt or not a PyTorch checkpoint ({e})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {p} is corrupt: the data of '{bad}' fails its CRC check (damaged after it was written)")


def spec_digest(spec: Any) -> str:
    """A short stable hash of a plain-typed spec (e.g. the network's ``{class_path, init_args}``)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def verify_fingerprints(module: Any, checkpoint: dict[str, Any], path: Any) -> None:
    """Recompute the fingerprints ``checkpoint`` records (network spec, operator, preconditioner, ...)
    on ``module`` rebuilt from it; any difference is a ``CheckpointError`` naming the file and the part."""
    recorded = checkpoint.get("diffpost") or {}
    diffs = [f"{k.removesuffix('_fingerprint')} (recorded {recorded[k]}, recomputed {v})"
             for k, v in module.fingerprints().items() if k in recorded and recorded[k] != v]
    if diffs:
        raise CheckpointError(f"{path} does not match the fingerprints it records: {'; '.join(diffs)}")


def _describe_spec_change(saved: Any, new: Any, prefix: str) -> str:
    """``prefix.key: saved → new`` for the first differing entry of two specs (a readable 'what differs')."""
    if isinstance(saved, dict) and isinstance(new, dict):
        for k in sorted(set(saved) | set(new)):
            if saved.get(k) != new.get(k):
                return _describe_spec_change(saved.get(k), new.get(k), f"{prefix}.{k}")
    return f"{prefix} = {json.dumps(saved)} in the checkpoint, {json.dumps(new)} here"


def check_checkpoint_matches(checkpoint: dict[str, Any], path: Any, *, module_class: str, model: Any = None,
                             data_task: dict[str, Any] | None = None, resuming: bool = False) -> None:
    """Refuse to use ``checkpoint`` for a run of another kind (one-line ``CheckpointError`` naming the file).

    ``module_class``: the class the run builds; ``model``: the built module (its network spec and own
    task are compared); ``data_task``: the data's ``task_record()`` (image shape, operator, σ_y).
    Always compared: class, network spec, image shape and, for a model trained for one task (UCoS),
    the operator and σ_y. When ``resuming``, a prior's data task too: a resumed run continues the same
    experiment; but a prior may be validated on another task, which is what a prior is for.
    """
    meta = checkpoint.get("diffpost") or {}
    saved_cls = _module_class_path(checkpoint, path)
    if saved_cls != module_class:
        raise CheckpointError(f"{path} holds a {saved_cls.rpartition('.')[2]}, but this run builds a "
                              f"{module_class.rpartition('.')[2]} ({saved_cls} vs {module_class})")
    diffs = []
    if model is not None:
        mine = model.fingerprints() if hasattr(model, "fingerprints") else {}
        if "network_fingerprint" in meta and meta["network_fingerprint"] != mine.get("network_fingerprint"):
            saved_net = (checkpoint.get("hyper_parameters") or {}).get("net")
            diffs.append("network spec: " + _describe_spec_change(saved_net, model.hparams.get("net"), "net"))
        task = model.checkpoint_metadata() if hasattr(model, "checkpoint_metadata") else {}
        for key in ("operator_fingerprint", "sigma_y", "noise_cov"):  # the model's own task (UCoS)
            if (key in meta or key in task) and not _same(meta.get(key), task.get(key)):
                diffs.append(f"model {key.removesuffix('_fingerprint')}: {_task_text(meta, key)} in the checkpoint, "
                             f"{_task_text(task, key)} here")
    saved = meta.get("data")
    if isinstance(saved, dict) and data_task is not None:
        task_bound = "operator_fingerprint" in meta
        keys = ["x_shape"] + (["operator_fingerprint", "sigma_y"] if resuming or task_bound else [])
        diffs += [f"data {k.removesuffix('_fingerprint')}: {_task_text(saved, k)} in the checkpoint, "
                  f"{_task_text(data_task, k)} here" for k in keys
                  if k in saved and k in data_task and not _same(saved[k], data_task[k])]
    if diffs:
        raise CheckpointError(f"{path} was made for another task or model: {'; '.join(diffs)}")


def same_task_value(a: Any, b: Any) -> bool:
    """Whether two config values of a task argument (an operator spec, or σ_y) mean the same task: equal,
    or operators built from both have one fingerprint (a checkpoint's spec names the defining module and
    resolved defaults, e.g. ``diffpost.operators.ct.CT`` with ``n_detectors: 12``, where a config says
    ``diffpost.operators.CT`` with ``n_detectors: null``)."""
    if _same(a, b):
        return True
    if is_spec(a) and is_spec(b):
        try:
            return build(a).fingerprint() == build(b).fingerprint()
        except (ValueError, TypeError):
            return False
    return False


def _task_text(record: dict[str, Any], key: str) -> str:
    if key == "operator_fingerprint" and is_spec(record.get("operator")):
        op = record["operator"]
        return f"{op['class_path'].rpartition('.')[2]} {json.dumps(op.get('init_args'))} (fingerprint {record.get(key)})"
    return json.dumps(record.get(key))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


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
    if hasattr(module, "fingerprints"):
        verify_fingerprints(module, ckpt, path)
    if hasattr(module, "on_load_diffpost_checkpoint"):
        module.on_load_diffpost_checkpoint(ckpt)
    return module.to(map_location).eval()
