"""DDS / PIS (METHODS §6.2) against closed forms: reference targets (constant weights), the analytic
optimal control of a shifted Gaussian (per-path log-weight identity), plain importance sampling for the
untrained sampler, exact Gaussian evidences after training, the funnel (slow), determinism, divergence
errors and checkpoints."""
from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import torch

from diffpost.nets.control import ControlNet
from diffpost.random import make_generator, per_sample_generators
from diffpost.samplers.dds import (
    SamplerDivergedError,
    dds_discretisation,
    effective_sample_size,
    gaussian_log_density,
    log_evidence,
    path_log_ratio,
    pis_discretisation,
    simulate,
    target_score,
    time_grid,
)
from lightning_modules.dds import DDSModule

pure = pytest.mark.usefixtures("no_global_rng")  # core math: no global RNG (Lightning tests seed globally)
F64 = torch.float64


# ------------------------------------------------------------------------------------ local targets
class DiagGaussian:
    """``π̃ = Z · N(mean, diag(std²))``, so ``log Z`` is known exactly."""

    def __init__(self, mean, std, log_Z: float = 0.0):
        self.mean = torch.as_tensor(mean, dtype=F64)
        self.std = torch.as_tensor(std, dtype=F64).expand_as(self.mean).clone()
        self.dim, self.log_Z = self.mean.numel(), float(log_Z)

    def config(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "log_Z": self.log_Z}

    def log_prob(self, x):
        m, s = self.mean.to(x), self.std.to(x)
        return self.log_Z + gaussian_log_density((x - m) / s, 1.0) - s.log().sum()

    def grad_log_prob(self, x):
        return -(x - self.mean.to(x)) / self.std.to(x) ** 2


class LocalFunnel:
    """Neal's funnel, normalised (``log Z = 0``); no ``grad_log_prob``: exercises the autograd path."""

    def __init__(self, dim: int = 10):
        self.dim, self.log_Z = dim, 0.0

    def log_prob(self, x):
        x1, n = x[:, 0], self.dim - 1
        return (-x1**2 / 18 - 0.5 * math.log(2 * math.pi * 9)
                - 0.5 * n * (math.log(2 * math.pi) + x1) - 0.5 * torch.exp(-x1) * x[:, 1:].square().sum(1))


def zero_control(x, t, score):
    return torch.zeros_like(x)


def make_net(dim, hidden=32, T=1.0, seed=0):
    with torch.random.fork_rng(devices=[]):  # initialisation draws from the global RNG; keep it untouched
        torch.manual_seed(seed)
        return ControlNet(dim, hidden, T)


# ------------------------------------------------------------------------------------ reference chain
@pure
def test_discretisations():
    d = dds_discretisation(40, 2.0, 1.5, 0.7, power=2.0)
    assert all(abs(v - 0.49) < 1e-12 for v in d.marginal_vars())  # started in its invariant law
    assert abs(sum(b * b for b in d.beta) - 1.5**2 * 2.0) < 1e-12  # Σ β² = α² T (no cap active)
    assert d.beta[-1] < d.beta[0] and d.times[0] == 0.0 and abs(d.times[-1] - 2.0) < 1e-12
    capped = dds_discretisation(4, 1.0, 10.0, 1.0)
    assert capped.beta == (1.0,) * 4 and capped.a == (0.0,) * 4  # β = min(1, α √Δt)
    p = pis_discretisation(16, 1.5, 2.0, 0.5)
    assert p.init_std == 0.0 and abs(p.terminal_var - 0.25 * 4.0 * 1.5) < 1e-12
    assert time_grid(4, 1.0) == (0.0, 0.25, 0.5, 0.75, 1.0)
    for bad in (dict(n_steps=0), dict(T=-1.0), dict(alpha=0.0), dict(sigma_r=float("nan")), dict(power=0.5)):
        args = dict(n_steps=8, T=1.0, alpha=1.0, sigma_r=1.0, power=1.0) | bad
        with pytest.raises(ValueError):
            dds_discretisation(**args)


