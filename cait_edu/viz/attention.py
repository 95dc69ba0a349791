"""Attention maps from every attention layer of a model: :func:`record_attention`."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn as nn

__all__ = ["AttentionRecord", "attention_modules", "record_attention"]

# Attention maps
# --------------------------------------------------------------------------------------------


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every attention layer of ``model`` by qualified name, in forward order.

    An attention layer is any module with a ``keep_attn`` attribute (all subclasses of
    ``cait_edu.layers._AttentionBase``: plain, talking-heads and class attention).
    """
    return {name: m for name, m in model.named_modules() if hasattr(m, "keep_attn")}


class AttentionRecord(Mapping):
    """Read-only mapping ``{layer name: attention weights}`` filled by a forward pass.

    Inside the ``with record_attention(model)`` block it shows the maps of the latest forward
    pass (layers that have not run yet are absent); when the block ends it keeps a snapshot, so
    the maps stay available after the model's own copies have been cleared.

    Shapes: self-attention ``(B, h, N, N)``; class attention ``(B, h, 1, 1 + N)`` (one query,
    the class token, over the class token and the ``N`` patches).
    """

    def __init__(self, modules: Mapping[str, nn.Module]):
        self._modules = dict(modules)
        self._snapshot: dict[str, torch.Tensor] | None = None

    def _current(self) -> dict[str, torch.Tensor]:
        if self._snapshot is not None:
            return self._snapshot
        return {n: m.attn_map for n, m in self._modules.items() if m.attn_map is not None}

    def __getitem__(self, name: str) -> torch.Tensor:
        maps = self._current()
        if name in maps:
            return maps[name]
        if name in self._modules:
            raise KeyError(f"{name!r} recorded no attention map: run a forward pass inside the `with` block")
        raise KeyError(f"{name!r} is not an attention layer; attention layers: {', '.join(self._modules)}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def _freeze(self) -> None:
        self._snapshot = self._current()

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {tuple(t.shape)}" for n, t in self.items())
        return f"AttentionRecord({shapes})"


@contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionRecord]:
    """Record the attention weights of every attention layer of ``model``.

    Example::

        with record_attention(model) as maps:
            logits = model(images)
        maps["blocks.0.attn"]              # (B, h, N, N): first self-attention layer
        maps["blocks_token_only.1.attn"]   # (B, h, 1, 1 + N): last class-attention layer

    While recording, attention layers compute their weights explicitly instead of through the
    fused ``scaled_dot_product_attention`` kernel; the outputs are the same up to floating-point
    rounding. Talking-heads maps are the weights *after* mixing across heads (what multiplies the
    values), so their rows need not sum to one. On exit the layers' ``keep_attn`` flags are
    restored and their stored maps dropped; the returned mapping keeps its snapshot.
    """
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention layers (modules with a `keep_attn` flag)")
    previous = {n: m.keep_attn for n, m in modules.items()}
    record = AttentionRecord(modules)
    for m in modules.values():
        m.keep_attn = True
        m.attn_map = None  # maps from an earlier pass must not leak into this record
    try:
        yield record
    finally:
        record._freeze()
        for n, m in modules.items():
            m.keep_attn = previous[n]
            m.attn_map = None


# --------------------------------------------------------------------------------------------
# Architecture diagram
# --------------------------------------------------------------------------------------------

