"""σ-space samplers: unconditional loops (``base``) that posterior samplers plug their denoisers into."""
from diffpost.samplers.base import (
    CountingDenoiser,
    Denoiser,
    NoiseFn,
    edm_stochastic,
    euler,
    euler_maruyama,
    heun,
    initial_noise,
)

__all__ = [
    "CountingDenoiser",
    "Denoiser",
    "NoiseFn",
    "edm_stochastic",
    "euler",
    "euler_maruyama",
    "heun",
    "initial_noise",
]
