"""The command line: options, the run that fills one report, and writing it where it belongs."""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from .machine import gemm_rate, machine_info, train_step_flops
from .memory import RESULT_PREFIX, measure_memory, memory_worker
from .profiling import profile_compiled, profile_step
from .report import TARGETS, evaluate, fmt_table, print_report
from .timing import bench_model_task, ratio_entry
from .workload import default_batches, make_optimizer, make_step

DEFAULT_MODELS = ("cait_xxs24_224", "cait_cifar_tiny")
DESCRIPTION = "Throughput benchmark: cait_edu against timm's CaiT, side by side in one process (issue #3)."


def default_out(device: str | torch.device) -> Path:
    """``data/bench/bench_<device type>.json``: a GPU run never overwrites the committed CPU file."""
    return Path("data/bench") / f"bench_{torch.device(device).type}.json"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure everything ``args`` asks for and return the report (see the package docstring)."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda s: None) if args.silent else (lambda s: print(s, flush=True))
    info = machine_info(device)
    info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    log(f"machine: {info['cpu_model']}, {info['logical_cores']} cores, {info.get('gpu', 'no GPU')}, "
        f"torch {info['torch']}, timm {info['timm']}, {info['threads']} threads, load {info['loadavg_start']}")
    gemm = gemm_rate(args.gemm_size, args.gemm_repeats, device)
    log(f"GEMM {args.gemm_size}^2 fp32: median {statistics.median(gemm):.1f} GFLOP/s")

    report: dict[str, Any] = {
        "schema": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m cait_edu.bench " + " ".join(args.argv),
        "machine": info,
        "settings": dict(
            models=args.models, tasks=args.tasks, modes=args.modes, repeats=args.repeats,
            target_seconds_per_measurement=args.target_seconds, quick=args.quick,
            optimizer="torch.optim.AdamW(lr=1e-4, weight_decay=0.05, fused=True) for both",
            drop_path_rate=0.0, dropout=0.0, dtype="float32",
            compile="torch.compile(model) with default options (Inductor); same for both",
            timing="round-robin over all configurations of a (model, task), order rotated each repeat; "
                   "wall-clock seconds per step; speed-up = median of paired per-repeat ratios",
            weights="timm's random init, loaded into ours with cait_edu.load_official (identical)",
        ),
        "targets": dict(TARGETS),
        "gemm": {},
        "results": [],
        "ratios": [],
        "flops": [],
        "memory": [],
        "profile_top_ops": {},
        "notes": [],
    }
    table_rows = [["model", "task", "batch", "impl", "mode", "img/s median", "img/s best", "compile s"]]
    for name in args.models:
        b_train, b_infer = (8, 16) if args.quick else default_batches(name)
        batches = {"train": args.batch_train or b_train, "infer": args.batch_infer or b_infer}
        for task in args.tasks:
            log(f"{name} / {task} (batch {batches[task]})")
            res = bench_model_task(name, task, batches[task], args.modes, args.repeats, args.target_seconds, device, log,
                                   gemm_size=args.gemm_size)
            report["results"] += res["results"]
            for r in res["results"]:
                r["loadavg_1min_per_repeat"] = res["loadavg_1min_per_repeat"]
                table_rows.append([name, task, str(r["batch"]), r["impl"], r["mode"], f"{r['images_per_s_median']:.1f}",
                                   f"{r['images_per_s_best']:.1f}", "" if r["compile_s"] is None else f"{r['compile_s']:.0f}"])
            wall = res["wall"]
            med = {k: statistics.median(v) for k, v in wall.items()}
            pairs = [("ours_eager", "timm_eager")]
            if "compiled" in args.modes:
                pairs += [("ours_compiled", "timm_compiled"), ("ours_compiled", "timm_eager"), ("ours_compiled", "ours_eager")]
            ratios = [ratio_entry(name, task, o, t, wall) for o, t in pairs if o in wall and t in wall]
            # the "fastest mode" comparison: our fastest mode against timm's fastest mode
            ours_best = min((k for k in wall if k.startswith("ours_")), key=med.get)
            timm_best = min((k for k in wall if k.startswith("timm_")), key=med.get)
            ratios.append(ratio_entry(name, task, ours_best, timm_best, wall, "fastest vs fastest"))
            report["ratios"] += ratios
            if task == "train":
                _add_flops(report, name, res)
                if not args.no_profile:
                    ours = res["ours_model"]
                    ours.train()
                    opt = make_optimizer(ours)
                    prof = {"ours_eager": profile_step(make_step("train", ours, res["x"], res["y"], opt), device)}
                    if "compiled" in args.modes:
                        prof["ours_compiled"] = profile_compiled(ours, res["x"], res["y"], opt, device)
                    report["profile_top_ops"][name] = prof
            del res
            gc.collect()
    gemm += gemm_rate(args.gemm_size, args.gemm_repeats, device)  # again at the end: load drifts
    gemm_med = statistics.median(gemm)
    report["gemm"] = dict(size=args.gemm_size, dtype="float32", threads=torch.get_num_threads(),
                          gflops_all=[round(v, 2) for v in gemm], gflops_median=round(gemm_med, 2))
    for f in report["flops"]:
        f["fraction_of_gemm"] = round(f["achieved_gflops"] / gemm_med, 4)

    if args.memory != "none":  # each configuration in a fresh subprocess
        for name in args.models:
            for r in report["results"]:
                if r["model"] != name or (args.memory == "eager" and r["mode"] != "eager"):
                    continue
                spec = dict(model=name, impl=r["impl"], mode=r["mode"], task=r["task"], batch=r["batch"],
                            device=str(device), threads=torch.get_num_threads())
                m = measure_memory(spec)
                report["memory"].append(m)
                log(f"  memory {name} {r['task']} {r['impl']} {r['mode']}: "
                    + (f"peak {m['peak_mb']:.0f} MB (step +{m['step_extra_mb']:.0f} MB)" if "peak_mb" in m
                       else f"error {m.get('error', '')[-300:]}"))

    info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    evaluate(report)
    report["tables"] = {"throughput": fmt_table(table_rows)}
    return report


