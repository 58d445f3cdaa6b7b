"""Targets with known answers: normalisers against quadrature, scores against autograd and finite
differences, exact samples against their laws, rdMC's regularised-posterior oracles against
independent dense formulas and quadrature."""
import math

import pytest
import torch

from diffpost.operators import CT, Blur, DenseOperator
from diffpost.priors import GaussianPrior, GaussianRandomField, GMMPrior
from diffpost.random import make_generator, randn
from diffpost.targets import (
    BayesianLogisticRegression,
    EvalCounter,
    FortyMode2D,
    FourMode2D,
    Funnel,
    GaussianMixture,
    GMMPosterior,
    ImagePosterior,
    LinearGaussianPosterior,
    Target,
)

pytestmark = pytest.mark.usefixtures("no_global_rng")

F64 = torch.float64


def _grid(lo, hi, n):
    t = torch.linspace(lo, hi, n, dtype=F64)
    X, Y = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([X.reshape(-1), Y.reshape(-1)], 1), (t[1] - t[0]) ** 2


def _log_integral(target, lo, hi, n=601):
    pts, area = _grid(lo, hi, n)
    return float(torch.logsumexp(target.log_prob(pts), 0) + torch.log(area))


def _autograd(target, x):
    return Target.log_prob_and_grad(target, x)  # the base class' autograd path through log_prob


def _gmm_posterior_2d(sigma_y=0.5):
    g = make_generator(0)
    means = torch.tensor([[-2.0, 1.0], [2.0, 0.0], [0.0, -2.5]], dtype=F64)
    L = randn((3, 2, 2), g, dtype=F64) * 0.4
    covs = L @ L.transpose(1, 2) + 0.3 * torch.eye(2, dtype=F64)
    prior = GMMPrior(torch.tensor([0.5, 0.3, 0.2], dtype=F64), means, covs)
    op = DenseOperator(torch.tensor([[1.0, 0.5]], dtype=F64), (2,))
    return GMMPosterior(prior, op, torch.tensor([0.7], dtype=F64), sigma_y)


def _linear_gaussian(d=5, m=3, sigma_y=0.25, seed=0):
    g = make_generator(seed)
    A = randn((m, d), g, dtype=F64)
    M = randn((d, d), g, dtype=F64)
    cov = M @ M.T / d + 0.5 * torch.eye(d, dtype=F64)
    mean = randn((d,), g, dtype=F64)
    y = randn((m,), g, dtype=F64)
    return LinearGaussianPosterior(GaussianPrior(mean, cov), DenseOperator(A, (d,)), y, sigma_y), (A, cov, mean, y, sigma_y)


# ----------------------------------------------------------------------------- normalisers
def test_four_mode_is_normalised_with_the_stated_modes():
    t = FourMode2D(radius=3.0)
    assert t.log_Z == 0.0
    assert _log_integral(t, -9, 9) == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(t.mode_weights, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64))
    assert torch.equal(t.modes, 3.0 * torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=F64))
    axes = FourMode2D(radius=2.0, layout="axes")
    assert torch.equal(axes.modes.norm(dim=1), torch.full((4,), 2.0, dtype=F64))
    with pytest.raises(ValueError, match="layout"):
        FourMode2D(layout="ring")


def test_gmm_posterior_log_z_against_quadrature():
    t = _gmm_posterior_2d()
    assert _log_integral(t, -9, 9, 801) == pytest.approx(t.log_Z, abs=1e-5)
    assert float(t.mode_weights.sum()) == pytest.approx(1.0)


def test_linear_gaussian_posterior_against_dense_formulas():
    t, (A, cov, mean, y, sy) = _linear_gaussian()
    P = torch.linalg.inv(cov) + A.T @ A / sy**2
    S = torch.linalg.inv(P)
    mu = S @ (torch.linalg.solve(cov, mean) + A.T @ y / sy**2)
    assert torch.allclose(t.posterior_mean, mu, atol=1e-10)
    assert torch.allclose(t.posterior_cov, S, atol=1e-10)
    G = A @ cov @ A.T + sy**2 * torch.eye(A.shape[0], dtype=F64)
    log_ev = torch.distributions.MultivariateNormal(A @ mean, G).log_prob(y)
    assert t.log_Z == pytest.approx(float(log_ev), abs=1e-9)
    # log_prob is the unnormalised density as defined: exp(log_prob − log_Z) is the posterior density
    x = randn((6, 5), make_generator(3), dtype=F64)
    assert torch.allclose(t.log_prob(x) - t.log_Z, torch.distributions.MultivariateNormal(mu, S).log_prob(x), atol=1e-8)
    assert t.lipschitz == pytest.approx(float(torch.linalg.eigvalsh(P).max()), rel=1e-8)


