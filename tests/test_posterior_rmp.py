"""RMP (diffpost/posterior/rmp.py; METHODS §5) against exact posterior means, float64, d = 16.

Oracle mode: RMP has no way to know the prior, so "the exact conditional score of p(x_k | y)" enters
as the model itself: a ``PriorModel`` whose denoiser is the POSTERIOR denoiser of METHODS §1
(``GaussianPrior.posterior(...).denoise``, one measurement per chain) with ζ = 0 (no likelihood
term). The chain must then reproduce ``μ_post`` up to its start error, which is predicted in closed
form. With the EXACT PRIOR denoiser and the plug-in likelihood, and on two-mode mixtures, RMP is
approximate: the measured errors are pinned in bands (numbers in docs/benchmarks.md, "RMP").
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from diffpost.operators import CT, Blur, Inpainting
from diffpost.posterior.base import PriorModel, posterior_generators
from diffpost.posterior.rmp import RMP
from diffpost.priors import GaussianPrior, GMMPrior
from diffpost.random import make_generator
from diffpost.samplers.errors import SamplerDivergedError

pytestmark = pytest.mark.usefixtures("no_global_rng")

REPO = Path(__file__).resolve().parents[1]
SHAPE, SIGMA_Y, F64, SIGMA_MIN = (1, 4, 4), 0.1, torch.float64, 0.002


def _cov(scale: float = 0.25) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(4, dtype=F64), torch.arange(4, dtype=F64), indexing="ij")
    p = torch.stack([r.reshape(-1), c.reshape(-1)], 1)
    return scale * torch.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / 2.0) + 0.01 * torch.eye(16, dtype=F64)


PRIOR = GaussianPrior(torch.zeros(16, dtype=F64), _cov(), SHAPE)
OPS = {"blur": lambda: Blur(shape=SHAPE, kernel="gaussian", kernel_size=3, blur_sigma=0.8),
       "ct": lambda: CT(shape=SHAPE, n_angles=5), "inpaint": lambda: Inpainting(shape=SHAPE, keep_ratio=0.5, seed=3)}


def measure(prior, op, n: int = 2, seed: int = 11) -> torch.Tensor:
    g = make_generator(seed)
    x = prior.sample(n, g)
    return op.forward(x) + SIGMA_Y * torch.randn(n, *op.y_shape, generator=g, dtype=F64)


def posterior_model(posts, sigma_max: float = 80.0) -> PriorModel:
    """The exact conditional denoiser E[x0 | x_σ, y] of each chain's own measurement (one chain each)."""
    def den(x, s):
        return torch.cat([p.denoise(x[i:i + 1], s[i:i + 1]) for i, p in enumerate(posts)])
    return PriorModel(denoiser=den, x_shape=SHAPE, dtype=F64, sigma_max=sigma_max, sigma_min=SIGMA_MIN)


def prior_model(prior, dtype=F64) -> PriorModel:
    return PriorModel(denoiser=lambda x, s: prior.denoise(x, s), x_shape=SHAPE, dtype=dtype, sigma_max=80.0)


def rmp(method: RMP, model, op, y, steps: int | None = None, first: int = 0):
    n = y.shape[0]
    return method(model, op, y, SIGMA_Y, num_steps=steps or method.default_num_steps,
                  generator=posterior_generators(5, torch.arange(first, first + n), 1))


def post_mean(post) -> torch.Tensor:
    return post.mean if isinstance(post, GaussianPrior) else post.weights @ post.means


def rel_errors(out, posts) -> torch.Tensor:
    mus = torch.stack([post_mean(p) for p in posts])
    return (out.samples[:, 0].reshape(len(posts), -1) - mus).norm(dim=1) / mus.norm(dim=1)


def gaussian_case(opname: str, n: int = 2):
    op = OPS[opname]()
    y = measure(PRIOR, op, n)
    return op, y, [PRIOR.posterior(op, y[i], SIGMA_Y) for i in range(n)]


# ------------------------------------------------------------------------------- exactness
EXACT = [pytest.param("ve", "fixed", id="ve-fixed"), pytest.param("ve", "learned", id="ve-learned", marks=pytest.mark.slow),
         pytest.param("vp", "fixed", id="vp-fixed", marks=pytest.mark.slow),
         pytest.param("vp", "learned", id="vp-learned", marks=pytest.mark.slow)]


