"""Helper for tests/test_train.py: ``python -m cait_edu.train`` with every optimizer step slowed
down by SLEEP seconds, so that a test can SIGKILL the run in the middle of an epoch. The engine has
no such switch: this script patches it from the outside.

Usage: python tests/_slow_train.py SLEEP <cait_edu.train arguments>
"""
import sys
import time

from cait_edu.training import loop
from cait_edu.training.cli import main

sleep = float(sys.argv[1])
real_step = loop.Trainer.train_step


def slow_step(self, *args, **kwargs):
    out = real_step(self, *args, **kwargs)
    time.sleep(sleep)
    return out


loop.Trainer.train_step = slow_step
sys.exit(main(sys.argv[2:]))