# ----------------------------------------------------------------------------- scores
@pytest.mark.parametrize(
    "make",
    [
        lambda: FourMode2D(4.0),
        lambda: FortyMode2D(seed=1),
        lambda: _gmm_posterior_2d(),
        lambda: _linear_gaussian()[0],
        lambda: Funnel(6),
        lambda: BayesianLogisticRegression.synthetic(n_data=50, n_features=3, seed=2),
    ],
    ids=["four_mode", "forty_mode", "gmm_posterior", "linear_gaussian", "funnel", "logistic"],
)
def test_closed_form_scores_match_autograd_of_log_prob(make):
    t = make()
    x = 2.0 * randn((7, t.dim), make_generator(4), dtype=F64)
    lp, g = t.log_prob_and_grad(x)
    lp_ref, g_ref = _autograd(t, x)
    assert torch.allclose(lp, lp_ref, rtol=1e-10, atol=1e-9)
    assert torch.allclose(g, g_ref, rtol=1e-8, atol=1e-9)
    assert torch.allclose(t.grad_log_prob(x), g)


def test_logistic_regression_gradient_against_finite_differences_and_lipschitz_bound():
    t = BayesianLogisticRegression.breast_cancer()
    assert t.dim == 31 and t.features.shape == (569, 31) and t.log_Z is None
    assert torch.allclose(t.features[:, 1:].mean(0), torch.zeros(30, dtype=F64), atol=1e-10)
    w = 0.3 * randn((2, t.dim), make_generator(5), dtype=F64)
    g = t.grad_log_prob(w)
    eps = 1e-6
    fd = torch.stack(
        [(t.log_prob(w + eps * e) - t.log_prob(w - eps * e)) / (2 * eps) for e in torch.eye(t.dim, dtype=F64)], 1
    )
    assert torch.allclose(g, fd, rtol=1e-6, atol=1e-5)
    # the bound λmax(XᵀX)/4 + 1/σ² dominates the Hessian's spectral norm at any point
    H = torch.autograd.functional.hessian(lambda v: t.log_prob(v[None])[0], w[0])
    assert float(torch.linalg.eigvalsh(-H).max()) <= t.lipschitz


def test_synthetic_logistic_regression_has_known_weights_and_valid_labels():
    t = BayesianLogisticRegression.synthetic(n_data=400, n_features=4, seed=3)
    assert t.true_weights.shape == (5,) and t.dim == 5
    assert set(t.labels.unique().tolist()) <= {0.0, 1.0}
    # the posterior concentrates near the generating weights: the MAP by Newton's method is close
    w = torch.zeros(1, 5, dtype=F64)
    for _ in range(25):
        H = torch.autograd.functional.hessian(lambda v: t.log_prob(v[None])[0], w[0])
        w = w - torch.linalg.solve(H, t.grad_log_prob(w)[0])[None]
    assert float((w[0] - t.true_weights).norm()) < 0.6
    t2 = BayesianLogisticRegression.synthetic(n_data=400, n_features=4, seed=3)
    assert torch.equal(t.labels, t2.labels)
    with pytest.raises(ValueError, match="labels"):
        BayesianLogisticRegression(torch.zeros(3, 2), torch.tensor([0.0, 2.0, 1.0]))


# ----------------------------------------------------------------------------- exact samples
def test_mixture_samples_have_the_stated_mode_masses():
    t = FourMode2D(8.0)
    x = t.sample(20000, make_generator(6))
    nearest = torch.cdist(x, t.modes).argmin(1)
    masses = torch.bincount(nearest, minlength=4).double() / x.shape[0]
    se = (t.mode_weights * (1 - t.mode_weights) / x.shape[0]).sqrt()
    assert torch.all((masses - t.mode_weights).abs() < 5 * se), masses


