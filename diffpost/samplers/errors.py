"""The project's one divergence error, and the cheap finiteness checks every sampler runs per step.

A sampler that meets a non-finite density, gradient or state stops with ``SamplerDivergedError``
naming itself and the step, instead of carrying a NaN into its output (and a script writing it).
"""
from __future__ import annotations

import torch


class SamplerDivergedError(RuntimeError):
    """A density, gradient or sampler state became NaN or infinite; the message names the sampler and step."""


def _describe(t: torch.Tensor) -> str:
    """Which non-finite values, in how many rows (only computed once something is wrong)."""
    bad = ~torch.isfinite(t)
    rows = bad.reshape(bad.shape[0], -1).any(1) if t.dim() > 0 else bad.reshape(1)
    kinds = [k for k, m in (("NaN", torch.isnan(t)), ("+inf", t == float("inf")), ("-inf", t == float("-inf"))) if bool(m.any())]
    return f"{'/'.join(kinds)} in {int(rows.sum())} of {rows.numel()} rows"


def check_finite(t: torch.Tensor, what: str, where: str) -> None:
    """Raise ``SamplerDivergedError`` if ``t`` has a NaN or ±inf; ``where`` names the sampler and step.

    One ``isfinite(t).all()`` (a single reduction and host sync) when all is well."""
    if bool(torch.isfinite(t).all()):
        return
    raise SamplerDivergedError(
        f"{where}: {what} is not finite ({_describe(t)}); "
        "check the target's log-density/gradient (or the network) there, or reduce the step size"
    )


def check_log_density(lp: torch.Tensor, what: str, where: str) -> torch.Tensor:
    """Raise ``SamplerDivergedError`` if ``lp`` has a NaN or ``+∞``; ``−∞`` (a point outside a bounded
    support) is allowed. Returns the mask of the ``−∞`` entries."""
    outside = lp == float("-inf")
    if not bool(torch.isfinite(lp[~outside]).all()):
        check_finite(lp[~outside], what, where)
    return outside


def log_prob_and_grad_checked(target, x: torch.Tensor, where: str, what: str = "log π"):
    """``target.log_prob_and_grad(x)`` for samplers that accept bounded supports: ``log π = −∞`` is allowed
    (its gradient is set to 0), a NaN or ``+∞`` density or a non-finite gradient elsewhere raises."""
    lp, g = target.log_prob_and_grad(x)
    outside = check_log_density(lp, what, where)
    if bool(outside.any()):
        g = torch.where(outside[..., None], torch.zeros_like(g), g)
    check_finite(g, f"the gradient of {what}", where)
    return lp, g


def check_state(x: torch.Tensor, sampler: str, step: int, sigma: float | None = None) -> None:
    """Per-step guard of the σ-space samplers: ``"heun: state is not finite at step 3 (σ = 0.42)"``."""
    if bool(torch.isfinite(x).all()):
        return
    at = f"step {step}" + ("" if sigma is None else f" (σ = {sigma:.3g})")
    raise SamplerDivergedError(
        f"{sampler}: state is not finite at {at} ({_describe(x)}); the denoiser returned NaN/inf or the "
        "chain diverged (check the network or checkpoint, or use more steps)"
    )
