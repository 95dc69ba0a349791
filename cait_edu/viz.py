"""Looking inside the models: recording attention maps and drawing the architecture.

* :func:`record_attention` -- a context manager that makes every attention layer of a model keep
  its attention weights during a forward pass and hands them back by layer name. The later
  chapters use it to look at self-attention (``(B, h, N, N)``) and class-attention
  (``(B, h, 1, 1 + N)``) maps of every layer.
* :func:`draw_cait` -- a matplotlib diagram of CaiT (Touvron et al., "Going deeper with Image
  Transformers", ICCV 2021, Fig. 2), optionally with the ViT/DeiT layout beside it for contrast.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn as nn

__all__ = ["AttentionRecord", "attention_modules", "record_attention", "draw_cait"]


# --------------------------------------------------------------------------------------------
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

_COLORS = {
    "input": "#e8e8e8",
    "embed": "#cfe2f3",
    "sa": "#fce5cd",
    "ca": "#d9ead3",
    "cls": "#f4cccc",
    "head": "#d9d2e9",
    "stage": "#f7f7f7",
}
_INCH_PER_UNIT = 0.5  # the diagram is laid out in units of half an inch, so text sizes are predictable
_GAP = 0.65  # vertical length of an arrow between two boxes


def _box(ax, x, y_top, w, h, text, color, *, fontsize=8.5, ls="-", z=2):
    """A rounded box whose top edge is at ``y_top``; returns the y of its bottom edge."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y_top - h), w, h,
            boxstyle="round,pad=0,rounding_size=0.12",
            facecolor=color, edgecolor="#555555", linewidth=1.0, linestyle=ls, zorder=z,
        )
    )
    if text:
        ax.text(x, y_top - h / 2, text, ha="center", va="center", fontsize=fontsize, zorder=z + 1,
                linespacing=1.35)
    return y_top - h


def _arrow(ax, x0, y0, x1, y1, label=None):
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=1,
                arrowprops=dict(arrowstyle="-|>", color="#333333", lw=1.2, shrinkA=0, shrinkB=0))
    if label:
        ax.text(x0 + 0.15, (y0 + y1) / 2, label, fontsize=7.5, color="#555555", style="italic",
                ha="left", va="center")


def _down(ax, x, y, label=None):
    _arrow(ax, x, y, x, y - _GAP, label)
    return y - _GAP


def _stage(ax, x, y_top, w, title, subtitle, blocks, color):
    """A dashed stage frame with a title and ``blocks`` (texts) stacked inside; returns its bottom."""
    inner_w, inner_h, pad = w - 0.6, 1.05, 0.3
    h = 1.05 + len(blocks) * inner_h + (len(blocks) - 1) * 0.45 + pad
    _box(ax, x, y_top, w, h, "", _COLORS["stage"], ls="--", z=0)
    ax.text(x - w / 2 + 0.25, y_top - 0.3, title, fontsize=10, weight="bold", ha="left", va="center")
    ax.text(x - w / 2 + 0.25, y_top - 0.68, subtitle, fontsize=7.5, style="italic", color="#555555",
            ha="left", va="center")
    y = y_top - 1.05
    tops = []
    for i, text in enumerate(blocks):
        if i:
            _arrow(ax, x, y, x, y - 0.45)
            y -= 0.45
        tops.append(y)
        y = _box(ax, x, y, inner_w, inner_h, text, color)
    return y_top - h, tops