def test_gmm_posterior_samples_match_its_mean_and_covariance():
    t = _gmm_posterior_2d()
    x = t.sample(40000, make_generator(7))
    # moments of the normalised posterior by quadrature (independent of the mixture parameters)
    pts, area = _grid(-9, 9, 601)
    w = torch.softmax(t.log_prob(pts), 0)
    m = w @ pts
    C = (pts - m).T @ ((pts - m) * w[:, None])
    se = (torch.diagonal(C) / x.shape[0]).sqrt()
    assert torch.all((x.mean(0) - m).abs() < 5 * se)
    assert torch.allclose(torch.cov(x.T), C, rtol=0.05, atol=0.02)
    assert torch.allclose(t.posterior_mean, m, atol=1e-6)


def test_funnel_samples_and_normaliser():
    t = Funnel(dim=5)
    x = t.sample(40000, make_generator(8))
    assert float(x[:, 0].mean()) == pytest.approx(0.0, abs=5 * 3 / 200)
    assert float(x[:, 0].var()) == pytest.approx(9.0, rel=0.05)
    # x_i e^{−x1/2} is standard normal whatever x1
    z = x[:, 1:] * torch.exp(-0.5 * x[:, :1])
    assert float(z.var()) == pytest.approx(1.0, rel=0.03)
    # normalised in 2-D (log_Z = 0): quadrature with x2 = e^{x1/2} u, dx2 = e^{x1/2} du, which resolves the neck
    x1 = torch.linspace(-30, 30, 2001, dtype=F64)
    u = torch.linspace(-10, 10, 401, dtype=F64)
    X1, U = torch.meshgrid(x1, u, indexing="ij")
    pts = torch.stack([X1.reshape(-1), (torch.exp(X1 / 2) * U).reshape(-1)], 1)
    log_jac = (X1 / 2).reshape(-1)
    cell = float((x1[1] - x1[0]) * (u[1] - u[0]))
    log_int = float(torch.logsumexp(Funnel(dim=2).log_prob(pts) + log_jac, 0)) + math.log(cell)
    assert log_int == pytest.approx(0.0, abs=1e-6)


def test_forty_modes_are_reproducible_and_in_the_box():
    a, b, c = FortyMode2D(seed=0), FortyMode2D(seed=0), FortyMode2D(seed=1)
    assert a.modes.shape == (40, 2) and torch.equal(a.modes, b.modes) and not torch.equal(a.modes, c.modes)
    assert float(a.modes.abs().max()) <= 40.0
    assert torch.allclose(a.mode_weights, torch.full((40,), 1 / 40, dtype=F64))
    assert a.log_Z == 0.0


# ----------------------------------------------------------------------------- rdMC oracles
def test_regularised_mean_and_sample_for_a_gaussian_against_the_dense_formula():
    # q_s(x0|x) ∝ N(x0; μ, S) exp(−‖x − e^{−s}x0‖²/(2(1 − e^{−2s}))): precision P + c I,
    # c = e^{−2s}/(1 − e^{−2s}), mean (P + cI)⁻¹(Pμ + c e^{s} x)
    t, _ = _linear_gaussian()
    P = torch.linalg.inv(t.posterior_cov)
    mu = t.posterior_mean
    x = randn((3, 5), make_generator(9), dtype=F64)
    for s in (0.05, 0.7, 2.5):
        c = math.exp(-2 * s) / -math.expm1(-2 * s)
        Pq = P + c * torch.eye(5, dtype=F64)
        ref = torch.linalg.solve(Pq, (P @ mu)[:, None] + c * math.exp(s) * x.T).T
        assert torch.allclose(t.regularised_mean(x, s), ref, atol=1e-9)
    # exact draws at one x: mean and covariance (P + cI)⁻¹
    s, n = 0.3, 40000
    c = math.exp(-2 * s) / -math.expm1(-2 * s)
    Sq = torch.linalg.inv(P + c * torch.eye(5, dtype=F64))
    z = t.regularised_sample(x[:1].expand(n, 5), s, make_generator(10))
    ref = t.regularised_mean(x[:1], s)[0]
    assert torch.all((z.mean(0) - ref).abs() < 5 * (torch.diagonal(Sq) / n).sqrt())
    assert float(torch.linalg.norm(torch.cov(z.T) - Sq) / torch.linalg.norm(Sq)) < 0.03


