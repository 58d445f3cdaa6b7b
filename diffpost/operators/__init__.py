"""Forward operators ``A`` with exact adjoints, pseudo-inverses and (where closed-form) SVDs."""
from diffpost.operators.base import DenseOperator, LinearOperator, SVDOperator, conjugate_gradient
from diffpost.operators.noise import GaussianNoise

__all__ = ["LinearOperator", "SVDOperator", "DenseOperator", "GaussianNoise", "conjugate_gradient"]
