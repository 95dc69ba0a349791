"""Hard-label distillation (cait_edu.training.distill): the loss is DeiT's formula on a mixed batch,
the teacher is frozen and runs in the student's autocast, a distilled run trains and resumes exactly
(and refuses a teacher that changed), and a missing or unusable teacher is a clear ConfigError.

Teachers are tiny and built here: torchvision's resnet18 without weights, a TorchScript convnet, a
cait_cifar_nano checkpoint of this trainer. Nothing is downloaded: the weights test blocks the
download and puts a file in a temporary torch.hub cache instead.
"""
from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cait_edu.train as T
from cait_edu import data as D
from cait_edu.registry import create_model
from cait_edu.training import distill, loop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import read_metrics  # noqa: E402

# every source of randomness on (see tests/test_train.py); 128 images, batch 32, 8 steps
BASE = dict(model="cait_cifar_nano", dataset="cifar10", recipe="cifar", batch_size=32, epochs=2, lr=2e-3,
            warmup_epochs=0.5, min_lr=1e-5, label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
            mixup_switch_prob=0.5, mixup_prob=1.0, drop_path_rate=0.1, ema=True, ema_decay=0.9,
            num_workers=0, log_every=1, eval_every=1, save_every_steps=2, progress=False, seed=3, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")




def _cfg(data: Path, out: Path, **kw) -> T.TrainConfig:
    return T.make_config(**{**BASE, "data_dir": str(data), "out": str(out), **kw})


def _teacher_net(seed: int, classes: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, classes))
    with torch.no_grad():  # BatchNorm running statistics that are not the defaults
        net.train()(torch.randn(16, 3, 32, 32))
    return net.eval()