@pytest.mark.parametrize("opname", ["blur", "ct"])
@pytest.mark.parametrize("chain,precision", EXACT)
def test_exact_conditional_score_gives_the_posterior_mean(chain, precision, opname):
    """Paper settings (VE 30 × 20, VP 400 × 1), σ_max = 80: relative error ≤ 1e-3 (measured 2e-6–1.4e-5,
    the start error). Catches the paper's sign slip (μ − s1Λ⁻¹∇), a sampled transition term (μ_{k+1} − x̃:
    sample noise), δ_k = σ_{k+1} − σ_k."""
    op, y, posts = gaussian_case(opname)
    out = rmp(RMP(chain=chain, precision=precision, zeta=0.0), posterior_model(posts), op, y)
    assert out.mean_only and out.samples.shape == (2, 1, *SHAPE)
    assert float(rel_errors(out, posts).max()) <= 1e-3


@pytest.mark.parametrize("chain", ["ve", pytest.param("vp", marks=pytest.mark.slow)])
def test_start_error_shrinks_as_predicted(chain):
    """With μ_K = 0 the error at σ_min is −(Σ_post + σ_min²)(Σ_post + σ_max²)⁻¹ μ_post (module docstring, 1):
    the whole error VECTOR is matched, for σ_max = 1, 2, 5 (measured: VE to 4e-8 of its norm; VP with one
    inner step per level to 3–6 %). Catches δ_k = σ_{k+1} − σ_k, a wrong start."""
    op, y, posts = gaussian_case("blur")
    I = torch.eye(16, dtype=F64)
    tol = 1e-5 if chain == "ve" else 0.1
    norms = []
    for smax in (1.0, 2.0, 5.0):
        out = rmp(RMP(chain=chain, zeta=0.0), posterior_model(posts, smax), op, y)
        for i, p in enumerate(posts):
            predicted = -torch.linalg.solve(p.cov + smax**2 * I, (p.cov + SIGMA_MIN**2 * I) @ p.mean)
            got = out.samples[i, 0].reshape(-1) - p.mean
            assert float((got - predicted).norm() / predicted.norm()) < tol, (smax, i)
        norms.append(float(predicted.norm()))
    assert norms[0] > 3 * norms[1] > 9 * norms[2]  # and it does shrink, roughly as 1/σ_max²


def test_ve_and_vp_chains_are_one_algorithm_on_one_grid():
    """On the same σ grid the VP chain is the VE chain in coordinates z = α x̄ (module docstring, 6), for
    both precisions and the covariant ('fixed') likelihood weight: equal to rounding. Catches a wrong
    a = α_{k+1}²/α_k², β, a missing 1/α in the score, or a VP warm start at μ_{k+1} (not μ_{k+1}/√a)."""
    op = OPS["blur"]()
    y = measure(PRIOR, op)
    for precision in ("fixed", "learned"):
        kw = dict(precision=precision, zeta=0.05, weight="fixed", inner_steps=2)
        ve = rmp(RMP(chain="ve", **kw), prior_model(PRIOR), op, y, 40).samples
        vp = rmp(RMP(chain="vp", grid="karras", **kw), prior_model(PRIOR), op, y, 40).samples
        torch.testing.assert_close(vp, ve, rtol=0, atol=1e-11)


# ------------------------------------------------------------------------------- approximations
def test_plugin_likelihood_bias_with_the_exact_prior_score():
    """The exact prior denoiser and the DPS plug-in likelihood N(y; A x̂0(x_k), σ_y²) (weight='fixed', ζ = 1;
    one inner step a level, where the plug-in is stable): a bias that does not vanish with steps (the
    plug-in ignores Cov(x0 | x_σ)). Measured relative errors (2 blur measurements; max), 100 → 400 → 1600
    VP steps: 0.270 → 0.246 → 0.239. Catches σ_y for σ_y² in the likelihood."""
    op, y, posts = gaussian_case("blur")
    errs = [float(rel_errors(rmp(RMP(chain="vp", weight="fixed", zeta=1.0), prior_model(PRIOR), op, y, n), posts).max())
            for n in (100, 400)]
    assert 0.21 < errs[1] < 0.28 and errs[1] < errs[0] < 0.31


