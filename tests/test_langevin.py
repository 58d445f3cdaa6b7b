"""ULA and MALA: ULA's exact stationary law on a Gaussian, MALA's invariance and step adaptation,
batch-size independence, evaluation counts and divergence errors."""

import pytest
import torch

from diffpost.priors import GaussianPrior
from diffpost.operators import DenseOperator
from diffpost.random import make_generator, per_sample_generators, randn
from diffpost.samplers.errors import SamplerDivergedError
from diffpost.samplers.langevin import mala, ula
from diffpost.targets import GaussianMixture, LinearGaussianPosterior, Target

pytestmark = pytest.mark.usefixtures("no_global_rng")

F64 = torch.float64


def _diag_gaussian(variances):
    v = torch.as_tensor(variances, dtype=F64)
    return GaussianMixture([1.0], torch.zeros(1, v.shape[0], dtype=F64), torch.diag(v)[None])


def test_ula_reaches_its_known_biased_stationary_law():
    # ULA on N(0, σ²): x' = (1 − h/σ²) x + sqrt(2h) ξ, stationary variance σ²/(1 − h/(2σ²)) (not σ²)
    var = torch.tensor([0.5, 2.0], dtype=F64)
    h = 0.2
    x, info = ula(_diag_gaussian(var), 20000, step=h, n_steps=200, generator=make_generator(0))
    expected = var / (1 - h / (2 * var))
    assert torch.allclose(x.var(0), expected, rtol=0.04)
    assert not torch.allclose(x.var(0), var, rtol=0.04)  # the bias is visible at this step
    assert torch.all(x.mean(0).abs() < 5 * (expected / 20000).sqrt())
    assert info["counts"] == {"grad": 20000 * 200}
    assert info["counts_per_sample"] == {"grad": 200.0}


def test_mala_adapts_to_the_target_acceptance_and_has_correct_moments():
    g = make_generator(1)
    A = randn((3, 5), g, dtype=F64)
    prior = GaussianPrior(torch.zeros(5, dtype=F64), torch.diag(torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=F64)))
    t = LinearGaussianPosterior(prior, DenseOperator(A, (5,)), randn((3,), g, dtype=F64), 0.5)
    x, info = mala(t, 2000, step=1.0, n_steps=150, n_burnin=300, generator=make_generator(2), return_chain=True, thin=10)
    assert info["acceptance"] == pytest.approx(0.574, abs=0.06)
    assert torch.all(info["step"] > 0) and torch.all(info["step"] < 1.0)  # adapted down from a too-large start
    # the oracle from the prior's parameters, A and y (METHODS §1), not from the target that supplies the
    # gradients: catches an error in the target's closed-form posterior as well as in MALA
    prec = torch.diag(1 / torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=F64)) + A.T @ A / 0.5**2
    cov = torch.linalg.inv(prec)
    mean = cov @ A.T @ t.y.reshape(-1) / 0.5**2
    se = (torch.diagonal(cov) / 2000).sqrt()
    assert torch.all((x.mean(0) - mean).abs() < 5 * se)
    rel = torch.linalg.norm(torch.cov(x.T) - cov) / torch.linalg.norm(cov)
    assert float(rel) < 0.08
    assert info["chain"].shape == (15, 2000, 5)
    assert info["counts"]["log_prob"] == info["counts"]["grad"] == 2000 * 451


def test_mala_preserves_the_target_without_adaptation_even_with_a_poor_step():
    # exact samples in, exact samples out: the Metropolis correction removes ULA's bias at any step
    t = _diag_gaussian([0.5, 2.0])
    x0 = t.sample(20000, make_generator(3))
    x, info = mala(t, x0, step=0.8, n_steps=30, adapt=False, generator=make_generator(4))
    assert 0.1 < info["acceptance"] < 0.9
    assert torch.allclose(x.var(0), torch.tensor([0.5, 2.0], dtype=F64), rtol=0.04)
    # ULA with the same step is visibly biased
    xu, _ = ula(t, x0, step=0.8, n_steps=30, generator=make_generator(4))
    assert float(xu.var(0)[0]) > 0.5 * 1.3


@pytest.mark.parametrize("sampler", ["ula", "mala"])
def test_samples_do_not_depend_on_batch_size(sampler):
    t = GaussianMixture([0.3, 0.7], torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64), 0.5)
    seeds = [11, 12, 13, 14, 15]
    kw = dict(step=0.3, n_steps=40) if sampler == "ula" else dict(step=0.3, n_steps=30, n_burnin=10)
    fn = ula if sampler == "ula" else mala
    full, _ = fn(t, 5, generator=per_sample_generators(seeds), **kw)
    parts = [fn(t, len(c), generator=per_sample_generators(c), **kw)[0] for c in (seeds[:2], seeds[2:3], seeds[3:])]
    assert torch.allclose(full, torch.cat(parts), rtol=0, atol=1e-12)
    other, _ = fn(t, 5, generator=per_sample_generators([s + 100 for s in seeds]), **kw)
    assert not torch.allclose(full, other)


class _NaNBeyond(Target):
    """A Gaussian whose log-density is NaN for x1 > 3 (a broken model)."""

    dim = 2

    def log_prob(self, x):
        lp = -0.5 * (x**2).sum(1)
        return torch.where(x[:, 0] > 3, torch.full_like(lp, float("nan")), lp)


def test_divergence_and_nan_targets_raise_with_the_step_named():
    t = _diag_gaussian([1.0, 1.0])
    # step 3 on a unit Gaussian: |1 − h| = 2, the state doubles every step until it overflows
    with pytest.raises(SamplerDivergedError, match=r"ula step \d+"):
        ula(t, 4, step=3.0, n_steps=2000, generator=make_generator(5))
    start = torch.tensor([[2.9, 0.0], [0.0, 0.0]], dtype=F64)
    with pytest.raises(SamplerDivergedError, match=r"mala step \d+: log π at the proposal is not finite \(NaN"):
        mala(_NaNBeyond(), start, step=0.5, n_steps=200, generator=make_generator(6))
    with pytest.raises(SamplerDivergedError, match="initial state"):
        mala(_NaNBeyond(), torch.tensor([[4.0, 0.0]], dtype=F64), step=0.1, n_steps=5, generator=make_generator(6))
    with pytest.raises(ValueError, match="step"):
        ula(t, 4, step=-1.0, n_steps=5)
