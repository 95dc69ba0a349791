"""The CPU time-to-accuracy records: how far a CaiT gets on CIFAR-10 in 2 hours of a 2-core CPU.

``cpu_record`` trains the two record presets (:mod:`cait_edu.presets`) once each, one at a time
and each with the whole machine (2 threads): ``conv`` (``cifar10_cpu_record_conv``, a small
convolutional tokenizer) and ``linear`` (``cifar10_cpu_record``, the paper's linear patch
embedding). Both keep LayerScale, talking heads and class attention. The result file holds each
run's accuracy curve against wall time; the final weights are kept (``data/trained/cpu_record/``,
about 7 MB each) for the chapter that draws class-attention maps.

Run it on an otherwise idle machine (other load slows it and inflates the wall time), one record
per command: ``python -m cait_edu.experiments cpu_record --seeds 1 --only conv-s0``.

``cpu_record_search`` is the search behind the records' settings, at a proxy budget of
:data:`SEARCH_BUDGET_S` of the same machine: each run changes one lever of the conv record's recipe
and trains as many whole epochs as fit that budget at its model's training speed (the speed a
record run of that model sustained, else the speed script's measurement,
``data/results/cpu_record_speed.json``), so levers that change the speed (the model's size) are
compared at (nearly) equal wall time; the result file records each run's actual wall time. The
schedule's lengths (warmup, the EMA's horizon) shrink with the run (:func:`proxy_schedule`). The base
recipe runs with one seed more than the levers, to show how far two seeds of the same recipe land apart.
Levers that change only the speed (threads, ``torch.compile``, batch size) are measured by
:mod:`.speed`; test-time flip averaging by evaluating the record's final weights with and without it.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..presets import get_preset
from .common import quick_config
from .recipe import _slug
from .runner import REPO, Experiment, RunSpec

__all__ = ["CPU_RECORD", "CPU_RECORD_SEARCH", "RECORD_PRESETS", "SEARCH_LEVERS", "SEARCH_BUDGET_S", "SEARCH_EMA_DECAY", "epochs_in", "proxy_schedule", "sustained_speed"]

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


SEARCH_BUDGET_S = 400
"""Wall-time budget of one search run on the book's Intel Xeon: 400 s, an eighteenth of a record, which is
2 epochs of the record's model (1 of a model twice its cost). Sized so that the whole search fits one
session of an AMD EPYC, which trains this model at under half the Xeon's speed (100 to 125 img/s): a
first search at 1200 s (6 epochs) took 49 minutes a run there, this one 13 to 19 (94.5 minutes for all six)."""
EVAL_SHARE = 0.05
"""Share of a run's time that its evaluations take: one every 2 epochs, on the 10k test images and
their mirror images. In the conv record (``data/results/cpu_record.json``) evaluation and checkpoint
took about 25 s of the 440 s between evaluations."""

_CONV = get_preset(RECORD_PRESETS["conv"]).fields
SEARCH_LEVERS: dict[str, dict] = {
    "base": {},
    "width 192": {"model_kwargs": {"dim": 192, "num_heads": 6}},
    "12 SA layers": {"model_kwargs": {"depth": 12}},
    "no label smoothing": {"label_smoothing": 0.0},
    "warmup 4 epochs": {"warmup_epochs": 4 * _CONV["warmup_epochs"]},
}
"""label -> what changes from the conv record's recipe (``model_kwargs`` merges). Lengths are given at the
record's scale (``warmup_epochs`` of its 30 epochs) and shrunk with the run (:func:`proxy_schedule`).

