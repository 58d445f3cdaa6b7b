"""Gaussian-mixture targets with every answer in closed form (METHODS §1, §6.3).

``GaussianMixture``: a normalised dense mixture ``Σ_k w_k N(μ_k, Σ_k)`` (``log_Z = 0``). Each component
is kept as an eigendecomposition ``Σ_k = Q_k diag(λ_k) Q_kᵀ``, which gives the density, score, exact
samples and rdMC's regularised posterior in one representation:

    q_s(x0 | x) ∝ π(x0) exp(−‖x − e^{−s} x0‖² / (2(1 − e^{−2s}))) ∝ π(x0) N(x0; c, τ² I),
    c = e^{s} x,  τ² = e^{2s} − 1,

(the two quadratics agree because ‖x − e^{−s}x0‖² = e^{−2s}‖x0 − e^{s}x‖²), so ``q_s`` is again a mixture
with components ``N(μ_k + Σ_k(Σ_k + τ²I)⁻¹(c − μ_k), Σ_k − Σ_k(Σ_k + τ²I)⁻¹Σ_k)`` and weights
``∝ w_k N(c; μ_k, Σ_k + τ² I)``.

``GMMPosterior`` / ``LinearGaussianPosterior``: ``π(x) ∝ p(x) N(y; A x, σ_y² I)`` for a prior ``p`` from
``diffpost.priors``. ``log_prob`` is that product as defined (prior log-density plus the Gaussian
log-likelihood, both normalised), so its normaliser is the evidence ``p(y)``; the priors' exact
posterior (a mixture with weights ``∝ w_k N(y; Aμ_k, AΣ_kAᵀ + σ_y² I)``) supplies samples,
``log_Z = log p(y)``, modes and the regularised-posterior oracles.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from diffpost.operators.base import LinearOperator
from diffpost.operators.noise import GaussianNoise
from diffpost.random import GeneratorLike, rand, randn
from diffpost.targets.base import Target

_LOG_2PI = math.log(2 * math.pi)


def _as_covs(covs: torch.Tensor, K: int, d: int) -> torch.Tensor:
    """Scalar, ``(K,)`` variances, one shared ``(d, d)`` or ``(K, d, d)`` → ``(K, d, d)`` float64."""
    covs = torch.as_tensor(covs, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    if covs.dim() == 0:
        return covs * eye.expand(K, d, d)
    if covs.dim() == 1 and covs.shape[0] == K:
        return covs[:, None, None] * eye
    if covs.dim() == 2 and covs.shape == (d, d):
        return covs.expand(K, d, d).clone()
    if covs.dim() == 3 and covs.shape == (K, d, d):
        return covs
    raise ValueError(f"covariances of shape {tuple(covs.shape)} do not fit {K} components in dimension {d}")


class GaussianMixture(Target):
    """Normalised mixture ``Σ_k w_k N(μ_k, Σ_k)`` on ``R^d``; ``log_Z = 0``.

    ``weights`` ``(K,)`` (normalised here), ``means`` ``(K, d)``, ``covs`` as in ``_as_covs``; every
    covariance must be symmetric positive definite. ``lipschitz`` is the largest component precision
    eigenvalue (the curvature inside a mode; between modes the score can be steeper).
    """

    def __init__(self, weights: torch.Tensor | Sequence[float], means: torch.Tensor, covs: torch.Tensor | float):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.dim() != 2 or w.dim() != 1 or w.shape[0] != mu.shape[0]:
            raise ValueError(f"GaussianMixture: need weights (K,) and means (K, d), got {tuple(w.shape)} and {tuple(mu.shape)}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("GaussianMixture: weights must be finite, non-negative and not all zero")
        if not bool(torch.isfinite(mu).all()):
            raise ValueError("GaussianMixture: means must be finite")
        K, d = mu.shape
        S = _as_covs(covs, K, d)
        if not torch.allclose(S, S.transpose(1, 2), rtol=1e-8, atol=1e-12):
            raise ValueError("GaussianMixture: covariances must be symmetric")
        lam, Q = torch.linalg.eigh(0.5 * (S + S.transpose(1, 2)))
        if not bool((lam > 0).all()):
            raise ValueError(f"GaussianMixture: covariances must be positive definite (smallest eigenvalue {float(lam.min()):.3g})")
        self.dim = d
        self.weights = w / w.sum()
        self.means = mu
        self.covs = S
        self.eigvals, self.eigvecs = lam, Q
        self.log_Z = 0.0
        self.modes = mu
        self.mode_weights = self.weights
        self.lipschitz = float((1.0 / lam).max())

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    @property
    def covariance(self) -> torch.Tensor:
        """Law of total covariance: ``Σ_k w_k (Σ_k + μ_k μ_kᵀ) − μ μᵀ``."""
        m = self.mean
        second = torch.einsum("k,kij->ij", self.weights, self.covs) + torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return second - torch.outer(m, m)

    # ----------------------------------------------------------------- helpers
    def _params(self, x: torch.Tensor):
        cast = dict(dtype=x.dtype, device=x.device)
        return self.weights.to(**cast), self.means.to(**cast), self.eigvals.to(**cast), self.eigvecs.to(**cast)

    def _component_terms(self, x: torch.Tensor, extra_var: float = 0.0):
        """Per component: rotated residual ``u = Qᵀ(x − μ)`` ``(B, K, d)``, variances ``λ + extra``, and
        ``log w_k + log N(x; μ_k, Σ_k + extra I)`` ``(B, K)``."""
        w, mu, lam, Q = self._params(x)
        var = lam + extra_var
        K, d = mu.shape
        # Qᵀ(x − μ) for all components as one matrix product (cheaper than broadcasting x − μ_k)
        u = (x @ Q.transpose(0, 1).reshape(d, K * d)).reshape(-1, K, d) - torch.einsum("kd,kde->ke", mu, Q)
        logc = -0.5 * ((u**2) / var).sum(-1) - 0.5 * torch.log(var).sum(-1) - 0.5 * self.dim * _LOG_2PI
        return u, var, logc + torch.log(w)

    # ----------------------------------------------------------------- Target API
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return torch.logsumexp(self._component_terms(x)[2], dim=1)

    def log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_input(x)
        u, var, logc = self._component_terms(x)
        lp = torch.logsumexp(logc, dim=1)
        r = torch.exp(logc - lp[:, None])
        Q = self._params(x)[3]
        # ∇ log Σ_k w_k N_k = −Σ_k r_k Σ_k⁻¹ (x − μ_k), with Σ_k⁻¹ = Q diag(1/λ) Qᵀ
        K, d = self.means.shape
        g = -((r[:, :, None] * u / var).reshape(-1, K * d) @ Q.transpose(1, 2).reshape(K * d, d))
        return lp, g

    def grad_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob_and_grad(x)[1]

    def _draw(self, logits: torch.Tensor, generator: GeneratorLike) -> torch.Tensor:
        """One component index per row from unnormalised log-probabilities ``(B, K)``."""
        B = logits.shape[0]
        p = torch.softmax(logits, dim=1)
        cdf = torch.cumsum(p, dim=1)
        u = rand((B, 1), generator, dtype=logits.dtype, device=logits.device)
        return torch.clamp((u > cdf).sum(1), max=self.n_components - 1)

    def _gaussian_draw(self, centres: torch.Tensor, std: torch.Tensor, Q: torch.Tensor, k: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """``centres[b, k_b] + Q_{k_b}(std_{k_b} ⊙ ξ_b)``; ``centres`` ``(B, K, d)``, ``std`` ``(K, d)``.
        Rotates ξ by every component's basis (``(B, K, d)``) instead of gathering ``(B, d, d)`` bases."""
        z = centres + torch.einsum("kde,bke->bkd", Q, xi[:, None, :] * std[None])
        return z[torch.arange(xi.shape[0], device=xi.device), k]

    def sample(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        w, mu, lam, Q = self.weights, self.means, self.eigvals, self.eigvecs
        k = self._draw(torch.log(w).expand(n, -1), generator)
        xi = randn((n, self.dim), generator, dtype=self.dtype, device=mu.device)
        return self._gaussian_draw(mu[None].expand(n, -1, -1), lam.sqrt(), Q, k, xi)

    def _regularised(self, x: torch.Tensor, s: float):
        """Component means ``(B, K, d)``, eigen-variances ``(K, d)`` and log-weights ``(B, K)`` of ``q_s``."""
        self.check_input(x)
        if not s > 0:
            raise ValueError(f"regularised posterior needs forward time s > 0, got {s}")
        es = math.exp(s)
        tau2 = math.expm1(2 * s)
        u, var, logw = self._component_terms(es * x, tau2)
        _, mu, lam, Q = self._params(x)
        gain = lam / var  # λ/(λ + τ²): the Kalman gain in each eigen-direction
        means = mu[None] + torch.einsum("kde,bke->bkd", Q, gain * u)
        return means, lam * tau2 / var, logw

    def regularised_mean(self, x: torch.Tensor, s: float) -> torch.Tensor:
        means, _, logw = self._regularised(x, s)
        return torch.einsum("bk,bkd->bd", torch.softmax(logw, dim=1), means)

    def regularised_sample(self, x: torch.Tensor, s: float, generator: GeneratorLike = None) -> torch.Tensor:
        means, post_var, logw = self._regularised(x, s)
        k = self._draw(logw, generator)
        xi = randn(x.shape, generator, dtype=x.dtype, device=x.device)
        return self._gaussian_draw(means, post_var.sqrt(), self._params(x)[3], k, xi)


# --------------------------------------------------------------------------- posteriors


def mixture_of(prior) -> GaussianMixture:
    """The law of a ``diffpost.priors`` Gaussian, GMM or spectral (GRF) prior as a dense, flat
    ``GaussianMixture`` (spectral priors via ``to_dense_prior``, ``d ≤ MAX_DENSE_DIM``)."""
    if callable(getattr(prior, "to_dense_prior", None)):
        prior = prior.to_dense_prior()
    if all(hasattr(prior, a) for a in ("weights", "means", "covs")):
        return GaussianMixture(prior.weights, torch.as_tensor(prior.means).reshape(len(prior.weights), -1), prior.covs)
    if hasattr(prior, "mean") and hasattr(prior, "cov"):
        return GaussianMixture([1.0], torch.as_tensor(prior.mean).reshape(1, -1), torch.as_tensor(prior.cov)[None])
    raise TypeError(f"cannot read a Gaussian (mixture) law from an object of type {type(prior).__name__}")


class GMMPosterior(Target):
    """``π(x) ∝ p(x) N(y; A x, σ_y² I)`` for a ``diffpost.priors`` prior ``p`` (Gaussian, GMM or
    spectral), on flat vectors ``(B, d)``; ``to_shape`` gives back ``(B, *shape)``.

    ``log_prob`` is ``prior.log_prob + GaussianNoise(σ_y).log_likelihood(y, A x)`` as defined, so
    ``log_Z = prior.log_evidence(A, y, σ_y)``; exact samples come from ``prior.posterior(A, y, σ_y)``,
    whose dense mixture form (``exact``) gives the closed-form score, modes and rdMC oracles.
    """

    def __init__(self, prior, operator: LinearOperator, y: torch.Tensor, sigma_y: float):
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"{type(self).__name__}: operator must be a LinearOperator, got {type(operator).__name__}")
        if not all(callable(getattr(prior, a, None)) for a in ("posterior", "log_evidence", "log_prob", "to")):
            raise TypeError(f"{type(self).__name__}: prior must be a diffpost.priors prior, got {type(prior).__name__}")
        if not (isinstance(sigma_y, (int, float)) and math.isfinite(sigma_y) and sigma_y > 0):
            raise ValueError(f"{type(self).__name__}: sigma_y must be a positive finite number, got {sigma_y}")
        self.prior = prior.to(dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64)
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"{type(self).__name__}: y must be finite")
        # the prior checks that the operator acts on its shape and that y has the operator's y_shape
        self.posterior = self.prior.posterior(operator, y, sigma_y)
        self.log_Z = float(self.prior.log_evidence(operator, y, sigma_y))
        self.operator = operator
        self.y = y.reshape(1, *operator.y_shape)
        self.sigma_y = float(sigma_y)
        self.noise = GaussianNoise(self.sigma_y)
        self.shape = tuple(self.prior.shape)
        self.dim = math.prod(self.shape)
        self.exact = mixture_of(self.posterior)
        self.modes = self.exact.means
        self.mode_weights = self.exact.weights
        self.lipschitz = self.exact.lipschitz

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) + log N(y; A x, σ_y² I)`` (normaliser ``p(y)``)."""
        self.check_input(x)
        xs = self.to_shape(x)
        y = self.y.to(dtype=x.dtype, device=x.device).expand(x.shape[0], *self.y.shape[1:])
        return self.prior.log_prob(xs) + self.noise.log_likelihood(y, self.operator.forward(xs))

    def log_prob_and_grad(self, x):
        # the normalised posterior mixture times p(y): the same function, with a closed-form score
        self.check_input(x)
        lp, g = self.exact.log_prob_and_grad(x)
        return lp + self.log_Z, g

    def grad_log_prob(self, x):
        return self.log_prob_and_grad(x)[1]

    def sample(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        return self.posterior.sample(n, generator).reshape(n, self.dim)

    def regularised_mean(self, x, s):
        return self.exact.regularised_mean(x, s)

    def regularised_sample(self, x, s, generator=None):
        return self.exact.regularised_sample(x, s, generator)

    @property
    def posterior_mean(self) -> torch.Tensor:
        return self.exact.mean

    @property
    def posterior_cov(self) -> torch.Tensor:
        return self.exact.covariance

    def to_shape(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` → ``(B, *shape)``."""
        return x.reshape(x.shape[0], *self.shape)


class LinearGaussianPosterior(GMMPosterior):
    """Gaussian prior: ``π = N(μ_post, Σ_post)`` up to ``p(y)``; ``log_Z = log p(y)``."""

    def __init__(self, prior, operator: LinearOperator, y: torch.Tensor, sigma_y: float):
        super().__init__(prior, operator, y, sigma_y)
        if self.exact.n_components != 1:
            raise ValueError(f"LinearGaussianPosterior needs a Gaussian prior, got {self.exact.n_components} components")
