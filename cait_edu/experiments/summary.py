"""A chapter's way to its numbers: the committed result file of an experiment (:func:`load_results`)
and its runs grouped over seeds (:func:`summarize_runs`, :func:`mean_spread`, from :mod:`cait_edu.stats`)."""
from __future__ import annotations

import json
from pathlib import Path

from ..data import resolve_data_dir
from ..stats import mean_spread, summarize_runs

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
