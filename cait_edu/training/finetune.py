"""Fine-tuning: a run that starts from trained weights instead of a random initialisation.

CaiT's released 384 and 448 px models were not trained at that resolution: the 224 px model was
fine-tuned there (for M48 at 448: 60 epochs at a small learning rate, see the preset
``cait_m48_448_finetune``). Two tensors do not carry over as they are:

* **Position embeddings** are learned per patch position. At 448 px a patch-16 model sees a 28x28
  grid instead of 14x14, so the 14x14 grid of embedding vectors is resized to 28x28 by bicubic
  interpolation (:func:`cait_edu.checkpoint.resize_pos_embed`, as the authors' code does; CaiT has
  no class-token slot in ``pos_embed``, a ViT keeps its one slot as it is).
* **The classification head** maps the final class token to the classes. Moving to another dataset
  (another number of classes) needs a new head: ``finetune_head="reset"`` keeps the model's own
  random initialisation for it (truncated normal, std 0.02, zero bias; as DeiT's fine-tuning code
  does when the head's shape differs), ``"keep"`` requires the checkpoint's head to fit, ``"auto"``
  keeps it when the class counts agree and resets it when they differ.

Every other tensor must match the model by name and shape: a checkpoint of another variant (other
width, depth or heads) is a :class:`ConfigError` naming the keys that differ. The run itself starts
afresh: the optimizer state, the learning-rate schedule, the step counter, the EMA (a copy of the
loaded weights) and the best accuracy are new; a run resumed later continues from its own
``last.pt`` and does not read the fine-tuning source again (it may have been moved or deleted).

In :class:`~cait_edu.training.loop.Trainer`: :func:`open_finetune_source` runs before any data is
read (it reads the file and checks it against the architecture on the ``meta`` device, which costs
no memory); :meth:`FinetuneSource.apply` loads it into the freshly built model, before the EMA copy
and the ``DistributedDataParallel`` wrapper, on every rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..checkpoint import load_official, read_state_dict, resize_pos_embed
from ..registry import create_model
from .config import ConfigError, TrainConfig, model_overrides

__all__ = ["FinetuneSource", "open_finetune_source", "HEAD_KEYS"]

HEAD_KEYS = ("head.weight", "head.bias")
"""The tensors that depend on the number of classes."""


def _grid(pos_embed: torch.Tensor, prefix: int) -> str:
    n = pos_embed.shape[1] - prefix
    g = math.isqrt(max(n, 0))
    return f"{g}x{g}" if g * g == n else f"{n} positions"


def _head_shape(state: dict) -> str:
    w = state.get("head.weight")
    return f"{w.shape[0]} classes" if w is not None and w.ndim == 2 else "no head"


@dataclass
class FinetuneSource:
    """The weights a fine-tune starts from: ``state`` is a plain state dict (no ``module.`` prefix)."""

    path: str
    kind: str
    state: dict[str, torch.Tensor]

    def head_classes(self) -> int | None:
        """Rows of the checkpoint's head (its number of classes), None if it has no head."""
        w = self.state.get("head.weight")
        return int(w.shape[0]) if w is not None and w.ndim == 2 else None

    def apply(self, model: nn.Module, head: str) -> dict[str, Any]:
        """Load the weights into ``model`` (the head according to ``head``: "keep", "reset" or
        "auto"), resizing the position embeddings to the model's grid. Returns what was done, for
        ``config.json``. Raises :class:`ConfigError` when anything but the head does not fit."""
        own = model.state_dict()
        state = dict(self.state)
        heads = [k for k in HEAD_KEYS if k in own]
        fits = all(k in state and state[k].shape == own[k].shape for k in heads)
        if head == "keep" and not fits:
            raise ConfigError(f"finetune_head=keep, but the head of {self.path} ({_head_shape(state)}) does not fit "
                              f"the model's ({_head_shape(own)}, from the dataset); use finetune_head=reset or auto "
                              "to start a new head")
        reset = head == "reset" or not fits
        if reset:  # the model's own random initialisation (on the meta device: a placeholder of its shape)
            for k in heads:
                state[k] = torch.zeros(own[k].shape, dtype=own[k].dtype) if own[k].is_meta else own[k]
        prefix = model.pos_embed.shape[1] - model.patch_embed.num_patches if hasattr(model, "pos_embed") else 0
        before = _grid(state["pos_embed"], prefix) if "pos_embed" in state else None
        if before is not None and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
            try:  # bicubic, to the model's patch grid
                state["pos_embed"] = resize_pos_embed(state["pos_embed"], model.patch_embed.grid_size, prefix)
            except ValueError:  # no square grid for this kind of model: reported below with the other keys
                pass
        try:
            load_official(model, state)
        except ValueError as e:  # CheckpointMismatchError: names what differs
            raise ConfigError(f"cannot fine-tune {getattr(model, 'model_name', type(model).__name__)} from "
                              f"{self.path} ({self.kind}): {e}") from None
        after = _grid(own["pos_embed"], prefix) if "pos_embed" in own else None
        return {
            "source": self.path, "format": self.kind,
            "pos_embed": None if before is None else (f"resized {before} -> {after} (bicubic)" if before != after
                                                      else f"unchanged ({after})"),
            "head": (f"reset ({_head_shape(self.state)} in the checkpoint, {_head_shape(own)} in the model)" if reset
                     else f"kept ({_head_shape(own)})"),
        }


def _read(path: Path) -> Any:
    """``torch.load`` with ``weights_only`` (no pickled code runs), memory-mapped when the file allows."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old (non-zip) file cannot be memory-mapped: read it whole
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"finetune: cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e})") from None


def open_finetune_source(cfg: TrainConfig) -> FinetuneSource:
    """Read ``cfg.finetune`` and check it fits ``cfg``'s architecture, before any data is read.

    The check builds the model on the ``meta`` device (shapes only) with the checkpoint's own number
    of classes, so only the head is left for :meth:`FinetuneSource.apply` to decide once the
    dataset's classes are known."""
    path = Path(cfg.finetune)
    if not path.is_file():
        raise ConfigError(f"finetune: no checkpoint file at {path}")
    obj = _read(path)
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("cait_edu.train/"):
        c = obj.get("config") or {}
        kind = f"cait_edu.train checkpoint of {c.get('model')} at {c.get('img_size')} px, step {obj.get('step')}"
    elif isinstance(obj, dict) and "model" in obj:
        kind = "{'model': state_dict}, the authors' release format"
    else:
        kind = "a bare state dict"
    try:
        state = read_state_dict(obj)
    except ValueError as e:
        raise ConfigError(f"finetune: {path}: {e}") from None
    src = FinetuneSource(str(path), kind, state)
    classes = src.head_classes() or 1
    with torch.device("meta"):
        shadow = create_model(cfg.model, **model_overrides(cfg, classes))
    src.apply(shadow, "auto")  # the head is decided later, by finetune_head
    return src
