"""``layerscale_depth`` (chapter "Going deeper: LayerScale"): a depth sweep of narrow ViTs on
CIFAR-10 for every residual scheme of CaiT Fig. 3, on a learning-rate axis from safe to aggressive,
with short warmups, ``seeds`` seeds each, the same budget (images seen) for every run.
"""
from __future__ import annotations

import itertools

from .common import residual_scales_summary
from .runner import Experiment, RunSpec

__all__ = ["LAYERSCALE_DEPTH"]


# ---------------------------------------------------------------------------- layerscale_depth
# (label, residual_scale, norm): every scheme in its own paper's form (norm=None: the scheme's
# default, no LayerNorm for ReZero/Fixup/T-Fixup). The LayerNorm-restored Fixup/T-Fixup that the
# CaiT paper had to use at ImageNet scale is ("fixup+LN", "fixup", True) etc.
SCHEMES = [
    ("none", "none", None),
    ("rezero", "rezero", None),
    ("fixup", "fixup", None),
    ("tfixup", "tfixup", None),
    ("scalar", "scalar", None),
    ("layerscale", "layerscale", None),
]
DEPTHS = (6, 12, 24)
LRS = (1e-3, 4e-3, 1.6e-2)  # safe -> aggressive, x4 apart (AdamW, batch 128, 20 warmup steps)
# Budget: every run sees 40k images (10k images x 4 epochs, 312 steps). Cost, from the wall times
# the result file records (two runs side by side on the book's 2-core CPU, one thread each): about
# 100-130 s per run at depth 6, 270-310 s at 12 and 400 s at 24: ~80 process-minutes per (lr, seed)
# for the 6 schemes x 3 depths, ~4 hours for the 108 runs with two processes.
_LS_BASE = dict(
    model="deit_cifar_tiny", dataset="cifar10", recipe="cifar", img_size=32,
    train_subset=10_000, val_subset=2_000, epochs=4, batch_size=128, warmup_epochs=0.25,
    min_lr=1e-5, warmup_lr=1e-6, weight_decay=0.05, label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0,
    mixup_prob=0.0, repeats=1, drop_path_rate=0.0, num_workers=0, eval_every=1, log_every=20,
    save_every_steps=40,
)
_LS_WIDTH = dict(dim=64, num_heads=4, mlp_ratio=2.0)


def _layerscale_runs(quick: bool, seeds: int) -> list[RunSpec]:
    # Order: seed, lr, depth, scheme -- so that a sweep cut short has every scheme side by side.
    if quick:  # seconds: 2 schemes x 2 depths, 256 images, one epoch
        grid = itertools.product(range(seeds), LRS[:1], (2, 4), SCHEMES[:1] + SCHEMES[-1:])
        base = {**_LS_BASE, "train_subset": 256, "val_subset": 64, "epochs": 1, "batch_size": 64,
                "warmup_epochs": 0.25, "save_every_steps": 2, "log_every": 1, "threads": 1}
        width = dict(_LS_WIDTH, dim=32, num_heads=2)
    else:
        grid = itertools.product(range(seeds), LRS, DEPTHS, SCHEMES)
        base, width = _LS_BASE, _LS_WIDTH
    runs = []
    for seed, lr, depth, (label, scheme, norm) in grid:
        kwargs = dict(width, depth=depth, residual_scale=scheme)
        if norm is not None:
            kwargs["norm"] = norm
        runs.append(RunSpec(
            id=f"{label}-d{depth}-lr{lr:g}-s{seed}",
            config={**base, "lr": lr, "seed": seed, "model_kwargs": kwargs},
            labels={"scheme": label, "depth": depth, "lr": lr, "seed": seed},
        ))
    return runs


LAYERSCALE_DEPTH = Experiment(
    "layerscale_depth",
    "depth sweep (6/12/24 blocks, width 64) of every residual scheme on CIFAR-10, lr from safe to aggressive",
    _layerscale_runs, extra_metrics=residual_scales_summary, default_seeds=2)
