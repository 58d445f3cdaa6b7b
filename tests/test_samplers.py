"""σ-space samplers against closed forms: exact Gaussian and Gaussian-mixture denoisers (float64).

The reference denoisers are written here from the formulas of METHODS §1 (a dense solve for the
Gaussian, each component's eigenbasis for the mixture), independent of diffpost.priors; only the last
test (the oracle demo) uses the real priors and operators.

Grids are EDM's ρ-spaced ones with a trailing 0. Step counts were chosen so that the deterministic
error (discretisation + start from N(0, σ_max²)) of the covariance is well below the 5 % tolerance,
computed by an exact per-eigenvalue variance recursion for this Σ: heun 64 steps on [0.002, 80],
ρ = 7: 0.6 %; edm_stochastic (churn 10, 96 steps, same grid): 0.8 %; euler_maruyama (first order)
256 steps on [0.01, 10], ρ = 3: 2.1 % (on EDM's default [0.002, 80], ρ = 7 it needs 512 steps for
2 %; 128 steps there give 8 %). The Monte Carlo error of a covariance estimate at N = 2·10⁴ is
≈ 2 % for this Σ.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffpost.random import make_generator, per_sample_generators, randn_like
from diffpost.samplers import CountingDenoiser, edm_stochastic, euler, euler_maruyama, heun, initial_noise
from diffpost.schedules import karras_sigmas

pytestmark = pytest.mark.usefixtures("no_global_rng", "one_thread")

DT = torch.float64
D_DIM = 16
N = 20_000
SIGMA_MAX = 80.0


@pytest.fixture(scope="module")
def one_thread():
    """Matrices here are 16×16: intra-op threads only add synchronisation (on a busy 2-core machine
    they made these tests several times slower). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------ exact references
def _by_sigma(x: torch.Tensor, sigma: torch.Tensor, fn) -> torch.Tensor:
    """Apply ``fn(x_rows, s)`` per distinct σ value (samplers pass one σ per call; others may not)."""
    if bool((sigma == sigma[0]).all()):
        return fn(x, float(sigma[0]))
    out = torch.empty_like(x)
    for s in torch.unique(sigma):
        idx = sigma == s
        out[idx] = fn(x[idx], float(s))
    return out


class GaussianDenoiser:
    """``D(x, σ) = μ + Σ(Σ + σ²C)⁻¹(x − μ)`` for ``x = x0 + σ C^½ n``, ``x0 ~ N(μ, Σ)``."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor, noise_cov: torch.Tensor | None = None):
        self.mu, self.cov = mu, cov
        self.noise_cov = torch.eye(len(mu), dtype=DT) if noise_cov is None else noise_cov

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)

        def f(rows, s):
            # Σ(Σ + σ²C)⁻¹ applied to rows: (x − μ) [(Σ + σ²C)⁻¹ Σ]  (both factors symmetric)
            return self.mu + (rows - self.mu) @ torch.linalg.solve(self.cov + s * s * self.noise_cov, self.cov)

        return _by_sigma(flat, sigma, f).reshape(x.shape)


class GMMDenoiser:
    """Mixture ``Σ_k w_k N(μ_k, Σ_k)``: ``p_σ`` is the mixture with covariances ``Σ_k + σ²I``;
    ``D = Σ_k r_k(x) [μ_k + Σ_k(Σ_k + σ²I)⁻¹(x − μ_k)]`` with responsibilities ``r_k``. Computed in each
    component's eigenbasis ``Σ_k = Q diag(λ) Qᵀ`` (exact, and two matmuls per component)."""

    def __init__(self, weights: torch.Tensor, mus: torch.Tensor, covs: torch.Tensor):
        self.weights, self.mus, self.covs = weights, mus, covs
        self.eig = [torch.linalg.eigh(c) for c in covs]

    def _parts(self, x: torch.Tensor, s: float):
        logp, means = [], []
        for w, m, (lam, Q) in zip(self.weights, self.mus, self.eig):
            z = (x - m) @ Q
            v = lam + s * s
            logp.append(math.log(w) - 0.5 * (z * z / v).sum(1) - 0.5 * torch.log(v).sum())
            means.append(m + (z * (lam / v)) @ Q.T)
        return torch.softmax(torch.stack(logp, 1), 1), means

    def responsibilities(self, x: torch.Tensor, s: float) -> torch.Tensor:
        return self._parts(x, s)[0]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        def f(rows, s):
            r, means = self._parts(rows, s)
            return sum(r[:, k : k + 1] * means[k] for k in range(len(means)))

        return _by_sigma(x, sigma, f)


