"""Training engine for CaiT / DeiT: single process, or distributed with ``torchrun``.

Usage::

    python -m cait_edu.train --list-presets
    python -m cait_edu.train --preset cifar10_tiny --out runs/tiny
    python -m cait_edu.train --preset cifar10_cait_tiny --out runs/c --set epochs=50 --set lr=5e-4
    python -m cait_edu.train --out runs/c --resume            # continue a run (config from runs/c)
    torchrun --nproc_per_node=8 -m cait_edu.train --preset cait_s24_224 --data /data/imagenet --out runs/s24

From Python (e.g. a notebook)::

    from cait_edu.train import train, make_config
    metrics = train(make_config("cifar10_tiny", out="runs/tiny"))

What a run does, in order (each step raises a clear error before any work when it cannot go on):

1. **Config** (:class:`TrainConfig`, from a preset of :mod:`cait_edu.presets` plus overrides) is
   checked value by value (:func:`validate_config`, :class:`ConfigError`).
2. **Data** is found and loaded (the loader's ``FileNotFoundError`` if missing), one train and one
   val sample are pushed through the transforms, then the model is built.
3. **Loop**: each rank reads its shard of every global batch through
   :class:`~cait_edu.data.EpochSampler` + :class:`~cait_edu.data.SeededDataset` (augmentation seeded
   per sample, so batches do not depend on the number of workers), mixes it with
   :class:`~cait_edu.data.MixupCutmix` driven by a generator seeded from ``(seed, step, rank)``, and
   takes one AdamW step on the soft-target cross-entropy, with the learning rate a pure function of
   the step (:func:`lr_at_step`). The global torch RNG (stochastic depth) is also re-seeded from
   ``(seed, step, rank)`` before every step. Hence **all randomness is derived, not stored**, and a
   run resumed from any checkpoint, even one written mid-epoch, continues bit for bit as if never
   stopped (the RNG states are also saved, for completeness).
4. **Checkpoints** in ``out/``: ``last.pt`` at the end of every epoch and, with
   ``save_every_steps``, every k steps; ``best.pt`` (best val top-1); both written atomically
   (temporary file, fsync, ``os.replace``), so a crash while saving leaves the previous file intact.
   ``metrics.jsonl`` gets one JSON line per logged step and per evaluation; ``config.json`` holds
   the resolved config.
5. A **non-finite loss or gradient** stops the run with :class:`DivergenceError` naming the step,
   before the optimizer touches the weights, so ``last.pt`` keeps the last good state.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised from the
environment (NCCL on GPU, Gloo on CPU), the model is wrapped in ``DistributedDataParallel``,
``batch_size`` is the GLOBAL batch (each rank takes ``batch_size / world_size``), evaluation is
sharded over ranks and the counts all-reduced, and only rank 0 logs, shows progress and writes files.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import math
import os
import random
import sys
import time
import types
import typing
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import data as D
from .presets import PRESETS, get_preset
from .registry import MODEL_SPECS, create_model, get_spec

__all__ = [
    "TrainConfig",
    "ConfigError",
    "DivergenceError",
    "ModelEma",
    "train",
    "make_config",
    "validate_config",
    "lr_at_step",
    "param_groups",
    "resolve_amp",
    "soft_target_cross_entropy",
    "atomic_torch_save",
    "load_checkpoint",
    "main",
]

CHECKPOINT_FORMAT = "cait_edu.train/1"


class ConfigError(ValueError):
    """A configuration value cannot work; raised before any training work starts."""


class DivergenceError(RuntimeError):
    """The loss or the gradient became non-finite; the run stopped before updating the weights."""


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that defines a training run. ``batch_size`` is the GLOBAL batch."""

    # --- model
    model: str = "cait_cifar_nano"
    """Registry name of the model (:func:`cait_edu.registry.list_models`)."""
    drop_path_rate: Optional[float] = None
    """Stochastic-depth rate; None = the model's training value from the registry (0 if it has none)."""
    model_kwargs: dict = field(default_factory=dict)
    """Other constructor overrides, e.g. ``{"init_scale": 1e-5}`` (``--set model_kwargs='{...}'`` as JSON).
    ``num_classes`` always follows the dataset."""
    # --- data
    dataset: str = "cifar10"
    """"cifar10" (:func:`~cait_edu.data.load_cifar10`, val = the test split), "imagenet"
    (:func:`~cait_edu.data.load_imagenet`) or "imagefolder" (``<data_dir>/train/<class>/*`` and
    ``<data_dir>/val/<class>/*``, any image files PIL reads)."""
    data_dir: Optional[str] = None
    """Where the data is; None = :func:`~cait_edu.data.resolve_data_dir` ($CAIT_EDU_DATA, repo data/)."""
    download: bool = False
    """CIFAR-10 only: download with torchvision if not found (needs internet)."""
    train_subset: Optional[int] = None
    """Train on this many images only (a fixed random subset, the same for every seed); None = all."""
    val_subset: Optional[int] = None
    """Evaluate on this many images only (fixed random subset); None = all."""
    img_size: Optional[int] = None
    """Input resolution; None = the model's. Must be a multiple of the patch size."""
    recipe: str = "cifar"
    """Per-image augmentation, "deit" (ImageNet recipe) or "cifar" (:func:`~cait_edu.data.build_transform`)."""
    randaugment: Optional[int] = None
    """RandAugment magnitude; None = the recipe's default (9 for "deit", off for "cifar")."""
    crop_ratio: float = 1.0
    """Eval crop ratio of the "deit" recipe (CaiT 1.0, DeiT 0.875)."""
    # --- schedule and optimiser
    epochs: int = 10
    """Number of epochs; the cosine schedule spans ``epochs * steps_per_epoch`` steps."""
    batch_size: int = 128
    """GLOBAL batch size (per rank: ``batch_size / world_size``, which must divide evenly)."""
    lr: float = 1e-3
    """Peak (absolute) learning rate, reached at the end of warmup. Presets use 5e-4 x batch / 512."""
    min_lr: float = 1e-5
    """Learning rate at the end of the cosine."""
    warmup_epochs: float = 5.0
    """Linear warmup length in epochs (may be fractional), from ``warmup_lr`` to ``lr``."""
    warmup_lr: float = 1e-6
    """Learning rate at step 0."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay, applied to weight matrices only (see :func:`param_groups`)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (``--set betas=0.9,0.999``)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: Optional[float] = None
    """Clip the global gradient norm to this value; None = no clipping (CaiT/DeiT)."""
    # --- regularisation
    label_smoothing: float = 0.1
    """Label smoothing of the (mixed) soft targets."""
    mixup_alpha: float = 0.8
    """Mixup Beta(alpha, alpha); 0 = no Mixup."""
    cutmix_alpha: float = 1.0
    """CutMix Beta(alpha, alpha); 0 = no CutMix."""
    mixup_switch_prob: float = 0.5
    """Probability of CutMix rather than Mixup for a batch when both are on."""
    mixup_prob: float = 1.0
    """Probability that a batch is mixed at all."""
    repeats: int = 1
    """Repeated augmentation: each image appears this many times per epoch (CaiT/DeiT: 3)."""
    ema: bool = False
    """Keep an exponential moving average of the weights (saved in checkpoints)."""
    ema_decay: float = 0.99996
    """EMA decay per step: ``ema = decay * ema + (1 - decay) * w``."""
    eval_ema: bool = False
    """Also evaluate the EMA weights (``val_top1_ema`` ...); the model itself is always evaluated."""
    # --- hardware
    device: str = "auto"
    """"auto" (CUDA if available, else CPU), "cpu" or "cuda"."""
    amp: str = "auto"
    """Mixed precision: "auto" (off on CPU; bf16 on a GPU that supports it, else fp16 with a
    GradScaler), "bf16", "fp16" (GPU only) or "off"."""
    compile: bool = False
    """``torch.compile`` the model (checkpoints still hold the plain module's weights)."""
    num_workers: int = 2
    """DataLoader worker processes per rank (results do not depend on it)."""
    threads: Optional[int] = None
    """CPU intra-op threads (``torch.set_num_threads``) during the run, restored afterwards; None =
    PyTorch's default (one per core; torchrun sets 1 per rank). Different counts may change the last
    bits of the results."""
    # --- bookkeeping
    seed: int = 0
    """Seeds the weights' initialisation and every random choice of the run."""
    log_every: int = 50
    """Write a train line to metrics.jsonl every this many steps (mean loss since the last line)."""
    eval_every: int = 1
    """Evaluate every this many epochs (and always after the last one)."""
    out: Optional[str] = None
    """Output directory; None = ``runs/<preset or model>``."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps in total (the schedule still spans all epochs)."""
    save_every_steps: Optional[int] = None
    """Also write last.pt every this many steps (mid-epoch); None = at epoch ends only."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0 (also off with $CAIT_EDU_NO_PROGRESS=1 or under pytest)."""
    preset: Optional[str] = None
    """Name of the preset this config came from (informational)."""
    debug_step_sleep: float = 0.0
    """Tests only: sleep this many seconds after every step, so a test can kill a run mid-epoch."""


# Fields that may change when resuming a run: they do not change the trajectory of the weights
# (``epochs`` re-stretches the cosine schedule from the current step, like extending a DeiT run).
RESUME_MAY_CHANGE = frozenset({
    "epochs", "out", "data_dir", "download", "num_workers", "log_every", "eval_every", "eval_ema",
    "max_steps", "save_every_steps", "progress", "debug_step_sleep", "preset", "threads",
})

_CHOICES = {
    "dataset": ("cifar10", "imagenet", "imagefolder"),
    "recipe": ("deit", "cifar"),
    "amp": ("auto", "bf16", "fp16", "off"),
    "device": ("auto", "cpu", "cuda"),
}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse the string of ``--set key=text`` into the field's type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType) and type(None) in args:
        if text.strip().lower() in ("none", "null"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_value(key, text, inner)
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
        if origin is tuple:
            parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
            if len(parts) != len(args):
                raise ValueError
            return tuple(_parse_value(key, p, a) for p, a in zip(parts, args))
        if tp is dict or origin is dict:
            val = json.loads(text)
            if not isinstance(val, dict):
                raise ValueError
            return val
    except (ValueError, json.JSONDecodeError):
        pass
    name = getattr(tp, "__name__", str(tp))
    hint = {"bool": " (true/false)", "tuple": " (comma separated, e.g. 0.9,0.999)",
            "dict": " (a JSON object, e.g. {\"init_scale\": 1e-5})"}.get(name, "")
    raise ConfigError(f"--set {key}={text}: expected {name}{hint}")


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "ema=true"]`` -> ``{"lr": 0.001, "ema": True}``, typed by the TrainConfig fields.
    Unknown keys raise :class:`ConfigError` listing the valid ones."""
    hints = _field_types()
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in hints:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(hints)}")
        out[key] = _parse_value(key, text, hints[key])
    return out


def make_config(preset: str | None = None, /, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a preset name (or the defaults) with ``overrides`` applied.

    Unknown preset names or field names raise :class:`ConfigError` listing the valid ones.
    The values themselves are checked by :func:`validate_config` (called by :func:`train`).
    """
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        values.update(get_preset(preset).fields)
        values["preset"] = preset
    _check_keys(overrides)
    values.update(overrides)
    if "betas" in values and isinstance(values["betas"], list):
        values["betas"] = tuple(values["betas"])
    return TrainConfig(**values)


def _config_from_dict(d: dict) -> TrainConfig:
    """Rebuild a config saved with :func:`dataclasses.asdict` (ignores keys starting with ``_``)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    vals = {k: v for k, v in d.items() if k in names}
    if isinstance(vals.get("betas"), list):
        vals["betas"] = tuple(vals["betas"])
    return TrainConfig(**vals)


def _world_from_env() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def validate_config(cfg: TrainConfig, world_size: int | None = None) -> TrainConfig:
    """Check every value, raise :class:`ConfigError` with one clear message for the first bad one,
    and return a copy with the defaults resolved (``img_size``, ``drop_path_rate``, ``out``).
    Does no work: no data is read and no model is built."""
    world_size = _world_from_env() if world_size is None else world_size

    def bad(msg: str) -> ConfigError:
        return ConfigError(msg)

    if not isinstance(cfg, TrainConfig):
        raise bad(f"expected a TrainConfig, got {type(cfg).__name__}")
    hints = _field_types()
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
    for key, choices in _CHOICES.items():
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
                 "num_workers", "debug_step_sleep"):
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

    # hardware and distribution
    if world_size < 1:
        raise bad(f"world size must be >= 1, got {world_size}")
    if cfg.batch_size % world_size != 0:
        raise bad(f"batch_size {cfg.batch_size} (global) is not divisible by the world size {world_size}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise bad("device=cuda but no CUDA GPU is available")
    device_type = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    if cfg.amp == "fp16" and device_type != "cuda":
        raise bad("amp=fp16 needs a CUDA GPU (use amp=bf16 or amp=off on CPU)")

    out = cfg.out if cfg.out is not None else str(Path("runs") / (cfg.preset or cfg.model))
    return dataclasses.replace(cfg, img_size=img_size, drop_path_rate=float(dpr), out=out,
                               betas=tuple(float(b) for b in cfg.betas))


def resolve_amp(amp: str, device_type: str, bf16_supported: bool) -> str:
    """The precision actually used: "off", "bf16" or "fp16" (fp16 implies a GradScaler).

    "auto" is "off" on CPU (CPU autocast helps little and changes numerics), "bf16" on a GPU that
    supports it (no loss scaling needed), else "fp16".
    """
    if amp not in _CHOICES["amp"]:
        raise ConfigError(f"amp must be one of {', '.join(_CHOICES['amp'])}; got {amp!r}")
    if amp != "auto":
        return amp
    if device_type != "cuda":
        return "off"
    return "bf16" if bf16_supported else "fp16"


# ----------------------------------------------------------------------------
# Pieces of the loop
# ----------------------------------------------------------------------------
def lr_at_step(step: int, *, total_steps: int, warmup_steps: int, lr: float, warmup_lr: float,
               min_lr: float) -> float:
    """Learning rate of update number ``step`` (0-based), stepped per iteration.

    Linear warmup ``warmup_lr -> lr`` over ``warmup_steps``, then half a cosine from ``lr`` down to
    ``min_lr`` at ``total_steps``. (DeiT/timm step the same curve once per epoch.)
    """
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only.

    No decay on every parameter with ``ndim <= 1`` (biases, LayerNorm weights, LayerScale gammas)
    and on the names in ``model.no_weight_decay()`` (``pos_embed``, ``cls_token``). The talking-heads
    mixing matrices (2-D) are decayed, as in the released code.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_c targets_c * log softmax(logits)_c`` (computed in float32).

    logits (B, C), targets (B, C) rows summing to 1 (mixed, smoothed one-hot)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class ModelEma:
    """Exponential moving average of a model's weights: ``ema = decay * ema + (1 - decay) * w``
    for parameters after every optimizer step; buffers are copied. ``.module`` is an eval-mode copy."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64 finaliser on a Python int (mod 2^64)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integers ``parts`` (hash chain)."""
    h = 0
    for p in parts:
        h = _mix64(h ^ (int(p) & _M64))
    return h >> 1


_STEP_STREAM, _MIX_STREAM = 1, 2  # distinct seed streams for the global RNG and for mixing


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def clean_state_dict(state: dict) -> dict:
    """Strip the ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes from keys."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in ("_orig_mod.", "module."):
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        out[k] = v
    return out


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, flush + fsync, then ``os.replace``:
    a reader (or a crash at any moment) sees either the old complete file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`train` (``weights_only``: no code is unpickled)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))


def _progress_enabled(cfg: TrainConfig) -> bool:
    return (cfg.progress and os.environ.get("CAIT_EDU_NO_PROGRESS", "") not in ("1", "true")
            and "PYTEST_CURRENT_TEST" not in os.environ)


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------
def _fixed_subset(ds, n: int | None, what: str):
    """The first ``n`` of a fixed random permutation (generator seed 0), in index order."""
    if n is None:
        return ds
    if n > len(ds):
        raise ConfigError(f"{what}={n} but the dataset has only {len(ds)} images")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].sort().values
    if isinstance(ds, D.ArrayDataset):
        return ds.subset(idx)
    return torch.utils.data.Subset(ds, idx.tolist())


def _load_imagefolder(split: str, data_dir: str | None, transform):
    from torchvision.datasets import ImageFolder

    root = D.resolve_data_dir(data_dir)
    folder = root / split
    layout = f"expected <data_dir>/train/<class>/<image> and <data_dir>/val/<class>/<image> with data_dir={root}"
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder split {split!r} not found: {folder} does not exist; {layout}")
    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no valid images
        raise FileNotFoundError(f"{folder}: {e}; {layout}") from None


def build_datasets(cfg: TrainConfig):
    """(train, val, classes, source) for a validated config; raises the loaders' FileNotFoundError."""
    t_train = D.build_transform(cfg.recipe, True, cfg.img_size, randaugment_magnitude=cfg.randaugment)
    t_val = D.build_transform(cfg.recipe, False, cfg.img_size, crop_ratio=cfg.crop_ratio)
    if cfg.dataset == "cifar10":
        train = D.load_cifar10("train", cfg.data_dir, download=cfg.download, transform=t_train)
        val = D.load_cifar10("test", cfg.data_dir, download=cfg.download, transform=t_val)
        classes, source = train.classes, train.source.rsplit(" [", 1)[0]
    elif cfg.dataset == "imagenet":
        train = D.load_imagenet("train", cfg.data_dir, transform=t_train)
        val = D.load_imagenet("val", cfg.data_dir, transform=t_val)
        classes, source = train.classes, f"ImageNet folders at {Path(train.root).parent}"
    else:
        train = _load_imagefolder("train", cfg.data_dir, t_train)
        val = _load_imagefolder("val", cfg.data_dir, t_val)
        classes, source = train.classes, f"image folders at {Path(train.root).parent}"
    if cfg.dataset != "cifar10" and val.classes != train.classes:
        raise ConfigError(f"train and val have different class folders: {train.classes[:5]}... vs "
                          f"{val.classes[:5]}...; labels would not match")
    train = _fixed_subset(train, cfg.train_subset, "train_subset")
    val = _fixed_subset(val, cfg.val_subset, "val_subset")
    return train, val, list(classes), source


# ----------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we initialised the process group (so we destroy it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def _setup_distributed(device_type: str) -> _Dist:
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, True)


