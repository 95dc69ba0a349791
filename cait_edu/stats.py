"""Statistics over seeds of an experiment's recorded runs (standard library only).

One convention for the whole book: a setting's runs (the same labels but the seed) are summarised
by the mean of their final accuracy and **half their range** as the spread, so ``mean ± spread``
covers every seed. Diverged runs are counted, never averaged (their last accuracy says nothing);
stalled runs are averaged (their accuracy is real, just near chance) and also listed.

Used by the chapters (through :mod:`cait_edu.experiments` and :mod:`cait_edu.viz`) and by the
book's results page (:mod:`cait_edu.results_page`), so their numbers cannot disagree.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["summarize_runs", "mean_spread"]


def summarize_runs(results: Mapping, by: Sequence[str], metric: str = "final_top1") -> dict[tuple, dict]:
    """Group the recorded runs of a result file by the labels ``by`` (over the others, e.g. seeds).

    Returns ``{(label values...): group}`` in the order the groups first appear in the file (a
    missing label reads as ``None``), each group a dict with

    * ``values``, ``seeds``: the ``metric`` of the runs that did not diverge, in seed order;
    * ``mean``, ``min``, ``max``, ``spread`` (half the range): ``nan`` when no run finished;
    * ``runs``: how many runs the group has; ``diverged``: how many diverged (a run without a
      numeric ``metric`` counts as diverged); ``stalled_values``: the ``metric`` of stalled runs.
    """
    runs = list(results.get("runs", {}).values())
    order = list(dict.fromkeys(tuple(r.get("labels", {}).get(k) for k in by) for r in runs))
    groups = {key: {"values": [], "seeds": [], "runs": 0, "diverged": 0, "stalled_values": []} for key in order}
    for run in sorted(runs, key=lambda r: r.get("labels", {}).get("seed") or 0):
        labels = run.get("labels", {})
        g = groups[tuple(labels.get(k) for k in by)]
        g["runs"] += 1
        value = run.get(metric)
        if run.get("status") == "diverged" or not isinstance(value, (int, float)) or isinstance(value, bool):
            g["diverged"] += 1
            continue
        g["values"].append(float(value))
        g["seeds"].append(labels.get("seed"))
        if run.get("status") == "stalled":
            g["stalled_values"].append(float(value))
    for g in groups.values():
        v = g["values"]
        g["mean"] = sum(v) / len(v) if v else math.nan
        g["min"], g["max"] = (min(v), max(v)) if v else (math.nan, math.nan)
        g["spread"] = (g["max"] - g["min"]) / 2 if v else math.nan
    return groups


def mean_spread(group: Mapping, digits: int = 1, *, show_diverged: bool = True) -> str:
    """``"41.3 ± 0.9"`` for a group of :func:`summarize_runs`: one seed shows its value alone,
    none shows ``"–"``; ``" (+n diverged)"`` follows if some runs diverged and ``show_diverged``."""
    v = group["values"]
    if not v:
        text = "–"
    elif len(v) == 1:
        text = f"{group['mean']:.{digits}f}"
    else:
        text = f"{group['mean']:.{digits}f} ± {group['spread']:.{digits}f}"
    return text + (f" (+{group['diverged']} diverged)" if show_diverged and group["diverged"] else "")
