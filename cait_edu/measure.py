"""Counting a model's size and cost: parameters and multiply-accumulates (MACs).

The paper's "FLOPs" are multiply-accumulates (one multiply + one add = one MAC), as counted by
fvcore; :func:`count_macs` counts them with ``torch.utils.flop_counter`` (which reports FLOPs =
2 x MACs) on one image, covering every matrix product: linear layers, the patch-embedding
convolution, the attention products ``q k^T`` and ``attn v``, and talking heads' head mixing.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs", "cait_param_formula"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, img_size: int | None = None, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one ``img_size`` image (the paper's "FLOPs").

    Runs the model once on zeros with gradients disabled through ``requires_grad_(False)``
    (``FlopCounterMode`` fails on CaiT under ``torch.no_grad()``), then restores the flags. The
    input is made on the device and in the dtype of the model's parameters, so a model on a GPU
    (or on ``meta``: the counter needs only shapes) or in half precision is counted as it is.
    """
    size = img_size or model.patch_embed.img_size
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval().requires_grad_(False)
    try:
        first = next(model.parameters())
        x = torch.zeros(1, in_chans, size, size, device=first.device, dtype=first.dtype)
        # FlopCounterMode does not see the fused CPU attention kernel: count the math path instead
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            model(x)
        flops = counter.get_total_flops()
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)
    return flops // 2


def cait_param_formula(dim: int, depth: int, heads: int, num_patches: int, num_classes: int = 1000,
                       patch_size: int = 16, depth_token_only: int = 2, in_chans: int = 3) -> int:
    """CaiT's parameter count in closed form, term by term (a check independent of the code).

    patch embedding ``(3 p^2 + 1) d``; ``cls_token`` d; ``pos_embed`` N d; per SA layer
    ``12 d^2 + 15 d + 2 h^2 + 2 h`` (qkv 3d^2+3d, proj d^2+d, MLP 8d^2+5d, 2 LayerNorms 4d,
    2 LayerScales 2d, talking heads 2(h^2+h)); per CA layer ``12 d^2 + 15 d`` (q,k,v,proj 4d^2+4d,
    MLP 8d^2+5d, norms 4d, LayerScales 2d); final norm 2d; head ``(d + 1) classes``.
    """
    d, h = dim, heads
    return ((in_chans * patch_size**2 + 1) * d + d + num_patches * d
            + depth * (12 * d * d + 15 * d + 2 * h * h + 2 * h)
            + depth_token_only * (12 * d * d + 15 * d)
            + 2 * d + (d + 1) * num_classes)
