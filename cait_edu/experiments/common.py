"""What the book's short CIFAR-10 experiments share: the base recipe of a CPU-sized run, its
seconds-long ``--quick`` version, and measurements recorded at every evaluation."""
from __future__ import annotations

import weakref

import torch.nn as nn

from ..blocks import Block
from ..measure import count_macs, count_params

__all__ = ["SHORT_CIFAR", "quick_config", "residual_scales_summary", "model_size"]

SHORT_CIFAR = dict(
    dataset="cifar10", recipe="cifar", img_size=32, train_subset=15_000, val_subset=2_000, epochs=4,
    batch_size=128, lr=2e-3, warmup_epochs=0.5, min_lr=1e-5, warmup_lr=1e-6, weight_decay=0.05,
    label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, mixup_prob=0.0, repeats=1, drop_path_rate=0.0,
    num_workers=0, eval_every=1, log_every=20, save_every_steps=40,
)
"""A short CPU run: 15k CIFAR-10 training images x 4 epochs (468 steps of 128), tested on 2k test
images after every epoch, AdamW lr 2e-3 with a half-epoch warmup, crop + flip only, no other
regularisation (each experiment adds what it studies)."""


def quick_config(config: dict) -> dict:
    """The same run shrunk to seconds (the tests run it): 256 images, one epoch, width 32."""
    kw = dict(config.get("model_kwargs", {}))
    kw.update(dim=32, num_heads=2)
    return {**config, "train_subset": 256, "val_subset": 64, "epochs": 1, "batch_size": 64,
            "warmup_epochs": 0.25, "save_every_steps": 2, "log_every": 1, "threads": 1, "model_kwargs": kw}


def residual_scales_summary(model: nn.Module) -> dict:
    """Per block, the mean absolute value of each residual branch's learned scale: LayerScale's
    gamma vectors, the scalar of ``scalar``/Fixup (``gamma_1``/``gamma_2``), ReZero's shared ``alpha``.
    ``{"gamma_attn": [...], "gamma_mlp": [...]}`` with one entry per block (None where a block has none)."""
    attn, mlp = [], []
    for blk in (m for m in model.modules() if isinstance(m, Block)):
        shared = getattr(blk, "alpha", None)
        g1 = blk.gamma_1 if getattr(blk, "gamma_1", None) is not None else shared
        g2 = blk.gamma_2 if getattr(blk, "gamma_2", None) is not None else shared
        attn.append(None if g1 is None else g1.detach().abs().mean().item())
        mlp.append(None if g2 is None else g2.detach().abs().mean().item())
    return {"gamma_attn": attn, "gamma_mlp": mlp}


_SIZES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def model_size(model: nn.Module) -> dict:
    """Parameters and multiply-accumulates per image of the model (counted once per model)."""
    if model not in _SIZES:
        _SIZES[model] = {"params": count_params(model), "macs": count_macs(model)}
    return dict(_SIZES[model])
