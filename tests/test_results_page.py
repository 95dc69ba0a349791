"""cait_edu.results_page: the book's results page, written from small fake result files."""
import json

import pytest

from cait_edu.results_page import ResultFileError, main, render, write_page


def _run(scheme, depth, seed, status="ok", final=None):
    return {
        "id": f"{scheme}-d{depth}-s{seed}",
        "labels": {"scheme": scheme, "depth": depth, "seed": seed},
        "status": status,
        "final_top1": final,
        "best_top1": final,
        "diverged_at": 57 if status == "diverged" else None,
        "steps": 100,
        "wall_time_s": 42.0,
    }


def _experiment(runs, planned, complete):
    return {
        "experiment": "toy_sweep",
        "doc": "a toy sweep of two schemes",
        "command": "python -m cait_edu.experiments toy_sweep --seeds 2",
        "machine": {"cpu": "Test CPU", "cores": 2, "gpu": None, "torch": "2.0"},
        "planned_runs": planned,
        "runs": {r["id"]: r for r in runs},
        "complete": complete,
        "wall_time_s": 42.0 * len(runs),
        "git_commit": "0123456789abcdef",
    }


@pytest.fixture
def data(tmp_path):
    runs = [_run("layerscale", 12, 0, final=40.0), _run("layerscale", 12, 1, final=42.0),
            _run("none", 12, 0, status="diverged"), _run("none", 12, 1, final=20.0)]
    planned = [r["id"] for r in runs] + ["layerscale-d24-s0"]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "toy_sweep.json").write_text(json.dumps(_experiment(runs, planned, False)))
    # a --quick smoke file is never shown
    (tmp_path / "results" / "toy_sweep.quick.json").write_text(json.dumps(_experiment(runs, planned, True)))
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench_cpu.json").write_text(json.dumps({
        "created": "2026-01-02T03:04:05",
        "command": "python -m cait_edu.bench --out data/bench/bench_cpu.json",
        "machine": {"cpu_model": "Test CPU", "device": "cpu", "logical_cores": 2, "threads": 2,
                    "torch": "2.0", "timm": "1.0", "dtype": "float32"},
        "results": [
            {"model": "m", "task": "train", "batch": 8, "impl": "timm", "mode": "eager", "images_per_s_median": 10.0},
            {"model": "m", "task": "train", "batch": 8, "impl": "ours", "mode": "eager", "images_per_s_median": 12.5},
        ],
        "ratios": [{"model": "m", "task": "train", "config": "ours_eager", "baseline": "timm_eager",
                    "speedup_paired_median": 1.25}],
        "memory": [{"model": "m", "task": "train", "batch": 8, "impl": "timm", "mode": "eager", "peak_mb": 100.4},
                   {"model": "m", "task": "train", "batch": 8, "impl": "ours", "mode": "eager", "peak_mb": 90.6}],
        "target_verdicts": {"m/train": {"eager_no_slower": {"met": True, "speedup": 1.25}}},
    }))
    return tmp_path


def test_experiment_section(data):
    page = render(data)
    assert page.startswith("# Results\n")
    assert "### `toy_sweep`" in page and "A toy sweep of two schemes." in page
    assert "**In progress**: 4 of 5 planned runs finished (3 ok, 1 diverged)" in page
    assert "```bash\npython -m cait_edu.experiments toy_sweep --seeds 2\n```" in page
    assert "code at commit `0123456789`" in page
    # summary over seeds: mean ± half-range of the runs that did not diverge, the diverged one counted
    assert "| layerscale | 12 | 41.00 ± 1.00 | 2 | 0 |" in page
    assert "| none | 12 | 20.00 | 2 | 1 |" in page
    # every run, in the planned order, the diverged one with its step
    assert "| `none-d12-s0` | none | 12 | 0 | diverged | — | — | 57 | 100 | 42 s |" in page
    assert page.index("`layerscale-d12-s0`") < page.index("`none-d12-s0`")
    assert page.count("### `toy_sweep`") == 1  # the .quick.json file is skipped


def test_bench_section(data):
    page = render(data)
    assert "### `data/bench/bench_cpu.json`" in page
    assert "```bash\npython -m cait_edu.bench --out data/bench/bench_cpu.json\n```" in page
    assert "| `m` | train | 8 | eager | 10 | 12.50 | 1.25 |" in page
    assert "| `m` | train | 8 | eager | 100 | 91 |" in page
    assert "| m/train | `eager_no_slower` | yes | 1.25 |" in page


def test_complete_experiment_and_empty_data(tmp_path):
    (tmp_path / "results").mkdir()
    runs = [_run("none", 6, 0, final=30.0)]
    exp = _experiment(runs, [runs[0]["id"]], True)
    (tmp_path / "results" / "done.json").write_text(json.dumps(exp))
    page = render(tmp_path)
    assert "**Complete**: all 1 runs finished (1 ok)." in page
    assert "Summary over seeds" not in page  # one run per setting: nothing to average
    assert "No benchmark has been recorded yet" in page
    empty = render(tmp_path / "nothing-here")
    assert "No experiment has recorded results yet" in empty


def test_write_only_when_changed_and_cli(data, tmp_path, capsys):
    out = tmp_path / "book" / "results.md"
    assert write_page(data, out) is True
    assert write_page(data, out) is False
    assert out.read_text() == render(data)
    assert main(["--data", str(data), "--out", str(out)]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_broken_file_names_itself(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bad.json").write_text("{not json")
    with pytest.raises(ResultFileError, match="bad.json"):
        render(tmp_path)


def test_a_file_whose_runs_ran_on_several_machines_names_them_all(data):
    path = data / "results" / "toy_sweep.json"
    exp = json.loads(path.read_text())
    exp["machines"] = {"AMD EPYC": 3, "Intel Xeon": 1}
    path.write_text(json.dumps(exp))
    assert "on AMD EPYC (3 runs) and Intel Xeon (1 run), 2 cores, torch 2.0," in render(data)


def test_a_speed_file_gets_its_own_table_not_an_experiment_section(data):
    (data / "results" / "cpu_record_speed.json").write_text(json.dumps({
        "command": "python -m cait_edu.experiments.speed --steps 40", "budget_s": 7200, "steps": 40, "warmup": 10,
        "machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 2, "torch": "2.0"},
        "candidates": {"conv-d128-L6": {"config": {"batch_size": 128}, "params": 1_234_567, "macs": 98_760_000,
                                        "img_s": 101.26, "images_in_budget": 729_072, "windows": [100.0]}}}))
    page = render(data)
    assert "## Training speed of the CPU record's candidates" in page
    assert "| `conv-d128-L6` | 128 | 1.23 | 98.8 | 101.3 | 729,072 | 14.6 |" in page
    assert "a 2-hour run sees" in page and "### `cpu_record_speed`" not in page  # not taken for an experiment