def _random_cov(d: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    lam = torch.logspace(math.log10(lo), math.log10(hi), d, dtype=DT)
    return Q @ torch.diag(lam) @ Q.T


@pytest.fixture(scope="module")
def gaussian():
    g = make_generator(0)
    cov = _random_cov(D_DIM, 0.02, 1.0, g)
    mu = 0.3 * torch.randn(D_DIM, generator=g, dtype=DT)
    return mu, cov


@pytest.fixture(scope="module")
def gmm():
    g = make_generator(1)
    u = torch.randn(D_DIM, generator=g, dtype=DT)
    u = u / u.norm()
    mus = torch.stack([-1.5 * u, 1.5 * u]) + 0.1 * torch.randn(2, D_DIM, generator=g, dtype=DT)
    covs = torch.stack([_random_cov(D_DIM, 0.01, 0.1, g), _random_cov(D_DIM, 0.02, 0.2, g)])
    return GMMDenoiser(torch.tensor([0.3, 0.7], dtype=DT), mus, covs)


def _check_moments(samples, mu, cov, *, tol_cov=0.05, n_se=5.0):
    n = samples.shape[0]
    se = torch.sqrt(torch.diagonal(cov) / n)
    z = ((samples.mean(0) - mu) / se).abs().max().item()
    rel = (torch.linalg.norm(torch.cov(samples.T) - cov) / torch.linalg.norm(cov)).item()
    assert z < n_se, f"mean off by {z:.2f} standard errors"
    assert rel < tol_cov, f"covariance relative Frobenius error {rel:.4f}"
    return z, rel


# name -> (grid, run(denoiser, x, sigmas, generator)); see the module docstring for the error budget
SAMPLERS = {
    "heun": (karras_sigmas(64), lambda D, x, s, g: heun(D, x, s)),
    "euler_maruyama": (
        karras_sigmas(256, sigma_min=0.01, sigma_max=10.0, rho=3.0),
        lambda D, x, s, g: euler_maruyama(D, x, s, generator=g),
    ),
    "edm_stochastic": (
        karras_sigmas(96),
        lambda D, x, s, g: edm_stochastic(D, x, s, generator=g, churn=10.0, s_tmin=0.01, s_tmax=50.0),
    ),
}

GMM_GRIDS = {
    "heun": karras_sigmas(32),
    "euler_maruyama": karras_sigmas(128, sigma_min=0.01, sigma_max=10.0, rho=3.0),
    "edm_stochastic": karras_sigmas(48),
}


# ------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_moments(name, gaussian):
    mu, cov = gaussian
    grid, run = SAMPLERS[name]
    g = make_generator(10)
    x = initial_noise((N, D_DIM), float(grid[0]), g, dtype=DT)
    out = run(GaussianDenoiser(mu, cov), x, grid, g)
    _check_moments(out, mu, cov)


def test_moment_check_rejects_a_wrong_prior(gaussian):
    """The tolerances have power: a denoiser for Σ·1.15 (everything else equal) must fail them."""
    mu, cov = gaussian
    g = make_generator(10)
    x = initial_noise((N, D_DIM), SIGMA_MAX, g, dtype=DT)
    out = heun(GaussianDenoiser(mu, 1.15 * cov), x, karras_sigmas(64))
    with pytest.raises(AssertionError, match="covariance"):
        _check_moments(out, mu, cov)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gmm_mode_masses(name, gmm):
    # mode masses need fewer steps than 5 % covariance accuracy (measured: heun 16 steps, EM 64,
    # edm 24 all within 0.007 of the truth); half the moment-test grids keep the test quick
    run = SAMPLERS[name][1]
    grid = GMM_GRIDS[name]
    g = make_generator(20)
    x = initial_noise((N, D_DIM), float(grid[0]), g, dtype=DT)
    out = run(gmm, x, grid, g)
    labels = gmm.responsibilities(out, 0.0).argmax(1)
    masses = torch.bincount(labels, minlength=2).to(DT) / N
    assert torch.allclose(masses, gmm.weights, atol=0.02), f"mode masses {masses.tolist()}"


def test_gmm_labels_are_reliable(gmm):
    """The modes are well separated: the σ = 0 responsibility recovers the component of exact draws,
    so mode masses of sampler output measure the sampler, not the labelling."""
    g = make_generator(21)
    comp = (torch.rand(N, generator=g, dtype=DT) < gmm.weights[1]).long()
    chol = torch.linalg.cholesky(gmm.covs)
    z = torch.randn(N, D_DIM, 1, generator=g, dtype=DT)
    exact = gmm.mus[comp] + (chol[comp] @ z).squeeze(-1)
    assert (gmm.responsibilities(exact, 0.0).argmax(1) == comp).to(DT).mean() > 0.999


def test_colored_noise_function_space(gaussian):
    """With ``x_σ = x0 + σ C^½ n`` (METHODS §3.4) the matching denoiser, ``initial_noise`` and the
    stochastic samplers' ``noise`` all use ``C``; the chain must still sample N(μ, Σ)."""
    mu, cov = gaussian
    gc = make_generator(3)
    noise_cov = _random_cov(D_DIM, 0.05, 2.0, gc)
    L = torch.linalg.cholesky(noise_cov)

    def colored(x_like, generator):
        return randn_like(x_like, generator) @ L.T

    g = make_generator(30)
    x = initial_noise((N, D_DIM), SIGMA_MAX, g, noise=colored, dtype=DT)
    assert torch.allclose(torch.cov(x.T) / SIGMA_MAX**2, noise_cov, atol=0.1)
    den = GaussianDenoiser(mu, cov, noise_cov)
    out = edm_stochastic(den, x, karras_sigmas(96), generator=g, churn=10.0, s_tmin=0.01, s_tmax=50.0, noise=colored)
    _check_moments(out, mu, cov)


@pytest.mark.parametrize("solver,order", [(heun, 2), (euler, 1)])
def test_ode_convergence_order(solver, order):
    """No sampling noise: 1-D Gaussian N(0, λ) has the exact flow x(σ') = x √((λ + σ'²)/(λ + σ²)).
    Halving the step must cut the error by 2^order."""
    lam = 0.3
    den = GaussianDenoiser(torch.zeros(1, dtype=DT), torch.tensor([[lam]], dtype=DT))
    x = torch.tensor([[1.0], [-2.5]], dtype=DT)
    hi, lo = 5.0, 0.05
    exact = x * math.sqrt((lam + lo**2) / (lam + hi**2))
    errs = []
    for n in (20, 40, 80):
        grid = torch.exp(torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=DT))
        errs.append((solver(den, x, grid) - exact).abs().max().item())
    for a, b in zip(errs[:-1], errs[1:]):
        assert 2**order * 0.85 < a / b < 2**order * 1.15, f"errors {errs}"


