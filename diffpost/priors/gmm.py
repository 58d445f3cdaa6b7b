"""Gaussian-mixture prior ``Σ_k w_k N(μ_k, Σ_k)``: exact denoiser, score and posterior (METHODS §1).

Noising maps each component to ``N(μ_k, Σ_k + σ²C)``, so ``p_σ`` is again a mixture and
``E[x0 | x_σ] = Σ_k r_k(x) D_k(x)`` with responsibilities ``r_k`` under ``p_σ``. Conditioning on
``y = A x0 + η`` maps each component to its Gaussian posterior, reweighted by its evidence.
"""
from __future__ import annotations

import math

import torch

from diffpost.priors.gaussian import AnalyticPrior, GaussianPrior, _dense_posterior
from diffpost.random import GeneratorLike, rand, randn
from diffpost.schedules import NoiseCovariance


class GMMPrior(AnalyticPrior):
    """Mixture with ``weights (K,)`` (normalised here), ``means (K, d)``, ``covs (K, d, d)``; ``shape``
    (per-sample, e.g. ``(C, H, W)``) defaults to ``(d,)``."""

    _tensor_fields = ("weights", "means", "covs")

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, shape: tuple[int, ...] | None = None):
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.dim() != 2:
            raise ValueError(f"GMMPrior: means must be (K, d), got shape {tuple(means.shape)}")
        K, d = means.shape
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        covs = torch.as_tensor(covs, dtype=means.dtype, device=means.device)
        if weights.shape != (K,):
            raise ValueError(f"GMMPrior: weights must be ({K},), got shape {tuple(weights.shape)}")
        if covs.shape != (K, d, d):
            raise ValueError(f"GMMPrior: covs must be ({K}, {d}, {d}), got shape {tuple(covs.shape)}")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("GMMPrior: weights must be finite, non-negative and not all zero")
        self.shape = (d,) if shape is None else tuple(int(v) for v in shape)
        if math.prod(self.shape) != d:
            raise ValueError(f"GMMPrior: shape {self.shape} has {math.prod(self.shape)} entries, the means have {d}")
        self.weights = weights / weights.sum()
        self.means = means.clone()
        # components validate symmetry and finiteness; keep their symmetrised covariances
        comps = [GaussianPrior(means[k], covs[k], self.shape) for k in range(K)]
        self.covs = torch.stack([c.cov for c in comps])
        self._cache_components = {"list": comps}

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def components(self) -> list[GaussianPrior]:
        """The K Gaussian components (cached, with their own factorisation caches)."""
        if "list" not in self._cache_components:
            self._cache_components["list"] = [GaussianPrior(self.means[k], self.covs[k], self.shape) for k in range(self.n_components)]
        return self._cache_components["list"]

    # ------------------------------------------------------------------ helpers
    def _log_joint(self, xf: torch.Tensor, s: torch.Tensor, nc: NoiseCovariance | None, owner: str) -> torch.Tensor:
        """``log w_k + log N(x; μ_k, Σ_k + σ²C)``, shape ``(B, K)``."""
        cols = []
        for k, comp in enumerate(self.components()):
            cols.append(comp._whitened(nc).log_density(xf - comp.mean.to(xf), s, owner))
        logw = torch.log(self.weights.to(xf))
        return torch.stack(cols, 1) + logw

    # ------------------------------------------------------------------ interface
    def sample(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        """Per sample: one uniform picks the component, then ``μ_k + Q_k Λ_k^½ z``."""
        u = rand((n,), generator, dtype=self.dtype, device=self.device)
        z = randn((n, self.dim), generator, dtype=self.dtype, device=self.device)
        cdf = torch.cumsum(self.weights, 0)
        k = torch.searchsorted(cdf, u.contiguous(), right=True).clamp_max(self.n_components - 1)
        out = torch.empty(n, self.dim, dtype=self.dtype, device=self.device)
        for j, comp in enumerate(self.components()):
            idx = (k == j).nonzero(as_tuple=True)[0]
            if idx.numel():
                wh = comp._whitened(None)
                out[idx] = comp.mean + (z[idx] * wh.lam.sqrt()) @ wh.F.T
        return out.reshape(n, *self.shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        xf = self._flatten(x)
        s = torch.zeros(xf.shape[0], 1, dtype=xf.dtype, device=xf.device)
        return torch.logsumexp(self._log_joint(xf, s, None, "GMMPrior.log_prob"), 1)

    def mode_probabilities(self, x: torch.Tensor, sigma=0.0, noise_cov: NoiseCovariance | None = None) -> torch.Tensor:
        """Responsibilities ``P(component k | x_σ = x)``, shape ``(B, K)`` (σ = 0: under the prior)."""
        xf = self._flatten(x)
        s = self._sigma(sigma, xf)
        return torch.softmax(self._log_joint(xf, s, self._noise_cov(noise_cov), "GMMPrior.mode_probabilities"), 1)

    def denoise(self, x: torch.Tensor, sigma, noise_cov: NoiseCovariance | None = None) -> torch.Tensor:
        """``Σ_k r_k(x) [μ_k + Σ_k(Σ_k + σ²C)⁻¹(x − μ_k)]``."""
        xf = self._flatten(x)
        s = self._sigma(sigma, xf)
        nc = self._noise_cov(noise_cov)
        r = torch.softmax(self._log_joint(xf, s, nc, "GMMPrior.denoise"), 1)
        out = torch.zeros_like(xf)
        for k, comp in enumerate(self.components()):
            mu = comp.mean.to(xf)
            out = out + r[:, k : k + 1] * (mu + comp._whitened(nc).denoise(xf - mu, s))
        return out.reshape(x.shape)

    def score(self, x: torch.Tensor, sigma, noise_cov: NoiseCovariance | None = None) -> torch.Tensor:
        """``−Σ_k r_k(x) (Σ_k + σ²C)⁻¹(x − μ_k)``."""
        xf = self._flatten(x)
        s = self._sigma(sigma, xf)
        nc = self._noise_cov(noise_cov)
        r = torch.softmax(self._log_joint(xf, s, nc, "GMMPrior.score"), 1)
        out = torch.zeros_like(xf)
        for k, comp in enumerate(self.components()):
            out = out + r[:, k : k + 1] * comp._whitened(nc).score(xf - comp.mean.to(xf), s, "GMMPrior.score")
        return out.reshape(x.shape)

    def marginal(self, sigma, noise_cov: NoiseCovariance | None = None) -> "GMMPrior":
        """``Σ_k w_k N(μ_k, Σ_k + σ²C)``."""
        s = self._scalar_sigma(sigma)
        nc = self._noise_cov(noise_cov)
        C = torch.eye(self.dim, dtype=self.dtype, device=self.device) if nc is None else nc.to_dense(self.dtype, self.device)
        return GMMPrior(self.weights, self.means, self.covs + s**2 * C, self.shape)

    def _posterior_parts(self, operator, y, sigma_y):
        y, sy = self._measurement(operator, y, sigma_y)
        A = operator.to_dense(dtype=self.dtype, device=self.device)
        parts = [_dense_posterior(self.means[k], self.covs[k], A, y.reshape(-1), sy) for k in range(self.n_components)]
        means = torch.stack([p[0] for p in parts])
        covs = torch.stack([p[1] for p in parts])
        log_ev = torch.stack([p[2] for p in parts]) + torch.log(self.weights)
        return means, covs, log_ev

    def posterior(self, operator, y: torch.Tensor, sigma_y: float) -> "GMMPrior":
        """Law of ``x0 | y``: components ``N(μ_k^post, Σ_k^post)``, weights ``∝ w_k N(y; Aμ_k, AΣ_kAᵀ + σ_y²I)``.

        ``posterior(...).denoise(x, σ)`` is then exactly the posterior denoiser ``E[x0 | x_σ = x, y]`` of
        METHODS §1 (the diffusion noise is independent of the measurement noise given x0).
        """
        means, covs, log_ev = self._posterior_parts(operator, y, sigma_y)
        return GMMPrior(torch.softmax(log_ev, 0), means, covs, self.shape)

    def log_evidence(self, operator, y: torch.Tensor, sigma_y: float) -> torch.Tensor:
        """``log Σ_k w_k N(y; Aμ_k, AΣ_kAᵀ + σ_y²I)`` as a 0-dim tensor."""
        return torch.logsumexp(self._posterior_parts(operator, y, sigma_y)[2], 0)

    def __repr__(self) -> str:
        return f"GMMPrior(K={self.n_components}, shape={self.shape}, dtype={self.dtype})"
