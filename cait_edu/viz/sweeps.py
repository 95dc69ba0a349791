"""Plots of the ``layerscale_depth`` experiment's results: accuracy against depth per residual
scheme (:func:`plot_depth_sweep`, numbers from :func:`summarize_depth_sweep`) and the learned
residual scales of every layer during training (:func:`plot_gamma_evolution`)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..stats import summarize_runs

__all__ = ["summarize_depth_sweep", "plot_depth_sweep", "plot_gamma_evolution"]

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

    Returns ``{(scheme, lr, depth): group}``, each group as :func:`cait_edu.stats.summarize_runs`
    makes it: ``values`` (the finished runs' ``metric`` in seed order, ``seeds`` their seeds),
    ``mean`` / ``min`` / ``max`` / ``spread`` (``nan`` when no run of the setting finished),
    ``diverged`` (how many diverged) and ``stalled_values`` (the stalled runs' ``metric``).
    """
    _finished_runs(results)  # a clear error for a file without runs
    groups = summarize_runs(results, ["scheme", "lr", "depth"], metric)
    return {(scheme, float(lr), int(depth)): g for (scheme, lr, depth), g in groups.items()}


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
    from ..blocks import layerscale_init_for_depth

    eps = kwargs.get("init_scale")
    return float(eps) if eps is not None else layerscale_init_for_depth(int(run["labels"]["depth"]))
