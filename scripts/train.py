#!/usr/bin/env python
"""Train and evaluate diffpost models with LightningCLI.

    python scripts/train.py fit --config configs/experiments/quickstart_prior.yaml
    python scripts/train.py fit --config configs/experiments/quickstart_prior.yaml --trainer.max_epochs=3
    python scripts/train.py fit --config ... --ckpt_path runs/.../last.ckpt        # resume after a crash
    python scripts/train.py fit --print_config --config ...                        # the full resolved config
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lightning_modules.cli import DiffpostCLI  # noqa: E402


def main(args=None):
    return DiffpostCLI(args=args)


if __name__ == "__main__":
    main()
