"""σ-space samplers: unconditional loops (``base``) that posterior samplers plug their denoisers into."""
from diffpost.samplers.base import (
    Callback,
    CountingDenoiser,
    Denoiser,
    NoiseFn,
    edm_stochastic,
    euler,
    euler_maruyama,
    heun,
    initial_noise,
)
from diffpost.samplers.errors import SamplerDivergedError, check_finite, check_state

__all__ = [
    "Callback",
    "CountingDenoiser",
    "Denoiser",
    "NoiseFn",
    "edm_stochastic",
    "euler",
    "euler_maruyama",
    "heun",
    "initial_noise",
    "SamplerDivergedError",
    "check_finite",
    "check_state",
]
