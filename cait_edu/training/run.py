"""``train()``: one call that checks a config, builds a :class:`~cait_edu.training.loop.Trainer`,
sets the CPU threads and TF32 for the run (restored afterwards) and trains (or resumes)."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from .config import TrainConfig, make_config, replace_checked
from .hardware import device_type, tf32_matmuls
from .loop import Trainer
from .validate import validate_config

__all__ = ["train"]


def train(config: TrainConfig | str, *, resume: bool = False, allow_world_size_change: bool = False,
          extra_metrics: Callable[[nn.Module], dict] | None = None, **overrides: Any) -> dict:
    """Train (or, with ``resume=True``, continue) a run; return its final metrics.

    ``config`` is a :class:`~cait_edu.training.config.TrainConfig` or a preset name; ``overrides``
    replace fields (``train("cifar10_tiny", out="runs/t", epochs=3)``). Raises :class:`ConfigError`
    for a bad config, ``FileNotFoundError`` for missing data (both before any training work) and
    :class:`DivergenceError` on a non-finite loss or gradient. ``allow_world_size_change`` lets a
    run continue on another number of processes (see :func:`~cait_edu.training.validate.check_resume`).
    ``extra_metrics(model)`` is called with the live model (under ``no_grad``) at every evaluation;
    the JSON-able dict it returns joins that evaluation's line in ``metrics.jsonl`` (e.g. the
    LayerScale gammas per layer, for a chapter to plot).

    Returns a dict with ``step``, ``epoch``, ``train_loss`` (last step), ``val_loss``,
    ``val_top1``, ``val_top5`` (percent, on the final weights), ``best_top1``, ``best_epoch``,
    ``wall_time_s`` (this call), ``elapsed_s`` (the whole run, summed over resumed pieces), ``out``,
    ``data_source``, ``num_train``, ``num_val``, ``world_size``. Every evaluation line of
    ``metrics.jsonl`` carries ``elapsed_s`` too (accuracy against wall time).
    """
    if isinstance(config, str):
        config = make_config(config, **overrides)
    elif overrides:
        config = replace_checked(config, overrides)
    cfg = validate_config(config)
    trainer = Trainer(cfg, resume=resume, allow_world_size_change=allow_world_size_change,
                      extra_metrics=extra_metrics)
    threads = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        with tf32_matmuls(device_type(cfg.device) == "cuda"):
            trainer.setup()
            return trainer.fit()
    finally:
        torch.set_num_threads(threads)
        trainer.dd.close()
