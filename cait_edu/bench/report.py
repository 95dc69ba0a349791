"""From measured numbers to words: the targets, the sentences that say which configuration is
faster, the notes, and the printed tables.

Every claim is decided by the numbers of the report it is made from: a configuration is called
"faster" or "slower" than another only when the paired median speed-up is outside a noise band
*and* most repeats agree; otherwise the two are "within noise". No sentence says *why* one is
faster: the benchmark measures times, not causes (the profile lists where the time goes).
"""
from __future__ import annotations

import statistics
from typing import Any

from .timing import paired_ratios

TARGETS = {
    "eager_speedup_min": 1.0,  # ours eager no slower than timm eager
    "fastest_speedup_min": 1.15,  # ours' fastest mode vs timm's fastest mode
    "gemm_fraction_min": 0.5,  # achieved FLOP rate of our training step / measured GEMM rate
}
NOISE_TOL = 0.03  # a paired median speed-up within 1 +- 3% is no measured difference
AGREE_MIN = 0.8  # ... nor is one that fewer than 80% of the repeats agree with
LOAD_BUSY = 0.5  # 1-min load average before the run from which other processes count as busy


def speedup_verdict(paired: list[float], median: float | None = None, tol: float = NOISE_TOL,
                    agree: float = AGREE_MIN) -> str:
    """"faster", "slower" or "within noise" from the per-repeat speed-ups ``paired`` (> 1: faster)."""
    med = statistics.median(paired) if median is None else median
    n = len(paired)
    if med > 1 + tol and sum(r > 1 for r in paired) >= agree * n:
        return "faster"
    if med < 1 - tol and sum(r < 1 for r in paired) >= agree * n:
        return "slower"
    return "within noise"


def _walls(report: dict[str, Any]) -> dict[tuple[str, str, str], list[float]]:
    return {(r["model"], r["task"], f"{r['impl']}_{r['mode']}"): r["step_s_all"] for r in report.get("results", [])}


def speedup_conclusions(report: dict[str, Any]) -> list[str]:
    """One sentence per speed-up in ``report["ratios"]``, its wording chosen by the measured ratios."""
    walls = _walls(report)
    out = []
    for rt in report["ratios"]:
        o = walls.get((rt["model"], rt["task"], rt["config"]))
        t = walls.get((rt["model"], rt["task"], rt["baseline"]))
        paired = paired_ratios(t, o) if o and t else [rt["speedup_paired_median"]]
        med, n = rt["speedup_paired_median"], len(paired)
        verdict = speedup_verdict(paired, med)
        what = f"{rt['model']} {rt['task']}" + (" (fastest vs fastest)" if rt["comparison"] == "fastest vs fastest" else "")
        how = f"speed-up {med:.2f}x, paired median of {n} repeat{'s' if n != 1 else ''}"
        if verdict == "faster":
            out.append(f"{what}: {rt['config']} is faster than {rt['baseline']} "
                       f"({how}; faster in {sum(r > 1 for r in paired)} of them)")
        elif verdict == "slower":
            out.append(f"{what}: {rt['config']} is slower than {rt['baseline']} "
                       f"({how}; slower in {sum(r < 1 for r in paired)} of them)")
        else:
            out.append(f"{what}: {rt['config']} and {rt['baseline']} are within noise of each other "
                       f"({how}; {rt['config']} ahead in {sum(r > 1 for r in paired)} of them; a difference "
                       f"needs a median beyond 1 +- {NOISE_TOL:.0%} and {AGREE_MIN:.0%} of the repeats agreeing)")
    return out


def _target_verdicts(report: dict[str, Any]) -> dict[str, Any]:
    verdict: dict[str, Any] = {}
    for rt in report["ratios"]:
        key = f"{rt['model']}/{rt['task']}"
        if rt["config"] == "ours_eager" and rt["baseline"] == "timm_eager":
            ok = rt["speedup_paired_median"] >= TARGETS["eager_speedup_min"]
            verdict.setdefault(key, {})["eager_no_slower"] = dict(met=ok, speedup=rt["speedup_paired_median"])
        if rt.get("comparison") == "fastest vs fastest":
            ok = rt["speedup_paired_median"] >= TARGETS["fastest_speedup_min"]
            verdict.setdefault(key, {})["fastest_ge_1.15x"] = dict(
                met=ok, speedup=rt["speedup_paired_median"], ours=rt["config"], timm=rt["baseline"])
    for f in report["flops"]:
        if f["impl"] != "ours":
            continue
        key = f"{f['model']}/train"
        best = verdict.setdefault(key, {}).get("gemm_fraction_ge_0.5")
        frac = f.get("fraction_of_gemm_paired", f["fraction_of_gemm"])
        if best is None or frac > best["fraction"]:
            verdict[key]["gemm_fraction_ge_0.5"] = dict(
                met=frac >= TARGETS["gemm_fraction_min"], fraction=frac, mode=f["mode"],
                fraction_vs_run_median_gemm=f["fraction_of_gemm"],
                fraction_vs_best_gemm=round(f["achieved_gflops"] / max(report["gemm"]["gflops_all"]), 4))
    return verdict


