"""Run a named experiment (a list of training runs) and keep its results in one small JSON file.

Experiments are code and results are data: an :class:`Experiment` names its runs (each a set of
:class:`~cait_edu.training.config.TrainConfig` overrides plus the labels a chapter groups them by);
:func:`run_experiment` trains them one after the other with :func:`cait_edu.train.train` and writes
``data/results/<name>.json``:

* the command, the git commit, the machine that wrote it last (CPU model, cores, threads, torch
  version) and ``machines``, how many runs ran on each machine (a sweep finished across sessions
  may have run on several), whether the experiment is complete, and the summed wall time of its runs;
* per run: its full config and seed, its machine, final and best test top-1, the curves (training loss, test
  loss and top-1 per evaluation, the run's wall time at each and its training speed since the
  last), a status (``ok``, ``diverged``, ``stalled``) and whatever the experiment measures at each
  evaluation (e.g. LayerScale's gammas per layer).

It is **resumable across sessions**: a finished run is written to the file the moment it ends, and
re-running the same command skips finished runs and continues an interrupted one from its last
checkpoint (its run directory under ``runs/experiments/``). A run's wall time is the sum of its
pieces.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from ..training.config import RESUME_MAY_CHANGE, DivergenceError, config_from_dict, make_config
from ..training.run import train
from ..training.metrics import finite_or_none
from ..training.validate import validate_config
from .trained import save_trained, trained_path

__all__ = ["RunSpec", "Experiment", "run_experiment", "machine_info", "machines_used", "git_commit", "STALLED_BELOW"]

REPO = Path(__file__).resolve().parents[2]
STALLED_BELOW = 15.0
"""A run whose final top-1 (in %) on a 10-class problem stays below this has learned next to
nothing (chance is 10%); it is flagged ``stalled``."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment: a unique ``id``, the config overrides, the labels to plot by."""

    id: str
    config: dict
    labels: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A named list of runs. ``runs(quick, seeds)`` builds them: ``quick`` is a seconds-long
    version of the same experiment (the tests run it), ``seeds`` the number of seeds per setting.
    ``extra_metrics(model) -> dict`` is recorded at every evaluation of every run."""

    name: str
    doc: str
    runs: Callable[[bool, int], list[RunSpec]]
    extra_metrics: Callable[[nn.Module], dict] | None = None
    default_seeds: int = 2
    keep_weights: tuple[str, ...] = ()
    """Run ids whose final weights are kept (``data/trained/<name>/<id>.pt``, see :mod:`.trained`);
    such a run counts as done only once its weights file exists."""


def git_commit() -> str:
    """The repository's HEAD commit (with ``+dirty`` if files differ from it), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def machine_info() -> dict:
    """CPU model, cores, torch threads, GPU (if any), torch and Python versions."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def _run_machine() -> dict:
    """What a run's record says about where it ran (a sweep may span sessions on different machines)."""
    info = machine_info()
    return {k: info[k] for k in ("cpu", "cores", "gpu", "torch")}


