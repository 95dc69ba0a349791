"""The optimisation pieces of the recipe: the learning-rate curve, AdamW's parameter groups, the loss.

CaiT trains with the DeiT recipe (Touvron et al. 2021, "Going deeper with Image Transformers",
Sec. 4; Touvron et al. 2021, "Training data-efficient image transformers", Sec. 6): AdamW with
weight decay 0.05 on weight matrices only, a linear warmup and a cosine decay, and a soft-target
cross-entropy for Mixup/CutMix targets with label smoothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["lr_at_step", "param_groups", "soft_target_cross_entropy"]


def lr_at_step(step: int, *, total_steps: int, warmup_steps: int, lr: float, warmup_lr: float,
               min_lr: float) -> float:
    """Learning rate of update number ``step`` (0-based), stepped per iteration.

    Linear warmup ``warmup_lr -> lr`` over ``warmup_steps``, then half a cosine from ``lr`` down to
    ``min_lr`` at ``total_steps``. (DeiT/timm step the same curve once per epoch.) A pure function
    of the step: resuming needs no scheduler state.
    """
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float, exempt: bool = True) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only.

    No decay on every parameter with ``ndim <= 1`` (biases, LayerNorm weights, LayerScale gammas)
    and on the names in ``model.no_weight_decay()`` (``pos_embed``, ``cls_token``). The talking-heads
    mixing matrices (2-D) are decayed, as in the released code. Decay pulls a parameter towards
    zero: right for weight matrices, wrong for a LayerNorm gain (whose neutral value is 1) or a
    LayerScale gamma (which would be pulled back to "switch the block off"). ``exempt=False``
    decays everything (the recipe's ablation).
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if exempt and (p.ndim <= 1 or name in skip) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_c targets_c * log softmax(logits)_c`` (computed in float32).

    logits (B, C), targets (B, C) rows summing to 1 (mixed, smoothed one-hot)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