def test_regularised_mean_of_a_mixture_against_quadrature():
    t = _gmm_posterior_2d()
    pts, _ = _grid(-10, 10, 801)
    lp = t.log_prob(pts)
    for s, x in ((0.2, [0.3, -0.4]), (1.0, [-0.5, 0.2]), (2.5, [0.1, 0.1])):
        x = torch.tensor([x], dtype=F64)
        logq = lp - ((x - math.exp(-s) * pts) ** 2).sum(1) / (2 * -math.expm1(-2 * s))
        ref = torch.softmax(logq, 0) @ pts
        assert torch.allclose(t.regularised_mean(x, s)[0], ref, atol=1e-6), s


# ----------------------------------------------------------------------------- image posterior
@pytest.mark.parametrize("op_name", ["blur", "ct"])
def test_image_posterior_with_grf_prior(op_name):
    grf = GaussianRandomField((1, 32, 32), tau=3.0, s=2.0)
    op = Blur((1, 32, 32), kernel_size=5, blur_sigma=1.0) if op_name == "blur" else CT((1, 32, 32), n_angles=6)
    op = op.to(F64)
    x_true = grf.sample(1, make_generator(11)).to(F64)
    y = op.forward(x_true)[0] + 0.05 * randn(op.y_shape, make_generator(12), dtype=F64)
    t = ImagePosterior(grf, op, y, 0.05)
    assert t.dim == 1024 and t.shape == (1, 32, 32)
    # dense oracle, independent of the priors package: Σ from the Hartley basis, A from the operator
    d = 1024
    Hm = torch.fft.fft2(torch.eye(d, dtype=F64).reshape(d, 32, 32), norm="ortho")
    Hm = (Hm.real - Hm.imag).reshape(d, d)
    cov = Hm @ (grf.eigenvalues.to(F64).reshape(d, 1) * Hm)
    A = op.to_dense()
    G = A @ cov @ A.T + 0.05**2 * torch.eye(A.shape[0], dtype=F64)
    K = cov @ A.T @ torch.linalg.inv(G)
    mu = K @ y.reshape(-1)
    assert torch.allclose(t.posterior_mean, mu, atol=1e-6)
    assert t.image_mean.shape == (1, 32, 32)
    std = torch.diagonal(cov - K @ A @ cov).clamp_min(0).sqrt()
    assert torch.allclose(t.image_std.reshape(-1), std, atol=1e-6)
    # closed-form score = autograd of the defining log-density (prior + likelihood)
    x = t.sample(2, make_generator(13))
    lp, g = t.log_prob_and_grad(x)
    lp_ref, g_ref = _autograd(t, x)
    assert torch.allclose(lp, lp_ref, rtol=1e-8)
    assert torch.allclose(g, g_ref, rtol=1e-6, atol=1e-6 * float(g_ref.abs().max()))
    with pytest.raises(ValueError, match="images"):
        ImagePosterior(GaussianPrior(torch.zeros(4, dtype=F64), torch.eye(4, dtype=F64)), DenseOperator(torch.eye(4, dtype=F64), (4,)), torch.zeros(4, dtype=F64), 0.1)


# ----------------------------------------------------------------------------- bookkeeping and errors
def test_eval_counter_counts_rows_and_forwards_attributes():
    t = FourMode2D(3.0)
    c = EvalCounter(t)
    x = torch.zeros(5, 2, dtype=F64)
    c.log_prob(x)
    c.grad_log_prob(x[:3])
    c.log_prob_and_grad(x[:2])
    assert dict(c.counts) == {"log_prob": 7, "grad": 5}
    assert c.per_sample(5) == {"log_prob": 7 / 5, "grad": 1.0}
    assert c.log_Z == 0.0 and torch.equal(c.modes, t.modes) and c.lipschitz == t.lipschitz
    assert c.has("sample") and c.has("regularised_mean") and not EvalCounter(Funnel()).has("regularised_mean")
    c.reset()
    assert not c.counts