# ------------------------------------------------------------------------------------ exact bookkeeping
@pure
@pytest.mark.parametrize("kind", ["dds", "pis"])
def test_reference_target_gives_exact_log_Z(kind):
    """u ≡ 0 (untrained network) and π = P_K: C = S = 0, G = −log Z, every weight equals Z."""
    make = dds_discretisation if kind == "dds" else pis_discretisation
    disc = make(20, 1.0, 1.5, 1.3, power=2.0)
    target = DiagGaussian(torch.zeros(3), math.sqrt(disc.terminal_var), log_Z=0.7)
    with torch.no_grad():
        paths = simulate(make_net(3).double(), target, disc, 500, generator=make_generator(0), dtype=F64)
    assert torch.equal(paths.control_cost, torch.zeros(500, dtype=F64))
    torch.testing.assert_close(paths.log_weights, torch.full((500,), 0.7, dtype=F64), rtol=0, atol=1e-12)
    assert abs(float(log_evidence(paths.log_weights)) - 0.7) < 1e-12
    assert abs(float(effective_sample_size(paths.log_weights)) - 500) < 1e-8


@pure
def test_optimal_control_of_shifted_gaussian_dds():
    """π̃ = Z N(m, σ_r² I): P^π's kernels shift the reference mean by β_k² c_{k+1} m, c_j = Π_{i≥j} a_i,
    so u*_k = c_{k+1} m; started from N(0, σ_r²) instead of P^π_0, Q differs from P^π only through its
    start, and per path log w = log Z + c_0⟨m, y_0⟩/σ_r² − c_0²‖m‖²/(2σ_r²) (the log of the start's
    density ratio). Checks the signs of C, S, G and the direction of time."""
    sr, logZ = 1.3, -0.4
    disc = dds_discretisation(20, 1.0, 1.5, sr, power=2.0)
    m = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    a = torch.tensor(disc.a, dtype=F64)
    c = [float(torch.prod(a[k:])) for k in range(disc.n_steps + 1)]
    assert 0.05 < c[0] < 0.9  # the start matters: a non-trivial check

    def optimal(x, t, score):
        k = disc.times.index(float(t))
        return (c[k + 1] * m).expand_as(x)

    paths = simulate(optimal, DiagGaussian(m, sr, logZ), disc, 400, generator=make_generator(1), dtype=F64, keep_path=True)
    y0 = paths.path[:, 0]
    expected = logZ + c[0] * (y0 @ m) / sr**2 - c[0] ** 2 * (m @ m) / (2 * sr**2)
    torch.testing.assert_close(paths.log_weights, expected, rtol=0, atol=1e-10)
    # the general path-space ratio with the reference's backward kernels is the same quantity
    torch.testing.assert_close(path_log_ratio(paths, disc), -paths.log_weights, rtol=0, atol=1e-10)


@pure
def test_optimal_control_of_shifted_gaussian_pis():
    """PIS from the point 0 and π̃ = Z N(m, v_K I): u* = σ_r² m / v_K is constant and Q = P^π exactly."""
    sr, logZ = 0.8, 1.1
    disc = pis_discretisation(16, 1.0, 1.5, sr, power=2.0)
    vK = disc.terminal_var
    m = torch.tensor([0.5, -1.5], dtype=F64)
    target = DiagGaussian(m, math.sqrt(vK), logZ)
    paths = simulate(lambda x, t, s: (sr**2 * m / vK).expand_as(x), target, disc, 400,
                     generator=make_generator(2), dtype=F64)
    torch.testing.assert_close(paths.log_weights, torch.full((400,), logZ, dtype=F64), rtol=0, atol=1e-10)


@pure
def test_untrained_sampler_is_plain_importance_sampling():
    """Zero-initialised network: samples are the reference's N(0, σ_r²) and the weights are the plain IS
    weights π̃/N(0, σ_r²); log Ẑ is within Monte Carlo error of log Z (variance known in closed form)."""
    sr, logZ, n = 1.0, 0.3, 4000
    m = torch.tensor([0.8, -0.6], dtype=F64)
    target = DiagGaussian(m, sr, logZ)
    disc = dds_discretisation(16, 1.0, 3.0, sr)
    with torch.no_grad():
        paths = simulate(make_net(2).double(), target, disc, n, generator=make_generator(3), dtype=F64)
    plain = target.log_prob(paths.x) - gaussian_log_density(paths.x, sr**2)
    torch.testing.assert_close(paths.log_weights, plain, rtol=0, atol=1e-12)
    rel_var = math.exp(float(m @ m) / sr**2) - 1  # Var(w)/Z² for equal covariances
    assert abs(float(log_evidence(paths.log_weights)) - logZ) < 4 * math.sqrt(rel_var / n)
    z = paths.x.mean(0) / (sr / math.sqrt(n))
    assert float(z.abs().max()) < 4.5  # reference marginal N(0, σ_r²)


