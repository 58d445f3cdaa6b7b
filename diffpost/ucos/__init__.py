"""UCoS: unconditional representation of the conditional score (METHODS §3)."""
from diffpost.ucos.gaussian import GaussianAuxiliaryDenoiser
from diffpost.ucos.information import auxiliary_sample, information_offset, information_vector, posterior_denoiser
from diffpost.ucos.preconditioners import (
    DensePreconditioner,
    Preconditioner,
    RandomizedSVDPreconditioner,
    SpectralPreconditioner,
)
from diffpost.ucos.lean_preconditioners import (
    CirculantPreconditioner,
    LowRankDiagonalPreconditioner,
    default_preconditioner,
)

__all__ = [
    "auxiliary_sample", "information_offset", "information_vector", "posterior_denoiser",
    "GaussianAuxiliaryDenoiser", "Preconditioner", "SpectralPreconditioner", "DensePreconditioner",
    "RandomizedSVDPreconditioner", "CirculantPreconditioner", "LowRankDiagonalPreconditioner", "default_preconditioner",
]
from diffpost.ucos.model import UCoSDenoiser  # noqa: E402

__all__ += ["UCoSDenoiser"]
from diffpost.ucos.function_space import (  # noqa: E402
    DenseNoisePreconditioner,
    FourierNoisePreconditioner,
    FunctionSpaceGaussianDenoiser,
    continuum_blur,
    covariance_noise,
    function_space_preconditioner,
    pixel_sigma_y,
)

__all__ += [
    "FunctionSpaceGaussianDenoiser", "FourierNoisePreconditioner", "DenseNoisePreconditioner",
    "function_space_preconditioner", "covariance_noise", "pixel_sigma_y", "continuum_blur",
]
