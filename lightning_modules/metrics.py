"""``IndexedMean``: the mean of per-item values, each item counted once, correct under DDP.

Lightning's ``DistributedSampler`` pads the validation/test set with repeated items so every rank gets
the same number of batches; a plain ``MeanMetric`` would then weight those items twice and the
multi-GPU value would differ from the single-process one. Keying every value by its dataset index
and keeping one value per index removes the padding exactly.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class IndexedMean(Metric):
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("value", default=[], dist_reduce_fx="cat")

    def update(self, value: torch.Tensor, index: torch.Tensor) -> None:
        value, index = value.detach().reshape(-1), index.detach().reshape(-1)
        if value.shape != index.shape:
            raise ValueError(f"IndexedMean: {value.numel()} values for {index.numel()} indices")
        self.value.append(value.to(torch.float64))
        self.index.append(index.to(device=value.device, dtype=torch.long))

    def compute(self) -> torch.Tensor:
        empty = self.value.numel() == 0 if torch.is_tensor(self.value) else not self.value
        if empty:  # (after a DDP sync the list states are concatenated tensors)
            raise ValueError("IndexedMean: no values were recorded (empty validation/test split?)")
        index, value = dim_zero_cat(self.index), dim_zero_cat(self.value)
        # one value per index: a stable sort keeps the first occurrence of each index first
        order = torch.sort(index, stable=True).indices
        index, value = index[order], value[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        return value[first].mean().to(torch.float32)