def _chain_variance(kind: str, grid: list[float], lam: float, churn: float, s_tmin: float, s_tmax: float) -> float:
    """Exact output variance of the discrete chain for x0 ~ N(0, λ) in 1-D, started at N(0, σ_0²).

    With ``D(x, σ) = f(σ)x``, ``f = λ/(λ + σ²)``, every step is ``x' = c·x + noise``, so the variance
    follows a scalar recursion: an independent statement of each algorithm, discretisation included."""
    f = lambda s: lam / (lam + s * s)  # noqa: E731
    v, n = grid[0] ** 2, len(grid) - 1
    gamma_max = min(churn / n, math.sqrt(2) - 1)
    for a, b in zip(grid[:-1], grid[1:]):
        if kind == "euler_maruyama":
            c = f(a) if b == 0 else 1 - (a * a - b * b) / (a * a) * (1 - f(a))
            v = c * c * v + (0.0 if b == 0 else a * a - b * b)
            continue
        ah = a * (1 + gamma_max) if (kind == "edm_stochastic" and s_tmin <= a <= s_tmax) else a
        v = v + ah * ah - a * a  # churn
        if b == 0:
            c = f(ah)
        else:  # Heun: x_e = x + (b − ah)(1 − f(ah))x/ah; x' = x + (b − ah)/2 · (slope(x) + slope(x_e))
            d1 = (1 - f(ah)) / ah
            d2 = (1 + (b - ah) * d1) * (1 - f(b)) / b
            c = 1 + (b - ah) * 0.5 * (d1 + d2)
        v = c * c * v
    return v


