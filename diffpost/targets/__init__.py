"""Unnormalised densities with known answers for samplers of posteriors known up to a constant
(METHODS §6): linear-Gaussian and GMM posteriors, 2-D mixtures, Neal's funnel, Bayesian logistic
regression, the biochemical-oxygen-demand posterior and a Gaussian-random-field image posterior."""
from diffpost.targets.base import EvalCounter, Target
from diffpost.targets.bod import BiochemicalOxygenDemand
from diffpost.targets.gaussian import GaussianMixture, GMMPosterior, LinearGaussianPosterior, mixture_of
from diffpost.targets.image import ImagePosterior
from diffpost.targets.logistic import (
    BayesianLogisticRegression,
    BreastCancerLogisticRegression,
    SyntheticLogisticRegression,
)
from diffpost.targets.synthetic import SyntheticGMMPosterior, SyntheticImagePosterior, SyntheticLinearGaussianPosterior
from diffpost.targets.toy import FortyMode2D, FourMode2D, Funnel

__all__ = [
    "Target",
    "EvalCounter",
    "BiochemicalOxygenDemand",
    "GaussianMixture",
    "GMMPosterior",
    "LinearGaussianPosterior",
    "ImagePosterior",
    "mixture_of",
    "BayesianLogisticRegression",
    "BreastCancerLogisticRegression",
    "SyntheticLogisticRegression",
    "SyntheticGMMPosterior",
    "SyntheticImagePosterior",
    "SyntheticLinearGaussianPosterior",
    "FourMode2D",
    "FortyMode2D",
    "Funnel",
]
