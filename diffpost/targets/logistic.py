"""Bayesian logistic regression (METHODS §6.3): ``p(w | data) ∝ N(w; 0, σ_w² I) Π_i Bern(y_i; sigmoid(x_iᵀ w))``.

With ``z = X w``: ``log p = Σ_i (y_i z_i − softplus(z_i)) − ‖w‖²/(2σ_w²) + const`` and
``∇ log p = Xᵀ(y − sigmoid(z)) − w/σ_w²``. The Hessian is ``−Xᵀ diag(σ(1 − σ)) X − I/σ_w²`` and
``σ(1 − σ) ≤ 1/4``, so ``λ_max(XᵀX)/4 + 1/σ_w²`` bounds the score's Lipschitz constant. The normaliser
(the marginal likelihood) has no closed form: ``log_Z`` is ``None``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffpost.random import make_generator, rand, randn
from diffpost.targets.base import Target


class BayesianLogisticRegression(Target):
    """Posterior over weights ``w ∈ R^d`` (``d = n_features + 1`` with an intercept column).

    ``features`` ``(N, p)``, ``labels`` ``(N,)`` in {0, 1}. ``log_prob`` includes the normalised prior
    density. Use ``breast_cancer()`` (scikit-learn's shipped data set, standardised) or ``synthetic()``
    (known ``true_weights``).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, prior_std: float = 1.0, add_intercept: bool = True):
        X = torch.as_tensor(features, dtype=torch.float64)
        y = torch.as_tensor(labels, dtype=torch.float64)
        if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(f"BayesianLogisticRegression: need features (N, p) and labels (N,), got {tuple(X.shape)}, {tuple(y.shape)}")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("BayesianLogisticRegression: labels must be 0 or 1")
        if not bool(torch.isfinite(X).all()):
            raise ValueError("BayesianLogisticRegression: features must be finite")
        if not (math.isfinite(prior_std) and prior_std > 0):
            raise ValueError(f"BayesianLogisticRegression: prior_std must be positive, got {prior_std}")
        if add_intercept:
            X = torch.cat([torch.ones(X.shape[0], 1, dtype=X.dtype), X], dim=1)
        self.features, self.labels = X, y
        self.prior_std = float(prior_std)
        self.dim = X.shape[1]
        self.true_weights: torch.Tensor | None = None
        self.lipschitz = float(torch.linalg.eigvalsh(X.T @ X).max()) / 4 + 1 / self.prior_std**2

    @classmethod
    def breast_cancer(cls, prior_std: float = 1.0) -> "BayesianLogisticRegression":
        """scikit-learn's Wisconsin breast-cancer data (569 × 30), features standardised; ``d = 31``.
        A ``BreastCancerLogisticRegression``: its spec is ``prior_std`` alone, not the data."""
        return BreastCancerLogisticRegression(prior_std)

    @classmethod
    def synthetic(cls, n_data: int = 200, n_features: int = 5, seed: int = 0, prior_std: float = 1.0) -> "BayesianLogisticRegression":
        """Features ``N(0, I)``, weights (intercept first) drawn from the prior, labels from the model.
        A ``SyntheticLogisticRegression`` (plain-typed spec), with ``true_weights``."""
        return SyntheticLogisticRegression(n_data, n_features, seed, prior_std)

    def _logits(self, w: torch.Tensor) -> torch.Tensor:
        return w @ self.features.to(dtype=w.dtype, device=w.device).T

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        z = self._logits(x)
        y = self.labels.to(dtype=x.dtype, device=x.device)
        loglik = (y * z - F.softplus(z)).sum(1)
        logprior = -0.5 * (x**2).sum(1) / self.prior_std**2 - 0.5 * self.dim * math.log(2 * math.pi * self.prior_std**2)
        return loglik + logprior

    def log_prob_and_grad(self, x):
        lp = self.log_prob(x)
        z = self._logits(x)
        X = self.features.to(dtype=x.dtype, device=x.device)
        y = self.labels.to(dtype=x.dtype, device=x.device)
        return lp, (y - torch.sigmoid(z)) @ X - x / self.prior_std**2

    def grad_log_prob(self, x):
        return self.log_prob_and_grad(x)[1]


class BreastCancerLogisticRegression(BayesianLogisticRegression):
    """Logistic regression on scikit-learn's Wisconsin breast-cancer data (569 × 30, shipped with the
    package, no download), features standardised, intercept added: ``d = 31``."""

    def __init__(self, prior_std: float = 1.0):
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        X = torch.as_tensor(data.data, dtype=torch.float64)
        X = (X - X.mean(0)) / X.std(0, unbiased=False)
        super().__init__(X, torch.as_tensor(data.target, dtype=torch.float64), prior_std=prior_std)


class SyntheticLogisticRegression(BayesianLogisticRegression):
    """Features ``N(0, I)`` ``(n_data, n_features)``, weights (intercept first) from the prior
    (``true_weights``), labels from the model; all drawn from ``seed``. ``d = n_features + 1``."""

    def __init__(self, n_data: int = 200, n_features: int = 5, seed: int = 0, prior_std: float = 1.0):
        if isinstance(n_data, bool) or not isinstance(n_data, int) or n_data < 1 or isinstance(n_features, bool) \
                or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"SyntheticLogisticRegression: n_data and n_features must be positive integers, got {n_data!r}, {n_features!r}")
        if not (math.isfinite(prior_std) and prior_std > 0):
            raise ValueError(f"SyntheticLogisticRegression: prior_std must be positive, got {prior_std}")
        g = make_generator(seed)
        X = randn((n_data, n_features), g, dtype=torch.float64)
        w = prior_std * randn((n_features + 1,), g, dtype=torch.float64)
        p = torch.sigmoid(w[0] + X @ w[1:])
        y = (rand((n_data,), g, dtype=torch.float64) < p).to(torch.float64)
        super().__init__(X, y, prior_std=prior_std)
        self.true_weights = w
