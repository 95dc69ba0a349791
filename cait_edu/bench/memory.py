"""Peak memory of one configuration, measured in a fresh process so that nothing else the
benchmark allocated (other models, compiler caches) is counted.

:func:`measure_memory` starts ``python -m cait_edu.bench --memory-worker SPEC``; that process runs
:func:`memory_worker` and prints one ``MEMORY_RESULT {json}`` line, which is parsed here.
"""
from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .workload import build_one, make_inputs, make_optimizer, make_step, sync

RESULT_PREFIX = "MEMORY_RESULT "


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Collect garbage and hand the allocator's free pages back to the OS (glibc ``malloc_trim``),
    so that the RSS before a step does not include memory freed by earlier steps."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: peak memory of one configuration (``spec``: model, impl, mode,
    task, batch, device, threads), after two warm-up steps so that compilation is not counted."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model = build_one(spec["model"], spec["impl"], device)
    x, y = make_inputs(spec["model"], spec["batch"], device)
    opt = make_optimizer(model) if spec["task"] == "train" else None
    model.train(spec["task"] == "train")
    run = torch.compile(model) if spec["mode"] == "compiled" else model
    step = make_step(spec["task"], run, x, y, opt)
    for _ in range(2):
        step()
    sync(device)
    _release_free_memory()
    out: dict[str, Any] = dict(spec)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(2):
            step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        out.update(method="torch.cuda.max_memory_allocated", idle_mb=base / 2**20, peak_mb=peak / 2**20)
    else:
        idle_kb = _read_status_kb("VmRSS")
        reset = _reset_peak_rss()
        step()
        _release_free_memory()
        step()
        hwm_kb = _read_status_kb("VmHWM")
        life_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_kb = hwm_kb if (reset and hwm_kb) else life_kb
        out.update(
            method="fresh process; 2 warm-up steps, free memory returned to the OS (malloc_trim), peak-RSS "
                   "counter reset, then peak RSS (VmHWM) over 2 steps; idle = RSS just before them" if reset and hwm_kb
            else "lifetime max RSS (ru_maxrss) of a fresh process (peak reset unavailable)",
            idle_mb=(idle_kb or 0) / 1024, peak_mb=peak_kb / 1024, lifetime_max_rss_mb=life_kb / 1024,
        )
    out["step_extra_mb"] = out["peak_mb"] - out["idle_mb"]
    for k in ("idle_mb", "peak_mb", "step_extra_mb", "lifetime_max_rss_mb"):
        if k in out:
            out[k] = round(out[k], 1)
    return out


def measure_memory(spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Run :func:`memory_worker` on ``spec`` in a fresh interpreter; its result, or ``spec`` with an error."""
    cmd = [sys.executable, "-m", "cait_edu.bench", "--memory-worker", json.dumps(spec)]
    root = str(Path(__file__).resolve().parents[2])  # the directory that holds cait_edu/
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(spec, error="timeout")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return dict(spec, error=(proc.stderr or proc.stdout)[-2000:])
