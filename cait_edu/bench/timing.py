"""Timing: all configurations of a (model, task) measured round-robin, and paired speed-ups."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import torch

from .machine import gemm_rate
from .workload import build_pair, make_inputs, make_optimizer, make_step, sync


def timed(step: Callable[[], None], iters: int, device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU seconds per step, averaged over ``iters`` consecutive steps."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - w0) / iters, (time.process_time() - c0) / iters


def bench_model_task(name: str, task: str, batch: int, modes: list[str], repeats: int,
                     target_s: float, device: torch.device, log: Callable[[str], None],
                     gemm_size: int = 2048) -> dict[str, Any]:
    """Time ours and timm's model in every mode on one task, ``repeats`` times each.

    Returns the per-configuration results (every repeat kept), the raw wall times by configuration
    (``"ours_eager"`` ...), the load average and, for training, the GEMM rate of every repeat, plus
    our model and the batch for the FLOP count and the profile that follow.
    """
    ours, ref = build_pair(name, device)
    x, y = make_inputs(name, batch, device)
    impls = {"timm": ref, "ours": ours}
    configs: dict[str, dict[str, Any]] = {}
    for mode in modes:
        for impl, model in impls.items():
            model.train(task == "train")
            run = torch.compile(model) if mode == "compiled" else model
            opt = make_optimizer(model) if task == "train" else None
            step = make_step(task, run, x, y, opt)
            key = f"{impl}_{mode}"
            t0 = time.perf_counter()
            step()  # first call: compiles in compiled mode
            sync(device)
            first = time.perf_counter() - t0
            warm, _ = timed(step, 1, device)
            configs[key] = dict(impl=impl, mode=mode, step=step, first_call_s=first, warm_s=warm)
            log(f"  {name} {task} b={batch} {key}: first call {first:.1f}s, warm step {warm:.3f}s")
    # steps per measurement: about target_s seconds each, the same for every configuration
    iters = max(1, min(100, round(target_s / max(min(c["warm_s"] for c in configs.values()), 1e-6))))
    keys = list(configs)
    wall: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    loads = []
    gemm_per_repeat = []  # the GEMM reference, measured in every repeat (paired with the steps)
    for r in range(repeats):
        loads.append(round(os.getloadavg()[0], 2))
        if task == "train":
            gemm_per_repeat.append(statistics.median(gemm_rate(gemm_size, 3, device)))
        order = keys[r % len(keys):] + keys[: r % len(keys)]  # rotate the order every repeat
        for k in order:
            w, c = timed(configs[k]["step"], iters, device)
            wall[k].append(w)
            cpu[k].append(c)
    results = []
    for k in keys:
        c = configs[k]
        med = statistics.median(wall[k])
        # compile time: what the first two calls took beyond two steady steps (a second call can
        # recompile too, e.g. when a guard fails after the first optimizer step)
        compile_s = max(c["first_call_s"] + c["warm_s"] - 2 * med, 0.0) if c["mode"] == "compiled" else None
        results.append(dict(
            model=name, task=task, batch=batch, impl=c["impl"], mode=c["mode"], iters_per_measurement=iters,
            step_s_all=[round(v, 5) for v in wall[k]], cpu_s_all=[round(v, 5) for v in cpu[k]],
            step_s_median=round(med, 5), step_s_min=round(min(wall[k]), 5),
            images_per_s_median=round(batch / med, 2), images_per_s_best=round(batch / min(wall[k]), 2),
            first_call_s=round(c["first_call_s"], 2), second_call_s=round(c["warm_s"], 2),
            compile_s=None if compile_s is None else round(compile_s, 1),
        ))
    return {"results": results, "loadavg_1min_per_repeat": loads, "wall": wall, "ours_model": ours, "x": x, "y": y,
            "gemm_per_repeat": gemm_per_repeat}


def paired_ratios(baseline: list[float], config: list[float]) -> list[float]:
    """Speed-up of every repeat: baseline time / config time, both from the same round."""
    return [t / o for t, o in zip(baseline, config)]


def ratio_entry(name: str, task: str, ours_key: str, timm_key: str, wall: dict[str, list[float]],
                comparison: str = "") -> dict[str, Any]:
    """Speed-up of configuration ``ours_key`` over ``timm_key`` (time of the baseline / time of the config)."""
    o, t = wall[ours_key], wall[timm_key]
    return dict(
        model=name, task=task, comparison=comparison or f"{ours_key} vs {timm_key}", config=ours_key, baseline=timm_key,
        speedup_paired_median=round(statistics.median(paired_ratios(t, o)), 4),
        speedup_of_medians=round(statistics.median(t) / statistics.median(o), 4),
        speedup_of_minima=round(min(t) / min(o), 4),
    )
