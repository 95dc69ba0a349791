"""``python -m cait_edu.train``: the command line over :func:`~cait_edu.training.run.train`.

Exit codes: 0 done, 2 a configuration or data problem (one line on stderr, no traceback),
1 the run diverged (its last good checkpoint is kept).
"""
from __future__ import annotations

import argparse
import re
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from ..presets import PRESETS
from .config import (ConfigError, DivergenceError, TrainConfig, config_from_dict, field_docs, make_config,
                     parse_set, replace_checked, type_name)
from .run import train

__all__ = ["main", "presets_table", "build_parser"]


def presets_table() -> str:
    """The ``--list-presets`` table."""
    rows = [("name", "model", "dataset", "epochs", "batch", "lr")]
    for name, p in PRESETS.items():
        f = p.fields
        rows.append((name, f["model"], f["dataset"] + (f" ({f['train_subset']} imgs)" if f.get("train_subset") else ""),
                     str(f["epochs"]), str(f["batch_size"]), f"{f['lr']:g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def plain_text(doc: str) -> str:
    """A docstring's reStructuredText as a terminal shows it: ``:func:`~a.b.name``` -> ``name()``,
    ``:mod:`a.b``` -> ``a.b``, double backticks dropped."""
    def role(m: re.Match) -> str:
        kind, target = m.group(1), m.group(2)
        name = target.rsplit(".", 1)[-1] if target.startswith("~") else target
        name = name.lstrip("~")
        return name + "()" if kind in ("func", "meth") else name

    doc = re.sub(r":(\w+):`([^`]+)`", role, doc)
    return doc.replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    hints, docs = typing.get_type_hints(TrainConfig), {k: plain_text(v) for k, v in field_docs().items()}

    def default(f: dataclasses.Field):
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()

    fields_help = "\n".join(f"  {f.name} ({type_name(hints[f.name])}, default {default(f)!r}): {docs.get(f.name, '')}"
                            for f in dataclasses.fields(TrainConfig))
    p = argparse.ArgumentParser(
        prog="python -m cait_edu.train",
        description="Train CaiT/DeiT models from a named preset (see --list-presets). "
                    "Under torchrun, --set batch_size is the GLOBAL batch.",
        epilog="config keys for --set:\n" + fields_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", help="preset name (optional with --resume: the run's saved config is used)")
    p.add_argument("--data", help="data directory (config data_dir)")
    p.add_argument("--out", help="output directory (default runs/<preset>)")
    p.add_argument("--finetune", metavar="CHECKPOINT",
                   help="start from these weights (config finetune): a last.pt/best.pt of this trainer or an "
                        "authors' release file; position embeddings are resized to img_size, the head follows "
                        "finetune_head")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--allow-world-size-change", action="store_true",
                   help="with --resume: continue on a different number of processes (the run then no longer "
                        "follows the trajectory it was on: Mixup/CutMix and drop-path are drawn per rank)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set epochs=5 --set betas=0.9,0.95")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    return p


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    sets = parse_set(args.sets)
    if args.data is not None:
        sets["data_dir"] = args.data
    if args.out is not None:
        sets["out"] = args.out
    if args.finetune is not None:
        sets["finetune"] = args.finetune
    if args.preset is not None:
        return make_config(args.preset, **sets)
    if not args.resume:
        raise ConfigError(f"--preset is required (one of: {', '.join(PRESETS)}); see --list-presets")
    if args.out is None:
        raise ConfigError("--resume without --preset needs --out (the run directory)")
    saved = Path(args.out) / "config.json"
    if not saved.is_file():
        raise ConfigError(f"--resume: {saved} not found; give --preset, or the --out of an existing run")
    return replace_checked(config_from_dict(json.loads(saved.read_text())), sets)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for config/data errors, 1 for divergence)."""
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print(presets_table())
        return 0
    rank = int(os.environ.get("RANK", "0"))
    try:
        train(_config_from_args(args), resume=args.resume, allow_world_size_change=args.allow_world_size_change)
        return 0
    except (ConfigError, FileNotFoundError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