@pure
def test_autograd_fallback_and_funnel_reference():
    x = torch.randn(7, 10, dtype=F64, generator=make_generator(4))
    f = LocalFunnel(10)
    x1, rest = x[:, :1], x[:, 1:]
    closed = torch.cat([-x1 / 9 - 4.5 + 0.5 * torch.exp(-x1) * rest.square().sum(1, keepdim=True),
                        -torch.exp(-x1) * rest], 1)
    torch.testing.assert_close(target_score(f, x), closed)
    from diffpost.targets import Funnel  # the project's funnel: same normalised density

    torch.testing.assert_close(Funnel(10).log_prob(x), f.log_prob(x))


# ------------------------------------------------------------------------------------ training
def _train(net, target, disc, steps, batch, lr, seed=0):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = make_generator(seed)
    for _ in range(steps):
        loss = simulate(net, target, disc, batch, generator=g).kl_terms.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _linear_gaussian_posterior(d, m):
    from diffpost.operators.base import DenseOperator
    from diffpost.priors.gaussian import GaussianPrior
    from diffpost.targets import LinearGaussianPosterior

    g = make_generator(5)
    L = torch.randn(d, d, dtype=F64, generator=g) / math.sqrt(d)
    cov = 0.5 * torch.eye(d, dtype=F64) + L @ L.T
    mean = torch.linspace(-1, 1.5, d, dtype=F64)
    A = torch.randn(m, d, dtype=F64, generator=g) / math.sqrt(d)
    y = A @ (mean + 0.5) + 0.1 * torch.randn(m, dtype=F64, generator=g)
    return LinearGaussianPosterior(GaussianPrior(mean, cov), DenseOperator(A, (d,)), y, 0.6)


@pure
@pytest.mark.parametrize("d", [2, 10])
def test_trained_dds_log_Z_gaussian(d):
    """The optimal control for a Gaussian target is affine; trained DDS gives log Ẑ within 0.1 of the
    exact evidence, a small KL bound and a high ESS, where the untrained sampler's are far off.
    d = 10 uses the project's linear-Gaussian posterior (log Z = log p(y), correlated)."""
    target = DiagGaussian([1.5, -1.0], [0.5, 1.5], log_Z=1.3) if d == 2 else _linear_gaussian_posterior(d, 6)
    disc = dds_discretisation(16, 1.0, 3.0, 1.0, power=2.0)
    net = make_net(d, hidden=32)
    ev = lambda: simulate(net, target, disc, 4000, generator=make_generator(11))  # noqa: E731
    with torch.no_grad():
        before = ev()
    _train(net, target, disc, steps=150, batch=128, lr=5e-3)
    with torch.no_grad():
        after = ev()
    bound = lambda p: float(p.kl_terms.mean()) + target.log_Z  # noqa: E731  KL(Q || P^π) ≥ 0
    # untrained = plain importance sampling from N(0, I): its log Ẑ may already be close, but with
    # an ESS of a few percent; training must fix the bound and the ESS
    assert bound(before) > 1.0 and float(effective_sample_size(before.log_weights)) < 0.1 * 4000
    assert -0.05 < bound(after) < 0.8
    assert abs(float(log_evidence(after.log_weights)) - target.log_Z) < 0.1
    assert float(effective_sample_size(after.log_weights)) > 0.3 * 4000


