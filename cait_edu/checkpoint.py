"""Loading the authors' released CaiT weights, strictly and safely.

The released files (``https://dl.fbaipublicfiles.com/deit/<NAME>.pth``) hold
``{"model": state_dict}`` with every key prefixed ``module.`` (they were saved from a
``DistributedDataParallel`` wrapper). Our parameter names equal the authors', so loading is a
strict ``load_state_dict`` after removing the prefix -- preceded by checks that turn a mismatch
(another variant, another resolution, a corrupt file) into an error that says what differs.
Files are read with ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CheckpointMismatchError",
    "WEIGHTS_BASE_URL",
    "load_official",
    "pretrained",
    "read_state_dict",
    "resize_pos_embed",
    "weights_cache_dir",
]

WEIGHTS_BASE_URL = "https://dl.fbaipublicfiles.com/deit/"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return a plain state dict from a path, a URL, or an already-loaded checkpoint.

    Accepts the authors' format (``{"model": {...}}`` with ``module.`` prefixes) and bare state
    dicts, with or without the prefix. Raises ``ValueError`` for anything else.
    """
    if isinstance(source, Mapping):
        ckpt: Any = source
    else:
        text = os.fspath(source)
        if "://" in text:
            path = _download(text, weights_cache_dir())
        else:
            path = Path(text)
            if not path.is_file():
                raise FileNotFoundError(f"no checkpoint file at {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt, truncated, or not a weights-only PyTorch file
            raise ValueError(
                f"could not read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}); "
                "the file may be truncated or corrupt: delete it and download it again"
            ) from e
    if isinstance(ckpt, Mapping) and "model" in ckpt and isinstance(ckpt["model"], Mapping):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError("checkpoint is not a state dict (a mapping of names to tensors), nor {'model': state_dict}")
    prefix = "module."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in ckpt.items()}


def _describe(state: Mapping[str, torch.Tensor]) -> str:
    """A short human description of a CaiT/ViT state dict: depth, width, heads, patch grid."""
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    ca = len({k.split(".")[1] for k in state if k.startswith("blocks_token_only.")})
    parts = [f"{depth} SA layers" + (f" + {ca} CA layers" if ca else "")]
    if "cls_token" in state:
        parts.append(f"width {state['cls_token'].shape[-1]}")
    if "blocks.0.attn.proj_l.weight" in state:
        parts.append(f"{state['blocks.0.attn.proj_l.weight'].shape[0]} heads")
    if "pos_embed" in state:
        n = state["pos_embed"].shape[1] - (0 if ca else 1)
        g = math.isqrt(n)
        parts.append(f"{n} position embeddings ({g}x{g} grid)")
    if "head.weight" in state:
        parts.append(f"{state['head.weight'].shape[0]} classes")
    return ", ".join(parts)


def _num_prefix_tokens(model: nn.Module) -> int:
    """Tokens in ``pos_embed`` that are not patches (1 for ViT's class token, 0 for CaiT)."""
    return model.pos_embed.shape[1] - model.patch_embed.num_patches


