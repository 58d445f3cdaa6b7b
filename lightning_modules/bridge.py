"""``BridgeModule``: Schrödinger-bridge refinement of a DDS or PIS sampler by iterative proportional fitting.

Between the start law (DDS: ``μ_0 = N(0, σ_r² I)``; PIS: the point 0) and ``π`` with the reference chain
over a fixed (short) horizon, where DDS alone is biased: its optimum ``μ_0 ×`` (forward kernels of
``P^π``) has terminal law ``≠ π`` unless the reference mixes. (PIS's optimum is exact in continuous time;
the refinement then corrects what its discretisation and network miss.) IPF alternates two half-bridges
(``diffpost.samplers.dds.path_log_ratio``):

- backward (mean matching): fit ``B_φ(y_k | y_{k+1}) = N(c_k y_{k+1} + β_k² v_φ, w_k² I)`` (``c_k, w_k`` the
  reference's own backward kernel: DDS ``a_k, σ_r β_k``; PIS a Brownian bridge to 0) to paths of the
  current forward sampler by maximum likelihood;
- forward: retrain ``u_θ`` (warm start) on ``KL(Q_θ || π × B_φ)`` by backprop through the path.

The first forward phase (``B`` = the reference's own backward kernels) is DDS or PIS; ``init_from`` may
give a trained ``DDSModule`` checkpoint of the same kind instead. Both phases minimise the same bound
``L(θ, φ) = E_Q[R] + log Z ≥ KL(Q_K || π)``, so it cannot increase from phase to phase (up to
optimisation and Monte Carlo error); after each backward phase, ``B_φ`` is fitted to the current
sampler and ``L`` is a close upper bound on that sampler's ``KL(Q_K || π)`` (the gap is what Gaussian
backward kernels of fixed variance ``σ_r² β_k²`` cannot represent). ``ipf_history`` records ``L``, log Ẑ
and ESS on fixed evaluation noise after every phase (also logged as ``ipf/*`` and stored in checkpoints).

Train with ``Trainer(max_epochs=1)``: one epoch is the whole schedule of ``phase_steps`` per phase.
"""
from __future__ import annotations

import inspect
from typing import Any, Literal

import torch

from diffpost.nets.control import ControlNet
from diffpost.random import make_generator, seed_for
from diffpost.samplers.dds import Paths, effective_sample_size, log_evidence, path_log_ratio
from lightning_modules.checkpoint import safe_load
from lightning_modules.dds import _TRAIN_STREAM, DiffusionSamplerBase, _positive

_EVAL_STREAM = 3
#: DDS/PIS hyper-parameters that must match for ``init_from``
_SHARED = ("kind", "n_steps", "T", "alpha", "sigma_r", "time_power", "hidden")