def test_dps_weight_band():
    """The shipped likelihood (DPS-style ζ/‖r‖, ζ = 0.3, VE 30 × 20) on Gaussian blur with the exact prior
    score: measured relative errors 0.266 and 0.112 (two measurements). Catches Λ_t left out of the
    weight (the step then shrinks with δ_k and the measurement is all but ignored)."""
    op, y, posts = gaussian_case("blur")
    errs = rel_errors(rmp(RMP(zeta=0.3), prior_model(PRIOR), op, y), posts)
    assert 0.08 < float(errs.min()) and float(errs.max()) < 0.31


def _bimodal(sep: float):
    """Two modes ±sep·u with u in the unobserved pixels of 50 % inpainting: the posterior keeps both
    (weights 0.3/0.7, the prior's), so its mean lies between them."""
    op = OPS["inpaint"]()
    seen = op.adjoint(op.forward(torch.ones(1, *SHAPE, dtype=F64))).reshape(-1)
    u = torch.linspace(-1, 1, 16, dtype=F64).reshape(4, 4).T.reshape(-1) * (1 - seen)
    u = u / u.norm()
    gmm = GMMPrior(torch.tensor([0.3, 0.7], dtype=F64), torch.stack([sep * u, -sep * u]), torch.stack([_cov(0.1)] * 2), SHAPE)
    y = measure(gmm, op, 3, seed=3)
    return op, y, [gmm.posterior(op, y[i], SIGMA_Y) for i in range(3)], u


def test_gmm_exact_conditional_score():
    """Two-mode mixture, exact conditional score (ζ = 0). (a) Under blur the posterior is one mode in
    practice (weights 1 − 1e-5): error 7e-6 (≤ 1e-4). (b) Modes ±0.6u in the null space (both kept, weights
    0.3/0.7): plugging the mean into the non-affine m_k walks the chain onto the heavier mode: relative
    errors 0.39–0.48, projection on u −0.52…−0.61 (the mode: −0.6) against the exact −0.25…−0.32.
    A limit of the method, pinned so that it is seen (10 VE steps; 30 give the same). Also catches a
    fixed precision with 1/σ for 1/σ²."""
    u = torch.linspace(-1, 1, 16, dtype=F64).reshape(4, 4).T.reshape(-1)
    gmm = GMMPrior(torch.tensor([0.3, 0.7], dtype=F64), torch.stack([0.6 * u, -0.6 * u]), torch.stack([_cov(0.1)] * 2), SHAPE)
    op = OPS["blur"]()
    y = measure(gmm, op, 2, seed=3)
    posts = [gmm.posterior(op, y[i], SIGMA_Y) for i in range(2)]
    assert float(rel_errors(rmp(RMP(zeta=0.0), posterior_model(posts), op, y, 10), posts).max()) < 1e-4
    op, y, posts, u = _bimodal(0.6)
    out = rmp(RMP(zeta=0.0), posterior_model(posts), op, y, 10)
    errs = rel_errors(out, posts)
    assert 0.3 < float(errs.min()) and float(errs.max()) < 0.6
    exact, got = torch.stack([post_mean(p) for p in posts]) @ u, out.samples[:, 0].reshape(3, -1) @ u
    assert bool((got < exact - 0.15).all() and (got > -0.7).all())


def test_single_probe_is_a_noisy_estimate():
    """One probe x̃ = μ + Λ^(−½)ε per inner step (the paper's estimator of E_q[score]) leaves Monte Carlo
    noise in the mean (measured 0.15 on one blur measurement, VE 30 × 20); antithetic probes remove it on Gaussians."""
    op, y, posts = gaussian_case("blur", 1)
    assert float(rel_errors(rmp(RMP(zeta=0.0, probe="single"), posterior_model(posts), op, y), posts).max()) > 0.05


