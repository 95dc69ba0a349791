"""Helper for tests/test_train.py: run a training config with ``torch.save`` patched so that the
K-th save of ``last.pt`` writes only half of the file and then the process dies at once
(``os._exit(17)``: no cleanup, no ``finally``), as if killed in the middle of a checkpoint write.

Usage: python tests/_crash_during_save.py '<config as JSON>' K
"""
import io
import json
import os
import sys

import torch

from cait_edu import train as T

cfg = T.make_config(**json.loads(sys.argv[1]))
crash_at = int(sys.argv[2])
real_save = torch.save
seen = {"last": 0}


def half_save(obj, f, *args, **kwargs):
    if "last.pt" in str(getattr(f, "name", f)):
        seen["last"] += 1
        if seen["last"] == crash_at:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os._exit(17)
    return real_save(obj, f, *args, **kwargs)


torch.save = half_save
T.train(cfg)
sys.exit(0)  # not reached when the crash happens
