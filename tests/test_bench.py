"""The benchmark script runs end to end and writes a well-formed report (issue #3).

Smoke test only: ``--quick`` on the smallest CIFAR preset, eager mode. No speed is asserted --
timings on a shared CPU say nothing in a test; the real figures live in data/bench/bench_cpu.json.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parent.parent


def _check_report(rep: dict) -> None:
    for key in ("machine", "settings", "gemm", "results", "ratios", "flops", "memory", "targets",
                "target_verdicts", "notes", "profile_top_ops"):
        assert key in rep, key
    m = rep["machine"]
    assert m["threads"] >= 1 and m["torch"] and m["cpu_model"]
    assert len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3
    # every (task, impl) measured, with all repeats kept and a consistent median
    seen = {(r["task"], r["impl"], r["mode"]) for r in rep["results"]}
    assert seen == {(t, i, "eager") for t in ("train", "infer") for i in ("ours", "timm")}
    for r in rep["results"]:
        assert len(r["step_s_all"]) == rep["settings"]["repeats"] == 2
        assert all(t > 0 for t in r["step_s_all"])
        assert min(r["step_s_all"]) <= r["step_s_median"] <= max(r["step_s_all"])
        assert math.isclose(r["images_per_s_median"], r["batch"] / r["step_s_median"], rel_tol=1e-2)
    for rt in rep["ratios"]:
        assert rt["speedup_paired_median"] > 0
    assert rep["gemm"]["gflops_median"] > 0
    (f,) = [f for f in rep["flops"] if f["impl"] == "ours"]
    assert f["train_step_flops"] > 0 and 0 < f["fraction_of_gemm"]
    assert rep["memory"] and all(mem.get("peak_mb", 0) > 0 for mem in rep["memory"])
    prof = rep["profile_top_ops"]["cait_cifar_nano"]["ours_eager"]
    assert prof["top_ops"] and math.isclose(sum(prof["share"].values()), 1.0, abs_tol=1e-3)


def test_quick_benchmark_writes_valid_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cait_edu.bench", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "img/s" in proc.stdout  # the readable table
    rep = json.loads(out.read_text())
    _check_report(rep)


def test_cli_rejects_unknown_mode():
    from cait_edu.bench import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--modes", "turbo"])
    args = parse_args(["--quick"])
    assert args.models == ["cait_cifar_nano"] and args.modes == ["eager"] and args.repeats == 2