class BridgeModule(DiffusionSamplerBase):
    """IPF refinement; arguments as ``DDSModule`` (``kind``: the DDS or the PIS reference) plus:

    Args:
        n_ipf: IPF iterations after the first (DDS) forward phase.
        phase_steps: optimiser steps per half-bridge.
        init_from: path of a trained ``DDSModule`` checkpoint with the same kind, reference and width;
            its control replaces the first forward phase (loaded when a fresh fit starts).
    """

    def __init__(
        self,
        target: Any,
        kind: Literal["dds", "pis"] = "dds",
        n_steps: int = 32,
        T: float = 1.0,
        alpha: float = 1.0,
        sigma_r: float = 1.0,
        time_power: float = 1.0,
        hidden: int = 64,
        batch_size: int = 256,
        lr: float = 1e-3,
        n_ipf: int = 3,
        phase_steps: int = 500,
        eval_samples: int = 2000,
        seed: int = 0,
        init_from: str | None = None,
    ):
        super().__init__()
        target = self._record_target(target, inspect.currentframe())
        _positive("n_ipf", n_ipf, integer=True)
        _positive("phase_steps", phase_steps, integer=True)
        self._build_sampler(target, kind, n_steps, T, alpha, sigma_r, time_power, hidden, batch_size, lr, eval_samples)
        self.backward_control = ControlNet(int(target.dim), hidden, float(T))  # zero output: the reference's kernels
        self.automatic_optimization = False
        self.ipf_history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ schedule
    @property
    def phases(self) -> list[str]:
        first = [] if self.hparams.init_from else ["forward"]
        return first + ["backward", "forward"] * self.hparams.n_ipf + ["backward"]

    @property
    def total_steps(self) -> int:
        return len(self.phases) * self.hparams.phase_steps

    def _train_length(self) -> int:
        return self.total_steps

    def log_weights(self, paths: Paths) -> torch.Tensor:
        """``log w = −R``: weights against ``π × B_φ`` (valid for any ``φ``; low variance once fitted)."""
        return -path_log_ratio(paths, self.disc, self.backward_control)

    def _needs_path(self) -> bool:
        return True

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        if self.hparams.init_from and self.global_step == 0:
            self._load_dds(self.hparams.init_from)

    def _load_dds(self, path: str) -> None:
        ckpt = safe_load(path)
        hp = {"kind": "dds", **(ckpt.get("hyper_parameters") or {})}
        bad = [f"{k}: {hp.get(k)!r} vs {self.hparams[k]!r}" for k in _SHARED if hp.get(k) != self.hparams[k]]
        if bad:
            raise ValueError(f"init_from={path}: {hp['kind'].upper()} checkpoint does not match this bridge ({'; '.join(bad)})")
        state = {k[len("control."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("control.")}
        self.control.load_state_dict(state)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        step, H = self.global_step, self.hparams.phase_steps
        p = step // H
        if p >= len(self.phases):
            self.trainer.should_stop = True
            return None
        phase = self.phases[p]
        opt_f, opt_b = self.optimizers()
        g = self.step_generator(batch_idx, _TRAIN_STREAM)
        n = self.hparams.batch_size
        if phase == "forward" and p == 0:  # plain DDS/PIS: reference backward kernels, lower-variance C + G
            loss, opt = self.simulate(n, g).kl_terms.mean(), opt_f
        elif phase == "forward":  # half-bridge: Q_θ against π × B_φ, φ frozen
            loss, opt = path_log_ratio(self.simulate(n, g, keep_path=True), self.disc, self.backward_control).mean(), opt_f
        else:  # mean matching on the current sampler's paths, θ frozen
            with torch.no_grad():
                paths = self.simulate(n, g, keep_path=True)
            loss, opt = path_log_ratio(paths, self.disc, self.backward_control).mean(), opt_b
        self.toggle_optimizer(opt)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.untoggle_optimizer(opt)
        self.log(f"train/{phase}_loss", loss, prog_bar=True, batch_size=n)
        if (step + 1) % H == 0:
            self._evaluate(p, phase)
        if step + 1 >= self.total_steps:
            self.trainer.should_stop = True
        return None

    def _evaluate(self, p: int, phase: str) -> None:
        """``L``, log Ẑ, ESS on the same evaluation noise after every phase (common random numbers)."""
        n = self.hparams.eval_samples
        _, log_w = self._evaluate_paths(n, make_generator(seed_for(self.hparams.seed, _EVAL_STREAM)))
        log_z = log_evidence(log_w)
        known = getattr(self.target, "log_Z", None)
        rec = {
            "phase": p,
            "kind": phase,
            # which forward sampler the entry measures (0 = DDS)
            "iteration": self.phases[: p + 1].count("forward") - (0 if self.hparams.init_from else 1),
            "kl_bound": float(-log_w.mean() + (log_z if known is None else known)),  # E[R] + log Z
            "log_Z_hat": float(log_z),
            "ess": float(effective_sample_size(log_w) / n),
        }
        self.ipf_history.append(rec)
        for k in ("kl_bound", "log_Z_hat", "ess"):
            self.log(f"ipf/{phase}_{k}", rec[k], batch_size=n)

    def configure_optimizers(self):
        lr = self.hparams.lr
        return [torch.optim.Adam(self.control.parameters(), lr=lr),
                torch.optim.Adam(self.backward_control.parameters(), lr=lr)]

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ipf_history"] = [dict(r) for r in self.ipf_history]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.ipf_history = [dict(r) for r in checkpoint.get("ipf_history", [])]

    on_load_diffpost_checkpoint = on_load_checkpoint
