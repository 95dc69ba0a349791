"""The CPU time-to-accuracy records: how far a CaiT gets on CIFAR-10 in 2 hours of a 2-core CPU.

``cpu_record`` trains the two record presets (:mod:`cait_edu.presets`) once each, one at a time
and each with the whole machine (2 threads): ``conv`` (``cifar10_cpu_record_conv``, a small
convolutional tokenizer) and ``linear`` (``cifar10_cpu_record``, the paper's linear patch
embedding). Both keep LayerScale, talking heads and class attention. The result file holds each
run's accuracy curve against wall time; the final weights are kept (``data/trained/cpu_record/``,
about 7 MB each) for the chapter that draws class-attention maps.

Run it on an otherwise idle machine (other load slows it and inflates the wall time), one record
per command: ``python -m cait_edu.experiments cpu_record --seeds 1 --only conv-s0``.
"""
from __future__ import annotations

from ..presets import get_preset
from .common import quick_config
from .runner import Experiment, RunSpec

__all__ = ["CPU_RECORD", "RECORD_PRESETS"]

RECORD_PRESETS = {"conv": "cifar10_cpu_record_conv", "linear": "cifar10_cpu_record"}
"""Run id prefix -> the preset it trains."""


def _record_runs(quick: bool, seeds: int) -> list[RunSpec]:
    runs = []
    for seed in range(seeds):
        for stem, preset in RECORD_PRESETS.items():
            config = {**get_preset(preset).fields, "preset": preset, "seed": seed}
            if quick:
                config = {**quick_config(config), "eval_every": 1}
            runs.append(RunSpec(f"{stem}-s{seed}", config, {"stem": stem, "preset": preset, "seed": seed}))
    return runs


CPU_RECORD = Experiment(
    "cpu_record", "CIFAR-10 in 2 hours on a 2-core CPU: CaiT with a conv tokenizer and with the paper's linear one",
    _record_runs, extra_metrics=None, default_seeds=1, keep_weights=("conv-s0", "linear-s0"))
