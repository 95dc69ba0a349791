"""The training chapter's experiments on CIFAR-10.

``training_recipe``: the pieces of the DeiT/CaiT recipe one at a time on a small CaiT (width 64,
6 SA + 2 CA layers, LayerScale, talking heads), each added to a plain base run, and all of them
together. At ImageNet scale over 400 epochs they help; over a few CPU epochs some of them hurt,
and the table says which.

``cait_depth``: CaiT with LayerScale at 2 to 16 self-attention layers (+2 class-attention layers),
the same images seen, recording accuracy, parameters, MACs per image and wall time.
"""
from __future__ import annotations

from .common import SHORT_CIFAR, model_size, quick_config
from .runner import Experiment, RunSpec

__all__ = ["TRAINING_RECIPE", "CAIT_DEPTH"]

_SMALL_CAIT = dict(dim=64, num_heads=4, depth=6)

# label -> what changes from the base run (TrainConfig fields; "model_kwargs" merges)
RECIPE_PIECES = {
    "base": {},
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "stochastic depth 0.1": {"drop_path_rate": 0.1},
    "stochastic depth 0.1, linear": {"drop_path_rate": 0.1, "model_kwargs": {"drop_path_schedule": "linear"}},
    "RandAugment m9": {"randaugment": 9},
    "Mixup 0.8 / CutMix 1.0": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5},
    "repeated augmentation x3": {"repeats": 3},
    # 0.99: a window of ~100 steps. DeiT's 0.99996 (or even 0.999) would leave most of the average's
    # weight on the random initial weights after a run of a few hundred steps.
    "EMA 0.99": {"ema": True, "eval_ema": True, "ema_decay": 0.99},
    "no warmup": {"warmup_epochs": 0.0},
    "weight decay on every parameter": {"exempt_from_decay": False},
    "all of the DeiT recipe": {"label_smoothing": 0.1, "drop_path_rate": 0.1, "randaugment": 9, "mixup_alpha": 0.8,
                               "cutmix_alpha": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "repeats": 3},
}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


def _recipe_runs(quick: bool, seeds: int) -> list[RunSpec]:
    runs = []
    for seed in range(seeds):
        for label, change in RECIPE_PIECES.items():
            kwargs = {**_SMALL_CAIT, **change.get("model_kwargs", {})}
            config = {**SHORT_CIFAR, "model": "cait_cifar_tiny", "seed": seed,
                      **{k: v for k, v in change.items() if k != "model_kwargs"}, "model_kwargs": kwargs}
            runs.append(RunSpec(f"{_slug(label)}-s{seed}", quick_config(config) if quick else config,
                                {"piece": label, "seed": seed}))
    return runs


DEPTHS = (2, 4, 8, 12, 16)


def _depth_runs(quick: bool, seeds: int) -> list[RunSpec]:
    runs = []
    for seed in range(seeds):
        for depth in (DEPTHS[:2] if quick else DEPTHS):
            config = {**SHORT_CIFAR, "model": "cait_cifar_tiny", "seed": seed,
                      "model_kwargs": dict(_SMALL_CAIT, depth=depth)}
            runs.append(RunSpec(f"d{depth}-s{seed}", quick_config(config) if quick else config,
                                {"depth": depth, "seed": seed}))
    return runs


TRAINING_RECIPE = Experiment(
    "training_recipe", "the DeiT/CaiT recipe's pieces one at a time on a small CaiT, and all together",
    _recipe_runs, extra_metrics=None, default_seeds=2)
CAIT_DEPTH = Experiment(
    "cait_depth", "CaiT with LayerScale at 2-16 SA layers (+2 CA): accuracy against depth and compute",
    _depth_runs, extra_metrics=model_size, default_seeds=2)