def _draw_cait_column(ax, x, y, *, depth, depth_token_only, dim, heads, patch, img_size, w):
    d = str(dim) if dim else "d"
    n = str((img_size // patch) ** 2) if img_size else "N"
    y = _box(ax, x, y, w - 1.2, 0.5, f"image {img_size}×{img_size}" if img_size else "image", _COLORS["input"])
    y = _down(ax, x, y)
    y = _box(ax, x, y, w - 0.6, 0.85, f"{patch}×{patch} patches → linear embedding\n+ position embedding",
             _COLORS["embed"])
    y = _down(ax, x, y, f"{n} patch tokens × {d}")
    sizes = f"{heads} heads" if heads else "h heads"
    y, _ = _stage(
        ax, x, y, w, f"self-attention stage × {depth}", f"patch tokens only · {sizes}",
        ["LayerNorm → talking-heads attention\n→ LayerScale diag(λ) → + residual",
         "LayerNorm → MLP (hidden 4×width)\n→ LayerScale diag(λ) → + residual"],
        _COLORS["sa"],
    )
    y = _down(ax, x, y, "patch tokens, frozen from here on")
    y, tops = _stage(
        ax, x, y, w, f"class-attention stage × {depth_token_only}", "only the class token is updated",
        ["LayerNorm → class attention\nq: CLS · k, v: [CLS, patches]\n→ LayerScale → + CLS",
         "LayerNorm → MLP on CLS only\n→ LayerScale → + CLS"],
        _COLORS["ca"],
    )
    # the class token enters late, from the side, into the first class-attention block
    cls_x = x + w / 2 + 1.25
    _box(ax, cls_x, tops[0] - 0.15, 1.7, 0.75, "CLS token\ninserted here", _COLORS["cls"], fontsize=8)
    _arrow(ax, cls_x - 0.85, tops[0] - 0.525, x + (w - 0.6) / 2, tops[0] - 0.525)
    y = _down(ax, x, y, f"CLS token × {d}")
    return _box(ax, x, y, w - 0.6, 0.85, "LayerNorm → linear head\n→ class logits", _COLORS["head"])


def _draw_vit_column(ax, x, y, *, depth, patch, img_size, w):
    y = _box(ax, x, y, w - 1.2, 0.5, f"image {img_size}×{img_size}" if img_size else "image", _COLORS["input"])
    y = _down(ax, x, y)
    top = y
    y = _box(ax, x, y, w - 0.6, 0.85, f"{patch}×{patch} patches → linear embedding\n+ position embedding",
             _COLORS["embed"])
    cls_x = x - w / 2 - 1.05
    _box(ax, cls_x, top - 0.05, 1.7, 0.75, "CLS token\nfrom the start", _COLORS["cls"], fontsize=8)
    _arrow(ax, cls_x + 0.85, top - 0.425, x - (w - 0.6) / 2, top - 0.425)
    y = _down(ax, x, y, "[CLS, patches]")
    y, _ = _stage(
        ax, x, y, w, f"ViT blocks × {depth}", "class token and patches together",
        ["LayerNorm → self-attention\n→ + residual", "LayerNorm → MLP (hidden 4×width)\n→ + residual"],
        _COLORS["sa"],
    )
    y = _down(ax, x, y, "take the CLS token")
    return _box(ax, x, y, w - 0.6, 0.85, "LayerNorm → linear head\n→ class logits", _COLORS["head"])


def draw_cait(
    depth: int = 24,
    depth_token_only: int = 2,
    *,
    dim: int | None = None,
    num_heads: int | None = None,
    patch_size: int = 16,
    img_size: int | None = 224,
    with_vit: bool = False,
    vit_depth: int = 12,
):
    """Draw CaiT's architecture (after the paper's Fig. 2) and return the matplotlib ``Figure``.

    Patches + position embedding -> self-attention stage (``depth`` layers with talking heads and
    LayerScale, patch tokens only) -> the class token is inserted -> class-attention stage
    (``depth_token_only`` layers that update the class token alone) -> LayerNorm -> head.
    ``dim``/``num_heads`` label the diagram with a variant's sizes (``d``/``h`` when omitted).
    ``with_vit=True`` draws the ViT/DeiT layout (class token from the first layer, ``vit_depth``
    blocks) on the left, for contrast.
    """
    import matplotlib.pyplot as plt

    w = 5.8  # width of a stage frame
    top = 0.0
    columns = []
    if with_vit:
        columns.append(("ViT / DeiT", 2.2 + w / 2, "vit"))
    columns.append(("CaiT", (2.2 + 1.5 * w + 1.5) if with_vit else 0.3 + w / 2, "cait"))
    x_max = columns[-1][1] + w / 2 + 2.3

    fig, ax = plt.subplots(figsize=(x_max * _INCH_PER_UNIT, 1.0))
    bottom = 0.0
    for title, x, kind in columns:
        ax.text(x, top + 0.35, title, fontsize=12, weight="bold", ha="center", va="bottom")
        if kind == "vit":
            y = _draw_vit_column(ax, x, top, depth=vit_depth, patch=patch_size, img_size=img_size, w=w)
        else:
            y = _draw_cait_column(ax, x, top, depth=depth, depth_token_only=depth_token_only, dim=dim,
                                  heads=num_heads, patch=patch_size, img_size=img_size, w=w)
        bottom = min(bottom, y)
    y_min, y_max = bottom - 0.3, top + 1.0
    ax.set_xlim(0, x_max)
    ax.set_ylim(y_min, y_max)
    fig.set_size_inches(x_max * _INCH_PER_UNIT, (y_max - y_min) * _INCH_PER_UNIT)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig
