"""Small trained models kept from experiment runs, for the chapters that look inside them
(e.g. class-attention maps of a model the reader's own sweep trained).

An :class:`~cait_edu.experiments.runner.Experiment` names the runs to keep (``keep_weights``); when
such a run ends, its final weights go to ``data/trained/<experiment>/<run id>.pt`` (committed:
a few MB at the book's CPU scale) together with what rebuilds the model. :func:`load_trained`
rebuilds it and loads the weights strictly.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..data import resolve_data_dir
from ..registry import create_model
from ..training.checkpoints import atomic_torch_save, load_checkpoint
from ..training.config import config_from_dict, model_overrides

__all__ = ["TRAINED_FORMAT", "trained_path", "save_trained", "load_trained"]

TRAINED_FORMAT = "cait_edu.trained/1"


def trained_path(experiment: str, run_id: str, root: str | Path | None = None) -> Path:
    """``root/<experiment>/<run id>.pt``; ``root`` defaults to ``trained/`` in the data directory
    (:func:`cait_edu.data.resolve_data_dir`: the repository's ``data/``, or ``$CAIT_EDU_DATA``)."""
    return Path(root if root is not None else resolve_data_dir() / "trained") / experiment / f"{run_id}.pt"


def save_trained(run_dir: Path, record: dict, experiment: str, dest: Path) -> None:
    """Copy the final model weights of a finished run (its ``last.pt``) to ``dest``, atomically."""
    ck = load_checkpoint(run_dir / "last.pt")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({
        "format": TRAINED_FORMAT, "experiment": experiment, "run": record["id"], "config": record["config"],
        "num_classes": _num_classes(ck["model"]), "final_top1": record["final_top1"], "step": ck["step"],
        "model": ck["model"],
    }, dest)


def _num_classes(state: dict) -> int:
    return int(state["head.weight"].shape[0])


def load_trained(experiment: str, run_id: str, root: str | Path | None = None) -> tuple[nn.Module, dict]:
    """The kept model of ``run_id`` (eval mode, on CPU) and its record (config, final top-1, step).

    Raises ``FileNotFoundError`` naming the command that produces the file if it is missing, and
    ``ValueError`` if the file is not a kept model of that run."""
    path = trained_path(experiment, run_id, root)
    if not path.is_file():
        raise FileNotFoundError(f"no trained weights at {path}; they are written when the run ends: "
                                f"python -m cait_edu.experiments {experiment}")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != TRAINED_FORMAT:
        raise ValueError(f"{path} is not a kept experiment model (format {TRAINED_FORMAT!r})")
    if (ck["experiment"], ck["run"]) != (experiment, run_id):
        raise ValueError(f"{path} holds run {ck['experiment']}/{ck['run']}, not {experiment}/{run_id}")
    cfg = config_from_dict(ck["config"])
    model = create_model(cfg.model, **model_overrides(cfg, ck["num_classes"]))
    model.load_state_dict(ck["model"], strict=True)
    return model.eval(), {k: v for k, v in ck.items() if k != "model"}