# ----------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------
class _Run:
    """Everything a run holds; :func:`train` drives it."""

    def __init__(self, cfg: TrainConfig, resume: bool):
        self.cfg = cfg
        self.resume = resume
        self.t0 = time.time()

    # -- files
    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def log_metrics(self, record: dict) -> None:
        if self.dd.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()

    def say(self, msg: str) -> None:
        if self.dd.main:
            if self.bar is not None:
                self.bar.write(msg)
            else:
                print(msg, flush=True)

    def state(self, epoch: int, batch_in_epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": clean_state_dict(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step, "kind": "warmup+cosine per step"},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "sampler": {"epoch": epoch, "start_batch": batch_in_epoch},
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "last_eval": self.last_eval,
            "config": json.loads(json.dumps(dataclasses.asdict(self.cfg))),
            "world_size": self.dd.world,
            "rng": _rng_state(self.device),
        }

    def save_last(self, epoch: int, batch_in_epoch: int) -> None:
        """Write last.pt (rank 0), refusing to store non-finite weights."""
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise DivergenceError(
                    f"parameter {name} is non-finite after step {self.step}; not saving it: "
                    f"{self.out / 'last.pt'} keeps the last good state")
        if self.dd.main:
            atomic_torch_save(self.state(epoch, batch_in_epoch), self.out / "last.pt")
        self.dd.barrier()

    # -- setup
    def setup(self) -> None:
        cfg = self.cfg
        self.bar = None
        device_type = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
        self.dd = _setup_distributed(device_type)
        dd = self.dd
        self.device = torch.device(f"cuda:{dd.local_rank}" if device_type == "cuda" else "cpu")
        self.amp = resolve_amp(cfg.amp, device_type,
                               device_type == "cuda" and torch.cuda.is_bf16_supported())
        if device_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # -- the output directory and the resume decision (before loading anything)
        last = self.out / "last.pt"
        self.ckpt = None
        if self.resume:
            if not last.is_file():
                raise ConfigError(f"--resume: no checkpoint {last}; run without --resume to start a new run")
            try:
                self.ckpt = load_checkpoint(last)
            except Exception as e:  # e.g. a file damaged outside our atomic writes
                raise ConfigError(f"cannot read the checkpoint {last}: {type(e).__name__}: {e}") from None
            if not isinstance(self.ckpt, dict) or self.ckpt.get("format") != CHECKPOINT_FORMAT:
                raise ConfigError(f"{last} is not a cait_edu.train checkpoint (format {self.ckpt.get('format')!r})")
            _check_resume_config(self.ckpt["config"], cfg)
        elif last.is_file():
            raise ConfigError(f"{self.out} already holds a run ({last}); pass --resume (resume=True) to continue "
                              "it, or choose another --out")

        # -- data (the loaders raise FileNotFoundError with instructions when it is missing)
        self.train_ds, self.val_ds, self.classes, self.source = build_datasets(cfg)
        per_rank = cfg.batch_size // dd.world
        self.sampler = D.EpochSampler(len(self.train_ds), batch_size=per_rank, seed=cfg.seed, shuffle=True,
                                      num_replicas=dd.world, rank=dd.rank, repeats=cfg.repeats, drop_last=True)
        self.steps_per_epoch = len(self.sampler)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.train_ds)} training images give no full batch of {cfg.batch_size} "
                              f"({per_rank} per rank x {dd.world}); lower batch_size or use more data")
        x, _ = D.SeededDataset(self.train_ds)[(0, 0)]  # (3, S, S): check the transforms once
        xv, _ = self.val_ds[0]
        for what, t in (("train", x), ("val", xv)):
            if tuple(t.shape) != (3, cfg.img_size, cfg.img_size):
                raise ConfigError(f"{what} images come out of the '{cfg.recipe}' transform as {tuple(t.shape)}, "
                                  f"expected (3, {cfg.img_size}, {cfg.img_size}); recipe 'cifar' does not resize: "
                                  "use recipe=deit or images of size img_size")
        self.seeded_train = D.SeededDataset(self.train_ds)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.num_classes = len(self.classes)

        # -- model, optimizer, EMA, scaler
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        overrides = dict(cfg.model_kwargs, drop_path_rate=cfg.drop_path_rate, num_classes=self.num_classes)
        if cfg.img_size != get_spec(cfg.model).kwargs.get("img_size"):
            overrides["img_size"] = cfg.img_size
        self.model = create_model(cfg.model, **overrides).to(self.device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           betas=cfg.betas, eps=cfg.eps)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema else None
        self.mixer = D.MixupCutmix(self.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mixup_switch_prob,
                                   cfg.mixup_prob, cfg.label_smoothing)

        self.step, self.start_epoch, self.start_batch = 0, 0, 0
        self.best_top1, self.best_epoch, self.last_eval = -1.0, -1, None
        if self.ckpt is not None:
            ck = self.ckpt
            self.model.load_state_dict(clean_state_dict(ck["model"]))
            self.optimizer.load_state_dict(ck["optimizer"])
            if self.scaler is not None and ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            if self.ema is not None:
                if ck.get("ema") is None:
                    raise ConfigError("the checkpoint has no EMA weights but ema=true")
                self.ema.load_state_dict(ck["ema"])
            self.step = int(ck["step"])
            self.start_epoch, self.start_batch = int(ck["epoch"]), int(ck["batch_in_epoch"])
            if self.start_batch >= self.steps_per_epoch:  # cannot happen with our own saves; be safe
                self.start_epoch, self.start_batch = self.start_epoch + 1, 0
            self.best_top1, self.best_epoch = float(ck["best_top1"]), int(ck["best_epoch"])
            self.last_eval = ck.get("last_eval")
            _set_rng_state(ck["rng"], self.device)

        self.train_model: nn.Module = self.model
        if dd.world > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if device_type == "cuda" else None)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

        # -- files (rank 0)
        if dd.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.pt.tmp.*"):  # left by a crash during a save
                stale.unlink(missing_ok=True)
            metrics = self.out / "metrics.jsonl"
            if self.ckpt is None:
                metrics.unlink(missing_ok=True)
            elif metrics.exists():  # drop what the interrupted run logged after its checkpoint
                keep = []
                for line in metrics.read_text().splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by the kill
                    if rec.get("step", 0) <= self.step:
                        keep.append(line + "\n")
                tmp = metrics.with_name(".metrics.jsonl.tmp")
                tmp.write_text("".join(keep))
                os.replace(tmp, metrics)
            runtime = {"world_size": dd.world, "device": str(self.device), "amp": self.amp,
                       "num_classes": self.num_classes, "classes": self.classes[:100],
                       "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                       "warmup_steps": self.warmup_steps, "num_train": len(self.train_ds),
                       "num_val": len(self.val_ds), "data_source": self.source,
                       "torch": torch.__version__}
            text = json.dumps({**dataclasses.asdict(cfg), "_runtime": runtime}, indent=2)
            (self.out / ".config.json.tmp").write_text(text)
            os.replace(self.out / ".config.json.tmp", self.out / "config.json")
        dd.barrier()

    # -- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        """Top-1/top-5/loss over the whole val set: each rank takes indices rank::world, counts are summed."""
        cfg, dd = self.cfg, self.dd
        was_training = model.training
        model.eval()
        shard = torch.utils.data.Subset(self.val_ds, list(range(dd.rank, len(self.val_ds), dd.world)))
        loader = torch.utils.data.DataLoader(shard, batch_size=max(1, cfg.batch_size // dd.world), shuffle=False,
                                             num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
        k = min(5, self.num_classes)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, top1, top5, n
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with self.autocast():
                logits = model(images)
            sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
            topk = logits.topk(k, dim=1).indices  # (B, k)
            hit = topk == labels[:, None]
            sums[1] += hit[:, 0].sum()
            sums[2] += hit.any(dim=1).sum()
            sums[3] += labels.numel()
        dd.all_reduce_sum(sums)
        model.train(was_training)
        n = max(1.0, sums[3].item())
        return {"val_loss": sums[0].item() / n, "val_top1": 100.0 * sums[1].item() / n,
                "val_top5": 100.0 * sums[2].item() / n, "val_samples": int(sums[3].item())}

    def autocast(self):
        if self.amp == "off":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def run_eval(self, epoch: int) -> dict:
        res = self.evaluate(self.model)
        if self.ema is not None and self.cfg.eval_ema:
            res.update({f"{k}_ema": v for k, v in self.evaluate(self.ema.module).items() if k != "val_samples"})
        rec = {"kind": "eval", "epoch": epoch, "step": self.step, **res}
        self.log_metrics(rec)
        self.last_eval = rec
        self.say(f"eval epoch {epoch} step {self.step}: val loss {res['val_loss']:.4f} "
                 f"top-1 {res['val_top1']:.2f}% top-5 {res['val_top5']:.2f}% ({res['val_samples']} images)")
        if res["val_top1"] > self.best_top1:
            self.best_top1, self.best_epoch = res["val_top1"], epoch
            if self.dd.main:
                atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": clean_state_dict(self.model.state_dict()),
                                   "ema": self.ema.state_dict() if self.ema is not None else None,
                                   "epoch": epoch, "step": self.step, "metrics": rec,
                                   "config": json.loads(json.dumps(dataclasses.asdict(self.cfg)))},
                                  self.out / "best.pt")
            self.dd.barrier()
        return rec

    # -- one optimizer step
    def train_step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch: int) -> tuple[float, float]:
        cfg, dd = self.cfg, self.dd
        step = self.step  # 0-based index of this update
        torch.manual_seed(_derived_seed(cfg.seed, _STEP_STREAM, step, dd.rank))  # stochastic depth etc.
        gen = torch.Generator().manual_seed(_derived_seed(cfg.seed, _MIX_STREAM, step, dd.rank))
        images, targets = self.mixer(images, labels, gen)  # (B, C, H, W), (B, classes)
        lr = lr_at_step(step, total_steps=self.total_steps, warmup_steps=self.warmup_steps, lr=cfg.lr,
                        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with self.autocast():
            logits = self.train_model(images)
            loss = soft_target_cross_entropy(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        loss_sum = dd.all_reduce_sum(loss.detach().float().clone())
        loss_value = loss_sum.item() / dd.world
        where = f"step {step + 1} (epoch {epoch}, batch {batch + 1} of {self.steps_per_epoch})"
        if not math.isfinite(loss_value):
            raise DivergenceError(
                f"non-finite loss ({loss_value}) at {where}; weights not updated, "
                f"{self.out / 'last.pt'} keeps the last good checkpoint. Try a lower lr, grad_clip, or amp=off.")
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.grad_clip is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in params])
        gnorm_value = float(gnorm)
        if self.scaler is not None:  # fp16: inf gradients are expected now and then; the scaler skips them
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if not math.isfinite(gnorm_value):
                raise DivergenceError(
                    f"non-finite gradient norm ({gnorm_value}) at {where}; weights not updated, "
                    f"{self.out / 'last.pt'} keeps the last good checkpoint.")
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return loss_value, gnorm_value

    def epoch_loader(self, epoch: int) -> torch.utils.data.DataLoader:
        """This rank's batches of ``epoch``, skipping those already done when resuming mid-epoch.

        The batch list is taken from the sampler here, once: ``set_start_batch`` applies to the next
        ``iter()`` only, and a ``DataLoader`` with workers calls ``iter()`` on its batch sampler twice
        when it starts (``__init__`` and ``_reset``), which would lose the offset.
        """
        self.sampler.set_epoch(epoch)
        self.sampler.set_start_batch(self.start_batch if epoch == self.start_epoch else 0)
        batches = list(iter(self.sampler))  # [[(index, sample_seed), ...], ...]
        return torch.utils.data.DataLoader(self.seeded_train, batch_sampler=batches, num_workers=self.cfg.num_workers,
                                           pin_memory=self.device.type == "cuda")

    # -- the loop
    def fit(self) -> dict:
        cfg, dd = self.cfg, self.dd
        self.say(f"data: {self.source}; {len(self.train_ds)} train / {len(self.val_ds)} val images, "
                 f"{self.num_classes} classes")
        self.say(f"model: {cfg.model} ({sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M params) on "
                 f"{self.device} x {dd.world}, amp={self.amp}; {self.steps_per_epoch} steps/epoch, "
                 f"{self.total_steps} steps in total" + (f" (resuming at step {self.step})" if self.ckpt else ""))
        if self.ckpt is not None and self.ckpt.get("world_size", dd.world) != dd.world:
            self.say(f"note: the checkpoint was written with {self.ckpt['world_size']} processes, now {dd.world}; "
                     "the global batches are the same but floating-point sums differ slightly")
        stop_at = self.total_steps if cfg.max_steps is None else min(self.total_steps, cfg.max_steps)
        if _progress_enabled(cfg) and dd.main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=stop_at, initial=min(self.step, stop_at), unit="step", dynamic_ncols=True)
        self.train_model.train()
        acc_loss, acc_n, t_log, n_img = 0.0, 0, time.time(), 0
        last_loss = None
        epoch = self.start_epoch
        stopped_early = False
        try:
            while epoch < cfg.epochs and self.step < stop_at:
                batch = self.start_batch if epoch == self.start_epoch else 0
                for samples in self.epoch_loader(epoch):
                    images, labels = samples
                    images = images.to(self.device, non_blocking=True)
                    labels = labels.to(self.device, non_blocking=True)
                    loss, gnorm = self.train_step(images, labels, epoch, batch)
                    batch += 1
                    acc_loss, acc_n, n_img = acc_loss + loss, acc_n + 1, n_img + images.shape[0] * dd.world
                    last_loss = loss
                    if self.bar is not None:
                        self.bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", refresh=False)
                        self.bar.update(1)
                    if self.step % cfg.log_every == 0:
                        now = time.time()
                        lr = self.optimizer.param_groups[0]["lr"]
                        self.log_metrics({"kind": "train", "step": self.step, "epoch": epoch, "lr": lr,
                                          "loss": acc_loss / acc_n, "grad_norm": gnorm,
                                          "throughput_img_s": n_img / max(now - t_log, 1e-9)})
                        acc_loss, acc_n, t_log, n_img = 0.0, 0, now, 0
                    end_of_epoch = batch == self.steps_per_epoch
                    if self.step >= stop_at and not end_of_epoch:  # max_steps reached mid-epoch
                        stopped_early = True
                        break
                    if (cfg.save_every_steps and self.step % cfg.save_every_steps == 0 and not end_of_epoch):
                        self.save_last(epoch, batch)
                    if cfg.debug_step_sleep:
                        time.sleep(cfg.debug_step_sleep)
                if stopped_early:
                    self.run_eval(epoch)
                    self.save_last(epoch, batch)
                    break
                epoch += 1
                if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or self.step >= stop_at:
                    self.run_eval(epoch)
                self.save_last(epoch, 0)
                t_log, n_img = time.time(), 0  # throughput counts training time only
            if self.last_eval is None or self.last_eval.get("step") != self.step:
                self.run_eval(epoch)  # final numbers for the weights we end with
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        result = {
            "step": self.step,
            "epoch": epoch,
            "train_loss": last_loss,
            **{k: v for k, v in (self.last_eval or {}).items() if k.startswith("val_")},
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "wall_time_s": time.time() - self.t0,
            "out": str(self.out),
            "data_source": self.source,
            "num_train": len(self.train_ds),
            "num_val": len(self.val_ds),
            "world_size": dd.world,
        }
        self.say(f"done in {result['wall_time_s']:.1f} s: step {self.step}, val top-1 "
                 f"{result.get('val_top1', float('nan')):.2f}% (best {self.best_top1:.2f}% at epoch {self.best_epoch}); "
                 f"files in {self.out}")
        return result


