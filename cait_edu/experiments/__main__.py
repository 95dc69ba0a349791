"""``python -m cait_edu.experiments NAME [--quick] [--seeds K]``: run a named experiment.

Results go to ``data/results/NAME.json`` (``NAME.quick.json`` with ``--quick``); checkpoints of
unfinished runs to ``runs/experiments/NAME/``. Re-running the same command continues where the
last one stopped; several processes running it at once share the runs (one per core is the
fastest way through a sweep of small models on a CPU).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from .catalog import EXPERIMENTS
from .runner import run_experiment


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m cait_edu.experiments",
                                description="Run one of the book's experiments. Results go to data/results/NAME.json "
                                            "(NAME.quick.json with --quick); re-running the same command skips "
                                            "finished runs and continues an interrupted one from its checkpoint. Several "
                                            "processes may run the same command at once (e.g. one per core, with "
                                            "OMP_NUM_THREADS=1): they share the runs.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="experiments:\n" + "\n".join(f"  {n}: {e.doc}" for n, e in EXPERIMENTS.items()))
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("--quick", action="store_true", help="a seconds-long version of the experiment (for tests)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: the experiment's)")
    p.add_argument("--data", default=None, help="data directory (default: the loader's search path)")
    p.add_argument("--results-dir", default=None, help="where NAME.json goes (default data/results)")
    p.add_argument("--runs-dir", default=None, help="run directories with checkpoints (default runs/experiments)")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many runs (resume later)")
    p.add_argument("--only", nargs="+", metavar="PATTERN", default=None,
                   help="train only the runs whose id matches one of these shell-style patterns, those matching the "
                        "first pattern first (e.g. --only '*-lr0.016-*' '*-s1'); the result file still plans every run")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    args = p.parse_args(argv)
    if args.list or args.name is None:
        for n, e in EXPERIMENTS.items():
            print(f"{n}: {e.doc}")
        return 0 if args.list else 2
    if args.name not in EXPERIMENTS:
        print(f"error: unknown experiment {args.name!r}; known: {', '.join(EXPERIMENTS)}", file=sys.stderr)
        return 2
    if args.seeds is not None and args.seeds < 1:
        print("error: --seeds must be >= 1", file=sys.stderr)
        return 2
    exp = EXPERIMENTS[args.name]
    seeds = exp.default_seeds if args.seeds is None else args.seeds
    command = "python -m cait_edu.experiments " + " ".join(
        shlex.quote(a) for a in [args.name] + (["--quick"] if args.quick else []) + ["--seeds", str(seeds)])
    try:
        res = run_experiment(exp, quick=args.quick, seeds=seeds, results_dir=args.results_dir, runs_dir=args.runs_dir,
                             data_dir=args.data, command=command, max_runs=args.max_runs, only=args.only)
    except ValueError as err:  # e.g. an --only pattern that matches nothing
        print(f"error: {err}", file=sys.stderr)
        return 2
    done = len(res["runs"])
    print(f"{args.name}: {done} of {len(res['planned_runs'])} runs done"
          + ("" if res["complete"] else " (re-run the same command to continue)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
