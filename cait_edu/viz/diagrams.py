"""Diagrams: CaiT's architecture (:func:`draw_cait`, after the paper's Fig. 2) and one residual
branch under each scheme of its Fig. 3 (:func:`draw_residual_schemes`)."""
from __future__ import annotations

__all__ = ["draw_cait", "draw_residual_schemes"]

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


# (title, paper's panel, boxes of the branch from input to output; a box is (text, kind))
_SCHEME_DIAGRAMS = [
    ("none", "Fig. 3(a): ViT / DeiT", [("LayerNorm", "norm"), ("SA or FFN", "branch")]),
    ("rezero", "Fig. 3(b): ReZero", [("SA or FFN", "branch"), ("× α\nα = 0, one per block", "scale")]),
    ("fixup", "Fig. 3(b): Fixup", [("+ scalar biases", "scale"), ("SA or FFN\nlast layer = 0", "branch"),
                                   ("× m, + b\nm = 1, b = 0", "scale")]),
    ("tfixup", "Fig. 3(b): T-Fixup", [("SA or FFN\nweights × $0.67\\,N^{-1/4}$", "branch")]),
    ("scalar", "Fig. 3(c)", [("LayerNorm", "norm"), ("SA or FFN", "branch"), ("× α\nα = ε", "scale")]),
    ("layerscale", "Fig. 3(d): LayerScale", [("LayerNorm", "norm"), ("SA or FFN", "branch"),
                                            ("× diag($\\lambda_1, …, \\lambda_d$)\n$\\lambda_i$ = ε", "scale")]),
]
_KIND_COLORS = {"norm": "#cfe2f3", "branch": "#fce5cd", "scale": "#f4cccc"}


def draw_residual_schemes():
    """One residual branch of a block under each scheme of CaiT's Fig. 3, as ``cait_edu`` names
    them (``Block(residual_scale=...)``), and return the matplotlib ``Figure``.

    Each column reads bottom-up: the stream ``x_l`` goes straight up the skip connection on the
    left and through the branch on the right (LayerNorm where the scheme keeps it, the attention
    or feed-forward layer, the scheme's scale); the two meet at ``+``. Fixup and T-Fixup are drawn
    in their own papers' norm-free form (``norm=True`` puts LayerNorm back).
    """
    import matplotlib.pyplot as plt

    col_w, box_w, box_h, gap = 3.3, 2.3, 0.85, 0.45
    tallest = max(len(boxes) for _, _, boxes in _SCHEME_DIAGRAMS)
    y_in, y_split = 0.3, 1.0
    y_plus = y_split + tallest * (box_h + gap) + 0.55  # the same height in every column
    height = y_plus + 2.1
    fig, ax = plt.subplots(figsize=(len(_SCHEME_DIAGRAMS) * col_w * _INCH_PER_UNIT * 1.25, height * _INCH_PER_UNIT * 1.25))
    for i, (name, paper, boxes) in enumerate(_SCHEME_DIAGRAMS):
        x0 = i * col_w + 0.4  # the skip connection's x
        xb = x0 + 0.35 + box_w / 2  # the branch's centre
        ax.text(x0, y_in - 0.05, "$x_l$", ha="center", va="top", fontsize=10)
        ax.plot([x0, x0], [y_in, y_plus - 0.18], color="#333333", lw=1.2, zorder=1)  # skip
        ax.plot([x0, xb], [y_split, y_split], color="#333333", lw=1.2, zorder=1)
        y = y_split
        for text, kind in boxes:
            _arrow(ax, xb, y, xb, y + gap)
            y += gap
            _box(ax, xb, y + box_h, box_w, box_h, text, _KIND_COLORS[kind], fontsize=7.5)
            y += box_h
        ax.plot([xb, xb], [y, y_plus], color="#333333", lw=1.2, zorder=1)
        _arrow(ax, xb, y_plus, x0 + 0.2, y_plus)
        ax.add_patch(plt.Circle((x0, y_plus), 0.18, facecolor="white", edgecolor="#333333", lw=1.2, zorder=3))
        ax.text(x0, y_plus, "+", ha="center", va="center", fontsize=10, zorder=4)
        _arrow(ax, x0, y_plus + 0.18, x0, y_plus + 0.6)
        ax.text(x0, y_plus + 0.65, "$x_{l+1}$", ha="center", va="bottom", fontsize=10)
        ax.text(x0 - 0.25 + col_w / 2, height - 0.2, f'"{name}"', ha="center", va="top", fontsize=10,
                weight="bold", family="monospace")
        ax.text(x0 - 0.25 + col_w / 2, height - 0.7, paper, ha="center", va="top", fontsize=8, style="italic",
                color="#555555")
    ax.set_xlim(0, len(_SCHEME_DIAGRAMS) * col_w)
    ax.set_ylim(-0.3, height)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1)
    return fig

# --------------------------------------------------------------------------------------------
# Experiment results: the layerscale_depth sweep
# --------------------------------------------------------------------------------------------

