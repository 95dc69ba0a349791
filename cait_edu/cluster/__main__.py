"""``python -m cait_edu.cluster``: where the SLURM batch script is, or the script itself.

    python -m cait_edu.cluster              # the path of train_imagenet.sbatch (for sbatch)
    python -m cait_edu.cluster --show       # its text
    python -m cait_edu.cluster --copy DIR   # a copy in DIR, to edit the #SBATCH lines for your cluster
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from . import SBATCH_SCRIPT, sbatch_script


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cait_edu.cluster",
                                description="The SLURM batch script that trains a cait_edu preset on several "
                                            "GPU nodes, requeued and resumed when preempted.")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--show", action="store_true", help="print the script instead of its path")
    group.add_argument("--copy", metavar="DIR", help="copy the script into DIR and print the copy's path")
    args = p.parse_args(argv)
    if args.show:
        sys.stdout.write(sbatch_script())
    elif args.copy:
        dest = Path(args.copy)
        dest.mkdir(parents=True, exist_ok=True)
        print(shutil.copy2(SBATCH_SCRIPT, dest / SBATCH_SCRIPT.name))
    else:
        print(SBATCH_SCRIPT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