def _add_flops(report: dict[str, Any], name: str, res: dict[str, Any]) -> None:
    """Achieved FLOP rate of every training configuration, against the GEMM rate of the same repeat."""
    flops = train_step_flops(res["ours_model"], res["x"], res["y"])
    gr = res["gemm_per_repeat"]
    for r in res["results"]:
        rate = flops / r["step_s_median"] / 1e9
        paired = statistics.median(flops / t / 1e9 / g for t, g in zip(r["step_s_all"], gr))
        report["flops"].append(dict(
            gemm_gflops_per_repeat=[round(g, 2) for g in gr],
            fraction_of_gemm_paired=round(paired, 4),
            model=name, batch=r["batch"], impl=r["impl"], mode=r["mode"], train_step_flops=flops,
            gflop_per_image=round(flops / r["batch"] / 1e9, 3), achieved_gflops=round(rate, 2),
            achieved_gflops_best=round(flops / r["step_s_min"] / 1e9, 2),
        ))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cait_edu.bench", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (cait_cifar_nano, eager, 2 repeats)")
    p.add_argument("--models", default=None, help=f"comma-separated model names (default {','.join(DEFAULT_MODELS)})")
    p.add_argument("--tasks", default="train,infer")
    p.add_argument("--modes", default=None, help="eager,compiled (quick: eager)")
    p.add_argument("--out", default=None, help="JSON report (default data/bench/bench_<device type>.json, "
                                               "e.g. bench_cpu.json or bench_cuda.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    p.add_argument("--repeats", type=int, default=None, help="measurements per configuration (default 7, quick 2)")
    p.add_argument("--target-seconds", type=float, default=None, help="length of one measurement (default 3, quick 0.2)")
    p.add_argument("--batch-train", type=int, default=0)
    p.add_argument("--batch-infer", type=int, default=0)
    p.add_argument("--gemm-size", type=int, default=None, help="square matmul size (default 2048, quick 512)")
    p.add_argument("--gemm-repeats", type=int, default=None)
    p.add_argument("--memory", choices=("all", "eager", "none"), default=None,
                   help="peak memory in fresh subprocesses for all modes, eager only, or none (default all; quick eager)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--silent", action="store_true")
    p.add_argument("--show", default=None, metavar="JSON", help="print the report of an earlier run; measure nothing")
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    q = args.quick
    args.models = (args.models or ("cait_cifar_nano" if q else ",".join(DEFAULT_MODELS))).split(",")
    args.tasks = args.tasks.split(",")
    args.modes = (args.modes or ("eager" if q else "eager,compiled")).split(",")
    for m in args.modes:
        if m not in ("eager", "compiled"):
            p.error(f"unknown mode {m!r}: choose eager and/or compiled")
    for t in args.tasks:
        if t not in ("train", "infer"):
            p.error(f"unknown task {t!r}: choose train and/or infer")
    args.out = args.out or str(default_out(args.device))
    args.repeats = args.repeats or (2 if q else 7)
    args.target_seconds = args.target_seconds or (0.2 if q else 3.0)
    args.gemm_size = args.gemm_size or (512 if q else 2048)
    args.gemm_repeats = args.gemm_repeats or (3 if q else 7)
    args.memory = args.memory or ("eager" if q else "all")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.memory_worker:
        print(RESULT_PREFIX + json.dumps(memory_worker(json.loads(args.memory_worker))), flush=True)
        return None
    if args.show:
        report = json.loads(Path(args.show).read_text())
        print_report(report)
        return report
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)
    if not args.silent:
        print_report(report)
        print(f"\nwrote {out}")
    return report