def test_bad_inputs_raise_clear_errors():
    t = FourMode2D()
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        t.log_prob(torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], torch.zeros(1, 2), torch.tensor([[[1.0, 0.0], [0.0, -1.0]]]))
    with pytest.raises(NotImplementedError, match="exact sampler"):
        BayesianLogisticRegression.synthetic(n_data=10, n_features=2).sample(3, make_generator(0))
    prior = GaussianPrior(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    op = DenseOperator(torch.eye(2, dtype=F64), (2,))
    with pytest.raises(ValueError, match="sigma_y"):
        LinearGaussianPosterior(prior, op, torch.zeros(2, dtype=F64), 0.0)
    with pytest.raises(ValueError, match="finite"):
        LinearGaussianPosterior(prior, op, torch.tensor([0.0, float("nan")], dtype=F64), 0.1)
    with pytest.raises(ValueError, match="Gaussian prior"):
        LinearGaussianPosterior(GMMPrior(torch.ones(2), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2)), op, torch.zeros(2), 0.1)


# ----------------------------------------------------------------------------- BOD posterior
def _bod_log_density_numpy(theta1, theta2):
    """The BOD model written again from its definition (numpy, scalar erf), independent of the target:
    A = 0.4 + 0.4(1 + erf(θ₁/√2)), B = 0.01 + 0.15(1 + erf(θ₂/√2)), y_t = A(1 − e^{−Bt}) + N(0, 1e-3)."""
    import numpy as np

    erf = np.vectorize(math.erf)
    A = 0.4 + 0.4 * (1 + erf(theta1 / math.sqrt(2)))
    B = 0.01 + 0.15 * (1 + erf(theta2 / math.sqrt(2)))
    lp = -0.5 * (theta1**2 + theta2**2) - math.log(2 * math.pi)
    for t, y in zip((1, 2, 3, 4, 5), (0.18, 0.32, 0.42, 0.49, 0.54)):
        lp = lp - 0.5 * (y - A * (1 - np.exp(-B * t))) ** 2 / 1e-3 - 0.5 * math.log(2 * math.pi * 1e-3)
    return lp


def test_bod_log_density_evidence_and_moments_against_trapezoid_quadrature():
    """Catches: a wrong link (e.g. 0.4 instead of 0.8 for A's range), noise variance used as a std, a missing
    normaliser (log Z off by a constant). The quadrature is a trapezoid rule on another grid, in numpy."""
    import numpy as np

    from diffpost.targets import BiochemicalOxygenDemand

    t = BiochemicalOxygenDemand()
    pts = randn((50, 2), make_generator(0), dtype=torch.float64)
    ref = _bod_log_density_numpy(pts[:, 0].numpy(), pts[:, 1].numpy())
    assert np.allclose(t.log_prob(pts).numpy(), ref, rtol=0, atol=1e-9)
    g = np.linspace(-6, 6, 1001)
    X, Y = np.meshgrid(g, g, indexing="ij")
    lp = _bod_log_density_numpy(X, Y)
    m = lp.max()
    w = np.trapezoid(np.trapezoid(np.exp(lp - m), g, axis=1), g)
    assert abs(m + math.log(w) - t.log_Z) < 1e-6
    p = np.exp(lp - m) / w
    mean = [np.trapezoid(np.trapezoid(p * X, g, axis=1), g), np.trapezoid(np.trapezoid(p * Y, g, axis=1), g)]
    assert np.allclose(t.posterior_mean.numpy(), mean, atol=1e-6)
    cxy = np.trapezoid(np.trapezoid(p * (X - mean[0]) * (Y - mean[1]), g, axis=1), g)
    assert abs(float(t.posterior_cov[0, 1]) - cxy) < 1e-6 and cxy < -0.1  # the banana's negative correlation


def test_bod_gradient_drives_mala_to_the_quadrature_moments():
    """MALA (autograd gradient of the target) against the quadrature mean and covariance: catches a
    gradient that disagrees with the density (e.g. a detached erf) as well as a wrong density."""
    from diffpost.samplers.langevin import mala
    from diffpost.targets import BiochemicalOxygenDemand

    t = BiochemicalOxygenDemand()
    x, info = mala(t, 2000, step=0.05, n_steps=200, n_burnin=300, generator=make_generator(1))
    se = (torch.diagonal(t.posterior_cov) / 2000).sqrt()
    assert bool(((x.mean(0) - t.posterior_mean).abs() < 5 * se).all()), (x.mean(0), t.posterior_mean)
    assert float(torch.linalg.norm(torch.cov(x.T) - t.posterior_cov) / torch.linalg.norm(t.posterior_cov)) < 0.1