@pytest.mark.parametrize(
    "kind,n_steps,churn",
    [("euler_maruyama", 8, 0.0), ("edm_stochastic", 8, 40.0), ("edm_stochastic", 12, 5.0), ("heun", 6, 0.0)],
)
def test_coarse_grid_matches_exact_chain_variance(kind, n_steps, churn):
    """On coarse grids the discretisation bias is large (variance off by up to 2.5×), and the sampler
    must reproduce exactly that bias: a sharp check of each update rule, not only of its limit."""
    lam, n = 0.3, 200_000
    grid = karras_sigmas(n_steps)
    g = make_generator(7)
    x = initial_noise((n, 1), float(grid[0]), g, dtype=DT)
    den = lambda x, s: x * (lam / (lam + s[:, None] ** 2))  # noqa: E731
    if kind == "heun":
        out = heun(den, x, grid)
    elif kind == "euler_maruyama":
        out = euler_maruyama(den, x, grid, generator=g)
    else:
        out = edm_stochastic(den, x, grid, generator=g, churn=churn, s_tmin=0.01, s_tmax=50.0)
    expected = _chain_variance(kind, grid.tolist(), lam, churn, 0.01, 50.0)
    assert abs(expected / lam - 1) > 0.02, "grid too fine to tell the discrete chain from its limit"
    se = expected * math.sqrt(2 / n)
    assert abs(out.var().item() - expected) < 5 * se, f"variance {out.var().item():.5f}, chain {expected:.5f}"


def test_last_step_to_zero_returns_denoised_mean(gaussian):
    mu, cov = gaussian
    den = GaussianDenoiser(mu, cov)
    x = torch.randn(5, D_DIM, generator=make_generator(4), dtype=DT)
    sig = torch.full((5,), 0.7, dtype=DT)
    for out in (
        heun(den, x, [0.7, 0.0]),
        euler(den, x, [0.7, 0.0]),
        euler_maruyama(den, x, [0.7, 0.0], generator=make_generator(0)),
        edm_stochastic(den, x, [0.7, 0.0], generator=make_generator(0)),
    ):
        assert torch.equal(out, den(x, sig))


