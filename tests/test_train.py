"""Tests for cait_edu.train: config checks, schedule, param groups, EMA, exact resume after SIGKILL,
atomic checkpoints, divergence handling, and the cifar10_tiny preset end to end.

Most runs use a fake CIFAR-10 file (128 train / 64 test learnable images) written to tmp, so only
the last test needs the real offline copy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cait_edu.train as T
from cait_edu import data as D
from cait_edu.training import loop
from cait_edu.presets import PRESETS
from cait_edu.registry import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import REPO, env, read_metrics, run_cli, set_args, write_image_folder  # noqa: E402

# A small run with every source of randomness on: mixup/cutmix, drop-path, label smoothing, EMA.
# 128 train images, global batch 32 -> 4 steps per epoch, 2 epochs = 8 steps.
BASE = dict(model="cait_cifar_nano", dataset="cifar10", recipe="cifar", batch_size=32, epochs=2, lr=2e-3,
            warmup_epochs=0.5, min_lr=1e-5, label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
            mixup_switch_prob=0.5, mixup_prob=1.0, drop_path_rate=0.1, ema=True, ema_decay=0.9,
            num_workers=0, log_every=1, eval_every=1, save_every_steps=2, progress=False, seed=3,
            train_subset=None, val_subset=None, threads=1)
TOTAL_STEPS = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # as the subprocesses (tests/conftest.py)




def _cfg(data: Path, out: Path, **kw) -> T.TrainConfig:
    return T.make_config(**{**BASE, "data_dir": str(data), "out": str(out), **kw})


def _assert_same_state(a: dict, b: dict) -> None:
    """Bitwise equality of model, EMA and optimizer state (every tensor) and of the counters."""
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k in oa["state"][i]:
            assert torch.equal(oa["state"][i][k], ob["state"][i][k]), f"optimizer state {i}.{k} differs"
    for k in ("step", "epoch", "batch_in_epoch", "best_top1"):
        assert a[k] == b[k], k


def _train_records(out: Path) -> list[tuple]:
    return [(r["step"], r["epoch"], r["lr"], r["loss"], r["grad_norm"])
            for r in read_metrics(out) if r["kind"] == "train"]


def _eval_records(out: Path, timed: bool = True) -> list[dict]:
    """The evaluation lines; ``timed=False`` drops their wall-clock ``elapsed_s``."""
    return [{k: v for k, v in r.items() if timed or k != "elapsed_s"} for r in read_metrics(out) if r["kind"] == "eval"]


# ----------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------
def test_lr_schedule_warmup_then_cosine():
    kw = dict(total_steps=100, warmup_steps=10, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    lrs = [T.lr_at_step(s, **kw) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[5] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert lrs[10] == pytest.approx(1e-3)  # peak right after warmup
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # warmup increases
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))  # cosine decreases
    assert T.lr_at_step(55, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half way: mean
    assert T.lr_at_step(100, **kw) == pytest.approx(1e-5)
    assert T.lr_at_step(0, **{**kw, "warmup_steps": 0}) == pytest.approx(1e-3)


def test_param_groups_no_decay_on_1d_pos_embed_cls_token():
    model = create_model("cait_cifar_nano")
    decay, no_decay = T.param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    dn = {names[id(p)] for p in decay["params"]}
    nn_ = {names[id(p)] for p in no_decay["params"]}
    assert dn.isdisjoint(nn_) and len(dn) + len(nn_) == len(names)
    assert {"pos_embed", "cls_token", "blocks.0.gamma_1", "blocks_token_only.0.gamma_2", "norm.weight",
            "blocks.0.attn.qkv.bias", "head.bias"} <= nn_
    assert {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj_l.weight", "head.weight",
            "patch_embed.proj.weight"} <= dn
    assert all(p.ndim >= 2 for p in decay["params"])


def test_soft_target_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=g)
    labels = torch.randint(0, 10, (6,), generator=g)
    targets = D.smooth_one_hot(labels, 10, 0.1)
    ours = T.soft_target_cross_entropy(logits, targets)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6)


def test_model_ema_update_rule_and_buffers():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.register_buffer("count", torch.zeros(()))

    m = M()
    ema = T.ModelEma(m, decay=0.75)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        m.lin.weight.add_(1.0)
        m.count += 5
    ema.update(m)
    st = ema.module.state_dict()
    assert torch.allclose(st["lin.weight"], 0.75 * before["lin.weight"] + 0.25 * m.lin.weight)
    assert torch.equal(st["lin.bias"], m.lin.bias)  # unchanged weights stay put
    assert st["count"].item() == 5  # buffers are copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only rules")
def test_cpu_rules():
    with pytest.raises(T.ConfigError, match="fp16 needs a CUDA GPU"):
        T.validate_config(T.make_config(amp="fp16"))
    with pytest.raises(T.ConfigError, match="no CUDA GPU"):
        T.validate_config(T.make_config(device="cuda"))


def test_parse_set_types_and_errors():
    got = T.parse_set(["lr=2e-3", "epochs=3", "ema=true", "grad_clip=none", "betas=0.9,0.95",
                       "model_kwargs={\"depth\": 2}", "recipe=deit", "warmup_epochs=1"])
    assert got == {"lr": 2e-3, "epochs": 3, "ema": True, "grad_clip": None, "betas": (0.9, 0.95),
                   "model_kwargs": {"depth": 2}, "recipe": "deit", "warmup_epochs": 1.0}
    assert isinstance(got["warmup_epochs"], float)
    with pytest.raises(T.ConfigError, match=r"unknown config key 'lrr'; valid keys: model, .*batch_size"):
        T.parse_set(["lrr=1"])
    with pytest.raises(T.ConfigError, match="--set epochs=three: expected int"):
        T.parse_set(["epochs=three"])
    with pytest.raises(T.ConfigError, match="expected bool"):
        T.parse_set(["ema=maybe"])
    with pytest.raises(T.ConfigError, match="KEY=VALUE"):
        T.parse_set(["epochs"])


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "last.pt"
    T.atomic_torch_save({"a": torch.ones(2)}, p)
    T.atomic_torch_save({"a": torch.zeros(2)}, p)
    assert torch.equal(T.load_checkpoint(p)["a"], torch.zeros(2))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["last.pt"]


def test_progress_bar_switches(monkeypatch):
    cfg = T.TrainConfig()
    assert not loop.progress_enabled(cfg)  # tests/conftest.py sets CAIT_EDU_NO_PROGRESS=1
    monkeypatch.delenv("CAIT_EDU_NO_PROGRESS", raising=False)
    assert loop.progress_enabled(cfg)
    assert not loop.progress_enabled(dataclasses.replace(cfg, progress=False))
    monkeypatch.setenv("CAIT_EDU_NO_PROGRESS", "1")
    assert not loop.progress_enabled(cfg)


def test_presets_follow_the_paper_recipe():
    s24 = PRESETS["cait_s24_224"].fields
    assert s24["lr"] == pytest.approx(5e-4 * 1024 / 512) and s24["batch_size"] == 1024
    assert (s24["epochs"], s24["warmup_epochs"], s24["min_lr"], s24["warmup_lr"]) == (400, 5, 1e-5, 1e-6)
    assert (s24["weight_decay"], s24["label_smoothing"], s24["repeats"], s24["crop_ratio"]) == (0.05, 0.1, 3, 1.0)
    assert (s24["mixup_alpha"], s24["cutmix_alpha"], s24["mixup_switch_prob"]) == (0.8, 1.0, 0.5)
    assert s24["drop_path_rate"] == 0.1 and PRESETS["cait_m48_448"].fields["drop_path_rate"] == 0.4
    assert PRESETS["cait_m48_448"].fields["img_size"] == 448
    assert PRESETS["deit_tiny_patch16_224"].fields["epochs"] == 300
    assert [PRESETS[f"deit_{s}_patch16_224"].fields["drop_path_rate"] for s in ("tiny", "small", "base")] == [.1, .1, .1]
    assert len([n for n in PRESETS if n.startswith("cait_") and not n.endswith("_finetune")]) == 10
    for name, p in PRESETS.items():  # every preset is a valid config, on 1 process and on 8 GPUs' worth
        needs = {k: "given.pt" for k in p.requires}  # e.g. the checkpoint a fine-tuning preset starts from
        for world in (1, 8):
            cfg = T.validate_config(T.make_config(name, amp="off", **needs), world_size=world)
        assert cfg.preset == name and cfg.img_size == p.fields["img_size"]
    table = T.presets_table()
    assert all(name in table for name in PRESETS) and "epochs" in table.splitlines()[0]


# ----------------------------------------------------------------------------
# Bad configs: one clear message each, before any work
# ----------------------------------------------------------------------------
def _boom(*a, **k):
    raise AssertionError("work started before the config error was raised")


@pytest.fixture
def no_model(monkeypatch):
    """Building a model fails loudly: errors must come before it."""
    monkeypatch.setattr(loop, "create_model", _boom)


@pytest.fixture
def no_work(monkeypatch, no_model):
    """Building a model or loading data fails loudly: config errors must come before both."""
    monkeypatch.setattr(loop, "build_datasets", _boom)


BAD = [
    (dict(batch_size=0), "batch_size must be > 0"),
    (dict(lr=-1e-3), "lr must be > 0"),
    (dict(lr=float("nan")), "lr must be > 0"),
    (dict(epochs=0), "epochs must be > 0"),
    (dict(img_size=30), "img_size 30 is not divisible by the patch size 4 of cait_cifar_nano"),
    (dict(img_size=64), "recipe 'cifar' uses CIFAR-10 images at their native 32x32"),
    (dict(dataset="mnist"), "dataset must be one of cifar10, imagenet, imagefolder; got 'mnist'"),
    (dict(recipe="autoaugment"), "recipe must be one of deit, cifar"),
    (dict(amp="fp8"), "amp must be one of auto, bf16, fp16, off"),
    (dict(model="resnet50"), "unknown model 'resnet50'; known models: cait_xxs24_224"),
    (dict(model_kwargs={"depthh": 2}), "model_kwargs ['depthh'] not accepted by CaiT; valid: img_size"),
    (dict(model_kwargs={"num_classes": 5}), "num_classes follows the dataset"),
    (dict(warmup_epochs=3), "warmup_epochs (3) must not exceed epochs (2)"),
    (dict(min_lr=1.0), "min_lr (1.0) must not exceed lr"),
    (dict(label_smoothing=1.0), "label_smoothing must be in [0, 1)"),
    (dict(mixup_prob=1.5), "mixup_prob must be in [0, 1]"),
    (dict(ema_decay=1.0), "ema_decay must be in (0, 1)"),
    (dict(ema=False, eval_ema=True), "eval_ema=true needs ema=true"),
    (dict(betas=(0.9, 1.0)), "betas must each be in [0, 1)"),
    (dict(drop_path_rate=1.0), "drop_path_rate must be in [0, 1)"),
    (dict(batch_size="32"), "batch_size must be <class 'int'>, got '32'"),
    (dict(num_workers=-1), "num_workers must be >= 0"),
    (dict(grad_clip=0.0), "grad_clip must be > 0"),
    (dict(train_subset=0), "train_subset must be > 0"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[next(iter(o)) + "=" + repr(next(iter(o.values())))
                                                       for o, _ in BAD])
def test_bad_config_values(tmp_path, fake_data, no_work, overrides, message):
    with pytest.raises(T.ConfigError) as e:
        T.train(_cfg(fake_data, tmp_path / "run", **overrides))
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_bad_names_and_world_size():
    with pytest.raises(T.ConfigError, match="unknown preset 'nope'; known presets: cait_xxs24_224"):
        T.make_config("nope")
    with pytest.raises(T.ConfigError, match="unknown config key.*'lrr'.*valid keys: model"):
        T.make_config("cifar10_tiny", lrr=1)
    with pytest.raises(T.ConfigError, match=r"batch_size 30 \(global\) is not divisible by the world size 4"):
        T.validate_config(T.make_config(batch_size=30), world_size=4)


def test_data_problems_surface_before_the_model_is_built(tmp_path, fake_data, no_model):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found in"):
        T.train(_cfg(tmp_path / "empty", tmp_path / "a"))
    with pytest.raises(T.ConfigError, match="train_subset=1000 but the dataset has only 128 images"):
        T.train(_cfg(fake_data, tmp_path / "b", train_subset=1000))
    with pytest.raises(T.ConfigError, match="128 training images give no full batch of 256"):
        T.train(_cfg(fake_data, tmp_path / "c", batch_size=256))
    with pytest.raises(FileNotFoundError, match="image folder split 'train' not found"):
        T.train(_cfg(tmp_path / "nofolder", tmp_path / "d", dataset="imagefolder"))
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=2)
    (folder / "val" / "class_2").rename(folder / "val" / "other")
    with pytest.raises(T.ConfigError, match="train and val have different class folders"):
        T.train(_cfg(folder, tmp_path / "e", dataset="imagefolder", batch_size=2))
    big = write_image_folder(tmp_path / "big", classes=2, per_class=2, size=40)
    with pytest.raises(T.ConfigError, match=r"come out of the 'cifar' transform as \(3, 40, 40\)"):
        T.train(_cfg(big, tmp_path / "f", dataset="imagefolder", batch_size=2))


def test_cli_config_errors_exit_2_without_traceback(tmp_path, fake_data):
    r = run_cli(["--preset", "cifar10_tiny", "--data", str(fake_data), "--out", str(tmp_path / "o"),
                 "--set", "batch_size=0"], timeout=120)
    assert r.returncode == 2, r.stderr
    assert "error: batch_size must be > 0" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(["--preset", "cifar10_tiny", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                timeout=120)
    assert r.returncode == 2 and "CIFAR-10 not found" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "last.pt").exists()


def test_cli_in_process_messages(capsys, tmp_path):
    assert T.main(["--list-presets"]) == 0
    assert "cifar10_tiny" in capsys.readouterr().out
    assert T.main(["--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert T.main(["--preset", "cifar10_tiny", "--set", "foo=1"]) == 2
    assert "unknown config key 'foo'; valid keys:" in capsys.readouterr().err
    assert T.main([]) == 2
    assert "--preset is required" in capsys.readouterr().err
    assert T.main(["--resume", "--out", str(tmp_path / "none")]) == 2
    assert "config.json not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# Runs in process: files, resume rules, max_steps
# ----------------------------------------------------------------------------
def test_run_files_resume_rules_and_exact_continuation_in_process(tmp_path, fake_data):
    full, part = tmp_path / "full", tmp_path / "part"
    res = T.train(_cfg(fake_data, full))
    assert res["step"] == TOTAL_STEPS and res["epoch"] == 2 and res["num_train"] == 128 and res["num_val"] == 64
    assert str(fake_data) in res["data_source"]
    recs = read_metrics(full)
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == list(range(1, TOTAL_STEPS + 1))
    assert set(train_recs[0]) >= {"kind", "step", "epoch", "lr", "loss", "throughput_img_s"}
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [(r["epoch"], r["step"]) for r in evals] == [(1, 4), (2, 8)]
    assert set(evals[0]) >= {"val_loss", "val_top1", "val_top5", "val_samples"} and evals[0]["val_samples"] == 64
    assert res["val_top1"] == evals[-1]["val_top1"]
    saved = json.loads((full / "config.json").read_text())
    assert saved["lr"] == BASE["lr"] and saved["_runtime"]["steps_per_epoch"] == 4
    best = T.load_checkpoint(full / "best.pt")
    assert best["metrics"]["val_top1"] == max(r["val_top1"] for r in evals)
    last = T.load_checkpoint(full / "last.pt")
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (8, 2, 0)
    assert {"model", "optimizer", "scaler", "ema", "config", "best_top1", "log_sums", "world_size"} <= set(last)
    assert "rng" not in last  # every random draw is derived from (seed, step, rank): nothing to store
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in last["model"])

    # An existing run is never overwritten by accident; resume refuses a changed recipe.
    with pytest.raises(T.ConfigError, match="already holds a run"):
        T.train(_cfg(fake_data, full))
    with pytest.raises(T.ConfigError, match=r"config differs .* lr: 0.002 -> 0.001"):
        T.train(_cfg(fake_data, full, lr=1e-3), resume=True)
    with pytest.raises(T.ConfigError, match="no checkpoint"):
        T.train(_cfg(fake_data, tmp_path / "nothing"), resume=True)

    # Stop at max_steps mid-epoch, resume with more workers: same result, bit for bit.
    r1 = T.train(_cfg(fake_data, part, max_steps=3))
    assert r1["step"] == 3
    ck = T.load_checkpoint(part / "last.pt")
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (3, 0, 3)
    r2 = T.train(_cfg(fake_data, part, num_workers=2), resume=True)
    assert r2["step"] == TOTAL_STEPS
    _assert_same_state(T.load_checkpoint(full / "last.pt"), T.load_checkpoint(part / "last.pt"))
    assert _train_records(full) == _train_records(part)

    # Extending epochs on resume is allowed (the cosine is re-stretched from the current step).
    r3 = T.train(_cfg(fake_data, full, epochs=3), resume=True)
    assert r3["step"] == 12 and r3["epoch"] == 3


def test_ema_evaluation_and_bf16_autocast_on_cpu(tmp_path, fake_data):
    res = T.train(_cfg(fake_data, tmp_path / "r", eval_ema=True, amp="bf16", max_steps=2))
    ev = [r for r in read_metrics(tmp_path / "r") if r["kind"] == "eval"][-1]
    assert {"val_top1_ema", "val_top5_ema", "val_loss_ema"} <= set(ev) and math.isfinite(ev["val_loss_ema"])
    assert res["step"] == 2 and math.isfinite(res["train_loss"])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["_runtime"]["amp"] == "bf16"


def test_eval_ema_evaluates_the_ema_weights_not_the_live_ones(tmp_path, fake_data):
    """The EMA numbers must be those of the averaged weights: re-evaluate both weight sets from
    last.pt by hand (plain forward + cross-entropy over the 64 val images) and compare."""
    out = tmp_path / "ema"
    T.train(_cfg(fake_data, out, eval_ema=True, ema_decay=0.5, max_steps=4))  # 4 steps = end of epoch 0
    ev = _eval_records(out)[-1]
    ck = T.load_checkpoint(out / "last.pt")
    assert ev["step"] == ck["step"] == 4
    _, val, _, _ = T.build_datasets(T.validate_config(_cfg(fake_data, out)))
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])

    def by_hand(state: dict) -> tuple[float, float]:
        model = create_model("cait_cifar_nano", num_classes=10)
        model.load_state_dict(state)
        with torch.no_grad():
            logits = model.eval()(x)
        return F.cross_entropy(logits, y).item(), 100.0 * (logits.argmax(1) == y).float().mean().item()

    live, ema = by_hand(ck["model"]), by_hand(ck["ema"])
    assert abs(live[0] - ema[0]) > 1e-3, "the test needs EMA weights that differ from the live ones"
    assert (ev["val_loss"], ev["val_top1"]) == pytest.approx(live, rel=1e-5)
    assert (ev["val_loss_ema"], ev["val_top1_ema"]) == pytest.approx(ema, rel=1e-5)


def test_eval_hflip_averages_the_logits_of_each_image_and_its_mirror(tmp_path, fake_data):
    """Test-time flip: the recorded numbers are those of (model(x) + model(flip(x))) / 2, computed by
    hand from the final weights, and they differ from the plain evaluation of the same weights."""
    out = tmp_path / "flip"
    T.train(_cfg(fake_data, out, eval_hflip=True, max_steps=4))
    ev = _eval_records(out)[-1]
    ck = T.load_checkpoint(out / "last.pt")
    _, val, _, _ = T.build_datasets(T.validate_config(_cfg(fake_data, out)))
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    model = create_model("cait_cifar_nano", num_classes=10)
    model.load_state_dict(ck["model"])
    with torch.no_grad():
        plain, mirror = model.eval()(x), model(x.flip(-1))
    assert (plain - mirror).abs().max() > 1e-3, "the model should not be mirror-symmetric"
    both = (plain + mirror) / 2
    assert ev["val_loss"] == pytest.approx(F.cross_entropy(both, y).item(), rel=1e-5)
    assert ev["val_loss"] != pytest.approx(F.cross_entropy(plain, y).item(), rel=1e-5)
    assert ev["val_top1"] == pytest.approx(100.0 * (both.argmax(1) == y).float().mean().item())
    # evaluation only: the training is that of the run without it, and a resume may switch it
    T.train(_cfg(fake_data, tmp_path / "plain", max_steps=4))
    ref = T.load_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    assert all(torch.equal(ref[k], v) for k, v in ck["model"].items())


def test_resume_between_two_log_lines_logs_the_same_means(tmp_path, fake_data):
    """log_every=3: stopping at step 4 leaves step 4's loss in the running sums, which the checkpoint
    carries, so the line at step 6 still averages steps 4-6, as in the uninterrupted run."""
    full, part = tmp_path / "full", tmp_path / "part"
    T.train(_cfg(fake_data, full, log_every=3))
    T.train(_cfg(fake_data, part, log_every=3, max_steps=4))
    assert T.load_checkpoint(part / "last.pt")["log_sums"]["steps"] == 1
    T.train(_cfg(fake_data, part, log_every=3), resume=True)
    assert [r[0] for r in _train_records(full)] == [3, 6]
    assert _train_records(part) == _train_records(full)


def _rewrite_checkpoint(path: Path, **changes) -> None:
    ck = T.load_checkpoint(path)
    ck.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del ck[k]
    T.atomic_torch_save(ck, path)


def test_resume_accepts_a_checkpoint_older_than_a_new_config_field(tmp_path, fake_data):
    """A field added to TrainConfig after a checkpoint was written takes its default on resume."""
    out = tmp_path / "r"
    T.train(_cfg(fake_data, out, max_steps=3))
    ck = T.load_checkpoint(out / "last.pt")
    del ck["config"]["exempt_from_decay"]  # as written before the field existed
    T.atomic_torch_save(ck, out / "last.pt")
    assert T.train(_cfg(fake_data, out), resume=True)["step"] == TOTAL_STEPS


def test_resume_refuses_another_world_size_unless_allowed(tmp_path, fake_data):
    out = tmp_path / "r"
    T.train(_cfg(fake_data, out, max_steps=3))
    _rewrite_checkpoint(out / "last.pt", world_size=2)  # as if written by two processes
    with pytest.raises(T.ConfigError, match=r"written by 2 process\(es\), this run has 1.*Mixup/CutMix"):
        T.train(_cfg(fake_data, out), resume=True)
    res = T.train(_cfg(fake_data, out), resume=True, allow_world_size_change=True)
    assert res["step"] == TOTAL_STEPS
    r = run_cli(["--resume", "--out", str(out), "--set", "epochs=3"])  # now written by 1 process: fine
    assert r.returncode == 0, r.stderr


def test_resume_ignores_per_gpu_rng_states_of_an_older_checkpoint(tmp_path, fake_data, monkeypatch):
    """Format-1 checkpoints carried one CUDA RNG state per GPU that wrote them; restoring them on
    fewer GPUs crashed. Nothing random is restored now (it is all derived from seed and step): a
    format-1 checkpoint from 8 GPUs continues, and exactly, without touching any CUDA RNG."""
    full, part = tmp_path / "full", tmp_path / "part"
    T.train(_cfg(fake_data, full))
    T.train(_cfg(fake_data, part, max_steps=3))
    eight = [torch.zeros(16, dtype=torch.uint8) for _ in range(8)]
    _rewrite_checkpoint(part / "last.pt", format="cait_edu.train/1", log_sums=None,
                        rng={"torch": torch.get_rng_state(), "cuda": eight})

    def no_cuda_rng(*a, **k):
        raise AssertionError("CUDA RNG state touched")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", no_cuda_rng)
    monkeypatch.setattr(torch.cuda, "set_rng_state", no_cuda_rng)
    T.train(_cfg(fake_data, part), resume=True)
    _assert_same_state(T.load_checkpoint(full / "last.pt"), T.load_checkpoint(part / "last.pt"))


# ----------------------------------------------------------------------------
# Divergence
# ----------------------------------------------------------------------------
def _poisoned_create_model(monkeypatch, *, at_call: int, where: str):
    """Make the model's training forward return NaN logits (where="loss"), or its gradients NaN
    (where="grad"), at training step ``at_call`` (1-based)."""
    real = loop.create_model

    def create(name, **kw):
        model = real(name, **kw)
        calls = {"n": 0}

        def hook(mod, inputs, out):
            if not mod.training:
                return out
            calls["n"] += 1
            if calls["n"] != at_call:
                return out
            if where == "loss":
                return out * float("nan")
            out.register_hook(lambda g: g * float("nan"))  # finite loss, NaN gradients
            return out

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(loop, "create_model", create)


@pytest.mark.parametrize("where,match", [("loss", "non-finite loss (nan) at step 6 (epoch 1, batch 2 of 4)"),
                                         ("grad", "non-finite gradient norm (nan) at step 6 (epoch 1, batch 2")])
def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, fake_data, monkeypatch, where, match):
    good = tmp_path / "good"
    T.train(_cfg(fake_data, good, max_steps=5, save_every_steps=1, ema=False))
    ref = T.load_checkpoint(good / "last.pt")

    bad = tmp_path / "bad"
    _poisoned_create_model(monkeypatch, at_call=6, where=where)
    with pytest.raises(T.DivergenceError) as e:
        T.train(_cfg(fake_data, bad, save_every_steps=1, ema=False))
    assert match in str(e.value) and "last.pt keeps the last good" in str(e.value)
    ck = T.load_checkpoint(bad / "last.pt")
    assert ck["step"] == 5  # the step before the bad one, saved; nothing after it
    for k, v in ck["model"].items():
        assert torch.isfinite(v).all() and torch.equal(v, ref["model"][k]), k
    assert max(r["step"] for r in read_metrics(bad)) == 5

    monkeypatch.undo()  # resuming from the kept checkpoint works and trains on
    res = T.train(_cfg(fake_data, bad, save_every_steps=1, ema=False), resume=True)
    assert res["step"] == TOTAL_STEPS and math.isfinite(res["val_loss"])


def test_cli_reports_divergence(tmp_path, fake_data):
    r = run_cli(["--preset", "cifar10_tiny", "--data", str(fake_data), "--out", str(tmp_path / "o"),
                 *set_args({"lr": 1e30, "warmup_epochs": 0, "train_subset": 64, "val_subset": 16,
                            "batch_size": 32, "epochs": 3, "min_lr": 0.0})], timeout=180)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "error: training diverged: non-finite" in r.stderr and "at step" in r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------
# Exact resume after SIGKILL, and a crash in the middle of writing a checkpoint
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, fake_data) -> Path:
    """The uninterrupted run, in a subprocess like the interrupted ones."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli(["--preset", "cifar10_tiny", "--data", str(fake_data), "--out", str(out),
                 *set_args({k: v for k, v in BASE.items()}), "--set", "preset=none"])
    assert r.returncode == 0, r.stderr
    # the CLI config (preset + --set) is the same as the in-process one, apart from names
    cli = json.loads((out / "config.json").read_text())
    ours = dataclasses.asdict(T.validate_config(_cfg(fake_data, out)))
    assert {k: v for k, v in cli.items() if k in ours and k != "preset"} == \
        json.loads(json.dumps({k: v for k, v in ours.items() if k != "preset"}))
    return out


