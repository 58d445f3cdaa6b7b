"""Networks with the common signature ``net(x, c_noise) -> out`` (``c_noise``: a ``(B,)`` tensor)."""
from diffpost.nets.embedding import FourierNoiseEmbedding, NoiseEmbedding, noise_batch, positional_features
from diffpost.nets.fno import FNO, SpectralConv2d
from diffpost.nets.mlp import MLP
from diffpost.nets.unet import UNet

__all__ = [
    "UNet",
    "FNO",
    "MLP",
    "SpectralConv2d",
    "NoiseEmbedding",
    "FourierNoiseEmbedding",
    "positional_features",
    "noise_batch",
]