@pytest.mark.slow
def test_funnel_dds_log_Z():
    """Neal's funnel d = 10 (log Z = 0): 3000 steps of 256 paths, K = 64, α = 3, σ_r = 1, p = 2, cosine lr."""
    torch.manual_seed(0)
    target, disc = LocalFunnel(10), dds_discretisation(64, 1.0, 3.0, 1.0, power=2.0)
    net = ControlNet(10, 64, 1.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3000)
    g = make_generator(0)
    for _ in range(3000):
        loss = simulate(net, target, disc, 256, generator=g).kl_terms.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        sched.step()
    with torch.no_grad():
        log_w = simulate(net, target, disc, 8000, generator=make_generator(12)).log_weights
    assert abs(float(log_evidence(log_w))) < 0.5


# ------------------------------------------------------------------------------------ robustness
class _BadTarget(DiagGaussian):
    """Gradient turns NaN on call ``bad_call`` (0-based), or log_prob turns inf at the end."""

    def __init__(self, bad_call=None, bad_log_prob=False):
        super().__init__([0.0, 0.0], 1.0)
        self.calls, self.bad_call, self.bad_log_prob = 0, bad_call, bad_log_prob

    def grad_log_prob(self, x):
        g = super().grad_log_prob(x)
        self.calls += 1
        if self.calls - 1 == self.bad_call:
            g = g.clone()
            g[3, 1] = float("nan")
        return g

    def log_prob(self, x):
        lp = super().log_prob(x)
        return torch.full_like(lp, float("inf")) if self.bad_log_prob else lp


@pure
def test_divergence_names_the_step():
    disc = dds_discretisation(8, 1.0, 2.0, 1.0)
    with pytest.raises(SamplerDivergedError, match=r"step 5/8.*gradient.*NaN"):
        simulate(zero_control, _BadTarget(bad_call=5), disc, 6, generator=make_generator(0))
    with pytest.raises(SamplerDivergedError, match=r"step 8/8.*log_prob"):
        simulate(zero_control, _BadTarget(bad_log_prob=True), disc, 6, generator=make_generator(0))
    with pytest.raises(SamplerDivergedError, match=r"step 0/8.*control"):
        simulate(lambda x, t, s: torch.full_like(x, float("nan")), _BadTarget(), disc, 6, generator=make_generator(0))
    with pytest.raises(ValueError, match="control returned"):
        simulate(lambda x, t, s: x[:, :1], _BadTarget(), disc, 6, generator=make_generator(0))
    # catches: a state that overflows while the control and the (flat) target's gradient stay finite:
    # β_k² = 1/2, so y grows by ≈ 1.5e38 a step from a finite float32 control and passes 3.4e38 at step 3
    flat = type("Flat", (), {"dim": 2, "log_prob": lambda self, x: 0.0 * x.sum(1)})()
    with pytest.raises(SamplerDivergedError, match=r"^DDS diffusion sampler step 3/8 .*the state is not finite \(\+inf"):
        simulate(lambda x, t, s: torch.full_like(x, 3e38), flat, disc, 6, generator=make_generator(0))