def _check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    diffs = [f"{k}: {saved.get(k)!r} -> {new[k]!r}" for k in new
             if k not in RESUME_MAY_CHANGE and saved.get(k) != new[k]]
    if diffs:
        raise ConfigError("cannot resume: the config differs from the checkpoint's in "
                          + "; ".join(diffs) + f". Only these may change on resume: {', '.join(sorted(RESUME_MAY_CHANGE))}")


def train(config: TrainConfig | str, *, resume: bool = False, **overrides: Any) -> dict:
    """Train (or, with ``resume=True``, continue) a run; return its final metrics.

    ``config`` is a :class:`TrainConfig` or a preset name; ``overrides`` replace fields
    (``train("cifar10_tiny", out="runs/t", epochs=3)``). Raises :class:`ConfigError` for a bad
    config, ``FileNotFoundError`` for missing data (both before any training work) and
    :class:`DivergenceError` on a non-finite loss or gradient.

    Returns a dict with ``step``, ``epoch``, ``train_loss`` (last step), ``val_loss``,
    ``val_top1``, ``val_top5`` (percent, on the final weights), ``best_top1``, ``best_epoch``,
    ``wall_time_s``, ``out``, ``data_source``, ``num_train``, ``num_val``, ``world_size``.
    """
    if isinstance(config, str):
        config = make_config(config, **overrides)
    elif overrides:
        config = _replace_checked(config, overrides)
    cfg = validate_config(config)
    run = _Run(cfg, resume)
    run.dd = _Dist()
    run.bar = None
    threads = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        run.setup()
        return run.fit()
    finally:
        torch.set_num_threads(threads)
        if run.dd.owned and dist.is_initialized():
            dist.destroy_process_group()