def _kill_mid_epoch(out: Path, data: Path, extra: dict, after_ckpt_step: int, sleep: float) -> dict:
    """Start the run, SIGKILL it once a mid-epoch last.pt at step >= after_ckpt_step exists and at
    least one more step has been logged (so work is lost). Returns the surviving checkpoint."""
    cmd = [sys.executable, str(REPO / "tests" / "_slow_train.py"), str(sleep), "--preset", "cifar10_tiny",
           "--data", str(data), "--out", str(out), *set_args({**BASE, **extra}), "--set", "preset=none"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed: {proc.stderr.read()}")
            if time.time() > deadline:
                pytest.fail("timed out waiting for a mid-epoch checkpoint")
            last = out / "last.pt"
            if last.exists():
                ck = T.load_checkpoint(last)  # safe: last.pt is only ever replaced atomically
                logged = max((r["step"] for r in read_metrics(out, strict=False) if r["kind"] == "train"), default=0)
                if ck["step"] >= after_ckpt_step and ck["batch_in_epoch"] > 0 and logged > ck["step"]:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return T.load_checkpoint(out / "last.pt")


@pytest.mark.parametrize("workers,after", [(0, 2), (2, 6)], ids=["workers0-epoch0", "workers2-epoch1"])
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, fake_data, reference_run, workers, after):
    out = tmp_path / "killed"
    for attempt, sleep in enumerate((0.4, 1.5)):  # retry slower only if the kill missed the window
        ck = _kill_mid_epoch(out, fake_data, {"num_workers": workers}, after, sleep)
        if 0 < ck["batch_in_epoch"] and ck["step"] < TOTAL_STEPS:
            break
        import shutil
        shutil.rmtree(out)
    else:
        pytest.fail("could not kill the run mid-epoch")
    lost = max(r["step"] for r in read_metrics(out, strict=False)) - ck["step"]
    assert lost >= 1, "the kill should land after unsaved steps"
    assert 0 < ck["batch_in_epoch"] < 4

    # resume from the run directory alone (config from its config.json)
    r = run_cli(["--resume", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    a, b = T.load_checkpoint(reference_run / "last.pt"), T.load_checkpoint(out / "last.pt")
    assert b["step"] == TOTAL_STEPS
    _assert_same_state(a, b)
    assert _train_records(reference_run) == _train_records(out)  # every step's loss, lr, grad norm
    assert _eval_records(reference_run, False) == _eval_records(out, False)  # val loss, top-1, top-5 per epoch
    # wall time adds up over the pieces: it grows from one evaluation to the next, and the resumed
    # piece starts from the killed one's clock (checkpointed), not from zero
    times = [r["elapsed_s"] for r in _eval_records(out)]
    assert times == sorted(times) and times[0] > 0
    assert b["elapsed_s"] > ck["elapsed_s"] > 0 and b["elapsed_s"] >= times[-1] - 0.01  # eval lines: 2 decimals


def test_crash_while_writing_checkpoint_keeps_previous_one(tmp_path, fake_data, reference_run):
    out = tmp_path / "crash"
    cfg = {**BASE, "data_dir": str(fake_data), "out": str(out)}
    # last.pt saves: #1 step 2 (mid-epoch), #2 step 4 (epoch end), #3 step 6 -> dies half-way through it
    r = subprocess.run([sys.executable, str(REPO / "tests" / "_crash_during_save.py"), json.dumps(cfg), "3"],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 17, r.stderr
    partial = list(out.glob(".last.pt.tmp.*"))
    assert len(partial) == 1, "the interrupted save should have left its temporary file"
    with pytest.raises(Exception):
        torch.load(partial[0], weights_only=True)  # half a file: unreadable
    ck = T.load_checkpoint(out / "last.pt")  # the previous checkpoint is intact
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (4, 1, 0)

    r = run_cli(["--resume", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".last.pt.tmp.*"))  # cleaned up
    _assert_same_state(T.load_checkpoint(reference_run / "last.pt"), T.load_checkpoint(out / "last.pt"))


# ----------------------------------------------------------------------------
# The real thing: cifar10_tiny on the offline CIFAR-10 copy
# ----------------------------------------------------------------------------
def _real_cifar() -> bool:
    try:
        return (D.resolve_data_dir() / D.NPZ_NAME).is_file() or (D.resolve_data_dir() / D.BATCHES_DIR).is_dir()
    except Exception:
        return False


@pytest.mark.skipif(not _real_cifar(), reason="offline CIFAR-10 (data/cifar10-jpeg.npz) not available")
def test_cifar10_tiny_preset_learns(tmp_path):
    res = T.train("cifar10_tiny", out=str(tmp_path / "tiny"))
    assert "CIFAR-10" in res["data_source"] or "cifar10-jpeg.npz" in res["data_source"]
    assert res["num_train"] == 1024 and res["num_val"] == 256
    # Chance is 10% (+- 1.9 points of binomial noise on 256 images). Measured on this 2-core CPU:
    # 27.7% top-1 (76.2% top-5) after 5 epochs; the run is deterministic (seed 0, one thread), so only
    # a different CPU/BLAS can move it, by a point or two. We require 10 + 10 points (> 5 sigma above
    # chance), leaving 7.7 points of slack.
    assert res["val_top1"] >= 20.0, res
    assert res["step"] == 80 and res["val_top5"] > 50.0


def test_param_groups_can_decay_everything_for_the_ablation():
    model = create_model("cait_cifar_nano")
    decay, no_decay = T.param_groups(model, 0.05, exempt=False)
    assert len(decay["params"]) == len(list(model.parameters())) and no_decay["params"] == []
    cfg = T.validate_config(T.make_config("cifar10_tiny", exempt_from_decay=False))
    assert cfg.exempt_from_decay is False and T.make_config("cifar10_tiny").exempt_from_decay is True


def test_cli_help_reads_as_plain_text():
    """The --set keys' help comes from the config's docstrings; a terminal shows no reST markup."""
    from cait_edu.training.cli import build_parser, plain_text

    assert plain_text(":func:`~cait_edu.data.resolve_data_dir` (``x``)") == "resolve_data_dir() (x)"
    assert plain_text(":mod:`cait_edu.data`") == "cait_edu.data"
    text = build_parser().format_help()
    assert "config keys for --set" in text and "model_kwargs" in text
    assert ":func:" not in text and ":mod:" not in text and "``" not in text
