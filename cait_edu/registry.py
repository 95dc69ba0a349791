"""Named model configurations: the ten released CaiT models, the DeiT baselines, and small
CIFAR-10 presets for CPU.

``create_model(name, **overrides)`` builds one; ``list_models()`` lists the names.

Released CaiT models (authors' code, facebookresearch/deit ``cait_models.py``; all patch 16,
two class-attention layers, MLP ratio 4). LayerScale's initial value ``init_scale`` is the one the
released code uses, which differs from the paper's rule by depth for XXS-36 (1e-5, where the rule
gives 1e-6). ``drop_path_rate`` is the training value for each model (used by the trainer's presets,
0 is irrelevant at inference).

CIFAR-10 presets (ours, 32x32 input, patch 4 -> 8x8 = 64 tokens, sized to train on a CPU):

* ``deit_cifar_tiny``  -- ViT baseline, width 128, 6 layers, 4 heads.
* ``cait_cifar_tiny``  -- CaiT, width 128, 6 SA + 2 CA layers, 4 heads (LayerScale 0.1 by the rule).
* ``cait_cifar_nano``  -- CaiT, width 64, 4 SA + 2 CA layers, 4 heads: the smallest, for smoke runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .models import CaiT, ViT

__all__ = ["ModelSpec", "MODEL_SPECS", "create_model", "list_models", "get_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """A named configuration: the class, its keyword arguments, and facts for the book."""

    name: str
    cls: type[nn.Module]
    kwargs: dict[str, Any]
    checkpoint: str | None = None  # file name of the released weights, if any
    paper: dict[str, float] = field(default_factory=dict)  # figures quoted from the paper/README


_CAIT_SIZES = {
    # name: (depth, dim, heads, init_scale (released), drop_path (training))
    "xxs24": (24, 192, 4, 1e-5, 0.05),
    "xxs36": (36, 192, 4, 1e-5, 0.1),
    "xs24": (24, 288, 6, 1e-5, 0.05),
    "s24": (24, 384, 8, 1e-5, 0.1),
    "s36": (36, 384, 8, 1e-6, 0.2),
    "m36": (36, 768, 16, 1e-6, 0.3),
    "m48": (48, 768, 16, 1e-6, 0.4),
}

# (size, resolution, top-1 of the released (distilled) weights from the README, or None where the
# README gives none; MACs in G at that resolution from the paper/README; params in M at 224)
_CAIT_RELEASED = [
    ("xxs24", 224, None, 2.52, 11.96),
    ("xxs24", 384, None, 9.60, 11.96),
    ("xxs36", 224, None, 3.76, 17.30),
    ("xxs36", 384, None, 14.31, 17.30),
    ("xs24", 384, 84.1, 19.24, 26.56),
    ("s24", 224, 83.5, 9.33, 46.92),
    ("s24", 384, 85.1, 32.11, 46.92),
    ("s36", 384, 85.4, 47.91, 68.22),
    ("m36", 384, 86.1, 172.94, 270.93),
    ("m48", 448, 86.5, 329.11, 356.01),
]


def _build_specs() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for size, res, top1, macs, params in _CAIT_RELEASED:
        depth, dim, heads, eps, dpr = _CAIT_SIZES[size]
        name = f"cait_{size}_{res}"
        paper = {"macs_g": macs, "params_m_at_224": params}
        if top1 is not None:
            paper["top1"] = top1
        specs[name] = ModelSpec(
            name,
            CaiT,
            dict(img_size=res, patch_size=16, dim=dim, depth=depth, num_heads=heads, init_scale=eps, drop_path_rate=dpr),
            checkpoint=f"{size.upper()}_{res}.pth",
            paper=paper,
        )
    for name, dim, depth, heads in [("tiny", 192, 12, 3), ("small", 384, 12, 6), ("base", 768, 12, 12)]:
        specs[f"deit_{name}_patch16_224"] = ModelSpec(
            f"deit_{name}_patch16_224", ViT, dict(img_size=224, patch_size=16, dim=dim, depth=depth, num_heads=heads)
        )
    cifar = dict(img_size=32, patch_size=4, num_classes=10)
    specs["deit_cifar_tiny"] = ModelSpec("deit_cifar_tiny", ViT, dict(cifar, dim=128, depth=6, num_heads=4))
    specs["cait_cifar_tiny"] = ModelSpec("cait_cifar_tiny", CaiT, dict(cifar, dim=128, depth=6, num_heads=4))
    specs["cait_cifar_nano"] = ModelSpec("cait_cifar_nano", CaiT, dict(cifar, dim=64, depth=4, num_heads=4))
    return specs


MODEL_SPECS: dict[str, ModelSpec] = _build_specs()


def list_models(pattern: str = "") -> list[str]:
    """Names of all models whose name contains ``pattern`` (all models by default)."""
    return [n for n in MODEL_SPECS if pattern in n]


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; raises ``KeyError`` listing the known names."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_SPECS)}") from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build model ``name`` with random weights; ``overrides`` replace any constructor argument
    (e.g. ``create_model("cait_s24_224", drop_path_rate=0.0, num_classes=10)``).

    Unknown argument names raise ``TypeError`` naming the valid ones.
    """
    spec = get_spec(name)
    kwargs = {**spec.kwargs, **overrides}
    try:
        model = spec.cls(**kwargs)
    except TypeError as e:
        import inspect

        valid = [p for p in inspect.signature(spec.cls.__init__).parameters if p != "self"]
        raise TypeError(f"{e}; {spec.cls.__name__} takes: {', '.join(valid)}") from None
    model.model_name = name  # type: ignore[attr-defined]
    return model
