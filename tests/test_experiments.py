"""The experiment runner: a quick experiment end to end, skipping finished runs, continuing an
interrupted run from its checkpoint, recording a diverged run, and the command line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cait_edu.experiments import EXPERIMENTS, Experiment, RunSpec, load_trained, run_experiment
from cait_edu.experiments import runner
from cait_edu.train import make_config, train, validate_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import REPO, env, write_fake_cifar  # noqa: E402

EXP = EXPERIMENTS["layerscale_depth"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """256 training images: the quick experiments train on 256."""
    return write_fake_cifar(tmp_path_factory.mktemp("fakecifar"), n_train=256, n_test=64)


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory, fake_data):
    root = tmp_path_factory.mktemp("exp")
    res = run_experiment(EXP, quick=True, seeds=1, results_dir=root / "results", runs_dir=root / "runs",
                         data_dir=str(fake_data), say=lambda m: None)
    return root, res


def test_quick_experiment_writes_a_complete_result_file(quick_result):
    root, res = quick_result
    on_disk = json.loads((root / "results" / "layerscale_depth.quick.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["complete"] and on_disk["quick"] and on_disk["seeds"] == 1
    assert on_disk["command"] == "python -m cait_edu.experiments layerscale_depth --quick --seeds 1"
    assert {"cpu", "cores", "torch_threads", "torch"} <= set(on_disk["machine"])
    assert len(on_disk["git_commit"]) >= 7
    assert list(on_disk["runs"]) == on_disk["planned_runs"] and len(on_disk["runs"]) == 4
    for rec in on_disk["runs"].values():
        depth = rec["labels"]["depth"]
        assert rec["config"]["model_kwargs"]["depth"] == depth and rec["seed"] == rec["labels"]["seed"]
        assert rec["status"] in ("ok", "stalled") and rec["steps"] == 4
        assert rec["final_top1"] == rec["curves"]["val_top1"][-1] and rec["best_top1"] >= rec["final_top1"]
        assert len(rec["curves"]["epoch"]) == len(rec["curves"]["train_loss"]) == 1
        assert rec["curves"]["elapsed_s"][0] > 0 and rec["curves"]["throughput_img_s"][0] > 0
        gam = rec["extra"][-1]
        if rec["labels"]["scheme"] == "layerscale":
            assert len(gam["gamma_attn"]) == depth and all(g > 0 for g in gam["gamma_attn"])
        else:
            assert gam["gamma_attn"] == [None] * depth  # the plain ViT has no scales
        assert rec["wall_time_s"] > 0 and rec["machine"]["cpu"] == on_disk["machine"]["cpu"]
    assert on_disk["machines"] == {on_disk["machine"]["cpu"]: 4}
    assert on_disk["wall_time_s"] == pytest.approx(sum(r["wall_time_s"] for r in on_disk["runs"].values()), abs=0.5)


def test_rerun_skips_finished_runs(quick_result, monkeypatch):
    root, res = quick_result

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "train", no_training)
    again = run_experiment(EXP, quick=True, seeds=1, results_dir=root / "results", runs_dir=root / "runs",
                           say=lambda m: None)
    assert again["runs"] == res["runs"] and again["complete"]


def test_interrupted_run_continues_from_its_checkpoint(quick_result, tmp_path, fake_data, monkeypatch):
    _, res = quick_result
    spec = EXP.runs(True, 1)[3]
    results, runs = tmp_path / "results", tmp_path / "runs"
    # The first three runs are finished (copied); the fourth stopped after its step-2 checkpoint
    # (max_steps; that also evaluates once more, so its curve has one extra point).
    partial = {**res, "runs": {k: v for k, v in res["runs"].items() if k != spec.id}, "complete": False}
    results.mkdir()
    (results / "layerscale_depth.quick.json").write_text(json.dumps(partial))
    run_dir = runs / "layerscale_depth" / spec.id
    train(make_config(**{**spec.config, "out": str(run_dir), "data_dir": str(fake_data), "max_steps": 2}))
    calls = []
    real = runner.train

    def spy(cfg, **kw):
        calls.append(kw["resume"])
        return real(cfg, **kw)

    monkeypatch.setattr(runner, "train", spy)
    done = run_experiment(EXP, quick=True, seeds=1, results_dir=results, runs_dir=runs, data_dir=str(fake_data),
                          say=lambda m: None)
    assert calls == [True] and done["complete"]
    ours, ref = done["runs"][spec.id], res["runs"][spec.id]
    # it ends exactly where the uninterrupted run ended
    assert (ours["steps"], ours["final_top1"], ours["final_val_loss"]) == (ref["steps"], ref["final_top1"],
                                                                          ref["final_val_loss"])
    assert ours["extra"][-1] == ref["extra"][-1] and ours["curves"]["step"][-1] == ref["curves"]["step"][-1]


def test_a_changed_definition_reruns_the_run(quick_result, tmp_path, fake_data):
    _, res = quick_result
    results = tmp_path / "results"
    results.mkdir()
    stale = json.loads(json.dumps(res))
    first = next(iter(stale["runs"]))
    stale["runs"][first]["config"]["lr"] = 123.0  # recorded with another lr than the definition's
    (results / "layerscale_depth.quick.json").write_text(json.dumps(stale))
    done = run_experiment(EXP, quick=True, seeds=1, results_dir=results, runs_dir=tmp_path / "runs",
                          data_dir=str(fake_data), max_runs=1, say=lambda m: None)
    assert done["runs"][first]["config"]["lr"] == res["runs"][first]["config"]["lr"]


def test_a_checkpoint_of_an_earlier_definition_is_moved_aside_not_resumed(quick_result, tmp_path, fake_data):
    """A run directory whose checkpoint was trained with another config (the run's definition changed
    since) cannot be continued as this run: the runner moves it aside, keeps it, and starts afresh,
    ending where an uninterrupted run of the current definition ends."""
    _, res = quick_result
    spec = EXP.runs(True, 1)[0]
    run_dir = tmp_path / "runs" / "layerscale_depth" / spec.id
    train(make_config(**{**spec.config, "lr": spec.config["lr"] / 2, "out": str(run_dir),
                         "data_dir": str(fake_data), "max_steps": 2}))
    said = []
    done = run_experiment(EXP, quick=True, seeds=1, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs",
                          data_dir=str(fake_data), max_runs=1, only=[spec.id], say=said.append)
    aside = [p for p in run_dir.parent.iterdir() if p.name.startswith(f"{spec.id}.stale-")]
    assert len(aside) == 1 and (aside[0] / "last.pt").is_file()  # the earlier run is kept
    assert any("another config (lr)" in m for m in said)
    ours, ref = done["runs"][spec.id], res["runs"][spec.id]
    assert (ours["steps"], ours["final_top1"], ours["final_val_loss"]) == (ref["steps"], ref["final_top1"],
                                                                          ref["final_val_loss"])
    # a checkpoint of the same run differs only in what a resume may change: not stale
    assert runner._stale_changes(run_dir, make_config(**{**spec.config, "out": str(run_dir), "epochs": 3})) == []


def test_only_trains_the_matching_runs_in_pattern_order(tmp_path, monkeypatch):
    trained = []

    def fake_train_one(exp, spec, run_dir, data_dir, commit, say):
        trained.append(spec.id)
        return {"id": spec.id, "config": runner._resolved(spec), "wall_time_s": 1.0, "status": "ok"}

    monkeypatch.setattr(runner, "_train_one", fake_train_one)
    ids = [s.id for s in EXP.runs(True, 2)]  # seed, lr, depth, scheme order: ...-s0 x4, ...-s1 x4
    res = run_experiment(EXP, quick=True, seeds=2, results_dir=tmp_path, runs_dir=tmp_path / "runs",
                         only=["*-d4-*-s1", "*-s0"], say=lambda m: None)
    want = [i for i in ids if "-d4-" in i and i.endswith("-s1")] + [i for i in ids if i.endswith("-s0")]
    assert trained == want and len(want) == 6
    # the plan is still the whole experiment, in its own order, and it is not complete
    assert res["planned_runs"] == ids and not res["complete"] and list(res["runs"]) == [i for i in ids if i in want]
    with pytest.raises(ValueError, match="match no run"):
        run_experiment(EXP, quick=True, seeds=2, results_dir=tmp_path, runs_dir=tmp_path / "runs",
                       only=["*-s7"], say=lambda m: None)


def test_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path, fake_data):
    base = dict(EXP.runs(True, 1)[0].config)
    exp = Experiment("boom", "one diverging run, one normal", lambda quick, seeds: [
        RunSpec("hot", {**base, "lr": 1e30, "warmup_epochs": 0.0, "min_lr": 0.0}, {"lr": 1e30}),
        RunSpec("fine", base, {"lr": base["lr"]})])
    res = run_experiment(exp, quick=True, seeds=1, results_dir=tmp_path, runs_dir=tmp_path / "runs",
                         data_dir=str(fake_data), say=lambda m: None)
    hot, fine = res["runs"]["hot"], res["runs"]["fine"]
    assert hot["status"] == "diverged" and hot["diverged_at"].startswith("step ")
    assert fine["status"] in ("ok", "stalled") and res["complete"]


def test_full_grid_is_valid_and_as_documented():
    runs = EXP.runs(False, 2)
    assert len(runs) == 6 * 3 * 3 * 2
    labels = {(r.labels["scheme"], r.labels["depth"], r.labels["lr"]) for r in runs}
    assert len(labels) == 6 * 3 * 3
    for r in runs[:: len(runs) // 12]:  # a sample: each builds a valid config
        validate_config(make_config(**r.config))


def test_cli_lists_and_refuses_unknown_names(tmp_path):
    cmd = [sys.executable, "-m", "cait_edu.experiments"]
    r = subprocess.run(cmd + ["--list"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "layerscale_depth:" in r.stdout
    r = subprocess.run(cmd + ["nope"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown experiment 'nope'" in r.stderr
    r = subprocess.run(cmd + ["layerscale_depth", "--quick", "--only", "*-lr9-*", "--results-dir", str(tmp_path)],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "match no run of layerscale_depth" in r.stderr and not any(tmp_path.iterdir())


def test_a_config_field_added_later_does_not_invalidate_recorded_runs(quick_result, tmp_path, monkeypatch):
    _, res = quick_result
    results = tmp_path / "results"
    results.mkdir()
    old = json.loads(json.dumps(res))
    for rec in old["runs"].values():  # as recorded before TrainConfig had this field
        del rec["config"]["exempt_from_decay"]
    (results / "layerscale_depth.quick.json").write_text(json.dumps(old))

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "train", no_training)
    again = run_experiment(EXP, quick=True, seeds=1, results_dir=results, runs_dir=tmp_path / "runs",
                           say=lambda m: None)
    assert again["complete"] and list(again["runs"]) == list(res["runs"])


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "layerscale_depth"])
def test_every_experiment_runs_quickly(name, tmp_path, fake_data):
    exp = EXPERIMENTS[name]
    res = run_experiment(exp, quick=True, seeds=1, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs",
                         data_dir=str(fake_data), say=lambda m: None)
    assert res["complete"] and len(res["runs"]) == len(exp.runs(True, 1))
    for rid in exp.keep_weights:  # kept models rebuild from their file and give the recorded accuracy's model
        model, info = load_trained(f"{name}.quick", rid, root=tmp_path / "trained")
        assert info["run"] == rid and info["step"] == res["runs"][rid]["steps"]
        assert info["final_top1"] == res["runs"][rid]["final_top1"]
        if res["runs"][rid]["extra"]:  # experiments that record the model's size
            assert sum(p.numel() for p in model.parameters()) == res["runs"][rid]["extra"][-1]["params"]
    assert (tmp_path / "trained").is_dir() == bool(exp.keep_weights)
    for rec in res["runs"].values():
        assert rec["status"] in ("ok", "stalled") and rec["steps"] == 4, rec["id"]
        if exp.extra_metrics is not None and "macs" in rec["extra"][-1]:
            assert rec["extra"][-1]["params"] > 0 and rec["extra"][-1]["macs"] > 0
    # every full-scale run is a valid config, and each quick run is a shrunk full-scale one
    full = exp.runs(False, 2)
    assert {r.id for r in exp.runs(True, 2)} <= {r.id for r in full}
    for r in full:
        validate_config(make_config(**r.config))


def test_two_workers_share_a_sweep_without_losing_or_repeating_runs(quick_result, tmp_path, monkeypatch):
    """A run claimed by another process is skipped; a run that other process records meanwhile is
    kept in the file (merged, not overwritten); runs the current plan does not name are kept too."""
    _, res = quick_result
    results, runs_dir = tmp_path / "results", tmp_path / "runs"
    results.mkdir()
    planned = list(res["runs"])
    busy, finished_elsewhere = planned[0], planned[2]
    extra = json.loads(json.dumps(res["runs"][planned[3]]))
    extra["id"] = "from-another-plan"
    (results / "layerscale_depth.quick.json").write_text(json.dumps({"runs": {"from-another-plan": extra}}))
    trained = []

    def fake_train_one(exp, spec, run_dir, data_dir, commit, say):
        if not trained:  # meanwhile, the other worker finishes a run and records it
            on_disk = json.loads((results / "layerscale_depth.quick.json").read_text())
            on_disk["runs"][finished_elsewhere] = res["runs"][finished_elsewhere]
            (results / "layerscale_depth.quick.json").write_text(json.dumps(on_disk))
        trained.append(spec.id)
        return res["runs"][spec.id]

    monkeypatch.setattr(runner, "_train_one", fake_train_one)
    with runner._claim(runs_dir / "layerscale_depth" / ".locks" / f"{busy}.lock") as mine:
        assert mine  # the "other worker" trains `busy`
        out = run_experiment(EXP, quick=True, seeds=1, results_dir=results, runs_dir=runs_dir, say=lambda m: None)
    assert trained == [planned[1], planned[3]]  # neither the claimed run nor the one recorded meanwhile
    assert set(out["runs"]) == set(planned[1:]) | {"from-another-plan"} and not out["complete"]
    assert list(out["runs"])[:3] == planned[1:]  # planned order first
    assert out["wall_time_s"] == pytest.approx(sum(res["runs"][r]["wall_time_s"] for r in planned[1:]), abs=0.5)
    again = run_experiment(EXP, quick=True, seeds=1, results_dir=results, runs_dir=runs_dir, say=lambda m: None)
    assert trained == [planned[1], planned[3], busy] and again["complete"]


def test_a_kept_run_without_its_weights_file_runs_again_and_bad_files_are_refused(tmp_path, fake_data):
    base = dict(EXP.runs(True, 1)[0].config)
    exp = Experiment("keep", "one run whose weights are kept", lambda quick, seeds: [RunSpec("a", base)],
                     keep_weights=("a",))
    results = tmp_path / "results"
    first = run_experiment(exp, quick=True, seeds=1, results_dir=results, runs_dir=tmp_path / "runs",
                           data_dir=str(fake_data), say=lambda m: None)
    kept = tmp_path / "trained" / "keep.quick" / "a.pt"
    model, info = load_trained("keep.quick", "a", root=tmp_path / "trained")
    kept.unlink()
    with pytest.raises(FileNotFoundError, match="python -m cait_edu.experiments keep"):
        load_trained("keep.quick", "a", root=tmp_path / "trained")
    again = run_experiment(exp, quick=True, seeds=1, results_dir=results, runs_dir=tmp_path / "runs2",
                           data_dir=str(fake_data), say=lambda m: None)
    assert kept.is_file() and again["runs"]["a"]["final_top1"] == first["runs"]["a"]["final_top1"]
    model2, _ = load_trained("keep.quick", "a", root=tmp_path / "trained")
    for (n, p), p2 in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(p, p2), n  # the same seed trains the same weights
    kept.rename(kept.with_name("b.pt"))  # a file under another run's name
    with pytest.raises(ValueError, match="holds run keep.quick/a, not keep.quick/b"):
        load_trained("keep.quick", "b", root=tmp_path / "trained")


def test_summarize_runs_groups_over_seeds_and_keeps_diverged_runs_out():
    from cait_edu.experiments.summary import mean_spread, summarize_runs

    def run(p, th, seed, top1, status="ok"):
        return {"labels": {"placement": p, "talking_heads": th, "seed": seed}, "status": status,
                "final_top1": top1}

    results = {"runs": {str(i): r for i, r in enumerate([
        run("b", True, 1, 42.0), run("a", True, 0, 38.0), run("a", True, 1, 39.0), run("b", True, 0, 40.0),
        run("a", False, 0, 12.0, "diverged")])}}
    table = summarize_runs(results, ["placement", "talking_heads"])
    assert list(table) == [("b", True), ("a", True), ("a", False)]  # first appearance in the file
    b = table[("b", True)]
    assert b["values"] == [40.0, 42.0] and b["seeds"] == [0, 1] and b["mean"] == 41.0 and b["spread"] == 1.0
    assert mean_spread(b) == "41.0 ± 1.0" and mean_spread(table[("a", True)], 2) == "38.50 ± 0.50"
    dead = table[("a", False)]
    assert dead["diverged"] == 1 and dead["values"] == [] and mean_spread(dead) == "– (+1 diverged)"
    assert mean_spread(dead, show_diverged=False) == "–" and (b["runs"], dead["runs"]) == (2, 1)
    # a stalled run is averaged and listed; a run without the label groups under None
    more = {"runs": {"s": run("a", True, 2, 11.0, "stalled"), "n": {"labels": {"seed": 0}, "status": "ok",
                                                                  "final_top1": 50.0}}}
    table = summarize_runs({"runs": {**results["runs"], **more["runs"]}}, ["placement", "talking_heads"])
    a = table[("a", True)]
    assert a["values"] == [38.0, 39.0, 11.0] and a["stalled_values"] == [11.0] and a["spread"] == 14.0
    assert table[(None, None)]["values"] == [50.0]


def test_load_results_reads_the_data_directory_and_names_the_command_when_missing(tmp_path, monkeypatch):
    from cait_edu.experiments import load_results

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.json").write_text('{"runs": {}}')
    monkeypatch.setenv("CAIT_EDU_DATA", str(tmp_path))
    assert load_results("x") == {"runs": {}}
    with pytest.raises(FileNotFoundError, match="python -m cait_edu.experiments y"):
        load_results("y")


def test_speed_measurement_runs_the_real_loop_and_writes_its_file(tmp_path, fake_data):
    from cait_edu.experiments import speed

    small = dict(model="cait_cifar_nano", batch_size=32, threads=1, model_kwargs=dict(dim=32, num_heads=2, stem="conv"))
    res = speed.measure_speed(small, steps=5, warmup=0, data_dir=str(fake_data), val_images=64)
    assert res["img_s"] > 0 and res["windows"] and res["params"] > 0 and res["macs"] > 0
    with pytest.raises(ValueError, match="no throughput logged"):
        speed.measure_speed(small, steps=3, warmup=1, data_dir=str(fake_data), val_images=64)  # 4 steps: no log
    assert all(c["model_kwargs"]["dim"] % c["model_kwargs"]["num_heads"] == 0 for c in speed.CANDIDATES.values())
    assert {c["model_kwargs"]["stem"] for c in speed.CANDIDATES.values()} == {"linear", "conv"}
    assert speed.main(["--only", "nope"]) == 2


def test_speed_measures_a_candidate_through_the_training_loop(tmp_path, monkeypatch):
    """The CPU record's first step: each candidate's img/s through the real loop, written with the
    machine and command; an unknown candidate is refused before anything runs."""
    from cait_edu.experiments import speed

    data = write_fake_cifar(tmp_path / "d", n_train=16 * 15, n_test=256)
    tiny = dict(model="cait_cifar_nano", batch_size=16, model_kwargs=dict(dim=32, depth=2, num_heads=2))
    monkeypatch.setattr(speed, "CANDIDATES", {"tiny": tiny, "tiny-b8": {**tiny, "batch_size": 8}})
    out = tmp_path / "speed.json"
    args = ["--only", "tiny", "--steps", "10", "--warmup", "5", "--data", str(data), "--out", str(out)]
    assert speed.main(args) == 0
    res = json.loads(out.read_text())
    got = res["candidates"]["tiny"]
    assert got["config"] == tiny and got["params"] > 0 and got["macs"] > 0
    assert len(got["windows"]) == 2 and got["img_s"] in got["windows"]  # steps 10 and 15 logged after step 5
    assert got["images_in_budget"] == int(got["img_s"] * speed.BUDGET_S)
    assert res["command"].startswith("python -m cait_edu.experiments.speed --only tiny") and res["machine"]["cores"]
    assert got["machine"] == res["machine"]["cpu"]
    # a later --only measures its candidates and keeps the ones measured before
    assert speed.main(["--only", "tiny-b8", "--steps", "10", "--warmup", "5", "--data", str(data), "--out", str(out)]) == 0
    both = json.loads(out.read_text())["candidates"]
    assert both["tiny"] == got and both["tiny-b8"]["config"]["batch_size"] == 8
    assert speed.main(["--only", "huge", "--out", str(tmp_path / "no.json")]) == 2
    assert not (tmp_path / "no.json").exists()


def test_machines_used_counts_the_runs_of_each_machine():
    runs = {"a": {"machine": {"cpu": "AMD EPYC", "gpu": None}}, "b": {"machine": {"cpu": "Intel Xeon"}},
            "c": {"machine": {"cpu": "AMD EPYC"}}, "d": {}, "e": {"machine": {"cpu": "x86", "gpu": "NVIDIA H100"}}}
    assert runner.machines_used(runs) == {"AMD EPYC": 2, "Intel Xeon": 1, "not recorded": 1, "NVIDIA H100": 1}


def test_record_presets_fit_two_hours_at_the_measured_speed_and_keep_cait():
    """Each CPU record's fixed step count trains within the 2-hour budget at the speed measured for its
    model (data/results/cpu_record_speed.json), leaving time for its evaluations; and the model is a
    CaiT with LayerScale and class attention, as the record requires."""
    from cait_edu.blocks import ClassAttentionBlock
    from cait_edu.experiments.record import RECORD_PRESETS
    from cait_edu.presets import get_preset
    from cait_edu.registry import create_model
    from cait_edu.training.config import model_overrides

    speed = json.loads((REPO / "data" / "results" / "cpu_record_speed.json").read_text())
    for stem, name in RECORD_PRESETS.items():
        fields = get_preset(name).fields
        kw = fields["model_kwargs"]
        assert kw["stem"] == stem
        measured = speed["candidates"][f"{stem}-d{kw['dim']}-L{kw['depth']}"]
        assert measured["config"]["model_kwargs"] == kw and measured["config"]["batch_size"] == fields["batch_size"]
        train_s = fields["epochs"] * 50_000 / measured["img_s"]
        assert 0.8 * speed["budget_s"] < train_s < 0.95 * speed["budget_s"], (name, train_s)
        cfg = validate_config(make_config(name))
        assert cfg.val_subset is None and cfg.train_subset is None  # the full 50k / 10k
        model = create_model(cfg.model, **model_overrides(cfg, 10))
        assert sum(isinstance(m, ClassAttentionBlock) for m in model.modules()) == 2
        gammas = [n for n, _ in model.named_parameters() if n.endswith("gamma_1")]
        assert len(gammas) == kw["depth"] + 2  # LayerScale on every SA and CA block


def test_search_epochs_prefer_the_speed_a_record_run_sustained():
    """A search run's epochs come from the median speed a finished record run of the same model sustained,
    else from the speed table; a model measured nowhere is refused with the command that measures it."""
    from cait_edu.experiments.record import epochs_in, sustained_speed

    kw = {"dim": 128, "depth": 6, "num_heads": 4, "stem": "conv"}
    table = {"conv-d128-L6": {"config": {"model": "cait_cifar_tiny", "batch_size": 128, "model_kwargs": kw},
                              "img_s": 300.0}}
    run = {"status": "ok", "config": {"model": "cait_cifar_tiny", "batch_size": 128, "model_kwargs": kw},
           "curves": {"throughput_img_s": [250.0, 100.0, 200.0, 210.0, 190.0]}}
    assert sustained_speed(kw, 128, {"conv-s0": run}) == 200.0  # the median window
    assert sustained_speed(kw, 64, {"conv-s0": run}) is None  # another batch size: not the same speed
    assert sustained_speed(kw, 128, {"conv-s0": {**run, "status": "diverged"}}) is None
    assert epochs_in(1000, kw, 128, table, {"conv-s0": run}) == round(1000 * 0.95 * 200 / 50_000)  # 4
    assert epochs_in(1000, kw, 128, table, {}) == round(1000 * 0.95 * 300 / 50_000)  # 6: the table's burst
    assert epochs_in(10, kw, 128, table, {}) == 1  # at least one epoch
    with pytest.raises(ValueError, match="python -m cait_edu.experiments.speed"):
        epochs_in(1000, {**kw, "dim": 96}, 128, table, {})


@pytest.mark.parametrize("seeds", [1, 2])
def test_search_runs_every_lever_per_seed_and_the_base_once_more(seeds):
    """The lever search trains each lever at every seed and the unchanged recipe at one seed more, so
    that the file holds two runs that differ only in the seed; the extra run is the base recipe's."""
    from cait_edu.experiments.record import CPU_RECORD_SEARCH, SEARCH_LEVERS

    runs = CPU_RECORD_SEARCH.runs(False, seeds)
    assert len(runs) == seeds * len(SEARCH_LEVERS) + 1
    extra = runs[-1]
    assert extra.id == f"base-s{seeds}" and extra.labels == {"lever": "base", "seed": seeds}
    assert extra.config["seed"] == seeds
    base = next(r for r in runs if r.id == "base-s0")
    assert {k: v for k, v in extra.config.items() if k != "seed"} == {k: v for k, v in base.config.items() if k != "seed"}


