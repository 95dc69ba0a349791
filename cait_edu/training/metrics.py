"""``metrics.jsonl``: one JSON object per line, per logged training step and per evaluation.

Lines are strict JSON (RFC 8259): a non-finite number (an fp16 step whose gradients overflowed,
a diverging loss) is written as ``null``, never as the ``Infinity``/``NaN`` that Python's ``json``
emits by default and other readers reject. When a run resumes, the lines logged after the
checkpoint it resumes from are dropped: they will be logged again. :func:`progress_enabled`
decides whether a run also shows a progress bar.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "finite_or_none", "progress_enabled"]


def progress_enabled(cfg: Any) -> bool:
    """A progress bar unless the config (``progress``) or ``$CAIT_EDU_NO_PROGRESS=1`` (set by the tests) says no."""
    return cfg.progress and os.environ.get("CAIT_EDU_NO_PROGRESS", "") not in ("1", "true")


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float inside it (dicts, lists) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


class MetricsLog:
    """Appends records to ``path``; only the process that owns the files (rank 0) writes."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(finite_or_none(record), allow_nan=False)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def start_fresh(self) -> None:
        """A new run: no lines from an earlier one."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def keep_up_to(self, step: int) -> None:
        """A resumed run: keep the records of steps ``<= step`` (and drop a line cut by a kill)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if rec.get("step", 0) <= step:
                keep.append(line + "\n")
        tmp = self.path.with_name(f".{self.path.name}.tmp.{os.getpid()}")
        tmp.write_text("".join(keep))
        os.replace(tmp, self.path)
