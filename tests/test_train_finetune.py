"""Fine-tuning from a checkpoint (cait_edu.training.finetune): a tiny CaiT trained at 32 px continued
at 48 px (position embeddings resized), a head reset for another class count, a checkpoint of another
architecture refused before any data is read, exact resume of a fine-tune run (without its source),
the --finetune flag, the M48 fine-tuning preset, and old checkpoints that lack the new config fields.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import cait_edu.train as T
from cait_edu.checkpoint import resize_pos_embed
from cait_edu.presets import PRESETS
from cait_edu.registry import create_model
from cait_edu.training import loop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import read_metrics, run_cli, write_image_folder  # noqa: E402

# As tests/test_train.py: every source of randomness on (Mixup/CutMix, drop-path, smoothing, EMA);
# 128 fake CIFAR images, batch 32 -> 4 steps per epoch, 8 steps.
BASE = dict(model="cait_cifar_nano", dataset="cifar10", recipe="cifar", batch_size=32, epochs=2, lr=2e-3,
            warmup_epochs=0.5, min_lr=1e-5, label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
            mixup_switch_prob=0.5, mixup_prob=1.0, drop_path_rate=0.1, ema=True, ema_decay=0.9,
            num_workers=0, log_every=1, eval_every=1, save_every_steps=2, progress=False, seed=3, threads=1)
AT_48 = dict(recipe="deit", img_size=48)  # the DeiT recipe resizes the 32 px images


pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def source(tmp_path_factory, fake_data) -> Path:
    """last.pt of a cait_cifar_nano trained 2 steps at 32 px (10 classes)."""
    out = tmp_path_factory.mktemp("source") / "run"
    T.train(T.make_config(**{**BASE, "seed": 11}, data_dir=str(fake_data), out=str(out), max_steps=2))
    return out / "last.pt"


def _cfg(data: Path, out: Path, **kw) -> T.TrainConfig:
    return T.make_config(**{**BASE, "data_dir": str(data), "out": str(out), **kw})


def _set_up(cfg: T.TrainConfig) -> loop.Trainer:
    """A Trainer with everything built and loaded, before its first step."""
    trainer = loop.Trainer(T.validate_config(cfg))
    trainer.setup()
    return trainer


def _fresh_head(cfg: T.TrainConfig, num_classes: int) -> dict:
    """The head a from-scratch run of this config initialises (same seed)."""
    torch.manual_seed(cfg.seed)
    m = create_model(cfg.model, num_classes=num_classes, drop_path_rate=cfg.drop_path_rate)
    return {k: v for k, v in m.state_dict().items() if k.startswith("head.")}


def test_finetune_32px_into_48px_resizes_pos_embed_and_copies_the_rest(tmp_path, fake_data, source):
    src = T.load_checkpoint(source)["model"]
    trainer = _set_up(_cfg(fake_data, tmp_path / "ft", finetune=str(source), max_steps=2, **AT_48))
    got = trainer.model.state_dict()
    assert got["pos_embed"].shape == (1, 12 * 12, 64) and src["pos_embed"].shape == (1, 8 * 8, 64)
    assert torch.equal(got["pos_embed"], resize_pos_embed(src["pos_embed"], 12))
    for k in src:
        if k != "pos_embed":
            assert torch.equal(got[k], src[k]), k
    ema = trainer.ema.module.state_dict()  # the EMA starts from the loaded weights
    assert all(torch.equal(ema[k], got[k]) for k in got)
    assert trainer.step == 0 and trainer.optimizer.state_dict()["state"] == {}  # no optimizer state carried over
    assert trainer.init_report == {
        "source": str(source), "format": "cait_edu.train checkpoint of cait_cifar_nano at 32 px, step 2",
        "pos_embed": "resized 8x8 -> 12x12 (bicubic)", "head": "kept (10 classes)"}
    res = trainer.fit()  # and it trains at 48 px
    assert res["step"] == 2 and res["train_loss"] == res["train_loss"]
    runtime = json.loads((tmp_path / "ft" / "config.json").read_text())["_runtime"]
    assert runtime["finetune"] == trainer.init_report


def test_finetune_head_reset_keep_auto(tmp_path, fake_data, source):
    src = T.load_checkpoint(source)["model"]
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=8, size=32)
    three = dict(dataset="imagefolder", batch_size=8)
    # auto with another class count: a new head (the model's own init), everything else from the checkpoint
    cfg = _cfg(folder, tmp_path / "auto", finetune=str(source), **three)
    got = _set_up(cfg).model.state_dict()
    for k, v in _fresh_head(cfg, 3).items():
        assert got[k].shape[0] == 3 and torch.equal(got[k], v), k
    assert all(torch.equal(got[k], src[k]) for k in src if not k.startswith("head."))
    # keep refuses a head that does not fit
    with pytest.raises(T.ConfigError, match=r"finetune_head=keep, but the head of .* \(10 classes\) does not fit "
                                            r"the model's \(3 classes"):
        _set_up(_cfg(folder, tmp_path / "keep", finetune=str(source), finetune_head="keep", **three))
    # reset with the same class count: a new head anyway
    cfg = _cfg(fake_data, tmp_path / "reset", finetune=str(source), finetune_head="reset")
    trainer = _set_up(cfg)
    got = trainer.model.state_dict()
    for k, v in _fresh_head(cfg, 10).items():
        assert torch.equal(got[k], v) and not torch.equal(got[k], src[k]), k
    assert trainer.init_report["head"] == "reset (10 classes in the checkpoint, 10 classes in the model)"


def _boom(*a, **k):
    raise AssertionError("data was read before the checkpoint was checked")


@pytest.mark.parametrize("other,expect", [
    ("cait_cifar_tiny", ["unexpected in checkpoint", "blocks.4.", "shape mismatch", "width 128", "width 64"]),
    ("deit_cifar_tiny", ["missing from checkpoint (60)", "proj_l", "gamma_1", "model:      4 SA layers + 2 CA"]),
])
def test_finetune_refuses_another_architecture_before_reading_data(tmp_path, fake_data, monkeypatch, other, expect):
    # the authors' release format: {"model": state_dict} with every key prefixed "module."
    state = create_model(other, num_classes=10).state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "other.pth")
    monkeypatch.setattr(loop, "build_datasets", _boom)
    with pytest.raises(T.ConfigError) as e:
        T.train(_cfg(fake_data, tmp_path / "run", finetune=str(tmp_path / "other.pth")))
    msg = str(e.value)
    assert msg.startswith(f"cannot fine-tune cait_cifar_nano from {tmp_path / 'other.pth'} "
                          "({'model': state_dict}, the authors' release format): checkpoint does not fit")
    for part in expect:
        assert part in msg, (part, msg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(T.ConfigError, match="finetune: no checkpoint file at"):
        T.train(_cfg(fake_data, tmp_path / "run", finetune=str(tmp_path / "missing.pt")))


def test_finetune_from_the_authors_format(tmp_path, fake_data):
    torch.manual_seed(0)
    state = create_model("cait_cifar_nano", num_classes=10).state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "release.pth")
    got = _set_up(_cfg(fake_data, tmp_path / "run", finetune=str(tmp_path / "release.pth"))).model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


def _same_state(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for i, st in a["optimizer"]["state"].items():
        for k in st:
            assert torch.equal(st[k], b["optimizer"]["state"][i][k]), f"optimizer {i}.{k} differs"
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"])


def test_finetune_run_resumes_exactly_from_its_own_checkpoint(tmp_path, fake_data, source):
    start = tmp_path / "start.pt"
    shutil.copy(source, start)
    full, part = tmp_path / "full", tmp_path / "part"
    T.train(_cfg(fake_data, full, finetune=str(start), **AT_48))
    T.train(_cfg(fake_data, part, finetune=str(start), max_steps=3, **AT_48))
    start.unlink()  # a resumed run does not read its fine-tuning source again
    res = T.train(_cfg(fake_data, part, finetune=str(start), **AT_48), resume=True)
    assert res["step"] == 8
    _same_state(T.load_checkpoint(full / "last.pt"), T.load_checkpoint(part / "last.pt"))
    train = [(r["step"], r["loss"]) for r in read_metrics(full) if r["kind"] == "train"]
    assert train == [(r["step"], r["loss"]) for r in read_metrics(part) if r["kind"] == "train"]
    runtime = json.loads((part / "config.json").read_text())["_runtime"]
    assert runtime["finetune"]["pos_embed"] == "resized 8x8 -> 12x12 (bicubic)"  # kept from the checkpoint
    with pytest.raises(T.ConfigError, match="finetune: no checkpoint file at"):  # a new run does need it
        T.train(_cfg(fake_data, tmp_path / "new", finetune=str(start), **AT_48))


def test_cli_finetune_flag_and_resume_without_the_source(tmp_path, fake_data, source):
    start = tmp_path / "start.pt"
    shutil.copy(source, start)
    out = tmp_path / "cli"
    common = ["--data", str(fake_data), "--out", str(out), "--set", "train_subset=none", "--set", "val_subset=none"]
    r = run_cli(["--preset", "cifar10_tiny", "--finetune", str(start), "--set", "max_steps=1", *common])
    assert r.returncode == 0, r.stderr
    assert "fine-tune: source " in r.stdout and "pos_embed unchanged (8x8); head kept (10 classes)" in r.stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["finetune"] == str(start) and saved["_runtime"]["finetune"]["source"] == str(start)
    start.unlink()
    r = run_cli(["--resume", "--out", str(out), "--set", "max_steps=2"])
    assert r.returncode == 0, r.stderr
    assert T.load_checkpoint(out / "last.pt")["step"] == 2


def test_help_lists_the_new_fields(capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--finetune CHECKPOINT" in text
    for name in ("finetune", "finetune_head", "distillation", "teacher", "teacher_weights"):
        assert f"\n  {name} (" in text, name


def test_m48_finetune_preset():
    p = PRESETS["cait_m48_448_finetune"]
    f, base = p.fields, PRESETS["cait_m48_448"].fields
    assert (f["model"], f["img_size"], f["batch_size"], f["epochs"], f["weight_decay"], f["warmup_epochs"],
            f["drop_path_rate"]) == ("cait_m48_448", 448, 256, 60, 0.05, 5, 0.3)
    assert f["lr"] == pytest.approx(5e-6 * 256 / 512)  # DeiT's --lr is scaled by batch / 512
    for k in ("recipe", "label_smoothing", "mixup_alpha", "cutmix_alpha", "mixup_switch_prob", "repeats",
              "randaugment", "crop_ratio"):
        assert f.get(k) == base.get(k), k  # the same augmentation as the 400-epoch recipe
    assert (f["distillation"], f["teacher"], f["finetune_head"]) == ("hard", "regnet_y_16gf", "keep")
    with pytest.raises(T.ConfigError, match="preset cait_m48_448_finetune needs finetune: the CaiT-M48 checkpoint"):
        T.validate_config(T.make_config("cait_m48_448_finetune"))
    cfg = T.validate_config(T.make_config("cait_m48_448_finetune", finetune="m48_224.pt", amp="off"), world_size=8)
    assert cfg.min_lr < cfg.warmup_lr < cfg.lr
    assert "Assumed here" in p.doc and "issue #108" in p.doc


def test_a_run_recorded_before_these_fields_still_resumes(tmp_path, fake_data):
    out = tmp_path / "old"
    T.train(_cfg(fake_data, out, max_steps=2))
    ck = T.load_checkpoint(out / "last.pt")
    for k in ("finetune", "finetune_head", "distillation", "teacher", "teacher_weights"):
        del ck["config"][k]
    torch.save(ck, out / "last.pt")
    assert T.train(_cfg(fake_data, out, max_steps=3), resume=True)["step"] == 3
