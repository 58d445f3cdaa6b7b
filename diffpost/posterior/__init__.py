"""Posterior methods on one contract (``diffpost.posterior.base``), one file per method.

Methods are named by ``class_path`` (``diffpost.posterior.dps.DPS``, ``diffpost.posterior.ucos.UCoS``,
...) in configs/method/*.yaml, so adding one touches only its own file, its test and its config.
"""
from diffpost.posterior.base import (
    POSTERIOR_STREAM,
    DiffusionModel,
    OperatorMismatchError,
    PosteriorMethod,
    PosteriorOutput,
    PriorModel,
    Run,
    UCoSModel,
    check_state,
    posterior_generators,
    require_svd,
)

__all__ = [
    "POSTERIOR_STREAM", "DiffusionModel", "OperatorMismatchError", "PosteriorMethod", "PosteriorOutput", "PriorModel",
    "Run", "UCoSModel", "check_state", "posterior_generators", "require_svd",
]
