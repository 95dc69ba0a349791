"""Distributed training on CPU (Gloo) through torchrun: 2 processes vs 1, and an ImageFolder run.

Why not bitwise: with 2 ranks each computes the mean gradient of its 16 images and DDP averages the
two (an all-reduce sum, then / 2), while one process averages all 32 at once. The sums are the same
numbers added in a different order, so gradients differ in the last bits (~1e-7 relative), and
AdamW's normalised updates carry that into the weights. Everything else is identical: the union of
the ranks' batches is the single-process batch (EpochSampler), every image gets the same
augmentation (per-sample seeds), drop-path and mixing are off, and evaluation counts are summed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cait_edu.train as T
from cait_edu.registry import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import REPO, env, read_metrics, set_args, write_fake_cifar, write_image_folder  # noqa: E402

# Measured (2 ranks vs 1 process, 8 AdamW steps): every parameter agrees to 1.2e-7 (an ulp or two of
# float32) except the attention key biases, 1.4e-5. Their true gradient is exactly 0 (adding the same
# q.b to every logit of a softmax row changes nothing), so what they get is rounding noise (~1e-10),
# which Adam divides by sqrt(v) + eps and turns into updates of ~1e-2 x lr that differ between runs.
# Tolerances, ~10x above the measurements and far below one lr-sized step (2e-3), which is what a real
# bug (a missing or doubled sample, unsynchronised gradients) produces:
TOL = 2e-6
TOL_KEY_BIAS = 1e-4
KEY_BIAS = ("attn.k.bias", "attn.qkv.bias")  # (qkv.bias holds the SA layers' key bias)

DETERMINISTIC = dict(model="cait_cifar_nano", dataset="cifar10", recipe="cifar", batch_size=32, epochs=2, lr=2e-3,
                     warmup_epochs=0.5, label_smoothing=0.1, mixup_alpha=0.0, cutmix_alpha=0.0, mixup_prob=0.0,
                     drop_path_rate=0.0, ema=False, num_workers=0, log_every=1, eval_every=1, progress=False,
                     seed=5, train_subset=None, val_subset=63, threads=1)


def torchrun(args: list[str], nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cait_edu.train", *args]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


pytestmark = pytest.mark.usefixtures("one_thread")  # torchrun gives each rank one thread too


def test_world_size_from_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(T.ConfigError, match=r"batch_size 33 \(global\) is not divisible by the world size 2"):
        T.validate_config(T.make_config(batch_size=33))
    assert T.validate_config(T.make_config(batch_size=32)).batch_size == 32


def test_two_processes_match_one(tmp_path):
    data = write_fake_cifar(tmp_path / "data")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    T.train(T.make_config(**DETERMINISTIC, data_dir=str(data), out=str(single)))
    r = torchrun(["--preset", "cifar10_tiny", "--data", str(data), "--out", str(ddp),
                  *set_args(DETERMINISTIC)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("data: ") == 1, "only rank 0 should print"

    a, b = T.load_checkpoint(single / "last.pt"), T.load_checkpoint(ddp / "last.pt")
    assert (a["step"], b["step"], b["world_size"]) == (8, 8, 2)
    diffs = {k: (a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"]}
    diff = max(v for k, v in diffs.items() if not k.endswith(KEY_BIAS))
    diff_kb = max(v for k, v in diffs.items() if k.endswith(KEY_BIAS))
    print(f"DDP_MEASURED max |w_2proc - w_1proc| = {diff:.3g} (key biases {diff_kb:.3g})")
    assert diff < TOL and diff_kb < TOL_KEY_BIAS
    torch.manual_seed(DETERMINISTIC["seed"])  # the initial weights, as train() builds them
    init = create_model("cait_cifar_nano", num_classes=10, drop_path_rate=0.0).state_dict()
    moved = max((a["model"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 10 * TOL_KEY_BIAS  # sanity: training moved the weights far more than the tolerance

    ra, rb = read_metrics(single), read_metrics(ddp)
    la = [r["loss"] for r in ra if r["kind"] == "train"]
    lb = [r["loss"] for r in rb if r["kind"] == "train"]
    assert len(la) == len(lb) == 8 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-4
    ea = [r for r in ra if r["kind"] == "eval"]
    eb = [r for r in rb if r["kind"] == "eval"]
    # 63 val images: shards of 32 + 31, every image counted once
    assert [r["val_samples"] for r in ea] == [r["val_samples"] for r in eb] == [63, 63]
    for x, y in zip(ea, eb):
        assert abs(x["val_top1"] - y["val_top1"]) <= 100 / 63 + 1e-9  # at most one image flips
        assert x["val_loss"] == pytest.approx(y["val_loss"], abs=1e-3)


def test_torchrun_imagefolder_end_to_end(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=8, size=32)
    out = tmp_path / "run"
    r = torchrun(["--preset", "cifar10_tiny", "--data", str(folder), "--out", str(out),
                  *set_args(dict(dataset="imagefolder", train_subset=None, val_subset=None, batch_size=8,
                                 epochs=2, warmup_epochs=0.5, log_every=1, eval_every=1, num_workers=1))])
    assert r.returncode == 0, r.stderr[-3000:]
    recs = read_metrics(out)
    # 24 images, 2 ranks x 4 per batch -> 12 per rank -> 3 steps per epoch
    assert [x["step"] for x in recs if x["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    evals = [x for x in recs if x["kind"] == "eval"]
    assert [(x["epoch"], x["val_samples"]) for x in evals] == [(1, 24), (2, 24)]
    assert all(0 <= x["val_top1"] <= 100 and x["val_top5"] == 100.0 for x in evals)  # 3 classes: top-5 = all
    ck = T.load_checkpoint(out / "last.pt")
    assert (ck["step"], ck["epoch"], ck["world_size"]) == (6, 2, 2)
    assert ck["model"]["head.weight"].shape == (3, 64)  # num_classes follows the folders
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == "imagefolder" and cfg["_runtime"]["world_size"] == 2
    assert cfg["_runtime"]["classes"] == ["class_0", "class_1", "class_2"]
    assert (out / "best.pt").is_file()
