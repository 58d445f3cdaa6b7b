"""Failure reporting shared by the Monte Carlo samplers (rdMC, ULA, MALA).

A sampler that meets a non-finite density, gradient or state stops with ``SamplerDivergedError``
naming the step, instead of carrying a NaN into its output.
"""
from __future__ import annotations

import torch


class SamplerDivergedError(RuntimeError):
    """A density, gradient or sampler state became NaN or infinite; the message names the step."""


def check_finite(t: torch.Tensor, what: str, where: str) -> None:
    """Raise ``SamplerDivergedError`` if ``t`` has a NaN or ±inf; ``where`` names the step."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        rows = bad.reshape(bad.shape[0], -1).any(1) if t.dim() > 0 else bad.reshape(1)
        kinds = [k for k, m in (("NaN", torch.isnan(t)), ("+inf", t == float("inf")), ("-inf", t == float("-inf"))) if bool(m.any())]
        raise SamplerDivergedError(
            f"{where}: {what} is not finite ({'/'.join(kinds)} in {int(rows.sum())} of {rows.numel()} rows); "
            "check the target's log-density/gradient there or reduce the step size"
        )