def _scripted_teacher(path: Path, seed: int, classes: int = 10) -> Path:
    """A teacher file of any architecture, as torch.export saves it (dynamic batch, eval mode)."""
    net = _teacher_net(seed, classes)
    program = torch.export.export(net, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # the deprecation is PyTorch's; the format still loads
def test_torchscript_teacher_file_still_loads(tmp_path):
    net = _teacher_net(0, 10)
    torch.jit.script(net).save(str(tmp_path / "t.pt"))
    cfg = T.validate_config(T.make_config(distillation="hard", teacher=str(tmp_path / "t.pt"), out="unused"))
    src = distill.prepare_teacher(cfg)
    teacher, _ = src.build(10, 32, torch.device("cpu"), seed=0)
    x = torch.randn(3, 3, 32, 32)
    assert src.about.startswith("TorchScript module") and torch.allclose(teacher(x), net(x), atol=1e-6)


def test_exported_teacher_is_the_exported_network_in_eval_mode(tmp_path):
    net = _teacher_net(0, 10)
    cfg = T.validate_config(T.make_config(distillation="hard", teacher=str(_scripted_teacher(tmp_path / "t.pt2", 0)),
                                          out="unused"))
    src = distill.prepare_teacher(cfg)
    teacher, _ = src.build(10, 32, torch.device("cpu"), seed=0)
    teacher.train()  # the loop may switch modes; an exported graph stays as exported (BatchNorm in eval)
    x = torch.randn(5, 3, 32, 32)  # another batch size than at export
    assert src.about.startswith("torch.export program") and torch.allclose(teacher(x), net(x), atol=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_hard_distillation_loss_is_the_deit_formula():
    cfg = T.validate_config(T.make_config(distillation="hard", teacher="resnet18", out="unused"))
    teacher, _ = distill.prepare_teacher(cfg).build(10, 32, torch.device("cpu"), seed=0)
    bn = teacher.bn1.running_mean.clone()
    seen = []
    teacher.register_forward_hook(lambda m, inp, out: seen.append((inp[0], out)))
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    mixer = D.MixupCutmix(10, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=1.0, label_smoothing=0.1)
    mixed, targets = mixer(images, labels, torch.Generator().manual_seed(1))
    assert mixer.last["mode"] != "none" and targets.max() < 1.0  # mixed and smoothed
    student = create_model("cait_cifar_nano", num_classes=10)
    logits = student(mixed)
    loss = distill.make_criterion(teacher)(mixed, logits, targets)

    (seen_images, teacher_logits), = seen
    assert torch.equal(seen_images, mixed)  # the teacher sees the mixed batch
    logp = F.log_softmax(logits.detach(), dim=-1)
    y_t = teacher_logits.argmax(dim=-1)
    by_hand = 0.5 * -(targets * logp).sum(-1).mean() + 0.5 * -logp[torch.arange(8), y_t].mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    # the same thing as one cross-entropy against half the smoothed label, half the teacher's unsmoothed one
    half = 0.5 * targets + 0.5 * F.one_hot(y_t, 10)
    assert loss.item() == pytest.approx(-(half * logp).sum(-1).mean().item(), rel=1e-6)

    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())  # frozen
    assert student.head.weight.grad is not None
    assert not teacher.training and torch.equal(teacher.bn1.running_mean, bn)  # eval: BatchNorm stats unchanged
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the student's autocast reaches the teacher
        distill.make_criterion(teacher)(mixed, student(mixed), targets)
    assert seen[-1][1].dtype == torch.bfloat16


def test_distilled_run_trains_and_resumes_exactly(tmp_path, fake_data):
    teacher = _scripted_teacher(tmp_path / "teacher.pt", seed=1)
    kd = dict(distillation="hard", teacher=str(teacher))
    full, part = tmp_path / "full", tmp_path / "part"
    T.train(_cfg(fake_data, full, **kd))
    T.train(_cfg(fake_data, part, max_steps=3, **kd))
    assert T.train(_cfg(fake_data, part, **kd), resume=True)["step"] == 8
    a, b = T.load_checkpoint(full / "last.pt"), T.load_checkpoint(part / "last.pt")
    for part_name in ("model", "ema"):
        assert all(torch.equal(a[part_name][k], b[part_name][k]) for k in a[part_name]), part_name
    for i, st in a["optimizer"]["state"].items():
        assert all(torch.equal(st[k], b["optimizer"]["state"][i][k]) for k in st)
    train = [(r["step"], r["loss"]) for r in read_metrics(full) if r["kind"] == "train"]
    assert train == [(r["step"], r["loss"]) for r in read_metrics(part) if r["kind"] == "train"]
    assert not any("teacher" in k or k.startswith("0.") for k in a["model"])  # the teacher is not saved...
    assert len(a["teacher_fingerprint"]) == 16  # ...only its fingerprint

    # the teacher's term is in the loss: the same run without it logs another first loss
    T.train(_cfg(fake_data, tmp_path / "plain", max_steps=1))
    assert read_metrics(tmp_path / "plain")[0]["loss"] != train[0][1]

    # a teacher whose weights changed is refused on resume
    _scripted_teacher(teacher, seed=2)
    with pytest.raises(T.ConfigError, match=r"cannot resume: the teacher \(torch.export program .*\) has other weights"):
        T.train(_cfg(fake_data, full, epochs=3, **kd), resume=True)


def test_a_checkpoint_of_this_trainer_as_teacher(tmp_path, fake_data):
    T.train(_cfg(fake_data, tmp_path / "t", max_steps=1))
    cfg = T.validate_config(_cfg(fake_data, tmp_path / "s", distillation="hard", teacher=str(tmp_path / "t" / "last.pt")))
    src = distill.prepare_teacher(cfg)
    assert src.about.startswith("cait_cifar_nano at 32 px from ") and src.about.endswith("(step 1)")
    teacher, _ = src.build(10, 32, torch.device("cpu"), seed=0)
    saved = T.load_checkpoint(tmp_path / "t" / "last.pt")["model"]
    assert all(torch.equal(teacher.state_dict()[k], saved[k]) for k in saved) and not teacher.training


def _boom(*a, **k):
    raise AssertionError("work started before the teacher was checked")


BAD = [
    (dict(distillation="hard"), "distillation=hard needs a teacher: a torchvision model name"),
    (dict(distillation="hard", teacher="nope.pt"), "teacher 'nope.pt' is neither a torchvision classification model "
                                                   "name (e.g. regnet_y_16gf"),
    (dict(teacher="resnet18"), "a teacher is set but distillation='none'; set distillation=hard"),
    (dict(distillation="hard", teacher="resnet18", teacher_weights="IMAGENET1K_V9"),
     "teacher_weights 'IMAGENET1K_V9' is not a weights set of torchvision's resnet18; choose one of IMAGENET1K_V1"),
    (dict(distillation="wise"), "distillation must be one of none, hard"),
    (dict(finetune_head="reset"), "finetune_head=reset needs finetune"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[str(o) for o, _ in BAD])
def test_missing_teacher_is_a_config_error_before_any_work(tmp_path, fake_data, monkeypatch, overrides, message):
    monkeypatch.setattr(loop, "build_datasets", _boom)
    monkeypatch.setattr(loop, "create_model", _boom)
    with pytest.raises(T.ConfigError) as e:
        T.train(_cfg(fake_data, tmp_path / "run", **overrides))
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()


def test_unusable_teacher_files(tmp_path, fake_data, monkeypatch):
    torch.save(create_model("cait_cifar_nano", num_classes=10).state_dict(), tmp_path / "bare.pt")
    monkeypatch.setattr(loop, "build_datasets", _boom)  # a file that is no teacher: refused before the data
    with pytest.raises(T.ConfigError, match="is neither a checkpoint of cait_edu.train nor an exported module. A "
                                            "bare state dict does not say which architecture"):
        T.train(_cfg(fake_data, tmp_path / "a", distillation="hard", teacher=str(tmp_path / "bare.pt")))
    monkeypatch.undo()
    five = _scripted_teacher(tmp_path / "five.pt", seed=0, classes=5)  # the data says 10 classes
    with pytest.raises(T.ConfigError, match=r"returns \(1, 5\) for one image, expected logits of shape \(1, 10\)"):
        T.train(_cfg(fake_data, tmp_path / "b", distillation="hard", teacher=str(five)))


def test_torchvision_teacher_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cfg = T.validate_config(T.make_config(distillation="hard", teacher="resnet18", teacher_weights="IMAGENET1K_V1",
                                          out=str(tmp_path / "run")))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(T.ConfigError) as e:
        distill.prepare_teacher(cfg)
    msg = str(e.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth (needs internet)" in msg
    assert f"put it at {cached}" in msg and "no network" in msg
    # the file put into the cache by hand is used offline
    from torchvision.models import resnet18

    torch.manual_seed(0)
    state = resnet18(num_classes=1000).state_dict()
    cached.parent.mkdir(parents=True, exist_ok=True)  # torch.hub made it for the download
    torch.save(state, cached)
    src = distill.prepare_teacher(cfg)
    assert src.about.startswith("torchvision resnet18 IMAGENET1K_V1 (ImageNet-1k top-1")
    teacher, _ = src.build(1000, 32, torch.device("cpu"), seed=0)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(T.ConfigError, match=r"returns \(1, 1000\) for one image, expected logits of shape \(1, 10\)"):
        src.build(10, 32, torch.device("cpu"), seed=0)