Not searched, for time: the peak learning rate (2e-3 at batch 128, twice the 100-epoch preset's). A proxy
run takes about 17 minutes on the AMD EPYC; adding ``"lr 4e-3": {"lr": 4e-3}`` here and re-running the
command trains just the new run (chapter 5, exercise 7).

Not here, because measured elsewhere: the linear patch embedding against the conv tokenizer (the two
records themselves, 30-31 epochs each: a full-length answer where a proxy would give a short one);
EMA of the weights (read from the base runs, which keep an EMA beside the live weights and evaluate both:
the live weights train exactly as without it); test-time flip averaging (the records' final weights with
and without it); threads, batch size and ``torch.compile`` (:mod:`.speed`); RandAugment and Mixup/CutMix
(``training_recipe``, where each cost points on short runs); stochastic depth (``training_recipe`` had it
within a point on short runs, and a proxy this short cannot show a regulariser's benefit)."""
SEARCH_EMA_DECAY = 0.998
"""The EMA decay the base runs evaluate, at the record's scale: an average over the last ~500 of its 11,700
steps. Shrunk with the run like every length (:func:`proxy_schedule`)."""


def proxy_schedule(epochs: int, warmup_epochs: float, ema_decay: float) -> tuple[float, float]:
    """A proxy run's warmup (epochs) and EMA decay for a run of ``epochs`` epochs, given at the conv
    record's scale (30 epochs): each length takes the same share of the run as in the record, so that a
    2-epoch proxy warms up for 2/30 of an epoch (26 steps) rather than for half its length, and its EMA
    averages over the same share of its steps: ``1 - decay`` grows by the ratio of the step counts."""
    ratio = epochs / _CONV["epochs"]
    return warmup_epochs * ratio, 1.0 - (1.0 - ema_decay) / ratio


def sustained_speed(model_kwargs: dict, batch_size: int, records: dict | None = None) -> float | None:
    """The median training throughput (img/s) that a finished record run of this exact model and batch
    size sustained over its whole run (``data/results/cpu_record.json``), or None if no record trained it.

    It is the better estimate of a long run: the speed script's 40-step bursts put the linear-stem model
    14% ahead of the conv-stem one, but their record runs sustained 248 and 242 img/s (3% apart)."""
    if records is None:
        path = REPO / "data" / "results" / "cpu_record.json"
        records = json.loads(path.read_text())["runs"] if path.is_file() else {}
    for run in records.values():
        cfg = run["config"]
        if (run["status"] == "ok" and cfg["model"] == "cait_cifar_tiny" and cfg["model_kwargs"] == model_kwargs
                and cfg["batch_size"] == batch_size):
            windows = sorted(run["curves"]["throughput_img_s"])
            return windows[len(windows) // 2]
    return None


def epochs_in(budget_s: float, model_kwargs: dict, batch_size: int, speeds: dict | None = None,
              records: dict | None = None) -> int:
    """The number of whole CIFAR-10 epochs (at least 1) nearest to what fits ``budget_s`` of wall time,
    less :data:`EVAL_SHARE` for evaluation, at the training speed of that model: the speed a record run
    of it sustained (:func:`sustained_speed`) where there is one, else the speed script's measurement
    (``cpu_record_speed.json``; ``speeds`` is its ``candidates``). Rounding makes a run up to half an
    epoch longer or shorter than the budget."""
    img_s = sustained_speed(model_kwargs, batch_size, records)
    if img_s is None:
        if speeds is None:
            speeds = json.loads(Path(REPO / "data" / "results" / "cpu_record_speed.json").read_text())["candidates"]
        wanted = {"model": "cait_cifar_tiny", "batch_size": batch_size, "model_kwargs": model_kwargs}
        # the first exact match: the size table, not a speed lever measured on the same model
        img_s = next((c["img_s"] for c in speeds.values() if c["config"] == wanted), None)
    if img_s is None:
        raise ValueError(f"no measured speed for {model_kwargs} at batch {batch_size}: measure it first "
                         f"(python -m cait_edu.experiments.speed)")
    return max(1, round(budget_s * (1 - EVAL_SHARE) * img_s / 50_000))


def _search_runs(quick: bool, seeds: int) -> list[RunSpec]:
    """Every lever at ``seeds`` seeds, and the base recipe at one seed more: one run per lever cannot
    say how much of a difference is the seed, the base's extra run can. The base runs also keep an EMA
    of the weights and evaluate it (the EMA lever)."""
    runs = []
    for seed in range(seeds + 1):
        for label, change in SEARCH_LEVERS.items():
            if seed == seeds and label != "base":
                continue
            kwargs = {**_CONV["model_kwargs"], **change.get("model_kwargs", {})}
            config = {**_CONV, **{k: v for k, v in change.items() if k != "model_kwargs"}, "model_kwargs": kwargs,
                      "seed": seed, "epochs": epochs_in(SEARCH_BUDGET_S, kwargs, _CONV["batch_size"])}
            config["warmup_epochs"], ema_decay = proxy_schedule(config["epochs"], config["warmup_epochs"],
                                                                SEARCH_EMA_DECAY)
            if label == "base":
                config.update(ema=True, eval_ema=True, ema_decay=ema_decay)
            if quick:
                config = {**quick_config(config), "eval_every": 1}
            runs.append(RunSpec(f"{_slug(label)}-s{seed}", config, {"lever": label, "seed": seed}))
    return runs


CPU_RECORD_SEARCH = Experiment(
    "cpu_record_search", f"levers of the CPU record, one at a time, {SEARCH_BUDGET_S} s of the Xeon each",
    _search_runs, extra_metrics=None, default_seeds=1)
