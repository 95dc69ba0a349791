"""Training CaiT / DeiT: the public face of :mod:`cait_edu.training`.

Usage::

    python -m cait_edu.train --list-presets
    python -m cait_edu.train --preset cifar10_tiny --out runs/tiny
    python -m cait_edu.train --preset cifar10_cait_tiny --out runs/c --set epochs=50 --set lr=5e-4
    python -m cait_edu.train --out runs/c --resume            # continue a run (config from runs/c)
    python -m cait_edu.train --preset cait_m48_448_finetune --finetune m48_224/best.pt --out runs/m48_448
    torchrun --nproc_per_node=8 -m cait_edu.train --preset cait_s24_224 --data /data/imagenet --out runs/s24

From Python (e.g. a notebook)::

    from cait_edu.train import train, make_config
    metrics = train(make_config("cifar10_tiny", out="runs/tiny"))

How a run works is told in :mod:`cait_edu.training.loop`; the package docstring of
:mod:`cait_edu.training` lists its modules, one job each.
"""
import sys

from .training import *  # noqa: F401,F403  (the public API)
from .training import __all__  # noqa: F401
from .training.cli import main

if __name__ == "__main__":
    sys.exit(main())
