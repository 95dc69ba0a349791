"""``class_attention`` (chapter "Class attention"): where the class token should join, and what
class-attention layers and talking heads are worth, on CIFAR-10 (paper Sec. 4, Table 3 at ImageNet
scale).

Every variant has 8 layers in all, width 64, 4 heads (MLP ratio 4, LayerScale):

* ``cls@0``: the class token is in the sequence from the first layer (ViT/DeiT), 8 SA layers;
* ``cls@6+2SA``: it joins before the last 2 of 8 ordinary self-attention layers (late insertion);
* ``cls@7+1CA``: 7 SA layers on the patches, then 1 class-attention layer;
* ``cls@6+2CA``: 6 SA layers, then 2 class-attention layers (CaiT).

A class-attention layer costs less than a self-attention layer (one query instead of N+1), so the
variants with CA layers use slightly fewer MACs; the result file records params and MACs per run.
Each variant runs with and without talking heads.
"""
from __future__ import annotations

import itertools

from .common import SHORT_CIFAR, model_size, quick_config
from .runner import Experiment, RunSpec

__all__ = ["CLASS_ATTENTION"]

# (label, SA depth, class_token_layer, CA layers)
PLACEMENTS = [
    ("cls@0", 8, 0, 0),
    ("cls@6+2SA", 8, 6, 0),
    ("cls@7+1CA", 7, 7, 1),
    ("cls@6+2CA", 6, 6, 2),
]


def _runs(quick: bool, seeds: int) -> list[RunSpec]:
    runs = []
    for seed, talking_heads, (label, depth, k, ca) in itertools.product(range(seeds), (True, False), PLACEMENTS):
        kwargs = dict(dim=64, num_heads=4, depth=depth, class_token_layer=k, depth_token_only=ca,
                      talking_heads=talking_heads)
        config = {**SHORT_CIFAR, "model": "cait_cifar_tiny", "seed": seed, "model_kwargs": kwargs}
        runs.append(RunSpec(f"{label}-{'th' if talking_heads else 'noth'}-s{seed}",
                            quick_config(config) if quick else config,
                            {"placement": label, "talking_heads": talking_heads, "seed": seed}))
    return runs


CLASS_ATTENTION = Experiment(
    "class_attention",
    "where the class token joins (from the start / late into SA layers / 1 or 2 CA layers), talking heads on/off",
    _runs, extra_metrics=model_size, default_seeds=2,
    keep_weights=("cls@6+2CA-th-s0",))  # CaiT's own design: its class-attention maps are in the chapter
