"""Forward operators ``A`` with exact adjoints, pseudo-inverses and (where closed-form) SVDs."""
from diffpost.operators.base import DenseOperator, LinearOperator, SVDOperator, conjugate_gradient
from diffpost.operators.noise import GaussianNoise

__all__ = ["LinearOperator", "SVDOperator", "DenseOperator", "GaussianNoise", "conjugate_gradient"]
from diffpost.operators.denoise import Denoising, HartleySVDOperator, ImageSVDOperator
from diffpost.operators.inpaint import Inpainting
from diffpost.operators.blur import Blur
from diffpost.operators.superres import SuperResolution
from diffpost.operators.mri import MRI

__all__ += ["Denoising", "Inpainting", "Blur", "SuperResolution", "MRI", "ImageSVDOperator", "HartleySVDOperator"]
from diffpost.operators.ct import CT, RayTransform
from diffpost.operators.fanbeam import FanBeamCT

__all__ += ["CT", "FanBeamCT", "RayTransform"]