# ------------------------------------------------------------------------------ reproducibility
@pytest.mark.parametrize("name", ["euler_maruyama", "edm_stochastic", "heun"])
def test_per_sample_seeds_independent_of_batch_size(name, gaussian):
    mu, cov = gaussian
    den = GaussianDenoiser(mu, cov)
    run = SAMPLERS[name][1]
    grid = karras_sigmas(12)
    n = 21
    seeds = [1000 + i for i in range(n)]

    def sample(batch):
        outs = []
        for start in range(0, n, batch):
            gens = per_sample_generators(seeds[start : start + batch])
            x = initial_noise((len(gens), 1, 4, 4), SIGMA_MAX, gens, dtype=DT)
            outs.append(run(lambda x, s: den(x.reshape(x.shape[0], -1), s).reshape(x.shape), x, grid, gens))
        return torch.cat(outs)

    ref = sample(n)
    for batch in (1, 7):
        # equal up to BLAS rounding (different batch sizes may take different kernels)
        torch.testing.assert_close(sample(batch), ref, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(ref[0], ref[1])


def test_single_generator_reproducible_and_seed_sensitive(gaussian):
    mu, cov = gaussian
    den = GaussianDenoiser(mu, cov)

    def go(seed):
        g = make_generator(seed)
        x = initial_noise((8, D_DIM), SIGMA_MAX, g, dtype=DT)
        return euler_maruyama(den, x, karras_sigmas(10), generator=g)

    assert torch.equal(go(5), go(5))
    assert not torch.allclose(go(5), go(6))


# ------------------------------------------------------------------------------ cost and API
@pytest.mark.parametrize("n", [1, 2, 5])
def test_nfe_counts(n, gaussian):
    mu, cov = gaussian
    den = CountingDenoiser(GaussianDenoiser(mu, cov))
    x = torch.randn(3, D_DIM, generator=make_generator(0), dtype=DT)
    grid = karras_sigmas(n)
    no_zero = torch.linspace(10.0, 0.1, n + 1, dtype=DT)
    cases = [
        (lambda: heun(den, x, grid), 2 * n - 1),
        (lambda: heun(den, x, no_zero), 2 * n),
        (lambda: euler(den, x, grid), n),
        (lambda: euler_maruyama(den, x, grid, generator=make_generator(1)), n),
        (lambda: edm_stochastic(den, x, grid, generator=make_generator(1), churn=5.0), 2 * n - 1),
    ]
    for run, expected in cases:
        den.reset()
        assert den.nfe == 0
        run()
        assert den.nfe == expected


def test_callback_sees_every_step(gaussian):
    mu, cov = gaussian
    den = GaussianDenoiser(mu, cov)
    x = torch.randn(4, D_DIM, generator=make_generator(0), dtype=DT)
    grid = karras_sigmas(6)
    churn, gamma = 2.0, 2.0 / 6
    for name in ("heun", "euler", "euler_maruyama", "edm_stochastic"):
        seen = []
        cb = seen.append
        if name == "heun":
            heun(den, x, grid, callback=cb)
        elif name == "euler":
            euler(den, x, grid, callback=cb)
        elif name == "euler_maruyama":
            euler_maruyama(den, x, grid, generator=make_generator(1), callback=cb)
        else:
            edm_stochastic(den, x, grid, generator=make_generator(1), churn=churn, s_tmin=1.0, callback=cb)
        assert [c["i"] for c in seen] == list(range(6))
        for c in seen:
            assert c["sigma"] == pytest.approx(float(grid[c["i"]]))
            assert c["sigma_next"] == pytest.approx(float(grid[c["i"] + 1]))
            expect_hat = c["sigma"] * (1 + gamma) if name == "edm_stochastic" and c["sigma"] >= 1.0 else c["sigma"]
            assert c["sigma_hat"] == pytest.approx(expect_hat)
            sig = torch.full((4,), c["sigma_hat"], dtype=DT)
            torch.testing.assert_close(c["denoised"], den(c["x"], sig))


def test_samplers_keep_gradients(gaussian):
    """No no_grad inside: guidance methods differentiate through the loop."""
    mu, cov = gaussian
    den = GaussianDenoiser(mu, cov)
    grid = karras_sigmas(4)
    for run in (
        lambda x: heun(den, x, grid),
        lambda x: euler(den, x, grid),
        lambda x: euler_maruyama(den, x, grid, generator=make_generator(0)),
        lambda x: edm_stochastic(den, x, grid, generator=make_generator(0), churn=1.0),
    ):
        x = torch.randn(2, D_DIM, generator=make_generator(1), dtype=DT, requires_grad=True)
        run(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_float32_and_sequence_grid():
    den = GaussianDenoiser(torch.zeros(D_DIM, dtype=DT), torch.eye(D_DIM, dtype=DT))
    f32 = lambda x, s: den(x.double(), s.double()).float()  # noqa: E731
    x = initial_noise((3, D_DIM), 10.0, make_generator(0))
    assert x.dtype == torch.float32
    out = heun(f32, x, [10.0, 1.0, 0.1, 0.0])
    assert out.dtype == torch.float32 and out.shape == x.shape


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "grid",
    [[1.0, 2.0, 0.0], [2.0, 0.0, 1.0, 0.0], [2.0, 1.0, -0.5], [2.0, float("nan"), 0.0], [1.0], [2.0, 2.0, 0.0],
     torch.ones(2, 2), [float("inf"), 1.0, 0.0]],
)
def test_bad_grid_raises(grid):
    den = GaussianDenoiser(torch.zeros(2, dtype=DT), torch.eye(2, dtype=DT))
    x = torch.zeros(1, 2, dtype=DT)
    with pytest.raises(ValueError, match="sigmas"):
        heun(den, x, grid)
    with pytest.raises(ValueError, match="sigmas"):
        euler_maruyama(den, x, grid, generator=make_generator(0))


def test_bad_arguments_raise():
    x = torch.zeros(2, 3, dtype=DT)
    ok = lambda x, s: x  # noqa: E731
    with pytest.raises(ValueError, match="denoiser returned"):
        heun(lambda x, s: x[:, :2], x, [1.0, 0.0])
    with pytest.raises(ValueError, match="noise returned"):
        euler_maruyama(ok, x, [1.0, 0.5, 0.0], generator=make_generator(0), noise=lambda x, g: x[:1])
    with pytest.raises(ValueError, match="churn"):
        edm_stochastic(ok, x, [1.0, 0.0], churn=-1.0)
    with pytest.raises(ValueError, match="s_tmin"):
        edm_stochastic(ok, x, [1.0, 0.0], s_tmin=2.0, s_tmax=1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        initial_noise((2, 3), 0.0, make_generator(0))
    with pytest.raises(ValueError, match="generators"):
        euler_maruyama(ok, x, [1.0, 0.5, 0.0], generator=per_sample_generators([1, 2, 3]))
    with pytest.raises(TypeError):
        heun(ok, [[0.0]], [1.0, 0.0])
    with pytest.raises(TypeError):
        CountingDenoiser(3)


# ------------------------------------------------------------------------------ divergence guards
class _Poisoned:
    """The identity denoiser (D(x, σ) = x) that returns NaN (or +inf) in one row from its ``bad``-th call."""

    def __init__(self, bad: int, value: float = float("nan")):
        self.calls, self.bad, self.value = 0, bad, value

    def __call__(self, x, sigma):
        self.calls += 1
        out = x.clone()
        if self.calls > self.bad:
            out[1, 0] = self.value
        return out


@pytest.mark.parametrize("name", ["euler", "heun", "euler_maruyama", "edm_stochastic"])
def test_non_finite_state_raises_naming_sampler_and_step(name):
    """Catches: a sampler that lets a diverging denoiser's NaN/inf through to its output (exit 0 with
    NaN samples). Heun calls the denoiser twice per step, the others once: call 5 is step 2 or step 4."""
    from diffpost.samplers import SamplerDivergedError

    x = torch.ones(3, 2, dtype=DT)
    grid = [4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.0]
    fn = {"euler": euler, "heun": heun, "euler_maruyama": euler_maruyama, "edm_stochastic": edm_stochastic}[name]
    kw = {} if name in ("euler", "heun") else {"generator": make_generator(0)}
    step = 2 if name in ("heun", "edm_stochastic") else 4
    with pytest.raises(SamplerDivergedError, match=rf"^{name}: state is not finite at step {step} \(σ = {grid[step]:g}\).*NaN in 1 of 3"):
        fn(_Poisoned(bad=4), x, grid, **kw)
    with pytest.raises(SamplerDivergedError, match=rf"^{name}: state is not finite at step 0"):  # inf (or inf − inf)
        fn(_Poisoned(bad=0, value=float("inf")), x, grid, **kw)


# ------------------------------------------------------------------------------ oracle demo
def test_oracle_demo_small_run(capsys):
    """``python -m diffpost.oracle`` end to end on the real priors and operators (small and coarse):
    a full table, exact posterior weights and heun rows within Monte Carlo error of the posterior."""
    from diffpost import oracle

    rows = oracle.main(["--n-samples", "400", "--steps", "16", "--em-steps", "32", "--seed", "1"])
    text = capsys.readouterr().out
    assert len(rows) == 16 and text.count("edm_stochastic") == 4 and "weights" in text
    for r in rows:
        if r["sampler"] in ("exact", "heun"):
            assert r["mean_se"] < 5, r
        if r["prior"] == "gmm" and r["sampler"] != "exact":
            assert r["nfe"] > 0 and max(abs(a - b) for a, b in zip(r["masses"], r["weights"])) < 0.1, r
