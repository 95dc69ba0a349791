"""``python -m cait_edu.data``: preparing data sets on the command line.

    python -m cait_edu.data imagenet-val VAL_DIR LABELS_FILE [--meta META_FILE] [--dry-run]

moves the ImageNet validation images of VAL_DIR into VAL_DIR/<wnid>/ folders
(:func:`cait_edu.data.prepare_imagenet_val`, which lists the label files it reads).
"""
from __future__ import annotations

import argparse
import sys

from .imagenet_prep import prepare_imagenet_val


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cait_edu.data", description="Prepare data sets for cait_edu.")
    sub = p.add_subparsers(dest="command", required=True)
    val = sub.add_parser("imagenet-val", help="move the ImageNet validation images into one folder per class")
    val.add_argument("val_dir", help="the folder of the 50,000 ILSVRC2012_val_*.JPEG files")
    val.add_argument("labels", help="labels file: the devkit's ILSVRC2012_validation_ground_truth.txt (with "
                                    "--meta), one wnid per line, '<file> <wnid>' lines, or LOC_val_solution.csv")
    val.add_argument("--meta", help="the devkit's data/meta.mat (maps its class ids to WordNet ids)")
    val.add_argument("--dry-run", action="store_true", help="check everything, move nothing")
    args = p.parse_args(argv)
    try:
        res = prepare_imagenet_val(args.val_dir, args.labels, meta_file=args.meta, dry_run=args.dry_run)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verb = "would move" if args.dry_run else "moved"
    print(f"{verb} {res['moved']} images into {res['classes']} class folders "
          f"({res['already_in_place']} were already in place)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