# ------------------------------------------------------------------------------- contract details
def test_same_seed_any_batch_size():
    """Per-chain generators and per-chain arithmetic: with a denoiser that treats rows alone, float64 means
    are bit-identical across batch sizes; with the batched prior denoiser (its matmuls round differently
    per batch size) equal to 1e-11 in float64 (measured 1.4e-12) and, in float32, to 2e-3 (data in [-1, 1];
    measured 1e-7 for VE fixed, 5.6e-4 for VP learned, whose clipped Hutchinson curvature amplifies it)."""
    rowwise = PriorModel(denoiser=lambda x, s: torch.cat([PRIOR.denoise(x[i:i + 1], s[i:i + 1]) for i in range(len(x))]),
                         x_shape=SHAPE, dtype=F64, sigma_max=80.0)
    for dtype, tol, model in ((F64, 0.0, rowwise), (F64, 1e-11, prior_model(PRIOR)),
                              (torch.float32, 2e-3, prior_model(PRIOR.to(dtype=torch.float32), torch.float32))):
        op = OPS["blur"]()
        y = measure(PRIOR, op, 4).to(dtype)
        for method in (RMP(zeta=0.3, inner_steps=3), RMP(chain="vp", precision="learned", zeta=0.3)):
            full = rmp(method, model, op, y, 12).samples
            parts = torch.cat([rmp(method, model, op, y[i:i + 2], 12, first=i).samples for i in (0, 2)])
            if tol == 0.0:
                assert torch.equal(parts, full)
            else:
                torch.testing.assert_close(parts, full, rtol=0, atol=tol)


@pytest.mark.parametrize("kw,nfe,vjp", [(dict(), 2 * 3 * 4, 2 * 3 * 4), (dict(probe="mean", precision="learned"), 3 * 4, 2 * 3 * 4),
                                        (dict(zeta=0.0, precision="learned"), 2 * 3 * 4, 3 * 4), (dict(zeta=0.0), 2 * 3 * 4, 0)])
def test_cost_counts(kw, nfe, vjp):
    """NFE = steps·inner·probes; VJPs: one per probe for the likelihood, one per inner step for Hutchinson."""
    op, y, posts = gaussian_case("ct")
    op.reset_counts()
    out = rmp(RMP(inner_steps=4, **kw), prior_model(PRIOR), op, y, 3)
    assert (out.nfe, out.vjp) == (nfe, vjp)
    calls = 2 * (nfe if kw.get("zeta", 1.0) > 0 else 0)  # per chain; 2 chains
    assert out.operator_calls == {"forward": calls, "adjoint": calls}


def test_learned_precision_is_returned_and_near_the_exact_curvature():
    """``extras['precision']`` (one per measurement) = Λ_t + ĥ at σ_min; on the Gaussian oracle ĥ estimates
    tr((Σ_post + σ_min²)⁻¹)/d (one Rademacher probe: within a factor 2). Catches ĥ not divided by d."""
    op, y, posts = gaussian_case("blur")
    out = rmp(RMP(zeta=0.0, precision="learned", s1=0.5), posterior_model(posts), op, y, 30)
    lam = out.extras["precision"]
    assert lam.shape == (2,) and "precision" not in rmp(RMP(zeta=0.0), posterior_model(posts), op, y, 2).extras
    sig = posterior_model(posts).sigmas(31)[:-1].tolist()  # RMP's 31 VE levels
    lam_t = 1.0 / (sig[-2] ** 2 - sig[-1] ** 2)
    for i, p in enumerate(posts):
        exact = float(torch.linalg.inv(p.cov + SIGMA_MIN**2 * torch.eye(16, dtype=F64)).trace()) / 16
        assert 0.5 < (float(lam[i]) - lam_t) / exact < 2.0


def test_an_exploding_mean_stops_with_the_divergence_error():
    """The plug-in likelihood with ζ = 1 is stiff (its curvature is not in Λ): on CT the mean explodes while
    still finite; the explicit guard names the step (measured: step 8 of 30)."""
    op, y, posts = gaussian_case("ct")
    # the method's own guard ("the mean exploded ... use weight='dps'") or the contract's ("state exploded")
    with pytest.raises(SamplerDivergedError, match=r"rmp diverged: (the mean|state) exploded .* after step \d+ \(σ = "):
        rmp(RMP(weight="fixed", zeta=1.0), prior_model(PRIOR), op, y)


