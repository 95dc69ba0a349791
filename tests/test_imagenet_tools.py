"""The ImageNet tools of chapter 7: validation images into class folders (every label format, checks
before any move, a second run moves nothing), the recipe table generated from the presets, the
cost of a full run in MACs, ``python -m cait_edu.evaluate`` (the trainer's own top-1, recomputed),
and the fused AdamW switch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cait_edu.train as T
from cait_edu import data as D
from cait_edu.cluster import training_cost
from cait_edu.data.__main__ import main as data_main
from cait_edu.data.imagenet_prep import VAL_NAME, read_val_labels
from cait_edu.evaluate import main as evaluate_main
from cait_edu.measure import count_macs
from cait_edu.presets import PRESETS, recipe_table
from cait_edu.registry import MODEL_SPECS, create_model
from cait_edu.training.hardware import adamw_options
from cait_edu.training.optim import param_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import write_image_folder  # noqa: E402

WNIDS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _val_folder(root: Path, n: int = 9) -> tuple[Path, list[str]]:
    """``root/val/ILSVRC2012_val_0000000k.JPEG`` for k = 1..n, image k of class WNIDS[k % 3]."""
    val = root / "val"
    val.mkdir(parents=True)
    labels = []
    for k in range(1, n + 1):
        wnid = WNIDS[k % 3]
        colour = np.zeros((8, 8, 3), np.uint8)
        colour[..., k % 3] = 200
        Image.fromarray(colour).save(val / f"{VAL_NAME.format(k)}.JPEG")
        labels.append(wnid)
    return val, labels


def _moved(val: Path, labels: list[str]) -> None:
    assert not [p for p in val.iterdir() if p.is_file()], "every image moved"
    for k, wnid in enumerate(labels, start=1):
        assert (val / wnid / f"{VAL_NAME.format(k)}.JPEG").is_file()


def test_wnid_per_line_then_nothing_to_do(tmp_path):
    val, labels = _val_folder(tmp_path)
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    assert D.prepare_imagenet_val(val, tmp_path / "labels.txt", dry_run=True)["moved"] == 9
    assert len([p for p in val.iterdir() if p.is_file()]) == 9, "a dry run moves nothing"
    res = D.prepare_imagenet_val(val, tmp_path / "labels.txt")
    assert res == {"moved": 9, "already_in_place": 0, "classes": 3, "images": 9}
    _moved(val, labels)
    again = D.prepare_imagenet_val(val, tmp_path / "labels.txt")
    assert again == {"moved": 0, "already_in_place": 9, "classes": 3, "images": 9}
    ds = D.load_imagenet("val", tmp_path)  # the layout ImageFolder and the trainer read
    assert ds.classes == WNIDS and len(ds) == 9
    assert [ds.classes[y] for _, y in ds.samples] == [labels[int(Path(p).stem[-8:]) - 1] for p, _ in ds.samples]


def test_pairs_and_kaggle_csv(tmp_path):
    val, labels = _val_folder(tmp_path / "a")
    pairs = [f"{VAL_NAME.format(k)}.JPEG {w}" for k, w in enumerate(labels, start=1)][::-1]  # any order
    (tmp_path / "pairs.txt").write_text("\n".join(pairs))
    D.prepare_imagenet_val(val, tmp_path / "pairs.txt")
    _moved(val, labels)

    val, labels = _val_folder(tmp_path / "b")
    rows = ["ImageId,PredictionString"] + [f"{VAL_NAME.format(k)},{w} 1 2 30 40 {w} 5 6 7 8"
                                           for k, w in enumerate(labels, start=1)]
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    assert read_val_labels(tmp_path / "LOC_val_solution.csv")[VAL_NAME.format(2)] == labels[1]
    D.prepare_imagenet_val(val, tmp_path / "LOC_val_solution.csv")
    _moved(val, labels)


def test_devkit_ground_truth_with_meta_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    val, labels = _val_folder(tmp_path)
    # meta.mat: ILSVRC2012_IDs are not in wnid order; a non-leaf synset (num_children > 0) is not a class
    ids = {"n01484850": 1, "n01440764": 2, "n01443537": 3}
    synsets = np.array([(ids[w], w, 0) for w in WNIDS] + [(1001, "n00001740", 5)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    scipy_io.savemat(tmp_path / "meta.mat", {"synsets": synsets})
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("\n".join(str(ids[w]) for w in labels) + "\n")
    with pytest.raises(ValueError, match="meta_file"):
        D.prepare_imagenet_val(val, truth)
    assert data_main(["imagenet-val", str(val), str(truth), "--meta", str(tmp_path / "meta.mat")]) == 0
    _moved(val, labels)


def test_checks_before_moving_anything(tmp_path, capsys):
    val, labels = _val_folder(tmp_path)
    (tmp_path / "short.txt").write_text("\n".join(labels[:-1]))  # image 9 has no label
    with pytest.raises(ValueError, match="1 image.*no label"):
        D.prepare_imagenet_val(val, tmp_path / "short.txt")
    (tmp_path / "long.txt").write_text("\n".join(labels + [WNIDS[0]]))  # label 10 has no image
    with pytest.raises(ValueError, match="1 labelled image.*not in"):
        D.prepare_imagenet_val(val, tmp_path / "long.txt")
    (tmp_path / "bad.txt").write_text("\n".join(labels[:-1] + ["tench"]))
    with pytest.raises(ValueError, match="line 9.*'tench' is not a WordNet id"):
        D.prepare_imagenet_val(val, tmp_path / "bad.txt")
    assert len([p for p in val.iterdir() if p.is_file()]) == 9, "nothing moved"
    assert data_main(["imagenet-val", str(val), str(tmp_path / "short.txt")]) == 2
    assert "no label" in capsys.readouterr().err


# ------------------------------------------------------------------------------ recipe table
def test_recipe_table_comes_from_the_presets():
    text = recipe_table()
    table, shared = text.split("\n\n")
    header, _, *rows = table.splitlines()
    cait = [n for n, p in PRESETS.items() if n.startswith("cait_") and p.fields["dataset"] == "imagenet"]
    assert [r.split(" | ")[0].strip("| ") for r in rows[:-1]] == cait[:-1]
    assert rows[-1].startswith("| cait_m48_448_finetune (cait_m48_448) |")  # its model is not its name
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert len(cols) <= 10, "narrow enough to read"
    for name, row in zip(cait, rows):
        cells = dict(zip(cols, [c.strip() for c in row.strip("|").split("|")]))
        assert float(cells["drop-path"]) == PRESETS[name].fields["drop_path_rate"]
        assert int(cells["res"]) == PRESETS[name].fields["img_size"]
    m48 = dict(zip(cols, [c.strip() for c in rows[-1].strip("|").split("|")]))
    assert (m48["epochs"], m48["batch"], m48["lr"]) == ("60", "256", "2.5e-06")
    assert m48["distillation"] == "hard, teacher regnet_y_16gf (IMAGENET1K_V2)"
    assert m48["starts from"] == "a checkpoint at lower resolution (--finetune), head kept"
    assert "| weight decay | 0.05 |" in shared and "| repeated augmentation | x3 |" in shared
    assert "| eval crop | 1 |" in shared  # every CaiT recipe evaluates at crop ratio 1.0
    assert recipe_table() == text  # deterministic
    both = recipe_table(["cait_s24_224", "deit_small_patch16_224"])
    assert "eval crop" in both.split("\n\n")[0] and "0.875" in both  # DeiT's crop differs: now a column


# ------------------------------------------------------------------------------------- cost
def test_training_cost_counts_the_run():
    c = training_cost("cait_s24_224")
    with torch.device("meta"):
        fwd = count_macs(create_model("cait_s24_224"))
    assert c.forward_macs == fwd and round(fwd / 1e9, 2) == 9.33  # the paper's 9.4 GFLOPs (README)
    assert c.steps == 400 * (1_281_167 // 1024) and c.images == c.steps * 1024
    assert c.teacher_macs == 0 and c.train_macs_per_image == 3 * fwd
    assert c.gpu_hours(100.0) == pytest.approx(2 * 3 * fwd * c.images / 100e12 / 3600)
    ft = training_cost("cait_m48_448_finetune", finetune="m48_224.pt")
    assert round(ft.teacher_macs / 1e9, 1) == 63.6  # RegNetY-16GF (15.9 GMACs at 224) fed 448 px images
    assert ft.steps == 60 * (1_281_167 // 256) and ft.img_size == 448
    assert training_cost("cait_s24_224", epochs=1).steps == 1251
    with pytest.raises(ValueError, match="sustained_tflops"):
        c.gpu_hours(0)


# --------------------------------------------------------------------------------- evaluate
def test_evaluate_recomputes_the_trainers_top1(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=8, size=32)
    out = tmp_path / "run"
    res = T.train(T.make_config("cait_s24_224", model="cait_cifar_nano", img_size=32, data_dir=str(folder),
                                out=str(out), batch_size=8, epochs=1, warmup_epochs=0.5, num_workers=0,
                                device="cpu", progress=False, threads=1))
    assert evaluate_main(["--weights", str(out / "last.pt"), "--data", str(folder), "--workers", "0",
                          "--json", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert (a["model"], a["img_size"], a["crop_ratio"], a["val_samples"]) == ("cait_cifar_nano", 32, 1.0, 24)
    assert a["val_top1"] == res["val_top1"] and a["val_loss"] == pytest.approx(res["val_loss"], rel=1e-6)

    # the authors' file format: {"model": state dict}, keys prefixed "module."
    state = T.load_checkpoint(out / "last.pt")["model"]
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "release.pth")
    assert evaluate_main(["--model", "cait_cifar_nano", "--weights", str(tmp_path / "release.pth"), "--data",
                          str(folder), "--workers", "0", "--json", str(tmp_path / "b.json")]) == 0
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["val_top1"] == a["val_top1"] and b["val_loss"] == a["val_loss"]
    assert evaluate_main(["--model", "deit_cifar_tiny", "--weights", str(tmp_path / "release.pth"),
                          "--data", str(folder)]) == 2  # another architecture: refused


def test_fused_adamw_on_gpus_only():
    assert adamw_options(torch.device("cuda", 0)) == {"fused": True}
    assert adamw_options(torch.device("cpu")) == {}
    # the fused kernel takes the recipe's parameter groups (CPU has it too since PyTorch 2.4)
    torch.manual_seed(0)
    model = create_model("cait_cifar_nano", num_classes=3)
    twin = create_model("cait_cifar_nano", num_classes=3)
    twin.load_state_dict(model.state_dict())
    opts = [torch.optim.AdamW(param_groups(m, 0.05), lr=1e-3, **kw) for m, kw in ((model, {}), (twin, {"fused": True}))]
    x = torch.randn(4, 3, 32, 32)
    for m, opt in zip((model, twin), opts):
        m(x).logsumexp(-1).mean().backward()
        opt.step()
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)
    assert "cait_cifar_nano" in MODEL_SPECS
