"""W&B logging that is offline unless the user has logged in (no account needed; `wandb sync` later),
and that continues the same W&B run when SLURM requeues a job."""
from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from typing import Literal

from lightning.pytorch.loggers import WandbLogger


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def slurm_run_id(environ: Mapping[str, str] | None = None) -> str | None:
    """A W&B run id that a requeued SLURM job gets again: ``slurm-<job>`` or, for an array task,
    ``slurm-<array job>_<task>`` (SLURM keeps these ids across ``scontrol requeue`` and
    ``--requeue``). ``None`` outside SLURM, and inside a W&B sweep, whose agent chooses the run id
    (``WANDB_RUN_ID``/``WANDB_SWEEP_ID``): one job may then run many sweep trials."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_RUN_ID") or env.get("WANDB_SWEEP_ID"):
        return None
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"slurm-{array_job}_{task}"
    job = env.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else None


class DiffpostWandbLogger(WandbLogger):
    """``WandbLogger`` with ``mode``: ``auto`` (online only when logged in), ``offline`` or ``online``.

    Tests and CI never touch the network: WANDB_MODE=offline or disabled in the environment wins
    (disabled: no run files at all).

    ``id`` continues an existing run (``resume="allow"``). Without one, inside a SLURM job the id is
    derived from the job (``slurm_run_id``), so a requeued job continues its W&B run; set
    ``id_from_slurm: false`` when one job script trains several models one after the other.
    """

    def __init__(self, project: str = "diffpost", name: str | None = None, save_dir: str = "runs",
                 mode: Literal["auto", "offline", "online"] = "auto", log_model: bool = False,
                 group: str | None = None, tags: list[str] | None = None, id: str | None = None,
                 id_from_slurm: bool = True):
        env_mode = os.environ.get("WANDB_MODE")
        extra: dict = {}
        if env_mode == "disabled":
            # WandbLogger(offline=True) would set WANDB_MODE=dryrun for the whole process: pass it on
            offline, extra["mode"] = False, "disabled"
        elif env_mode in ("offline", "dryrun"):
            offline = True
        else:
            offline = mode == "offline" or (mode == "auto" and not wandb_logged_in())
        if id is None and id_from_slurm:
            id = slurm_run_id()
        if id:
            extra.update(id=id, resume="allow")
        super().__init__(project=project, name=name, save_dir=save_dir, offline=offline, log_model=log_model,
                         group=group, tags=tags, **extra)

    @property
    def experiment(self):
        # the folder is made when the run starts, not when the logger is built: a run refused before
        # it starts (bad input) leaves nothing behind
        os.makedirs(self.save_dir, exist_ok=True)
        return super().experiment
