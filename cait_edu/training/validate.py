"""Checking a :class:`~cait_edu.training.config.TrainConfig` before any work: one clear error per bad value.

:func:`validate_config` runs before data is read or a model is built, so a typo costs a second, not
an hour of a GPU queue. :func:`check_resume` decides whether a checkpoint may be continued with a
config, and on how many processes.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import types
import typing
from pathlib import Path
from typing import Union

import torch

from ..presets import PRESETS
from ..registry import MODEL_SPECS, get_spec
from .config import CHOICES, RESUME_MAY_CHANGE, ConfigError, TrainConfig, config_from_dict, field_types
from .distill import check_teacher_config
from .hardware import device_type, world_from_env

__all__ = ["validate_config", "check_resume"]


def validate_config(cfg: TrainConfig, world_size: int | None = None) -> TrainConfig:
    """Check every value, raise :class:`ConfigError` with one clear message for the first bad one,
    and return a copy with the defaults resolved (``img_size``, ``drop_path_rate``, ``out``).
    Does no work: no data is read and no model is built."""
    world_size = world_from_env() if world_size is None else world_size

    def bad(msg: str) -> ConfigError:
        return ConfigError(msg)

    if not isinstance(cfg, TrainConfig):
        raise bad(f"expected a TrainConfig, got {type(cfg).__name__}")
    hints = field_types()
    for f in dataclasses.fields(cfg):  # basic types (catch e.g. batch_size="64" from Python)
        v, tp = getattr(cfg, f.name), hints[f.name]
        allowed = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        ok = False
        for a in allowed:
            a0 = typing.get_origin(a) or a
            if a is type(None):
                ok |= v is None
            elif a0 is float:
                ok |= isinstance(v, (int, float)) and not isinstance(v, bool)
            elif a0 is int:
                ok |= isinstance(v, int) and not isinstance(v, bool)
            else:
                ok |= isinstance(v, a0)
        if not ok:
            raise bad(f"{f.name} must be {tp}, got {v!r}")
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise bad(f"{key} must be one of {', '.join(choices)}; got {getattr(cfg, key)!r}")
    if cfg.model not in MODEL_SPECS:
        raise bad(f"unknown model {cfg.model!r}; known models: {', '.join(MODEL_SPECS)}")
    spec = get_spec(cfg.model)

    def positive(name: str, strict: bool = True) -> None:
        v = getattr(cfg, name)
        if v is not None and (not math.isfinite(v) or (v <= 0 if strict else v < 0)):
            raise bad(f"{name} must be {'> 0' if strict else '>= 0'} (and finite), got {v}")

    for name in ("epochs", "batch_size", "lr", "eps", "log_every", "eval_every", "repeats",
                 "train_subset", "val_subset", "max_steps", "save_every_steps", "grad_clip", "threads"):
        positive(name)
    for name in ("min_lr", "warmup_lr", "warmup_epochs", "weight_decay", "mixup_alpha", "cutmix_alpha",
                 "num_workers"):
        positive(name, strict=False)
    if cfg.min_lr > cfg.lr:
        raise bad(f"min_lr ({cfg.min_lr}) must not exceed lr ({cfg.lr})")
    if cfg.warmup_epochs > cfg.epochs:
        raise bad(f"warmup_epochs ({cfg.warmup_epochs}) must not exceed epochs ({cfg.epochs})")
    for name in ("mixup_switch_prob", "mixup_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise bad(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise bad(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not 0.0 < cfg.ema_decay < 1.0:
        raise bad(f"ema_decay must be in (0, 1), got {cfg.ema_decay}")
    if cfg.eval_ema and not cfg.ema:
        raise bad("eval_ema=true needs ema=true")
    if not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise bad(f"betas must each be in [0, 1), got {cfg.betas}")
    if cfg.randaugment is not None and not 0 <= cfg.randaugment <= 10:
        raise bad(f"randaugment must be a magnitude in [0, 10] or None, got {cfg.randaugment}")
    if not 0.0 < cfg.crop_ratio <= 1.0:
        raise bad(f"crop_ratio must be in (0, 1], got {cfg.crop_ratio}")

    # model overrides
    valid = [p for p in inspect.signature(spec.cls.__init__).parameters if p != "self"]
    unknown = [k for k in cfg.model_kwargs if k not in valid]
    if unknown:
        raise bad(f"model_kwargs {unknown} not accepted by {spec.cls.__name__}; valid: {', '.join(valid)}")
    for k in ("num_classes", "img_size", "drop_path_rate"):
        if k in cfg.model_kwargs:
            raise bad(f"set {k} with the config field, not model_kwargs" if k != "num_classes"
                      else "num_classes follows the dataset; do not set it in model_kwargs")
    dpr = cfg.drop_path_rate if cfg.drop_path_rate is not None else spec.kwargs.get("drop_path_rate", 0.0)
    if not 0.0 <= dpr < 1.0:
        raise bad(f"drop_path_rate must be in [0, 1), got {dpr}")
    patch = cfg.model_kwargs.get("patch_size", spec.kwargs.get("patch_size", 16))
    img_size = cfg.img_size if cfg.img_size is not None else spec.kwargs.get("img_size", 224)
    if img_size < 1 or img_size % patch != 0:
        raise bad(f"img_size {img_size} is not divisible by the patch size {patch} of {cfg.model}")
    if cfg.dataset == "cifar10" and cfg.recipe == "cifar" and img_size != 32:
        raise bad(f"recipe 'cifar' uses CIFAR-10 images at their native 32x32, but img_size is {img_size}; "
                  "use img_size=32, or recipe=deit (which resizes)")

    # starting point, teacher, and what a preset cannot do without
    for key, why in (PRESETS[cfg.preset].requires.items() if cfg.preset in PRESETS else ()):
        if getattr(cfg, key) is None:
            raise bad(f"preset {cfg.preset} needs {key}: {why}")
    if cfg.finetune is None and cfg.finetune_head != "auto":
        raise bad(f"finetune_head={cfg.finetune_head} needs finetune (the checkpoint to start from)")
    check_teacher_config(cfg)

    # hardware and distribution
    if world_size < 1:
        raise bad(f"world size must be >= 1, got {world_size}")
    if cfg.batch_size % world_size != 0:
        raise bad(f"batch_size {cfg.batch_size} (global) is not divisible by the world size {world_size}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise bad("device=cuda but no CUDA GPU is available")
    if cfg.amp == "fp16" and device_type(cfg.device) != "cuda":
        raise bad("amp=fp16 needs a CUDA GPU (use amp=bf16 or amp=off on CPU)")

    out = cfg.out if cfg.out is not None else str(Path("runs") / (cfg.preset or cfg.model))
    return dataclasses.replace(cfg, img_size=img_size, drop_path_rate=float(dpr), out=out,
                               betas=tuple(float(b) for b in cfg.betas))


def check_resume(saved: dict, cfg: TrainConfig, *, world_size: int, allow_world_size_change: bool = False) -> None:
    """Refuse to continue a checkpoint (its ``config`` and ``world_size``) under ``cfg`` when the run
    would not be the same run.

    Only the fields in :data:`~cait_edu.training.config.RESUME_MAY_CHANGE` may differ. A different
    number of processes is refused unless ``allow_world_size_change``: the global batch and its
    images stay the same, but each rank draws its own Mixup/CutMix lambda and partners and its own
    drop-path masks from ``(seed, step, rank)``, so after the change the run no longer follows the
    trajectory it would have followed, and the per-rank batch (memory) changes.
    """
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    # a field added to TrainConfig after the checkpoint was written takes its default
    old = json.loads(json.dumps(dataclasses.asdict(config_from_dict(saved["config"]))))
    diffs = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if k not in RESUME_MAY_CHANGE and old.get(k) != new[k]]
    if diffs:
        raise ConfigError("cannot resume: the config differs from the checkpoint's in " + "; ".join(diffs)
                          + f". Only these may change on resume: {', '.join(sorted(RESUME_MAY_CHANGE))}")
    before = int(saved.get("world_size", world_size))
    if before != world_size and not allow_world_size_change:
        raise ConfigError(
            f"cannot resume: the checkpoint was written by {before} process(es), this run has {world_size}. "
            "The global batch stays the same, but Mixup/CutMix lambda and partners and the drop-path masks are "
            "drawn per rank, so the run would not continue the trajectory it was on (and each process's batch "
            f"becomes {cfg.batch_size // max(1, world_size)} images). Resume with {before} process(es), or pass "
            "--allow-world-size-change (allow_world_size_change=True) to accept that.")
