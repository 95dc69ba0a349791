"""How many images a training config gets through per second on this machine, measured through the
real training loop (data loading and augmentation included) -- the first step of a time-to-accuracy
record: images/s x the time budget = the images a run can see.

    python -m cait_edu.experiments.speed                       # every candidate below
    python -m cait_edu.experiments.speed --only linear-d128-L6,conv-d128-L6 --steps 60

Each candidate trains ``warmup + steps`` steps of its config (from scratch, on a fixed subset just
large enough) with one evaluation on 256 test images at the end; its speed is the median of the
training-throughput windows the engine logs after the warm-up (evaluation time excluded). Run it
on an otherwise idle machine: other load lowers every figure. Results go to
``data/results/cpu_record_speed.json`` with the machine, the commit and the command; candidates
measured earlier and not named by ``--only`` stay in the file (each records its own CPU and date).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from ..measure import count_macs, count_params
from ..registry import create_model
from ..training.config import make_config, model_overrides
from ..training.run import train
from ..training.validate import validate_config
from .common import SHORT_CIFAR
from .runner import REPO, _write_json, git_commit, machine_info

__all__ = ["CANDIDATES", "measure_speed", "main"]

BUDGET_S = 7200
"""The record's time budget (issue: 2 hours of wall time on the book's 2-core CPU)."""

# CaiT with LayerScale and 2 class-attention layers throughout; patch 4 (64 tokens), linear or conv stem.
CANDIDATES: dict[str, dict] = {
    f"{stem}-d{dim}-L{depth}": dict(model="cait_cifar_tiny", batch_size=batch,
                                   model_kwargs=dict(dim=dim, depth=depth, num_heads=dim // 32, stem=stem))
    for stem in ("linear", "conv")
    for dim, depth, batch in ((128, 6, 128), (128, 12, 128), (192, 6, 128), (192, 9, 128), (256, 6, 128))
}
# Levers that change only the speed, on the conv record's model: batch size, one thread, torch.compile;
# "-base" is the unchanged model again, to be measured in the same command as the levers (the speed of
# one model can differ by 10% or more between sessions on CPUs of the same name).
_RECORD = CANDIDATES["conv-d128-L6"]
CANDIDATES.update({
    "conv-d128-L6-base": dict(_RECORD),
    "conv-d128-L6-b64": {**_RECORD, "batch_size": 64},
    "conv-d128-L6-b256": {**_RECORD, "batch_size": 256},
    "conv-d128-L6-1thread": {**_RECORD, "threads": 1},
    "conv-d128-L6-compile": {**_RECORD, "compile": True},
})


def measure_speed(config: dict, *, steps: int = 40, warmup: int = 10, data_dir: str | None = None,
                  val_images: int = 256) -> dict:
    """Train ``config`` (TrainConfig overrides on :data:`SHORT_CIFAR`) for ``warmup + steps`` steps and
    return ``{"img_s", "params", "macs", "windows"}``: the median training throughput after the
    warm-up, and the model's size."""
    total = warmup + steps
    batch = config.get("batch_size", SHORT_CIFAR["batch_size"])
    with tempfile.TemporaryDirectory(prefix="cait_edu_speed_") as out:
        cfg = make_config(**{**SHORT_CIFAR, **config, "train_subset": total * batch, "val_subset": val_images, "epochs": 1,
                             "max_steps": total, "log_every": 5, "eval_every": 1, "save_every_steps": None,
                             "out": out, "progress": False, **({"data_dir": data_dir} if data_dir else {})})
        train(cfg)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    windows = [r["throughput_img_s"] for r in records if r["kind"] == "train" and r["step"] > warmup]
    if not windows:
        raise ValueError(f"no throughput logged after step {warmup}: use more steps (got {steps})")
    cfg = validate_config(cfg)
    model = create_model(cfg.model, **model_overrides(cfg, 10))
    return {"img_s": sorted(windows)[len(windows) // 2], "windows": windows,
            "params": count_params(model), "macs": count_macs(model)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m cait_edu.experiments.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help=f"comma-separated candidates (default all: {', '.join(CANDIDATES)})")
    p.add_argument("--steps", type=int, default=40, help="measured steps per candidate (default 40)")
    p.add_argument("--warmup", type=int, default=10, help="steps before measuring (default 10)")
    p.add_argument("--data", default=None, help="data directory (default: the loader's search path)")
    p.add_argument("--out", default=str(REPO / "data" / "results" / "cpu_record_speed.json"))
    args = p.parse_args(argv)
    names = list(CANDIDATES) if args.only is None else args.only.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        print(f"error: unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        start = time.time()
        res = measure_speed(CANDIDATES[name], steps=args.steps, warmup=args.warmup, data_dir=args.data)
        res.update(config=CANDIDATES[name], images_in_budget=int(res["img_s"] * BUDGET_S),
                   measured_in_s=round(time.time() - start, 1), machine=machine_info()["cpu"],
                   measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        results[name] = res
        print(f"{name:<16} {res['params'] / 1e6:5.2f}M params {res['macs'] / 1e6:7.1f} MMACs  {res['img_s']:7.1f} img/s"
              f"  -> {res['images_in_budget'] / 50_000:5.1f} CIFAR-10 epochs in {BUDGET_S / 3600:g} h", flush=True)
    out = Path(args.out)
    # Candidates measured before (e.g. by an earlier --only) stay; each one records its own machine.
    kept = json.loads(out.read_text()).get("candidates", {}) if out.is_file() else {}
    _write_json(out, {
        "command": " ".join(["python -m cait_edu.experiments.speed"] + [shlex.quote(a) for a in argv]),
        "git_commit": git_commit(), "machine": machine_info(), "budget_s": BUDGET_S,
        "steps": args.steps, "warmup": args.warmup,
        "candidates": {**{k: v for k, v in kept.items() if k not in results}, **results}})
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