def machines_used(runs: dict) -> dict[str, int]:
    """``{machine: number of runs}`` over a result file's runs (GPU name if any, else CPU model;
    ``"not recorded"`` for runs written before runs recorded their machine)."""
    counts: dict[str, int] = {}
    for rec in runs.values():
        m = rec.get("machine") or {}
        name = m.get("gpu") or m.get("cpu") or "not recorded"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(finite_or_none(obj), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _curves(out: Path) -> tuple[dict, list[dict]]:
    """Per-evaluation curves and extra measurements from a run's ``metrics.jsonl``."""
    curves = {"epoch": [], "step": [], "train_loss": [], "val_loss": [], "val_top1": [], "elapsed_s": [],
              "throughput_img_s": []}
    extras, losses, speeds = [], [], []
    standard = {"kind", "epoch", "step", "val_loss", "val_top1", "val_top5", "val_samples", "elapsed_s"}
    path = out / "metrics.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        rec = json.loads(line)
        if rec["kind"] == "train":
            losses.append(rec["loss"])
            speeds.append(rec.get("throughput_img_s"))
        elif rec["kind"] == "eval":
            for k in ("epoch", "step", "val_loss", "val_top1"):
                curves[k].append(rec[k])
            curves["elapsed_s"].append(rec.get("elapsed_s"))  # wall time of the run at this evaluation
            # training images/s since the last evaluation (median of the logged windows)
            speeds = sorted(v for v in speeds if v is not None)
            curves["throughput_img_s"].append(speeds[len(speeds) // 2] if speeds else None)
            speeds = []
            curves["train_loss"].append(sum(losses) / len(losses) if losses else None)  # mean since last eval
            losses = []
            extra = {k: v for k, v in rec.items() if k not in standard}
            if extra:
                extras.append({"epoch": rec["epoch"], **extra})
    return curves, extras


class _Clock:
    """Wall time of a run summed over its pieces (sessions), kept in its run directory and updated
    at every evaluation, so a killed piece loses at most the time since its last evaluation."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "clock.json"
        self.before = json.loads(self.path.read_text())["seconds"] if self.path.exists() else 0.0
        self.start = time.time()

    def total(self) -> float:
        return self.before + time.time() - self.start

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(self.path, {"seconds": self.total()})


def _train_one(exp: Experiment, spec: RunSpec, run_dir: Path, data_dir: str | None, commit: str, say) -> dict:
    """Train (or continue) one run and summarise it; ``commit`` is the code it ran."""
    cfg = make_config(**{**spec.config, "out": str(run_dir), "progress": False,
                         **({"data_dir": data_dir} if data_dir else {})})
    stale = _stale_changes(run_dir, cfg)
    if stale:
        # a half-done (or finished) run of an earlier definition of this run id: it cannot be continued
        # as this run, and it is not deleted either; it is moved aside and this run starts afresh
        aside = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%dT%H%M%S')}")
        run_dir.rename(aside)
        say(f"[{exp.name}] {spec.id}: the checkpoint in {run_dir} was trained with another config "
            f"({', '.join(stale)}); moved to {aside.name}, starting afresh")
    resume = (run_dir / "last.pt").is_file()
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to continue
    clock = _Clock(run_dir)

    def measure(model: nn.Module) -> dict:
        clock.save()
        return exp.extra_metrics(model) if exp.extra_metrics is not None else {}

    say(f"[{exp.name}] {spec.id}: {'continuing' if resume else 'starting'}")
    status, diverged_at, result = "ok", None, {}
    try:
        result = train(cfg, resume=resume, extra_metrics=measure)
    except DivergenceError as e:
        status = "diverged"
        diverged_at = str(e).split(" at ", 1)[-1].split(";", 1)[0]
    curves, extras = _curves(run_dir)
    final = curves["val_top1"][-1] if curves["val_top1"] else None
    if status == "ok" and (final is None or final < STALLED_BELOW):
        status = "stalled"
    record = {
        "id": spec.id, "labels": spec.labels, "seed": cfg.seed,
        "config": _portable(cfg),
        "status": status, "diverged_at": diverged_at,
        "final_top1": final, "best_top1": max(curves["val_top1"]) if curves["val_top1"] else None,
        "final_val_loss": curves["val_loss"][-1] if curves["val_loss"] else None,
        "steps": result.get("step"), "curves": curves, "extra": extras,
        # two clocks summed over the run's pieces: the engine's (checkpointed with the weights, so a
        # killed piece loses only the steps after its last checkpoint; absent if the run diverged) and
        # the runner's (saved at evaluations; the only one for pieces run before the engine had one)
        "wall_time_s": round(max(result.get("elapsed_s", 0.0), clock.total()), 1),
        "torch_threads": torch.get_num_threads(),
        "machine": _run_machine(),
        "git_commit": commit,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    say(f"[{exp.name}] {spec.id}: {status}, final top-1 {final if final is None else round(final, 2)}%, "
        f"{record['wall_time_s']:.0f} s")
    return record


def _stale_changes(run_dir: Path, cfg) -> list[str]:
    """The fields (outside those a resume may change) in which the config saved in ``run_dir`` differs
    from ``cfg``; empty if there is no saved config or it is the same run."""
    saved = run_dir / "config.json"
    if not (run_dir / "last.pt").is_file() or not saved.is_file():
        return []
    before, now = _portable(config_from_dict(json.loads(saved.read_text()))), _portable(cfg)
    return [k for k in now if k not in RESUME_MAY_CHANGE and before.get(k) != now[k]]


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def run_experiment(exp: Experiment, *, quick: bool = False, seeds: int | None = None,
                   results_dir: str | Path | None = None, runs_dir: str | Path | None = None,
                   data_dir: str | None = None, command: str | None = None, max_runs: int | None = None,
                   only: Sequence[str] | None = None, say: Callable[[str], None] = print) -> dict:
    """Run every run of ``exp`` not yet in its result file; return the result file's contents.

    ``results_dir`` defaults to the repository's ``data/results`` (quick runs write
    ``<name>.quick.json``), ``runs_dir`` to ``runs/experiments`` (checkpoints, git-ignored).
    ``max_runs`` stops after that many runs (to fit a session). ``only`` (shell-style patterns on
    run ids, e.g. ``"*-s1"``) trains just the matching runs now, those matching the first pattern
    first, to order a sweep that spans sessions; the plan, and so the file's ``complete``, stay the
    whole experiment. A run already in the file whose config no longer matches the experiment's
    definition is run again, as is a run in ``exp.keep_weights`` whose weights file is missing;
    kept weights go to ``results_dir/../trained``.

    Several processes may run the same experiment at once (one per core: small models use cores
    far better side by side than as threads of one run). Each run is claimed with a lock held while
    it trains, so no two processes train the same run, and each finished run is merged into the
    result file under a second lock, so none overwrites another's. A killed process drops its
    claims; its half-done run is continued by whichever process comes to it next.
    """
    seeds = exp.default_seeds if seeds is None else seeds
    commit = git_commit()  # the code this process runs (imported now, whatever is committed later)
    specs = exp.runs(quick, seeds)
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"experiment {exp.name} has duplicate run ids")
    results_dir = Path(results_dir) if results_dir is not None else REPO / "data" / "results"
    runs_dir = Path(runs_dir) if runs_dir is not None else REPO / "runs" / "experiments"
    path = results_dir / f"{exp.name}{'.quick' if quick else ''}.json"
    header = {
        "experiment": exp.name, "doc": exp.doc, "quick": quick, "seeds": seeds,
        "command": command or " ".join(["python -m cait_edu.experiments", exp.name]
                                       + (["--quick"] if quick else []) + [f"--seeds {seeds}"]),
        "machine": machine_info(), "git_commit": commit, "planned_runs": ids,
    }
    lock_dir = runs_dir / exp.name / ".locks"
    kept_as = exp.name + (".quick" if quick else "")  # a quick run never replaces a real run's weights
    kept = {s.id: trained_path(kept_as, s.id, results_dir.parent / "trained")
            for s in specs if s.id in exp.keep_weights}

    def done(spec: RunSpec) -> bool:
        return _is_done(spec, _read_runs(path)) and (spec.id not in kept or kept[spec.id].is_file())

    if only:
        unmatched = [pat for pat in only if not any(fnmatch.fnmatchcase(i, pat) for i in ids)]
        if unmatched:
            raise ValueError(f"--only pattern(s) {unmatched} match no run of {exp.name}; run ids look like {ids[0]!r}")

        def priority(spec: RunSpec) -> int | None:
            return next((k for k, pat in enumerate(only) if fnmatch.fnmatchcase(spec.id, pat)), None)
        todo = sorted((s for s in specs if priority(s) is not None), key=priority)  # stable: plan order within a pattern
    else:
        todo = specs
    trained = 0
    for spec in todo:
        if max_runs is not None and trained >= max_runs:
            break
        if done(spec):
            continue
        with _claim(lock_dir / f"{spec.id}.lock") as mine:
            # Another process may hold it, or may have finished it since we last looked.
            if not mine or done(spec):
                continue
            run_dir = runs_dir / exp.name / spec.id
            record = _train_one(exp, spec, run_dir, data_dir, commit, say)
            trained += 1
            if spec.id in kept and record["status"] != "diverged":
                save_trained(run_dir, record, kept_as, kept[spec.id])
            with _claim(lock_dir / ".results.lock", wait=True):
                _finish(header, {**_read_runs(path), spec.id: record}, path)
    with _claim(lock_dir / ".results.lock", wait=True):
        return _finish(header, _read_runs(path), path)


def _read_runs(path: Path) -> dict:
    return json.loads(path.read_text()).get("runs", {}) if path.exists() else {}


def _is_done(spec: RunSpec, runs: dict) -> bool:
    """A recorded run counts as done if its config is the definition's; fields added to TrainConfig
    after it was recorded take their defaults (which leave the training unchanged)."""
    rec = runs.get(spec.id)
    return rec is not None and _config_key(_portable(config_from_dict(rec["config"]))) == _config_key(_resolved(spec))


@contextlib.contextmanager
def _claim(lock: Path, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock`` (an advisory ``flock``, dropped by the OS if the process
    dies); yields False at once if another process holds it and ``wait`` is False. Where ``fcntl``
    does not exist (Windows) it always yields True: run one process per experiment there."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield True
        return
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _portable(cfg) -> dict:
    """A run's resolved config as JSON, without what depends on the machine (paths, progress bar)."""
    d = json.loads(json.dumps(dataclasses.asdict(validate_config(cfg))))
    for k in ("out", "data_dir", "progress"):
        d.pop(k, None)
    return d


def _resolved(spec: RunSpec) -> dict:
    return _portable(make_config(**spec.config))


def _finish(header: dict, runs: dict, path: Path) -> dict:
    """Write the result file: the header, then the recorded runs in planned order, then any run the
    current plan does not name (e.g. a second seed's when this command asked for one seed: kept, not lost)."""
    planned = header["planned_runs"]
    results = {**header, "runs": {rid: runs[rid] for rid in planned if rid in runs}}
    results["complete"] = len(results["runs"]) == len(planned)
    results["runs"].update({rid: rec for rid, rec in runs.items() if rid not in results["runs"]})
    results["wall_time_s"] = round(sum(results["runs"][rid]["wall_time_s"] for rid in planned if rid in runs), 1)
    # "machine" is the machine of the process that wrote the file last; "machines" where every run ran
    results["machines"] = machines_used(results["runs"])
    _write_json(path, results)
    return results