@pure
def test_simulate_batch_independent_with_per_sample_generators():
    disc, target, net = dds_discretisation(8, 1.0, 2.0, 1.0), DiagGaussian([1.0, 0.0], 0.7), make_net(2).double()
    with torch.no_grad():
        net.out1.weight.normal_(0, 0.3, generator=make_generator(9))  # a non-trivial control
        full = simulate(net, target, disc, 5, generator=per_sample_generators(range(5)), dtype=F64)
        part = simulate(net, target, disc, 2, generator=per_sample_generators(range(3, 5)), dtype=F64)
    torch.testing.assert_close(part.x, full.x[3:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(part.log_weights, full.log_weights[3:], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------ Lightning
def _gaussian_spec():
    """A 2-D Gaussian from the project's targets (a trusted class path, so checkpoints rebuild it)."""
    return {"class_path": "diffpost.targets.gaussian.GaussianMixture",
            "init_args": {"weights": [1.0], "means": [[1.5, -1.0]], "covs": [[[0.25, 0.1], [0.1, 2.25]]]}}


def test_lightning_fit_sample_and_checkpoint(tmp_path):
    pl.seed_everything(0)
    module = DDSModule(_gaussian_spec(), n_steps=16, batch_size=128, lr=5e-3, steps_per_epoch=50, eval_samples=2000)
    assert module.hparams.target == _gaussian_spec()  # plain spec in the hyper-parameters
    with torch.no_grad():
        before = module.simulate(2000, make_generator(1))
    trainer = pl.Trainer(max_steps=150, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    m = trainer.callback_metrics
    assert float(m["val/kl_bound"]) < float(before.kl_terms.mean()) / 4  # log Z = 0: the bound itself
    assert abs(float(m["val/log_Z_error"])) < 0.1 and float(m["val/ess"]) > 0.3

    # same seed, any batch size: the same samples
    x, log_w = module.sample(10, seed=3)
    for bs in (1, 3, 7):
        xb, wb = module.sample(10, seed=3, batch_size=bs)
        torch.testing.assert_close(xb, x, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(wb, log_w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(module.sample(torch.arange(4, 10), seed=3)[0], x[4:], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(module.sample(10, seed=4)[0], x)

    # checkpoint: plain types only, rebuilds its target from the spec
    path = tmp_path / "dds.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["target"] == _gaussian_spec()
    loaded = DDSModule.load_from_checkpoint(path, weights_only=True)
    assert type(loaded.target).__name__ == "GaussianMixture"
    torch.testing.assert_close(loaded.sample(10, seed=3)[0], x)

    # predict: index batches, no duplicates
    out = trainer.predict(module, torch.utils.data.DataLoader(torch.arange(10), batch_size=4))
    torch.testing.assert_close(torch.cat([o["samples"] for o in out]), module.sample(10)[0], rtol=1e-6, atol=1e-6)


def test_module_argument_errors():
    with pytest.raises(TypeError, match="spec"):
        DDSModule(LocalFunnel(4))  # no config(): cannot be rebuilt from a checkpoint
    with pytest.raises(ValueError, match="kind"):
        DDSModule(DiagGaussian([0.0], 1.0), kind="ddpm")
    with pytest.raises(ValueError, match="n_steps"):
        DDSModule(DiagGaussian([0.0], 1.0), n_steps=0)
    with pytest.raises(ValueError, match="refusing"):
        DDSModule({"class_path": "os.system", "init_args": {}})
    pis = DDSModule(DiagGaussian([0.0, 1.0], 1.0), kind="pis", n_steps=8, eval_samples=10)
    assert pis.disc.init_std == 0.0 and pis.hparams.target["class_path"].endswith("DiagGaussian")


def test_lightning_cli_records_the_target_spec(tmp_path):
    """LightningCLI instantiates the target from its class_path before the module sees it; the module
    still saves the spec (not the object), so the checkpoint rebuilds it."""
    from lightning_modules.cli import DiffpostCLI

    spec = {"class_path": "diffpost.targets.toy.Funnel", "init_args": {"dim": 4, "scale": 3.0}}
    cli = DiffpostCLI(datamodule_class=None, run=False, args=[
        "--model=lightning_modules.dds.DDSModule", f"--model.target={json.dumps(spec)}", "--model.n_steps=4",
        "--model.batch_size=8", "--model.eval_samples=16", "--trainer.max_steps=2", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"])
    assert type(cli.model.target).__name__ == "Funnel" and cli.model.hparams.target == spec
    cli.trainer.fit(cli.model)
    cli.trainer.save_checkpoint(tmp_path / "cli.ckpt")
    assert torch.load(tmp_path / "cli.ckpt", weights_only=True)["hyper_parameters"]["target"] == spec


# ------------------------------------------------------------------------------------ targets rebuilt from specs
def _fit_save(module, path, steps=3):
    trainer = pl.Trainer(max_steps=steps, max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module)
    trainer.save_checkpoint(path)
    return path


def _plain_targets():
    from diffpost.operators import Blur
    from diffpost.priors import GaussianRandomField
    from diffpost.targets import (BayesianLogisticRegression, FortyMode2D, FourMode2D, Funnel, GaussianMixture,
                                  SyntheticGMMPosterior, SyntheticImagePosterior, SyntheticLinearGaussianPosterior)

    return {
        "four_mode": lambda: FourMode2D(5.0, layout="axes"),
        "forty_mode": lambda: FortyMode2D(seed=3),
        "funnel": lambda: Funnel(5, scale=2.0),
        "mixture": lambda: GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [0.5, 2.0]),
        "linear_gaussian": lambda: SyntheticLinearGaussianPosterior(dim=6, n_obs=3, sigma_y=0.3, seed=4),
        "gmm_posterior": lambda: SyntheticGMMPosterior(dim=3, n_components=3, n_obs=2, seed=5),
        "logistic": lambda: BayesianLogisticRegression.synthetic(n_data=60, n_features=3, seed=6),
        "breast_cancer": lambda: BayesianLogisticRegression.breast_cancer(prior_std=2.0),
        "image": lambda: SyntheticImagePosterior(GaussianRandomField((1, 8, 8), tau=3.0, s=2.0),
                                                 Blur((1, 8, 8), kernel_size=3, blur_sigma=1.0), sigma_y=0.1, seed=7),
    }


@pure
@pytest.mark.parametrize("name", list(_plain_targets()))
def test_targets_round_trip_through_json_specs(name):
    """spec_of → JSON → build gives the same density (a fresh object, same log π̃ everywhere) and the
    same known answers; plain-typed constructors keep the spec small (no data, no matrices)."""
    from diffpost.config import build, spec_of
    from diffpost.targets import Target

    target = _plain_targets()[name]()
    text = json.dumps(spec_of(target))
    rebuilt = build(json.loads(text), Target)
    assert type(rebuilt) is type(target) and rebuilt is not target and rebuilt.dim == target.dim
    x = 0.7 * torch.randn(5, target.dim, dtype=F64, generator=make_generator(1))
    torch.testing.assert_close(rebuilt.log_prob(x), target.log_prob(x), rtol=1e-12, atol=1e-10)
    assert rebuilt.log_Z == target.log_Z
    if target.modes is not None:
        assert torch.equal(rebuilt.modes, target.modes) and torch.equal(rebuilt.mode_weights, target.mode_weights)
    if name in ("linear_gaussian", "gmm_posterior", "logistic", "breast_cancer", "image"):
        assert len(text) < 700, text[:200]


@pure
def test_synthetic_linear_gaussian_evidence_is_the_dense_closed_form():
    """log Z = log N(y; Aμ, AΣAᵀ + σ_y² I) from the drawn ingredients, and y = A x_true + noise of the right size."""
    from diffpost.targets import SyntheticLinearGaussianPosterior

    t = SyntheticLinearGaussianPosterior(dim=7, n_obs=4, sigma_y=0.4, seed=2)
    A = t.operator.to_dense()
    mu, S = t.prior.mean, t.prior.cov
    y = t.y.reshape(-1)
    G = A @ S @ A.T + 0.16 * torch.eye(4, dtype=F64)
    r = y - A @ mu
    expected = -0.5 * (r @ torch.linalg.solve(G, r)) - 0.5 * torch.logdet(G) - 2 * math.log(2 * math.pi)
    assert abs(t.log_Z - float(expected)) < 1e-10
    assert float((y - A @ t.x_true).norm()) < 3 * 0.4 * math.sqrt(4)  # the noise: norm ≈ σ_y √m


def test_targets_without_a_spec_fail_clearly():
    """Ingredients without a plain-typed form: an analytic prior object, a DenseOperator (its config()
    leaves out the matrix). The densities work; spec_of and DDSModule say which argument is the problem."""
    from diffpost.config import spec_of
    from diffpost.operators.base import DenseOperator
    from diffpost.priors import GaussianRandomField
    from diffpost.targets import LinearGaussianPosterior

    t = _linear_gaussian_posterior(3, 2)
    assert torch.isfinite(t.log_prob(torch.zeros(2, 3, dtype=F64))).all()
    with pytest.raises(TypeError, match="argument `prior` \\(GaussianPrior\\)"):
        spec_of(t)
    with pytest.raises(TypeError, match="rebuildable from the checkpoint.*`prior`"):
        DDSModule(t)
    grf = GaussianRandomField((1, 2, 2))
    t2 = LinearGaussianPosterior(grf, DenseOperator(torch.eye(4, dtype=F64), (1, 2, 2)), torch.zeros(4, dtype=F64), 0.1)
    with pytest.raises(TypeError, match="DenseOperator cannot be rebuilt.*matrix"):
        spec_of(t2)


def test_load_module_rebuilds_dds_and_bridge(tmp_path):
    """load_module(ckpt) alone rebuilds a DDS/PIS module whose target was given as an object (its spec is
    saved), and a bridge (without the DDS checkpoint it started from): same target, same samples."""
    from diffpost.config import spec_of
    from diffpost.targets import SyntheticGMMPosterior
    from lightning_modules.bridge import BridgeModule
    from lightning_modules.checkpoint import CheckpointError, load_module

    pl.seed_everything(0)
    target = SyntheticGMMPosterior(dim=2, n_components=3, n_obs=1, seed=1)
    pis = DDSModule(target, kind="pis", n_steps=6, hidden=16, batch_size=32, eval_samples=32, steps_per_epoch=3)
    assert pis.hparams.target == spec_of(target)
    path = _fit_save(pis, tmp_path / "pis.ckpt")
    loaded = load_module(path)
    assert type(loaded) is DDSModule and type(loaded.target) is SyntheticGMMPosterior and loaded.target is not target
    assert loaded.hparams.target == pis.hparams.target and loaded.hparams.kind == "pis"
    assert loaded.target.log_Z == target.log_Z
    x, w = pis.sample(7, seed=4)
    x2, w2 = loaded.sample(7, seed=4)
    torch.testing.assert_close(x2, x)
    torch.testing.assert_close(w2, w)
    with pytest.raises(CheckpointError, match="BridgeModule is needed"):
        load_module(path, expected=BridgeModule)

    bridge = BridgeModule(target, n_steps=4, hidden=8, batch_size=16, eval_samples=32, n_ipf=1, phase_steps=2)
    bpath = _fit_save(bridge, tmp_path / "bridge.ckpt", steps=100)
    assert len(bridge.ipf_history) == 4
    lb = load_module(bpath)
    assert type(lb) is BridgeModule and lb.ipf_history == bridge.ipf_history
    torch.testing.assert_close(lb.sample(5, seed=2)[1], bridge.sample(5, seed=2)[1])


@pure
def test_target_to_device_moves_a_copy():
    """``Target.to`` moves every tensor (priors, operators, nested targets) of a copy; the original and
    the spec stay as they were. 'meta' stands in for an accelerator on this CPU-only machine."""
    from diffpost.config import spec_of
    from diffpost.targets import EvalCounter, SyntheticGMMPosterior

    t = SyntheticGMMPosterior(dim=2, n_components=3, n_obs=1, seed=1)
    moved = t.to("meta")
    assert moved is not t and moved.device == torch.device("meta") and t.device == torch.device("cpu")
    assert moved.to("meta") is moved
    for obj in (moved.exact, moved.prior, moved.posterior):
        tensors = [v for v in vars(obj).values() if torch.is_tensor(v)]
        assert tensors and all(v.device.type == "meta" for v in tensors)
    assert all(b.device.type == "meta" for b in moved.operator.buffers())
    assert all(b.device.type == "cpu" for b in t.operator.buffers()) and t.exact.means.device.type == "cpu"
    assert moved.log_prob_and_grad(torch.zeros(3, 2, dtype=F64, device="meta"))[1].shape == (3, 2)
    assert spec_of(moved) == spec_of(t)
    counter = EvalCounter(t).to("meta")
    assert counter.device == torch.device("meta") and counter.target.exact.means.device.type == "meta"


@pytest.mark.gpu
def test_module_moves_its_target_to_cuda():
    """The module casts its dtype but Lightning moves only parameters/buffers: the target follows on the
    first simulation. CPU noise generators make CUDA samples equal CPU samples up to round-off."""
    from diffpost.targets import SyntheticGMMPosterior

    pl.seed_everything(0)
    module = DDSModule(SyntheticGMMPosterior(dim=2, seed=1), n_steps=8, hidden=16, eval_samples=32)
    x_cpu, w_cpu = module.sample(16, seed=3)
    module = module.to("cuda")
    x, w = module.sample(16, seed=3)
    assert x.device.type == "cuda" and module.target.device.type == "cuda"
    assert module.target.exact.means.device.type == "cuda"
    torch.testing.assert_close(x.cpu(), x_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w.cpu(), w_cpu, rtol=1e-4, atol=1e-4)