def load_official(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    allow_resize: bool = False,
) -> nn.Module:
    """Load the authors' weights (path, URL, or loaded dict) into ``model``, strictly.

    Every key must match by name and shape; otherwise :class:`CheckpointMismatchError` says which
    keys are missing, unexpected, or of another shape, and what model the checkpoint looks like.
    A checkpoint for another resolution is rejected unless ``allow_resize=True``, which
    interpolates its position embeddings bicubically to the model's patch grid (Sec. 4 fine-tuning).
    A model built under ``torch.device("meta")`` receives the checkpoint's tensors directly
    (``assign=True``), which skips a wasted random initialisation. Returns ``model``.
    """
    state = read_state_dict(source)
    own = model.state_dict()
    if allow_resize and "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        state = dict(state)
        state["pos_embed"] = resize_pos_embed(
            state["pos_embed"], model.patch_embed.grid_size, num_prefix_tokens=_num_prefix_tokens(model)
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        name = getattr(model, "model_name", type(model).__name__)
        lines = [
            f"checkpoint does not fit {name}.",
            f"  checkpoint: {_describe(state)}",
            f"  model:      {_describe(own)}",
        ]
        for title, items in (("missing from checkpoint", missing), ("unexpected in checkpoint", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = items[:6] + ([f"... and {len(items) - 6} more"] if len(items) > 6 else [])
                lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
        if shapes and all(s.startswith("pos_embed") for s in shapes) and not (missing or unexpected):
            lines.append("  only the resolution differs: pass allow_resize=True to interpolate position embeddings")
        raise CheckpointMismatchError("\n".join(lines))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointMismatchError(f"checkpoint has non-finite values in {len(bad)} tensors, e.g. {bad[:3]}")
    # A model built on the meta device (no memory, no random init) takes the tensors as they are.
    on_meta = any(t.is_meta for t in own.values())
    model.load_state_dict(state, strict=True, assign=on_meta)
    return model


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """Bicubically resize learned position embeddings to a ``new_grid x new_grid`` patch grid.

    ``pos_embed``: ``(1, num_prefix_tokens + g*g, dim)``; the prefix (ViT's class-token slot; CaiT
    has none) is kept as is. Returns ``(1, num_prefix_tokens + new_grid**2, dim)``.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = grid.shape[1], grid.shape[2]
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{n} patch position embeddings do not form a square grid")
    if g == new_grid:
        return pos_embed
    grid = grid.reshape(1, g, g, dim).permute(0, 3, 1, 2)  # (1, dim, g, g)
    grid = F.interpolate(grid.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos_embed.dtype)
    return torch.cat((prefix, grid), dim=1)


def weights_cache_dir() -> Path:
    """Where downloaded weights are kept: ``$CAIT_EDU_WEIGHTS`` or ``torch.hub``'s checkpoint dir."""
    env = os.environ.get("CAIT_EDU_WEIGHTS")
    return Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints"


def _download(url: str, cache_dir: Path, progress: bool = False) -> Path:
    """Download ``url`` into ``cache_dir`` once (atomically: a temp file renamed on success)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    dst = cache_dir / url.rstrip("/").rsplit("/", 1)[-1]
    if not dst.is_file():
        try:
            # writes to a temporary file and moves it into place only when complete
            torch.hub.download_url_to_file(url, os.fspath(dst), progress=progress)
        except Exception as e:
            raise OSError(
                f"could not download {url} ({type(e).__name__}: {e}). Without network access, "
                f"download the file elsewhere, place it at {dst}, and call again (or use load_official with the path)"
            ) from e
    return dst


def pretrained(name: str, *, base_url: str = WEIGHTS_BASE_URL, cache_dir: str | os.PathLike | None = None, progress: bool = True, **overrides: Any) -> nn.Module:
    """Build released model ``name`` (e.g. ``"cait_s24_224"``) and load the authors' ImageNet weights.

    The file is downloaded once from ``base_url`` into ``cache_dir`` (default
    :func:`weights_cache_dir`). ``overrides`` go to :func:`~cait_edu.create_model` (only those
    that keep the weights' shapes, e.g. ``drop_path_rate``). Returns the model in eval mode.
    """
    from .registry import create_model, get_spec

    spec = get_spec(name)
    if spec.checkpoint is None:
        raise ValueError(f"{name} has no released weights; released: " + ", ".join(
            n for n in _released_names()))
    cache = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    path = _download(base_url.rstrip("/") + "/" + spec.checkpoint, cache, progress=progress)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = create_model(name, **overrides)
    load_official(model, path)
    return model.eval()


def _released_names() -> list[str]:
    from .registry import MODEL_SPECS

    return [n for n, s in MODEL_SPECS.items() if s.checkpoint]