def _check_keys(overrides: dict) -> None:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(names)}")


def _replace_checked(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    _check_keys(overrides)
    return dataclasses.replace(cfg, **overrides)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def presets_table() -> str:
    """The ``--list-presets`` table."""
    rows = [("name", "model", "dataset", "epochs", "batch", "lr")]
    for name, p in PRESETS.items():
        f = p.fields
        rows.append((name, f["model"], f["dataset"] + (f" ({f['train_subset']} imgs)" if f.get("train_subset") else ""),
                     str(f["epochs"]), str(f["batch_size"]), f"{f['lr']:g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return ",".join(_type_name(a) for a in args)
    return "JSON object" if tp is dict else getattr(tp, "__name__", str(tp))


def field_docs() -> dict[str, str]:
    """The docstring under each :class:`TrainConfig` field (read from the source)."""
    import ast
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(TrainConfig)))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _build_parser() -> argparse.ArgumentParser:
    hints, docs = typing.get_type_hints(TrainConfig), field_docs()
    fields_help = "\n".join(f"  {f.name} ({_type_name(hints[f.name])}, default {f.default if f.default is not dataclasses.MISSING else f.default_factory()!r}): {docs.get(f.name, '')}"
                            for f in dataclasses.fields(TrainConfig))
    p = argparse.ArgumentParser(
        prog="python -m cait_edu.train",
        description="Train CaiT/DeiT models from a named preset (see --list-presets). "
                    "Under torchrun, --set batch_size is the GLOBAL batch.",
        epilog="config keys for --set:\n" + fields_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", help="preset name (optional with --resume: the run's saved config is used)")
    p.add_argument("--data", help="data directory (config data_dir)")
    p.add_argument("--out", help="output directory (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set epochs=5 --set betas=0.9,0.95")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for config/data errors, 1 for divergence)."""
    args = _build_parser().parse_args(argv)
    if args.list_presets:
        print(presets_table())
        return 0
    rank = int(os.environ.get("RANK", "0"))
    try:
        sets = parse_set(args.sets)
        if args.data is not None:
            sets["data_dir"] = args.data
        if args.out is not None:
            sets["out"] = args.out
        if args.preset is not None:
            cfg = make_config(args.preset, **sets)
        elif args.resume:
            if args.out is None:
                raise ConfigError("--resume without --preset needs --out (the run directory)")
            saved = Path(args.out) / "config.json"
            if not saved.is_file():
                raise ConfigError(f"--resume: {saved} not found; give --preset, or the --out of an existing run")
            cfg = _replace_checked(_config_from_dict(json.loads(saved.read_text())), sets)
        else:
            raise ConfigError(f"--preset is required (one of: {', '.join(PRESETS)}); see --list-presets")
        train(cfg, resume=args.resume)
        return 0
    except (ConfigError, FileNotFoundError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
