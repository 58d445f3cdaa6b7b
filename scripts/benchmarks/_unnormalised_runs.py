"""Targets (cases with reference samples) and sampler runs of ``benchmark.py unnormalised``: ULA, MALA,
rdMC at its defaults, DDS/PIS and their Schrödinger-bridge refinements, the targets' exact samplers.
Each run returns a ``Run`` (samples, seconds, evaluations per sample) for ``unnormalised.evaluate``."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

SAMPLERS = ("exact", "ula", "mala", "dds", "pis", "bridge", "bridge_pis")
TARGETS = ("four_mode", "forty_mode", "funnel", "linear_gaussian", "gmm_posterior", "logistic", "bod", "image")
#: samplers whose cost at d = 1024 is out of reach here (training backpropagates through K target gradients)
IMAGE_SAMPLERS = ("exact", "ula", "mala")
REFERENCE_SEED = 10_000  # the reference samples do not change with --seeds


# ================================================================================ targets
@dataclass
class Case:
    """A target with what the samplers need: its length scale (MCMC start ``N(0, scale² I)``, DDS
    reference ``N(0, scale² I)``), a Langevin step, the number of samples per run."""

    name: str
    target: Any
    scale: float
    step: float
    n_samples: int
    samplers: tuple[str, ...]
    reference: torch.Tensor | None = None
    ref_log_Z: float | None = None
    ref_info: dict[str, Any] = field(default_factory=dict)


def make_case(name: str, n_samples: int, n_image: int) -> Case:
    from diffpost.operators import Blur
    from diffpost.priors import GaussianRandomField
    from diffpost.targets import (BiochemicalOxygenDemand, FortyMode2D, FourMode2D, Funnel, SyntheticGMMPosterior,
                                  SyntheticImagePosterior, SyntheticLinearGaussianPosterior, SyntheticLogisticRegression)

    every = SAMPLERS
    if name == "four_mode":
        t = FourMode2D(8.0)
        return Case(name, t, 8.0, 0.2 / t.lipschitz, n_samples, every)
    if name == "forty_mode":
        t = FortyMode2D(seed=0)
        return Case(name, t, 25.0, 0.2 / t.lipschitz, n_samples, every)
    if name == "funnel":  # no global Lipschitz constant: the neck (x1 ≈ −6) has curvature e^6 ≈ 400
        return Case(name, Funnel(10), 2.0, 0.004, n_samples, every)
    if name == "linear_gaussian":
        t = SyntheticLinearGaussianPosterior(dim=10, n_obs=5, sigma_y=0.5, seed=0)
        return Case(name, t, 1.0, 0.2 / t.lipschitz, n_samples, every)
    if name == "gmm_posterior":
        t = SyntheticGMMPosterior(dim=6, n_components=4, n_obs=2, sigma_y=0.5, seed=0)
        return Case(name, t, 4.0, 0.2 / t.lipschitz, n_samples, every)
    if name == "logistic":
        t = SyntheticLogisticRegression(n_data=200, n_features=5, seed=0)
        return Case(name, t, 1.0, 0.2 / t.lipschitz, n_samples, every)
    if name == "bod":  # no global Lipschitz constant; MALA adapts its step, ULA uses this one
        return Case(name, BiochemicalOxygenDemand(), 1.0, 0.01, n_samples, every)
    if name == "image":
        t = SyntheticImagePosterior(GaussianRandomField((1, 32, 32), tau=3.0, s=2.0),
                                    Blur((1, 32, 32), kernel_size=5, blur_sigma=1.0), sigma_y=0.05, seed=0)
        return Case(name, t, 1.0, 0.2 / t.lipschitz, n_image, IMAGE_SAMPLERS)
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")


def prepare_reference(case: Case, n_ref: int) -> None:
    """Reference samples: exact where the target has a sampler; otherwise (logistic regression, BOD) the
    last states of long MALA chains, and log Z from the target (BOD: quadrature) or by importance
    sampling from the Laplace approximation."""
    from diffpost.random import make_generator

    t = case.target
    if t.has("sample"):
        case.reference = t.sample(n_ref, make_generator(REFERENCE_SEED))
        case.ref_log_Z = t.log_Z
        case.ref_info = {"reference": "exact samples", "n": n_ref}
        return
    from diffpost.samplers.langevin import mala

    t0 = time.perf_counter()
    n_burn, n_keep = 1000, 500  # d = 6, adapted steps: mixes in a few hundred steps
    x, info = mala(t, n_ref, step=case.step, n_steps=n_keep, n_burnin=n_burn, generator=make_generator(REFERENCE_SEED))
    case.reference = x
    if t.log_Z is not None:
        case.ref_log_Z = t.log_Z
        case.ref_info = {"reference": f"MALA, {n_ref} chains x ({n_burn} burn-in + {n_keep}) steps, last states",
                         "mala_acceptance": info["acceptance"], "log_Z_method": "the target's (quadrature)",
                         "seconds": time.perf_counter() - t0, "n": n_ref}
        return
    # log Z: Laplace proposal N(w*, H⁻¹) at the MAP (Newton), 200 000 draws
    w = x.mean(0, keepdim=True)
    for _ in range(30):
        H = torch.autograd.functional.hessian(lambda v: t.log_prob(v[None])[0], w[0])
        w = w - torch.linalg.solve(H, t.grad_log_prob(w)[0])[None]
    cov = torch.linalg.inv(-H)
    cov = 0.5 * (cov + cov.T)
    prop = torch.distributions.MultivariateNormal(w[0], covariance_matrix=cov)
    g = make_generator(REFERENCE_SEED + 1)
    z = w[0] + torch.randn(200_000, t.dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    log_w = t.log_prob(z) - prop.log_prob(z)
    log_Z = float(torch.logsumexp(log_w, 0) - math.log(len(log_w)))
    wn = torch.softmax(log_w, 0)
    ess = float(1.0 / (wn**2).sum()) / len(log_w)
    case.ref_log_Z = log_Z
    case.ref_info = {"reference": f"MALA, {n_ref} chains x ({n_burn} burn-in + {n_keep}) steps, last states",
                     "mala_acceptance": info["acceptance"], "log_Z_method": "IS from the Laplace approximation, 200000 draws",
                     "log_Z_is_ess_fraction": ess, "seconds": time.perf_counter() - t0, "n": n_ref}


# ================================================================================ samplers
@dataclass
class Run:
    x: torch.Tensor
    seconds: float
    evals: float | None = None  #: target (density or gradient) + network evaluations per sample at sampling
    log_w: torch.Tensor | None = None
    ess: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _mcmc_init(case: Case, seed: int):
    from diffpost.random import make_generator

    g = make_generator(seed)
    return case.scale * torch.randn(case.n_samples, case.target.dim, generator=g, dtype=torch.float64), g


def _chain_ess(chain: torch.Tensor) -> float | None:
    from diffpost.metrics import autocorrelation_ess

    if chain.shape[0] < 4:
        return None
    try:
        ess = autocorrelation_ess(chain)  # (d,), summed over chains
    except ValueError:
        return None
    return float(ess.min()) / (chain.shape[0] * chain.shape[1])


def _thin(n_steps: int) -> int:
    return max(1, n_steps // 32)


def run_ula(case: Case, budget: int, seed: int) -> Run:
    from diffpost.samplers.langevin import ula

    x0, g = _mcmc_init(case, seed)
    burn = budget // 2
    keep = budget - burn
    t0 = time.perf_counter()
    x, info = ula(case.target, x0, step=case.step, n_steps=keep, n_burnin=burn, generator=g, thin=_thin(keep),
                  return_chain=True)
    secs = time.perf_counter() - t0
    return Run(x, secs, sum(info["counts_per_sample"].values()), ess=_chain_ess(info["chain"]))


def run_mala(case: Case, budget: int, seed: int) -> Run:
    from diffpost.samplers.langevin import mala

    x0, g = _mcmc_init(case, seed)
    total = budget - 1  # plus the initial evaluation
    burn = total // 2
    keep = total - burn
    t0 = time.perf_counter()
    x, info = mala(case.target, x0, step=case.step, n_steps=keep, n_burnin=burn, generator=g, thin=_thin(keep),
                   return_chain=True)
    secs = time.perf_counter() - t0
    # one density-with-gradient evaluation counts once (both come from one pass)
    return Run(x, secs, info["counts_per_sample"]["grad"], ess=_chain_ess(info["chain"]),
               extra={"acceptance": info["acceptance"]})


def run_rdmc(case: Case, seed: int) -> Run:
    """rdMC at its defaults; its cost (evaluations per sample) is measured, not set."""
    import warnings

    from diffpost.random import make_generator
    from diffpost.samplers.rdmc import InnerBudgetWarning, rdmc

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InnerBudgetWarning)  # reported as cap_hits
        x, info = rdmc(case.target, case.n_samples, generator=make_generator(seed))
    secs = time.perf_counter() - t0
    return Run(x, secs, info["evals_per_sample"], extra={"cap_hits": info["cap_hits"], "inner_estimates": info["n_estimates"],
                                                          "inner": "".join(b[0] for b in info["inner"])})


def train_diffusion_sampler(case: Case, kind: str, seed: int, *, n_steps: int, train_steps: int, batch: int,
                            hidden: int, bridge_phase_steps: int = 0):
    """A ``DDSModule`` (``kind`` dds/pis) or ``BridgeModule`` fitted on ``case.target``; returns the module
    and its training cost."""
    import lightning.pytorch as pl

    from lightning_modules.bridge import BridgeModule
    from lightning_modules.dds import DDSModule

    alpha = 3.0
    common = dict(n_steps=n_steps, T=1.0, alpha=alpha, hidden=hidden, batch_size=batch, eval_samples=64, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # network initialisation
        if kind in ("bridge", "bridge_pis"):
            ref = "dds" if kind == "bridge" else "pis"
            module = BridgeModule(case.target, kind=ref, sigma_r=case.scale if ref == "dds" else case.scale / alpha,
                                  time_power=2.0, lr=2e-3, n_ipf=1, phase_steps=bridge_phase_steps, **common)
            max_steps = module.total_steps
        else:
            # PIS: Brownian motion from 0 with terminal std σ_r α √T = scale
            sigma_r = case.scale if kind == "dds" else case.scale / alpha
            module = DDSModule(case.target, kind=kind, sigma_r=sigma_r, time_power=2.0, lr=2e-3, lr_schedule="cosine",
                               steps_per_epoch=train_steps, **common)
            max_steps = train_steps
        trainer = pl.Trainer(max_steps=max_steps, max_epochs=1, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=None if kind.startswith("bridge") else 1.0)
        t0 = time.perf_counter()
        trainer.fit(module)
        secs = time.perf_counter() - t0
    per_path = 2 * n_steps + 1  # network + gradient evaluations and the final density of one path
    cost = {"train_seconds": secs, "train_steps": int(trainer.global_step), "train_paths": int(trainer.global_step) * batch,
            "train_evals": int(trainer.global_step) * batch * per_path}
    return module, cost


def run_diffusion(case: Case, kind: str, seed: int, budget: int, train_steps: int, batch: int, hidden: int,
                  bridge_phase_steps: int) -> Run:
    from diffpost.targets import EvalCounter

    K = max(1, (budget - 1) // 2)
    if kind.startswith("bridge"):
        K = max(1, (budget - 1) // 3)  # the backward network is evaluated along the path for the weights
    module, cost = train_diffusion_sampler(case, kind, seed, n_steps=K, train_steps=train_steps, batch=batch,
                                           hidden=hidden, bridge_phase_steps=bridge_phase_steps)
    module.eval()
    counter = EvalCounter(module.target)
    object.__setattr__(module, "target", counter)
    rows = {"n": 0}
    nets = [module.control] + ([module.backward_control] if kind.startswith("bridge") else [])
    hooks = [m.register_forward_hook(lambda m, i, o: rows.__setitem__("n", rows["n"] + i[0].shape[0])) for m in nets]
    t0 = time.perf_counter()
    x, log_w = module.sample(case.n_samples, seed=seed)
    secs = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    n = case.n_samples
    evals = sum(counter.counts.values()) / n + rows["n"] / n
    from diffpost.metrics import effective_sample_size

    return Run(x.double(), secs, evals, log_w=log_w.double(), ess=float(effective_sample_size(log_w.double())),
               extra={**cost, "n_steps": K})


def run_exact(case: Case, seed: int) -> Run:
    from diffpost.random import make_generator

    t0 = time.perf_counter()
    x = case.target.sample(case.n_samples, make_generator(seed))
    return Run(x, time.perf_counter() - t0)
