"""Analytic priors with exact denoisers, scores, marginals, posteriors and evidences (METHODS §1, §3.4).

All share one interface: ``shape``, ``dim``, ``sample(n, generator)``, ``log_prob(x)``,
``denoise(x, sigma, noise_cov=None)``, ``score(x, sigma, noise_cov=None)``, ``marginal(sigma, noise_cov=None)``,
``posterior(operator, y, sigma_y)``, ``log_evidence(operator, y, sigma_y)``, ``to(dtype=, device=)``.
They are the oracles every sampler is tested against.
"""
from diffpost.priors.gaussian import MAX_DENSE_DIM, AnalyticPrior, GaussianPrior
from diffpost.priors.gmm import GMMPrior
from diffpost.priors.spectral import GaussianRandomField, SpectralGaussian

__all__ = ["AnalyticPrior", "GaussianPrior", "SpectralGaussian", "GaussianRandomField", "GMMPrior", "MAX_DENSE_DIM"]
