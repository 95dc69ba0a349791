"""Numbers for a chapter's table: an experiment's runs grouped by their labels, mean and spread
over seeds."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..data import resolve_data_dir

__all__ = ["load_results", "summarize_runs", "mean_spread"]


def load_results(name: str, data_dir: str | Path | None = None) -> dict:
    """The committed result file of experiment ``name``: ``results/NAME.json`` in the data directory
    (:func:`cait_edu.data.resolve_data_dir`: the repository's ``data/``, or ``$CAIT_EDU_DATA``).
    A missing file raises ``FileNotFoundError`` with the command that writes it."""
    path = resolve_data_dir(data_dir) / "results" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}: run `python -m cait_edu.experiments {name}` from a clone "
                                f"of the repository, or set CAIT_EDU_DATA to its data/ folder")
    return json.loads(path.read_text())


def summarize_runs(results: Mapping, by: Sequence[str], metric: str = "final_top1") -> dict[tuple, dict]:
    """Group the recorded runs of a result file by the labels ``by`` (over the others, e.g. seeds).

    Returns ``{(label values...): {"values", "seeds", "mean", "spread", "min", "max", "diverged"}}``
    in the order the groups first appear in the file. ``values`` are the finished runs' ``metric``
    in seed order; ``spread`` is half the range, so ``mean ± spread`` covers every seed (with two
    seeds, each seed is one spread away from the mean). Diverged runs are counted, not averaged;
    the statistics are ``nan`` for a group with no finished run.
    """
    groups: dict[tuple, dict] = {}
    for run in sorted(results.get("runs", {}).values(), key=lambda r: r["labels"].get("seed", 0)):
        key = tuple(run["labels"][k] for k in by)
        g = groups.setdefault(key, {"values": [], "seeds": [], "diverged": 0})
        if run["status"] == "diverged" or run.get(metric) is None:
            g["diverged"] += 1
        else:
            g["values"].append(float(run[metric]))
            g["seeds"].append(run["labels"].get("seed"))
    for g in groups.values():
        v = g["values"]
        g["mean"] = sum(v) / len(v) if v else math.nan
        g["min"], g["max"] = (min(v), max(v)) if v else (math.nan, math.nan)
        g["spread"] = (g["max"] - g["min"]) / 2 if v else math.nan
    order = {k: i for i, k in enumerate(dict.fromkeys(
        tuple(r["labels"][k] for k in by) for r in results.get("runs", {}).values()))}
    return dict(sorted(groups.items(), key=lambda kv: order[kv[0]]))


def mean_spread(group: Mapping, digits: int = 1) -> str:
    """``"41.3 ± 0.9"`` (``"–"`` if nothing finished; ``+ n diverged`` if some runs diverged)."""
    if not group["values"]:
        text = "–"
    elif len(group["values"]) == 1:
        text = f"{group['mean']:.{digits}f}"
    else:
        text = f"{group['mean']:.{digits}f} ± {group['spread']:.{digits}f}"
    return text + (f" (+{group['diverged']} diverged)" if group["diverged"] else "")
