"""W&B logging that is offline unless the user has logged in (no account needed; `wandb sync` later)."""
from __future__ import annotations

import netrc
import os
from typing import Literal

from lightning.pytorch.loggers import WandbLogger


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class DiffpostWandbLogger(WandbLogger):
    """``WandbLogger`` with ``mode``: ``auto`` (online only when logged in), ``offline`` or ``online``.

    Tests and CI never touch the network: WANDB_MODE=offline or disabled in the environment wins.
    """

    def __init__(self, project: str = "diffpost", name: str | None = None, save_dir: str = "runs",
                 mode: Literal["auto", "offline", "online"] = "auto", log_model: bool = False,
                 group: str | None = None, tags: list[str] | None = None, id: str | None = None):
        env_mode = os.environ.get("WANDB_MODE")
        if env_mode in ("offline", "disabled", "dryrun"):
            offline = True
        else:
            offline = mode == "offline" or (mode == "auto" and not wandb_logged_in())
        os.makedirs(save_dir, exist_ok=True)
        # ``id`` continues an existing run (e.g. after resuming from a checkpoint)
        resume = {"id": id, "resume": "allow"} if id else {}
        super().__init__(project=project, name=name, save_dir=save_dir, offline=offline, log_model=log_model,
                         group=group, tags=tags, **resume)
