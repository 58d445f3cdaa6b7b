"""The posterior-method contract, checked for EVERY method in configs/method/*.yaml (a new method is
covered as soon as its config exists): shapes and cost bookkeeping, seeds independent of batching,
clear errors for bad input and unusable operators, divergence stops with the one divergence error,
configs that rebuild the method, and the global RNG left alone.

The model is exact: a Gaussian prior ``N(0, Σ)`` on 4×4 images (d = 16) with its closed-form
denoiser (``PriorModel``), or the exact auxiliary denoiser ``D*`` (``UCoSModel``, METHODS §3.3). All in
float64, so batch-size invariance is checked to rounding.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from diffpost.config import build, spec_of
from diffpost.operators import CT, Blur, Inpainting
from diffpost.posterior.base import (
    OperatorMismatchError,
    PosteriorMethod,
    PriorModel,
    UCoSModel,
    posterior_generators,
)
from diffpost.priors import GaussianPrior
from diffpost.random import make_generator
from diffpost.samplers.errors import SamplerDivergedError
from diffpost.ucos.gaussian import GaussianAuxiliaryDenoiser

pytestmark = pytest.mark.usefixtures("no_global_rng")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "method").glob("*.yaml"))
SHAPE = (1, 4, 4)
SIGMA_Y = 0.1
STEPS = 4
F64 = torch.float64


def _cov() -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(4, dtype=F64), torch.arange(4, dtype=F64), indexing="ij")
    p = torch.stack([r.reshape(-1), c.reshape(-1)], 1)
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    return 0.25 * torch.exp(-d2 / 2.0) + 0.01 * torch.eye(16, dtype=F64)


PRIOR = GaussianPrior(torch.zeros(16, dtype=F64), _cov(), SHAPE)
OPERATORS = {
    "blur": lambda: Blur(shape=SHAPE, kernel="gaussian", kernel_size=3, blur_sigma=0.8),
    "inpaint": lambda: Inpainting(shape=SHAPE, keep_ratio=0.5, seed=3),
    "ct": lambda: CT(shape=SHAPE, n_angles=5),
}


def method_spec(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def make_method(path: Path) -> PosteriorMethod:
    return build(method_spec(path), PosteriorMethod)


def make_model(method: PosteriorMethod, op) -> PriorModel | UCoSModel:
    common = dict(x_shape=SHAPE, dtype=F64, sigma_max=20.0)
    if issubclass(method.model_type, UCoSModel):
        return UCoSModel(aux=GaussianAuxiliaryDenoiser(PRIOR.mean, PRIOR.cov, op, SIGMA_Y), operator=op, sigma_y=SIGMA_Y, **common)
    return PriorModel(denoiser=lambda x, s: PRIOR.denoise(x, s), **common)


def measurements(op, n: int = 3) -> torch.Tensor:
    g = make_generator(11)
    x = PRIOR.sample(n, g)
    return op.forward(x) + SIGMA_Y * torch.randn(n, *op.y_shape, generator=g, dtype=F64)


def run(method, op, y, *, index=None, n_samples=2, model=None, **kw):
    index = torch.arange(y.shape[0]) if index is None else index
    S = 1 if method.mean_estimator else n_samples
    return method(model or make_model(method, op), op, y, SIGMA_Y, num_steps=kw.pop("num_steps", STEPS),
                  n_samples=n_samples, generator=posterior_generators(5, index, S), **kw)


def usable(method, op) -> bool:
    try:
        method.check_setup(make_model(method, op), op, SIGMA_Y)
        return True
    except OperatorMismatchError:
        return False


CASES = [pytest.param(p, name, id=f"{p.stem}-{name}") for p in CONFIGS for name in OPERATORS]


def test_every_shipped_method_has_a_config():
    assert len(CONFIGS) >= 3, "configs/method/ lost its method configs"
    for p in CONFIGS:  # each config rebuilds its method, and the method's spec rebuilds it again
        m = make_method(p)
        again = build(spec_of(m), PosteriorMethod)
        assert type(again) is type(m) and again.init_config == m.init_config, p.name


@pytest.mark.parametrize("path,opname", CASES)
def test_shapes_cost_and_batch_invariance(path, opname):
    """Samples ``(B, S, *x_shape)`` (S = 1 for mean estimators), finite, with counted cost; the same
    seeds give the same samples whether the measurements run together or one by one."""
    method, op = make_method(path), OPERATORS[opname]()
    if not usable(method, op):
        with pytest.raises(OperatorMismatchError, match=type(method).__name__):
            run(method, op, measurements(op))
        return
    y = measurements(op)
    calls = {"n": 0}
    model = make_model(method, op)
    inner = model.aux if isinstance(model, UCoSModel) else model.denoiser

    def counting(x, s):
        calls["n"] += 1
        return inner(x, s)

    if isinstance(model, UCoSModel):
        model.aux = counting
    else:
        model.denoiser = counting
    op.reset_counts()
    out = run(method, op, y, model=model)
    S = 1 if method.mean_estimator else 2
    assert out.samples.shape == (3, S, *SHAPE) and out.samples.dtype == F64
    assert torch.isfinite(out.samples).all()
    assert out.mean_only == method.mean_estimator
    assert out.nfe == calls["n"] > 0  # every network call counted, per chain batch
    assert out.operator_calls == {"forward": op.counts["forward"], "adjoint": op.counts["adjoint"]}
    assert out.vjp >= 0
    if not method.mean_estimator:
        assert (out.samples[:, 0] - out.samples[:, 1]).abs().amax() > 1e-6  # chains draw their own noise
    one_by_one = torch.cat([run(method, op, y[i:i + 1], index=torch.tensor([i])).samples for i in range(3)])
    torch.testing.assert_close(one_by_one, out.samples, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_bad_input_is_one_clear_error(path):
    method, op = make_method(path), OPERATORS["blur"]()
    y = measurements(op, 2)
    model = make_model(method, op)
    with pytest.raises(ValueError, match="measurement has shape"):
        run(method, op, y[..., :2])
    bad = y.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        run(method, op, bad)
    for sy in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="sigma_y"):
            method(model, op, y, sy, num_steps=STEPS, n_samples=1)
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            method(model, op, y, SIGMA_Y, num_steps=steps, n_samples=1)
    with pytest.raises(ValueError, match="generators"):
        method(model, op, y, SIGMA_Y, num_steps=STEPS, n_samples=1, generator=posterior_generators(0, [0], 1))
    other = PriorModel(denoiser=model.aux if isinstance(model, UCoSModel) else model.denoiser, x_shape=SHAPE, dtype=F64)
    if isinstance(model, PriorModel):  # a UCoS model where a prior is needed, and the other way round
        other = UCoSModel(aux=model.denoiser, operator=op, sigma_y=SIGMA_Y, x_shape=SHAPE, dtype=F64)
    with pytest.raises(OperatorMismatchError, match=f"{type(method).__name__} runs on a {method.model_type.__name__}"):
        method(other, op, y, SIGMA_Y, num_steps=STEPS, n_samples=1)
    big = OPERATORS["blur"]().__class__(shape=(1, 8, 8), kernel="gaussian", kernel_size=3, blur_sigma=0.8)
    with pytest.raises(OperatorMismatchError, match="shape"):  # a model of another image shape
        method(model, big, torch.zeros(1, *big.y_shape, dtype=F64), SIGMA_Y, num_steps=STEPS, n_samples=1)


@pytest.mark.parametrize("how", ["nan", "huge"])
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_diverging_network_stops_with_the_divergence_error(path, how):
    """A network that returns NaN (or finite but absurd values, 1e12) from the middle of the run on:
    ``SamplerDivergedError`` naming the method (and the step, for methods with more than one call),
    never NaN or exploded samples. Catches a guard that only looks for NaN (ALD with too large a step
    used to return |x| ~ 1e89 silently)."""
    method, op = make_method(path), OPERATORS["blur"]()
    y = measurements(op, 1)
    total = run(method, op, y).nfe
    model = make_model(method, op)
    inner = model.aux if isinstance(model, UCoSModel) else model.denoiser
    calls = {"n": 0}

    def breaking(x, s):
        calls["n"] += 1
        out = inner(x, s)
        return out if calls["n"] < max(1, total // 2) else out * (math.nan if how == "nan" else 1e12)

    if isinstance(model, UCoSModel):
        model.aux = breaking
    else:
        model.denoiser = breaking
    with pytest.raises(SamplerDivergedError, match="not finite" if how == "nan" else "explode") as err:
        run(method, op, y, model=model)
    if total > 2:
        assert "step" in str(err.value)


def test_ucos_through_the_contract_reproduces_the_exact_posterior():
    """UCoS with the exact auxiliary denoiser D* (METHODS §3.3) on the Gaussian oracle: the sample mean
    and covariance match the closed-form posterior within Monte Carlo error. Catches a wrong ``b``
    (e.g. Aᵀy/σ_y instead of /σ_y²: the mean moves by tens of SE) or a wrong noise start."""
    from diffpost.posterior.ucos import UCoS

    op = OPERATORS["ct"]()
    y = measurements(op, 1)
    post = PRIOR.posterior(op, y, SIGMA_Y)
    n = 4000
    out = UCoS(sampler="heun")(make_model(UCoS(), op), op, y, SIGMA_Y, num_steps=32, n_samples=n,
                                generator=make_generator(0))
    s = out.samples[0].reshape(n, -1)
    mu, cov = post.mean.reshape(-1), post.cov
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert ((s.mean(0) - mu).abs() / se).max() < 5
    assert torch.linalg.norm(torch.cov(s.T) - cov) / torch.linalg.norm(cov) < 0.1
    assert out.operator_calls == {"forward": 0, "adjoint": 1}  # b = Aᵀy/σ_y² once; no A at all
