"""Experiments as code, results as data: ``python -m cait_edu.experiments NAME [--quick] [--seeds K]``.

:mod:`~cait_edu.experiments.runner` runs a named list of training runs resumably and writes
``data/results/NAME.json``; :mod:`~cait_edu.experiments.catalog` defines the book's experiments.
"""
from .catalog import EXPERIMENTS
from .runner import Experiment, RunSpec, run_experiment
from .summary import load_results, mean_spread, summarize_runs
from .trained import load_trained

__all__ = ["EXPERIMENTS", "Experiment", "RunSpec", "run_experiment", "load_results", "load_trained",
           "summarize_runs", "mean_spread"]
