"""The book's experiments, by name. Each chapter that trains reads the result file of one of them
(``data/results/<name>.json``); ``python -m cait_edu.experiments <name>`` re-runs it."""
from __future__ import annotations

from .class_attention import CLASS_ATTENTION
from .layerscale import LAYERSCALE_DEPTH
from .recipe import CAIT_DEPTH, TRAINING_RECIPE
from .record import CPU_RECORD, CPU_RECORD_SEARCH
from .runner import Experiment

__all__ = ["EXPERIMENTS"]

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (LAYERSCALE_DEPTH, CLASS_ATTENTION, TRAINING_RECIPE,
                                                           CAIT_DEPTH, CPU_RECORD,
                                                           CPU_RECORD_SEARCH)}
