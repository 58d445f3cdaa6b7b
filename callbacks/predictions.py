"""``PredictionWriter``: each rank writes its ``predict`` outputs to its own file; ``read_predictions``
merges them in index order. Lightning's predict sampler shards without padding, so nothing is
duplicated or lost when the item count does not divide the world size."""
from __future__ import annotations

import glob
import os
import tempfile
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Writes ``<output_dir>/predictions_rank<r>.pt``: the tensors of all ``predict_step`` outputs of
    rank ``r`` concatenated along the batch (0-d tensors, e.g. ``nfe``, are summed). The file holds
    only tensors (``torch.load(weights_only=True)``) and is replaced atomically. With ``png=True``
    rank 0 also saves a grid of its ``samples`` (in [-1, 1]) as ``samples_rank0.png``.
    """

    def __init__(self, output_dir: str = "predictions", png: bool = True):
        super().__init__(write_interval="epoch")
        self.output_dir, self.png = output_dir, png

    def write_on_epoch_end(self, trainer, pl_module, predictions: Any, batch_indices: Any) -> None:
        outs = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        merged: dict[str, torch.Tensor] = {}
        for key in outs[0] if outs else {}:
            parts = [o[key].detach().cpu() for o in outs]
            merged[key] = torch.stack(parts).sum(0) if parts[0].dim() == 0 else torch.cat(parts)
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"predictions_rank{trainer.global_rank}.pt")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=self.output_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(merged, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if self.png and trainer.is_global_zero and "samples" in merged and merged["samples"].dim() == 4:
            from torchvision.utils import save_image

            s = merged["samples"][:64].float()
            s = s[:, :1] if s.shape[1] not in (1, 3) else s
            save_image(((s + 1) / 2).clamp(0, 1), os.path.join(self.output_dir, "samples_rank0.png"), nrow=8, padding=1)


def read_predictions(output_dir: str) -> dict[str, torch.Tensor]:
    """All ranks' files merged and sorted by ``index`` (needs an ``index`` entry)."""
    files = sorted(glob.glob(os.path.join(output_dir, "predictions_rank*.pt")))
    if not files:
        raise FileNotFoundError(f"read_predictions: no predictions_rank*.pt files in {output_dir!r}")
    parts = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    if any("index" not in p for p in parts):
        raise ValueError(f"read_predictions: files in {output_dir!r} have no 'index' entry to merge by")
    index = torch.cat([p["index"] for p in parts])
    order = torch.argsort(index)
    if torch.unique(index).numel() != index.numel():
        raise ValueError(f"read_predictions: duplicated indices across the files in {output_dir!r}")
    return {k: torch.cat([p[k] for p in parts])[order] for k in parts[0] if parts[0][k].dim() > 0}
