"""Looking inside the models: recording attention maps and drawing the architecture.

* :func:`record_attention` -- a context manager that makes every attention layer of a model keep
  its attention weights during a forward pass and hands them back by layer name. The later
  chapters use it to look at self-attention (``(B, h, N, N)``) and class-attention
  (``(B, h, 1, 1 + N)``) maps of every layer.
* :func:`draw_cait` -- a matplotlib diagram of CaiT (Touvron et al., "Going deeper with Image
  Transformers", ICCV 2021, Fig. 2), optionally with the ViT/DeiT layout beside it for contrast;
  :func:`draw_residual_schemes` -- one residual branch under each scheme of the paper's Fig. 3.
* :func:`plot_depth_sweep` and :func:`plot_gamma_evolution` -- the results of the
  ``layerscale_depth`` experiment (:mod:`cait_edu.experiments`): accuracy against depth for every
  residual scheme, and how the learned residual scales of each layer moved during training.
  :func:`summarize_depth_sweep` gives the numbers behind the first plot.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

__all__ = ["AttentionRecord", "attention_modules", "record_attention", "draw_cait", "draw_residual_schemes",
           "summarize_depth_sweep",
           "plot_depth_sweep", "plot_gamma_evolution"]


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

_SCHEME_COLORS = {
    "none": "#555555", "rezero": "#1f77b4", "fixup": "#2ca02c", "tfixup": "#17becf",
    "scalar": "#ff7f0e", "layerscale": "#d62728",
}
_OTHER_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f"]


def _scheme_color(scheme: str, order: Sequence[str]) -> str:
    if scheme in _SCHEME_COLORS:
        return _SCHEME_COLORS[scheme]
    others = [s for s in order if s not in _SCHEME_COLORS]
    return _OTHER_COLORS[others.index(scheme) % len(_OTHER_COLORS)]


def _finished_runs(results: Mapping) -> list[dict]:
    runs = results.get("runs")
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("no finished runs in these results (expected a result file of cait_edu.experiments)")
    return list(runs.values())


def _first_seen(values) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def summarize_depth_sweep(results: Mapping, metric: str = "final_top1") -> dict[tuple, dict]:
    """The numbers behind :func:`plot_depth_sweep`, per ``(scheme, lr, depth)`` (over seeds).

    ``results`` is the contents of a result file of the ``layerscale_depth`` experiment
    (``data/results/layerscale_depth.json``): runs labelled by ``scheme``, ``depth``, ``lr`` and
    ``seed``, each with a ``status`` (``ok``, ``stalled`` or ``diverged``) and ``metric``.
    Diverged runs are counted but kept out of the statistics (their last accuracy says nothing);
    stalled runs are kept in (their accuracy is real, just close to chance).

    Returns ``{(scheme, lr, depth): {"values", "seeds", "mean", "min", "max", "diverged",
    "stalled_values"}}``: ``values`` are the finished runs' ``metric`` in seed order (``seeds``
    their seeds), ``mean`` / ``min`` / ``max`` are ``nan`` when no run of the setting finished,
    ``diverged`` counts the diverged runs and ``stalled_values`` lists the stalled runs' ``metric``.
    """
    table: dict[tuple, dict] = {}
    for run in sorted(_finished_runs(results), key=lambda r: r["labels"].get("seed", 0)):
        lab = run["labels"]
        key = (lab["scheme"], float(lab["lr"]), int(lab["depth"]))
        row = table.setdefault(key, {"values": [], "seeds": [], "diverged": 0, "stalled_values": []})
        if run["status"] == "diverged" or run.get(metric) is None:
            row["diverged"] += 1
            continue
        row["values"].append(float(run[metric]))
        row["seeds"].append(lab.get("seed"))
        if run["status"] == "stalled":
            row["stalled_values"].append(float(run[metric]))
    for row in table.values():
        v = row["values"]
        row["mean"] = sum(v) / len(v) if v else math.nan
        row["min"] = min(v) if v else math.nan
        row["max"] = max(v) if v else math.nan
    return table


def plot_depth_sweep(
    results: Mapping,
    *,
    metric: str = "final_top1",
    schemes: Sequence[str] | None = None,
    chance: float = 10.0,
    panel_size: tuple[float, float] = (4.0, 3.4),
):
    """Accuracy against depth for every residual scheme, one panel per learning rate.

    Each scheme is a line through the mean over seeds of its finished runs at each depth, with a
    vertical bar from the worst to the best seed. Runs that **diverged** (non-finite loss) are
    drawn as crosses on the dashed chance line and left out of the mean (a number next to a cross
    counts several); runs that **stalled** (finished below :data:`cait_edu.experiments.runner.STALLED_BELOW`
    percent) are circled at their accuracy and stay in the mean. A depth where every run of a
    scheme diverged leaves a gap in its line. Depths are on a log scale.

    Args:
        results: a ``layerscale_depth`` result file's contents (see :func:`summarize_depth_sweep`);
            incomplete sweeps are fine: the title says how many of the planned runs are in.
        metric: the run field to plot (``"final_top1"`` or ``"best_top1"``).
        schemes: which schemes, in which order (default: all, in the order of the runs).
        chance: where diverged runs are drawn (10% for 10 classes).

    Returns the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    table = summarize_depth_sweep(results, metric)
    all_schemes = _first_seen(k[0] for k in table)
    schemes = list(all_schemes if schemes is None else schemes)
    unknown = [s for s in schemes if s not in all_schemes]
    if unknown:
        raise ValueError(f"no runs of scheme(s) {unknown}; the results have {all_schemes}")
    lrs = sorted({k[1] for k in table})
    depths = sorted({k[2] for k in table})
    fig, axes = plt.subplots(1, len(lrs), figsize=(panel_size[0] * len(lrs), panel_size[1]), sharey=True,
                             squeeze=False)
    axes = axes[0]
    span = math.log2(depths[-1] / depths[0]) if len(depths) > 1 else 1.0
    step = 0.035 * span / max(1, len(schemes) - 1)  # a small sideways shift per scheme, in log2 units
    for ax, lr in zip(axes, lrs):
        ax.axhline(chance, color="#999999", ls="--", lw=0.8, zorder=0)
        for j, scheme in enumerate(schemes):
            color = _scheme_color(scheme, all_schemes)
            shift = 2 ** ((j - (len(schemes) - 1) / 2) * step)
            rows = [(d, table.get((scheme, lr, d))) for d in depths]
            rows = [(d * shift, row) for d, row in rows if row is not None]
            if not rows:
                continue
            xs = [x for x, _ in rows]
            means = [row["mean"] for _, row in rows]
            ax.plot(xs, means, "o-", color=color, ms=4, lw=1.5, label=scheme, gid=f"mean:{scheme}")
            for x, row in rows:
                if row["values"]:
                    ax.plot([x, x], [row["min"], row["max"]], "-", color=color, lw=1.0, alpha=0.6,
                            gid=f"range:{scheme}")
                stalled = row["stalled_values"]
                if stalled:
                    ax.plot([x] * len(stalled), stalled, "o", ms=9, mfc="none", mec=color, mew=1.2,
                            gid=f"stalled:{scheme}")
                if row["diverged"]:
                    ax.plot([x], [chance], "x", ms=8, mew=2, color=color, gid=f"diverged:{scheme}")
                    if row["diverged"] > 1:
                        ax.annotate(f"{row['diverged']}", (x, chance), xytext=(5, 4), textcoords="offset points",
                                    fontsize=7, color=color)
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths)
        ax.set_xticklabels([str(d) for d in depths])
        ax.minorticks_off()
        ax.set_xlabel("depth (blocks)")
        ax.set_title(f"lr = {lr:g}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{'final' if metric == 'final_top1' else metric} test top-1 (%)")
    handles = [Line2D([], [], color=_scheme_color(s, all_schemes), marker="o", ms=4, label=s) for s in schemes]
    handles += [Line2D([], [], color="#333333", marker="x", ls="none", ms=7, mew=2, label="diverged (at chance)"),
                Line2D([], [], color="#333333", marker="o", ls="none", ms=9, mfc="none", label="stalled")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    planned = results.get("planned_runs")
    done = len(_finished_runs(results))
    seeds = _first_seen(r["labels"].get("seed") for r in _finished_runs(results))
    note = f"{done} of {len(planned)} planned runs" if planned and done < len(planned) else f"{done} runs"
    fig.suptitle(f"{results.get('experiment', 'depth sweep')}: mean and min-max over {len(seeds)} seed(s); {note}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_gamma_evolution(
    results: Mapping,
    *,
    scheme: str = "layerscale",
    lr: float | None = None,
    seed: int = 0,
    depths: Sequence[int] | None = None,
    panel_size: tuple[float, float] = (4.0, 3.2),
):
    """How the learned residual scales of every layer moved during training, one panel per depth.

    Reads each run's ``extra`` list (one record per evaluation:
    ``{"epoch", "gamma_attn": [...], "gamma_mlp": [...]}``, the mean ``|gamma|`` of each block's
    attention and MLP branch as :func:`cait_edu.experiments.catalog.residual_scales_summary`
    records it) and draws, for every evaluation, the per-layer values against the layer index:
    attention branch solid, MLP branch dashed, the colour going from dark (first evaluation) to
    light (last). For ``scalar``/``layerscale`` the dotted grey line is the initial value
    ``eps``. The y axis is logarithmic, since the scales start between ``1e-6`` and ``0.1``.

    Args:
        results: a ``layerscale_depth`` result file's contents.
        scheme: a scheme with learned scales (``layerscale``, ``scalar``, ``rezero`` -- whose
            shared ``alpha`` shows as equal attention and MLP values -- or ``fixup``).
        lr: the learning rate of the runs to show; may be left out when the results hold one only.
        seed: which seed's runs.
        depths: which depths (default: all the results have for that scheme, lr and seed).

    Returns the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    runs = [r for r in _finished_runs(results) if r["labels"]["scheme"] == scheme]
    if not runs:
        raise ValueError(f"no runs of scheme {scheme!r}")
    lrs = sorted({float(r["labels"]["lr"]) for r in runs})
    if lr is None:
        if len(lrs) > 1:
            raise ValueError(f"the results have several learning rates for {scheme!r}: pass lr= one of {lrs}")
        lr = lrs[0]
    runs = [r for r in runs if math.isclose(float(r["labels"]["lr"]), lr) and r["labels"].get("seed", 0) == seed]
    if depths is not None:
        runs = [r for r in runs if r["labels"]["depth"] in set(depths)]
    if not runs:
        raise ValueError(f"no runs of {scheme!r} with lr={lr:g}, seed={seed}" + (f", depths {list(depths)}" if depths else ""))
    runs.sort(key=lambda r: r["labels"]["depth"])
    for r in runs:
        recs = r.get("extra") or []
        if not recs or all(v is None for rec in recs for v in rec.get("gamma_attn", [None])):
            raise ValueError(f"run {r.get('id')} recorded no learned scales (scheme {scheme!r} has none, "
                             "or the run measured nothing)")
    epochs = sorted({rec["epoch"] for r in runs for rec in r["extra"]})
    norm = Normalize(vmin=min(epochs), vmax=max(epochs) if max(epochs) > min(epochs) else min(epochs) + 1)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(runs), figsize=(panel_size[0] * len(runs), panel_size[1]), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    for ax, run in zip(axes, runs):
        depth = run["labels"]["depth"]
        for rec in sorted(run["extra"], key=lambda rec: rec["epoch"]):
            color = cmap(norm(rec["epoch"]))
            for key, ls in (("gamma_attn", "-"), ("gamma_mlp", "--")):
                vals = [math.nan if v is None or v <= 0 else float(v) for v in rec[key]]
                ax.plot(range(1, len(vals) + 1), vals, ls, color=color, lw=1.3,
                        gid=f"{key}:epoch{rec['epoch']}")
        init = _initial_scale(run)
        if init is not None:
            ax.axhline(init, color="#999999", ls=":", lw=1.0, gid="init")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        status = "" if run.get("status", "ok") == "ok" else f" ({run['status']})"
        ax.set_title(f"depth {depth}{status}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean |scale| per layer")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="epoch", fraction=0.03, pad=0.02)
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    fig.suptitle(f"{scheme}, lr = {lr:g}, seed {seed}: attention branch solid, MLP branch dashed", fontsize=10)
    return fig


def _initial_scale(run: Mapping) -> float | None:
    """The ``eps`` a scalar/LayerScale run started from: its config's ``init_scale`` or the paper's rule."""
    kwargs = (run.get("config") or {}).get("model_kwargs") or {}
    if kwargs.get("residual_scale", run["labels"]["scheme"]) not in ("scalar", "layerscale"):
        return None
    from .blocks import layerscale_init_for_depth

    eps = kwargs.get("init_scale")
    return float(eps) if eps is not None else layerscale_init_for_depth(int(run["labels"]["depth"]))
