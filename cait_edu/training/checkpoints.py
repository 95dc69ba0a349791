"""Checkpoints that survive a crash at any moment, and the rules for continuing one.

``out/last.pt`` holds everything a run needs to continue exactly (model, optimizer, EMA, GradScaler,
the step, where in the epoch it stopped, the best accuracy so far, the running log sums, the
config); ``out/best.pt`` the weights with the best validation top-1. Both are written by
:func:`atomic_torch_save`: to a temporary file, flushed to disk, then renamed over the old file, so
a reader (or a crash, or a SIGKILL) sees either the complete old file or the complete new one.

No RNG state is stored: every random draw is derived from the seed and the step
(:mod:`cait_edu.training.seeds`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError

__all__ = ["CHECKPOINT_FORMAT", "atomic_torch_save", "load_checkpoint", "read_resume_checkpoint",
           "remove_stale_temporaries", "write_run_config"]

CHECKPOINT_FORMAT = "cait_edu.train/2"
"""Written into every checkpoint. Version 1 also stored one RNG state per visible GPU, which a run
on fewer GPUs could not restore; they were never needed (they are derived) and are ignored now.
Version 1 did not store the running log sums: its first logged loss after resuming averages fewer
steps. Both versions can be continued."""
_READABLE_FORMATS = ("cait_edu.train/1", CHECKPOINT_FORMAT)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, flush + fsync, then ``os.replace``:
    a reader (or a crash at any moment) sees either the old complete file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`~cait_edu.training.run.train` (``weights_only``: no code
    is unpickled)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def read_resume_checkpoint(out: Path, resume: bool) -> dict | None:
    """The decision to start or continue a run in ``out``, before anything is loaded or written.

    ``resume=False``: None, or :class:`ConfigError` if ``out`` already holds a run (never overwrite a
    run by accident). ``resume=True``: the contents of ``out/last.pt``, or a :class:`ConfigError`
    saying why it cannot be continued (missing, unreadable, not ours, an older format).
    """
    last = out / "last.pt"
    if not resume:
        if last.is_file():
            raise ConfigError(f"{out} already holds a run ({last}); pass --resume (resume=True) to continue "
                              "it, or choose another --out")
        return None
    if not last.is_file():
        raise ConfigError(f"--resume: no checkpoint {last}; run without --resume to start a new run")
    try:
        ckpt = load_checkpoint(last)
    except Exception as e:  # e.g. a file damaged outside our atomic writes
        raise ConfigError(f"cannot read the checkpoint {last}: {type(e).__name__}: {e}") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt not in _READABLE_FORMATS:
        raise ConfigError(f"{last} is not a cait_edu.train checkpoint (format {fmt!r}); "
                          f"this version continues {', '.join(_READABLE_FORMATS)}")
    return ckpt


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files a crash in the middle of :func:`atomic_torch_save` left behind."""
    for stale in out.glob(".*.tmp.*"):
        stale.unlink(missing_ok=True)


def write_run_config(out: Path, cfg: Any, runtime: dict) -> None:
    """``out/config.json``: every field of the run's config plus ``_runtime`` (what the run found:
    devices, data, steps), written atomically like the checkpoints."""
    tmp = out / f".config.json.tmp.{os.getpid()}"
    tmp.write_text(json.dumps({**dataclasses.asdict(cfg), "_runtime": runtime}, indent=2))
    os.replace(tmp, out / "config.json")