def test_paper_operating_points_and_bad_arguments():
    assert (RMP().default_num_steps, RMP().inner_steps, RMP().grid) == (30, 20, "karras")
    assert (RMP(chain="vp").default_num_steps, RMP(chain="vp").inner_steps, RMP(chain="vp").grid) == (400, 1, "vp")
    for kw, word in ((dict(chain="sde"), "chain"), (dict(precision="hessian"), "precision"), (dict(weight="l2"), "weight"),
                     (dict(probe="two"), "probe"), (dict(grid="linear"), "grid"), (dict(inner_steps=0), "inner_steps"),
                     (dict(inner_steps=2.0), "inner_steps"), (dict(s1=0.0), "s1"), (dict(s1=1.5), "s1"),
                     (dict(zeta=-1.0), "zeta"), (dict(zeta=math.nan), "zeta"), (dict(s1=True), "s1")):
        with pytest.raises(ValueError, match=f"RMP: {word}"):
            RMP(**kw)


# ------------------------------------------------------------------------------- Lightning and scripts
def test_rmp_from_a_prior_checkpoint_through_the_callback_and_sample_script(tmp_path, capsys):
    """No RMP-specific code outside diffpost/posterior/rmp.py: a tiny prior is trained with
    ``ReconstructionMetrics(PosteriorSampling(method=RMP(...)))`` (which logs val/rmp/psnr), saved, and
    sampled by ``scripts/sample.py --method rmp``: the mean only (no std.pt, metrics.json says
    mean_only), with NFE = VJP = steps·inner·2 probes and one A and one Aᵀ per probe."""
    import lightning as L

    from callbacks import ReconstructionMetrics
    from datamodules import Ellipses, InverseProblemDataModule
    from diffpost.nets.unet import UNet
    from lightning_modules.prior import ScorePriorModule
    from lightning_modules.reconstruct import PosteriorSampling

    spec = importlib.util.spec_from_file_location("diffpost_sample_script_rmp", REPO / "scripts" / "sample.py")
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    op = CT((1, 16, 16), n_angles=8)
    with torch.random.fork_rng():  # network init and Lightning seed the global RNG (by design; not RMP)
        torch.manual_seed(0)
        dm = InverseProblemDataModule(Ellipses(size=16, length=16), op, sigma_y=0.05, batch_size=4, n_val=2, n_test=4)
        net = UNet(1, 1, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[])
        module = ScorePriorModule(net, num_steps=2)
        cb = ReconstructionMetrics(PosteriorSampling(method=RMP(inner_steps=1, zeta=0.5), num_steps=2), n_images=2)
        trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
                            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[cb])
        trainer.fit(module, dm)
        trainer.save_checkpoint(tmp_path / "prior.ckpt")
        meas = dm.export_measurements(str(tmp_path / "meas.pt"), n=3)
        out = tmp_path / "out"
        code = sample.main(["--checkpoint", str(tmp_path / "prior.ckpt"), "--measurements", meas, "--method", "rmp",
                            "--steps", "2", "--method-arg", "inner_steps=1", "--n-samples", "4", "--accelerator", "cpu",
                            "--no-figures", "--output", str(out)])
    assert math.isfinite(float(trainer.callback_metrics["val/rmp/psnr"]))
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["index.pt", "mean.pt", "metrics.json", "samples.pt"]
    samples = torch.load(out / "samples.pt", weights_only=True)
    assert samples.shape == (3, 1, 1, 16, 16) and torch.isfinite(samples).all()
    torch.testing.assert_close(torch.load(out / "mean.pt", weights_only=True), samples[:, 0])
    m = json.loads((out / "metrics.json").read_text())
    assert m["mean_only"] is True and m["n_samples"] == 1 and "note" in m["calibration"]
    assert m["settings"]["method"] == "rmp"
    assert m["aggregate"]["nfe"]["mean"] == 2 * 1 * 2 and m["aggregate"]["vjp"]["mean"] == 2 * 1 * 2
    assert m["cost"]["operator_calls"] == {"forward": 3 * 4, "adjoint": 3 * 4}
