#!/usr/bin/env python
"""Train and evaluate diffpost models with LightningCLI (``lightning_modules.train_cli``).

    python scripts/train.py fit --config configs/experiments/quickstart_prior.yaml
    python scripts/train.py fit --config configs/experiments/quickstart_prior.yaml --trainer.max_epochs=3
    python scripts/train.py fit --config ... --ckpt_path runs/.../last.ckpt        # resume after a crash
    python scripts/train.py fit --print_config --config ...                        # the full resolved config

Bad input is one line on stderr and exit status 2 (``--debug`` or ``DIFFPOST_DEBUG=1``: the traceback);
SIGTERM/SIGINT save a checkpoint and exit with 128 + signal.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lightning_modules.train_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