def test_search_proxy_shrinks_the_schedule_with_the_run():
    """A proxy run keeps the record's schedule shape: warmup takes the same share of the run (1 of 30
    epochs), the EMA averages over the same share of the steps, and only the base runs keep an EMA."""
    from cait_edu.experiments.record import CPU_RECORD_SEARCH, SEARCH_EMA_DECAY, proxy_schedule

    warmup, decay = proxy_schedule(30, 1.0, SEARCH_EMA_DECAY)
    assert (warmup, decay) == pytest.approx((1.0, SEARCH_EMA_DECAY))  # at full length: unchanged
    warmup, decay = proxy_schedule(3, 1.0, 0.998)
    assert warmup == pytest.approx(0.1) and decay == pytest.approx(0.98)  # a tenth of the run: 10x shorter
    runs = {r.id: r.config for r in CPU_RECORD_SEARCH.runs(False, 1)}
    for rid, cfg in runs.items():
        assert cfg["warmup_epochs"] <= cfg["epochs"] / 2, rid  # never a run that is mostly warmup
        assert cfg.get("ema", False) == rid.startswith("base-"), rid
    base = runs["base-s0"]
    assert base["eval_ema"] and base["ema_decay"] == pytest.approx(1 - 0.002 * 30 / base["epochs"])
    assert runs["warmup-4-epochs-s0"]["warmup_epochs"] == pytest.approx(4 * base["warmup_epochs"])