def _notes(report: dict[str, Any]) -> list[str]:
    notes = []
    for model, prof in report["profile_top_ops"].items():
        for mode, p in prof.items():
            basis = p.get("time_basis", "self CPU time")
            others = [o for o in p["top_ops"] if o["kind"] != "gemm"][:5]
            notes.append(
                f"{model} ours {mode} training step: {p['share']['gemm']:.0%} of {basis} in matrix products, "
                f"{p['share']['optimizer']:.0%} in the optimizer, {p['share']['other']:.0%} elsewhere; top non-GEMM: "
                + ", ".join(f"{o['op']} {o['share']:.1%}" for o in others))
    for r in report["results"]:
        if r["mode"] == "compiled" and r.get("second_call_s", 0) > 3 * r["step_s_median"]:
            notes.append(f"{r['model']} {r['task']} {r['impl']} compiled: the second call took {r['second_call_s']:.0f} s "
                         f"against a steady step of {r['step_s_median']:.1f} s, so it probably compiled again; "
                         "compile_s counts both calls.")
    m = report["machine"]
    start, end, cores = m.get("loadavg_start"), m.get("loadavg_end"), m.get("logical_cores")
    if start:
        busy = start[0] >= LOAD_BUSY
        notes.append(
            f"load average at start {start} and end {end} on {cores} cores: "
            + ("other processes were using the CPU before the run began, so absolute rates are probably lower "
               "than on an idle machine; " if busy else "the machine was about idle before the run began; ")
            + "speed-ups are paired per repeat to cancel most of the load drift.")
    return notes


def evaluate(report: dict[str, Any]) -> None:
    """Fill ``target_verdicts``, ``conclusions`` and ``notes`` of a report from its numbers."""
    report["target_verdicts"] = _target_verdicts(report)
    report["conclusions"] = speedup_conclusions(report)
    report["notes"] = report.get("notes", []) + _notes(report)


def fmt_table(rows: list[list[str]]) -> str:
    """Plain-text table: first row the header, first column left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    """Print the tables, targets, conclusions (derived again from the numbers) and notes."""
    print()
    print(report["tables"]["throughput"])
    print()
    rows = [["model", "task", "", "config", "baseline", "speed-up (paired median)", "of medians", "of minima"]]
    for r in report["ratios"]:
        rows.append([r["model"], r["task"], r["comparison"] if r["comparison"] == "fastest vs fastest" else "",
                     r["config"], r["baseline"], f"{r['speedup_paired_median']:.3f}",
                     f"{r['speedup_of_medians']:.3f}", f"{r['speedup_of_minima']:.3f}"])
    print(fmt_table(rows))
    g = report["gemm"]
    where = report["machine"].get("gpu") or f"{g['threads']} threads"
    print(f"\nGEMM {g['size']}x{g['size']} fp32 on {where}: {g['gflops_median']:.1f} GFLOP/s (median)")
    if report["flops"]:
        rows = [["model", "impl", "mode", "GFLOP/image", "achieved GFLOP/s", "fraction of GEMM (paired)", "(vs run median)"]]
        for f in report["flops"]:
            rows.append([f["model"], f["impl"], f["mode"], f"{f['gflop_per_image']:.2f}", f"{f['achieved_gflops']:.1f}",
                         f"{f['fraction_of_gemm_paired']:.1%}" if "fraction_of_gemm_paired" in f else "",
                         f"{f['fraction_of_gemm']:.1%}"])
        print(fmt_table(rows))
    if report["memory"]:
        rows = [["model", "task", "batch", "impl", "mode", "peak MB", "step +MB"]]
        for m in report["memory"]:
            rows.append([m["model"], m["task"], str(m["batch"]), m["impl"], m["mode"],
                         f"{m.get('peak_mb', float('nan')):.0f}", f"{m.get('step_extra_mb', float('nan')):.0f}"])
        print()
        print(fmt_table(rows))
    print("\ntargets:")
    for key, v in report["target_verdicts"].items():
        print(f"  {key}: " + "; ".join(f"{k} {'MET' if d['met'] else 'missed'} "
                                       f"({d.get('speedup', d.get('fraction'))})" for k, d in v.items()))
    print("\nconclusions (from the measured ratios):")
    for c in speedup_conclusions(report):
        print("  " + c)
    for n in report["notes"]:
        print("note:", n)
