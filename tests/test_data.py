"""Tests for cait_edu.data: loaders, transforms, Mixup/CutMix and sampling."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cait_edu import data as D

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import write_image_folder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
README_SHA_X_TEST = "6b309d7b8f755aea"  # /work/shared/data/README.md: sha256 of x_test (N, 32, 32, 3)
README_SHA_Y_TEST = "888a4b10891ac78d"


# ----------------------------------------------------------------------------
# Fake data in the two on-disk formats
# ----------------------------------------------------------------------------
def _random_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8 smooth-ish images (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return small.repeat(4, axis=1).repeat(4, axis=2)


def _write_fake_npz(path: Path, n_train: int = 6, n_test: int = 4) -> dict:
    """Write a tiny file in the cifar10-jpeg.npz format; return the decoded truth."""
    arrays, truth = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = _random_images(n, seed=n)
        blobs, decoded = [], []
        for img in imgs:
            b = io.BytesIO()
            Image.fromarray(img).save(b, format="JPEG", quality=75)
            blobs.append(b.getvalue())
            decoded.append(np.asarray(Image.open(io.BytesIO(b.getvalue())).convert("RGB")))
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(x) for x in blobs]).astype(np.int64)
        arrays[f"y_{split}"] = np.arange(n, dtype=np.int64) % 10
        truth[split] = np.stack(decoded)  # (n, 32, 32, 3)
    arrays["classes"] = np.array(D.CIFAR10_CLASSES)
    np.savez(path, **arrays)
    return truth


def _write_fake_batches(folder: Path, n_per_batch: int = 3) -> dict:
    """Write a tiny cifar-10-batches-py folder (torchvision's pickled dicts)."""
    folder.mkdir(parents=True)
    truth = {"train": [], "test": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        imgs = np.random.default_rng(k).integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
        labels = [(k + j) % 10 for j in range(n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": imgs.reshape(n_per_batch, 3072), b"labels": labels}, f)
        truth["test" if name == "test_batch" else "train"].append((imgs, labels))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in D.CIFAR10_CLASSES]}, f)
    return truth


# ----------------------------------------------------------------------------
# Data directory and CIFAR-10 loading
# ----------------------------------------------------------------------------
def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CAIT_EDU_DATA", str(tmp_path / "env"))
    assert D.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert D.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("CAIT_EDU_DATA")
    expected = REPO / "data" if (REPO / "data").is_dir() else Path("data")
    assert D.resolve_data_dir() == expected


def test_load_cifar10_from_fake_npz(tmp_path):
    truth = _write_fake_npz(tmp_path / "cifar10-jpeg.npz")
    for split in ("train", "test"):
        ds = D.load_cifar10(split, tmp_path)
        n = len(truth[split])
        assert len(ds) == n and ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
        assert ds.labels.dtype == torch.int64
        assert torch.equal(ds.images, torch.from_numpy(truth[split]).permute(0, 3, 1, 2))
        assert ds.classes == D.CIFAR10_CLASSES
        assert "cifar10-jpeg.npz" in ds.source and str(tmp_path.resolve()) in ds.source
        x, y = ds[1]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
        assert torch.equal(x, ds.images[1].float() / 255) and y == 1
    # cached: the second call shares the decoded tensor
    assert D.load_cifar10("test", tmp_path).images is D.load_cifar10("test", tmp_path).images


def test_load_cifar10_from_fake_batches(tmp_path):
    truth = _write_fake_batches(tmp_path / "cifar-10-batches-py")
    train = D.load_cifar10("train", tmp_path)
    assert train.images.shape == (15, 3, 32, 32) and "cifar-10-batches-py" in train.source
    assert torch.equal(train.images[:3], torch.from_numpy(truth["train"][0][0]))
    assert train.labels.tolist() == sum((lab for _, lab in truth["train"]), [])
    test = D.load_cifar10("test", tmp_path, transform=lambda img: img.flip(-1).float())
    assert torch.equal(test[2][0], torch.from_numpy(truth["test"][0][0][2]).flip(-1).float())


def test_load_cifar10_missing_and_bad_split(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        D.load_cifar10("test", tmp_path)
    msg = str(info.value)
    assert "download=True" in msg and "cifar10-jpeg.npz" in msg and "CAIT_EDU_DATA" in msg
    with pytest.raises(ValueError):
        D.load_cifar10("validation", tmp_path)


def test_array_dataset_subset(tmp_path):
    _write_fake_npz(tmp_path / "cifar10-jpeg.npz")
    ds = D.load_cifar10("train", tmp_path)
    first = ds.subset(3)
    assert len(first) == 3 and torch.equal(first.images, ds.images[:3])
    picked = ds.subset([4, 0], transform=lambda img: img)
    assert torch.equal(picked.labels, ds.labels[[4, 0]]) and picked[0][0].dtype == torch.uint8


def _real_cifar_dir() -> Path | None:
    candidates = [os.environ.get("CAIT_EDU_DATA"), REPO / "data", "/work/shared/data"]
    for c in candidates:
        if c and (Path(c) / "cifar10-jpeg.npz").is_file():
            return Path(c)
    return None


@pytest.mark.skipif(_real_cifar_dir() is None, reason="offline cifar10-jpeg.npz not available")
def test_real_offline_cifar10_test_split():
    ds = D.load_cifar10("test", _real_cifar_dir())
    assert ds.images.shape == (10000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    # The README hashes the decoded array in numpy's (N, 32, 32, 3) HWC layout.
    hwc = ds.images.permute(0, 2, 3, 1).contiguous().numpy()
    assert hashlib.sha256(hwc.tobytes()).hexdigest()[:16] == README_SHA_X_TEST
    assert hashlib.sha256(ds.labels.numpy().tobytes()).hexdigest()[:16] == README_SHA_Y_TEST


# ----------------------------------------------------------------------------
# ImageNet folder
# ----------------------------------------------------------------------------
def test_load_imagenet_layouts_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/<wnid>"):
        D.load_imagenet("train", tmp_path)
    (tmp_path / "imagenet" / "val" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no class folders with images"):
        D.load_imagenet("val", tmp_path)
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "imagenet" / "val" / wnid).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "imagenet" / "val" / wnid / "a.JPEG")
    tf = D.build_transform("deit", train=False, img_size=24)
    for root in (tmp_path, tmp_path / "imagenet"):  # <data_dir>/imagenet/val or <data_dir>/val
        ds = D.load_imagenet("val", root, transform=tf)
        assert len(ds) == 2 and ds.classes == ["n01440764", "n01443537"]
        x, y = ds[1]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y == 1
    with pytest.raises(ValueError):
        D.load_imagenet("test", tmp_path)


def test_load_imagefolder_layout_errors(tmp_path):
    layout = r"expected <data_dir>/train/<class>/<image> and <data_dir>/val/<class>/<image>"
    with pytest.raises(FileNotFoundError, match=r"image folder split 'train' not found: .* does not exist; " + layout):
        D.load_imagefolder("train", tmp_path)
    (tmp_path / "train").mkdir()
    # torchvision's own reason, prefixed with the folder and followed by the expected layout
    in_folder = "^" + re.escape(str(tmp_path / "train")) + ": .+; " + layout
    with pytest.raises(FileNotFoundError, match=in_folder):
        D.load_imagefolder("train", tmp_path)  # a split folder without class folders
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=in_folder):
        D.load_imagefolder("train", tmp_path)  # class folders without images


def test_load_imagefolder_reads_both_splits(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", classes=3, per_class=2, size=20)
    tf = D.build_transform("cifar", train=False, img_size=20)
    for split in ("train", "val"):
        ds = D.load_imagefolder(split, root, transform=tf)
        assert len(ds) == 6 and ds.classes == ["class_0", "class_1", "class_2"]
        x, y = ds[5]
        assert x.shape == (3, 20, 20) and x.dtype == torch.float32 and y == 2
    monkeypatch.setenv("CAIT_EDU_DATA", str(root))  # data_dir=None resolves like the other loaders
    assert len(D.load_imagefolder("val")) == 6


def test_fixed_subset_is_deterministic_and_checks_n(tmp_path):
    images = torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8)
    arr = D.ArrayDataset(images, torch.arange(20), [str(k) for k in range(20)], transform=lambda img: img)
    assert D.fixed_subset(arr, None, "train_subset") is arr
    a, b = D.fixed_subset(arr, 7, "train_subset"), D.fixed_subset(arr, 7, "train_subset")
    assert isinstance(a, D.ArrayDataset) and a.transform is arr.transform
    picked = a.labels.tolist()  # labels are the indices here
    assert picked == b.labels.tolist() == sorted(picked) and len(set(picked)) == 7
    # pinned: runs that trained on a subset before keep the same images (generator seed 0)
    assert picked == [3, 4, 5, 7, 13, 14, 19]
    assert torch.equal(a.images, images[picked])
    # the choice depends on n and the dataset length only, not on the global RNG or the dataset type
    torch.manual_seed(123)
    folder = D.load_imagefolder("train", write_image_folder(tmp_path / "imgs", classes=4, per_class=5, size=8))
    sub = D.fixed_subset(folder, 7, "val_subset")
    assert isinstance(sub, torch.utils.data.Subset) and sub.indices == picked
    assert [sub[i][1] for i in range(7)] == [folder.targets[i] for i in picked]
    assert len(D.fixed_subset(arr, 20, "train_subset")) == 20
    with pytest.raises(ValueError, match=r"^train_subset=21 but the dataset has only 20 images$"):
        D.fixed_subset(arr, 21, "train_subset")


# ----------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("recipe,size", [("deit", 24), ("cifar", 32)])
@pytest.mark.parametrize("train", [True, False])
def test_transform_shapes(recipe, size, train):
    torch.manual_seed(0)
    tf = D.build_transform(recipe, train, size, randaugment_magnitude=5 if recipe == "cifar" else None)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    for inp in (img, pil):
        for _ in range(5):
            x = tf(inp)
            assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (3, size, size)


def test_eval_transforms_are_deterministic_normalisation():
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    x = D.build_transform("cifar", False, 32)(img)
    mean, std = torch.tensor(D.CIFAR10_MEAN).view(3, 1, 1), torch.tensor(D.CIFAR10_STD).view(3, 1, 1)
    assert torch.allclose(x, (img.float() / 255 - mean) / std, atol=1e-6)
    # deit eval at crop ratio 1.0 and native size: resize is a no-op
    y = D.build_transform("deit", False, 32)(img)
    mean, std = torch.tensor(D.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(D.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(y, (img.float() / 255 - mean) / std, atol=1e-6)
    with pytest.raises(ValueError):
        D.build_transform("autoaugment", True, 32)


# ----------------------------------------------------------------------------
# Mixup / CutMix
# ----------------------------------------------------------------------------
def test_smooth_one_hot():
    t = D.smooth_one_hot(torch.tensor([0, 2]), 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.allclose(t[0], torch.tensor([0.925, 0.025, 0.025, 0.025]))
    assert torch.equal(D.smooth_one_hot(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1.0, 0.0]]))


def test_sample_beta_moments_and_reproducibility():
    g = torch.Generator().manual_seed(0)
    for a in (0.8, 1.0, 2.5):
        xs = np.array([D.sample_beta(a, a, g) for _ in range(3000)])
        assert abs(xs.mean() - 0.5) < 0.02
        assert abs(xs.var() - 1 / (4 * (2 * a + 1))) < 0.01
        assert xs.min() >= 0 and xs.max() <= 1
    draw = lambda: [D.sample_beta(0.8, 0.8, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert draw() == draw()


def test_mixup_cutmix_targets_and_reproducibility():
    images = torch.rand(8, 3, 16, 16)
    original = images.clone()
    labels = torch.arange(8) % 5
    mix = D.MixupCutmix(num_classes=5)
    modes = set()
    for seed in range(20):
        before = torch.get_rng_state()
        out, tgt = mix(images, labels, torch.Generator().manual_seed(seed))
        assert torch.equal(torch.get_rng_state(), before)  # global RNG untouched
        modes.add(mix.last["mode"])
        assert out.shape == images.shape and tgt.shape == (8, 5)
        assert torch.allclose(tgt.sum(1), torch.ones(8))
        out2, tgt2 = mix(images, labels, torch.Generator().manual_seed(seed))
        assert torch.equal(out, out2) and torch.equal(tgt, tgt2)
    assert modes == {"mixup", "cutmix"}
    assert torch.equal(images, original)  # the input batch is not modified


def test_cutmix_lambda_is_area_corrected():
    B, H, W = 4, 16, 16
    images = torch.stack([torch.full((3, H, W), float(i)) for i in range(B)])  # image i is constant i
    labels = torch.arange(B)
    mix = D.MixupCutmix(num_classes=B, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    for seed in range(10):
        out, tgt = mix(images, labels, torch.Generator().manual_seed(seed))
        assert mix.last["mode"] == "cutmix"
        y0, y1, x0, x1 = mix.last["box"]
        kept = (out[0, 0] == 0).float().mean().item()  # fraction of image 0's own pixels
        assert kept == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (H * W))
        assert mix.last["lam"] == pytest.approx(kept)
        assert tgt[0, 0].item() == pytest.approx(kept) and tgt[0, B - 1].item() == pytest.approx(1 - kept)


def test_mixup_is_convex_combination_and_prob_zero():
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    mix = D.MixupCutmix(num_classes=6, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    out, tgt = mix(images, labels, torch.Generator().manual_seed(3))
    lam = mix.last["lam"]
    assert torch.allclose(out, lam * images + (1 - lam) * images.flip(0))
    assert tgt[0, 0].item() == pytest.approx(lam) and tgt[0, 5].item() == pytest.approx(1 - lam)
    none = D.MixupCutmix(num_classes=6, prob=0.0, label_smoothing=0.1)
    out, tgt = none(images, labels, torch.Generator().manual_seed(3))
    assert torch.equal(out, images) and torch.allclose(tgt, D.smooth_one_hot(labels, 6, 0.1))


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------
class NoisyDataset(torch.utils.data.Dataset):
    """Each item is its index plus random noise from torch and python RNGs
    (stands in for a random augmentation). Module level so workers can pickle it."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((3,), float(i)) + torch.rand(3) + random.random(), i


def _flat(batches):
    return [s for b in batches for s in b]


def test_sampler_same_seed_same_batches_different_epochs_differ():
    a = D.EpochSampler(50, batch_size=8, seed=1)
    b = D.EpochSampler(50, batch_size=8, seed=1)
    assert len(a) == 6 and all(len(x) == 8 for x in a)
    a.set_epoch(3), b.set_epoch(3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(4)
    assert list(a) != first
    assert [i for i, _ in _flat(first)] != list(range(48))  # shuffled; drop_last drops 2
    assert len({i for i, _ in _flat(first)}) == 48
    assert len({s for _, s in _flat(first)}) == 48 and all(0 <= s < 2**63 for _, s in _flat(first))
    c = D.EpochSampler(50, batch_size=8, seed=1, drop_last=False, shuffle=False)
    assert len(c) == 7 and [i for i, _ in _flat(list(c))] == list(range(50))


def test_sampler_resume_skips_exactly_k_batches():
    s = D.EpochSampler(40, batch_size=4, seed=5)
    s.set_epoch(2)
    full = list(s)
    s.set_start_batch(3)
    assert list(s) == full[3:]
    assert list(s) == full[3:]  # the offset holds for this epoch (DataLoader may iterate twice)
    s.set_epoch(3)
    assert len(list(s)) == len(full)  # a new epoch starts from its first batch
    state = {"epoch": 2, "start_batch": 7}
    t = D.EpochSampler(40, batch_size=4, seed=5)
    t.load_state_dict(state)
    assert t.state_dict() == state and list(t) == full[7:]


def test_sampler_start_batch_holds_for_every_iter_of_its_epoch():
    """The resume offset is not consumed by iterating: every iter() of the epoch skips the same
    batches, until set_epoch selects a *different* epoch (then it is 0 and stays 0)."""
    s = D.EpochSampler(40, batch_size=4, seed=5)
    s.set_epoch(2)
    full = list(s)
    s.set_start_batch(3)
    for _ in range(3):
        assert list(s) == full[3:]
    s.set_epoch(2)  # re-selecting the current epoch keeps the offset
    assert list(s) == full[3:] and s.state_dict() == {"epoch": 2, "start_batch": 3}
    # make_loader with workers: torch calls iter() on the batch sampler more than once at start
    indices = [y.tolist() for _, y in D.make_loader(NoisyDataset(40), s, num_workers=2)]
    assert indices == [[i for i, _ in b] for b in full[3:]]
    assert list(s) == full[3:]  # still there after a whole loader pass
    s.set_epoch(3)
    assert s.start_batch == 0 and len(list(s)) == len(full)
    s.set_epoch(2)  # coming back does not restore the old offset
    assert list(s) == full


def test_sampler_two_ranks_partition_the_epoch():
    n = 30
    ranks = [D.EpochSampler(n, batch_size=5, seed=0, num_replicas=2, rank=r) for r in range(2)]
    for s in ranks:
        s.set_epoch(1)
    got = [_flat(list(s)) for s in ranks]
    assert len(got[0]) == len(got[1]) == 15 == len(ranks[0]) * 5
    assert not {i for i, _ in got[0]} & {i for i, _ in got[1]}
    assert sorted(i for r in got for i, _ in r) == list(range(n))
    assert not {s for _, s in got[0]} & {s for _, s in got[1]}  # distinct global positions


def test_sampler_repeated_augmentation():
    n, R = 30, 3
    ranks = [D.EpochSampler(n, batch_size=2, seed=4, num_replicas=R, rank=r, repeats=3, drop_last=False)
             for r in range(R)]
    got = [_flat(list(s)) for s in ranks]
    assert all(len(g) == n // R for g in got)  # epoch length as without repeats
    # Rank r holds global positions r, r + 3, ...; the 3 copies of image k sit at
    # positions 3k, 3k+1, 3k+2, i.e. the j-th sample of each rank is the same image.
    for j in range(n // R):
        same = [got[r][j][0] for r in range(R)]
        assert same[0] == same[1] == same[2]
        assert len({got[r][j][1] for r in range(R)}) == 3  # different augmentation seeds
    for r in range(R):  # so no rank sees an image twice
        assert len({i for i, _ in got[r]}) == n // R


# (n, world size R, batches per rank with drop_last, without): batch_size 5, repeats 3.
# Each rank keeps n // R samples (DeiT's rule); drop_last rounds that down to whole batches.
RA_CASES = [(24, 1, 4, 5), (24, 2, 2, 3), (24, 3, 1, 2), (24, 4, 1, 2),
            (25, 1, 5, 5), (25, 2, 2, 3), (25, 4, 1, 2)]


@pytest.mark.parametrize("n,R,batches_drop,batches_keep", RA_CASES)
def test_sampler_repeated_augmentation_any_world_size(n, R, batches_drop, batches_keep):
    repeats, bs = 3, 5
    for drop_last, n_batches in ((True, batches_drop), (False, batches_keep)):
        ranks = [D.EpochSampler(n, batch_size=bs, seed=9, num_replicas=R, rank=r, repeats=repeats,
                                drop_last=drop_last) for r in range(R)]
        for s in ranks:
            s.set_epoch(1)
        batches = [list(s) for s in ranks]
        assert [len(b) for b in batches] == [len(s) for s in ranks] == [n_batches] * R
        per_rank = n // R if not drop_last else n // R // bs * bs
        assert all(len(_flat(b)) == per_rank and all(len(x) <= bs for x in b) for b in batches)
    # Without drop_last the ranks together hold the first R * (n // R) places of the global order,
    # where each image sits `repeats` times in a row. So every image drawn this epoch appears
    # exactly `repeats` times across ranks, except at most one whose copies the epoch end cuts;
    # about n / repeats distinct images are drawn (the epoch is as long as without repeats).
    got = [_flat(b) for b in batches]
    where: dict[int, list[int]] = {}  # image -> rank of each of its copies
    for r, samples in enumerate(got):
        for i, _ in samples:
            where.setdefault(i, []).append(r)
    counts = sorted(len(v) for v in where.values())
    assert sum(counts) == R * (n // R)
    assert counts[1:] == [repeats] * (len(counts) - 1) and 1 <= counts[0] <= repeats
    assert len(where) == -(-R * (n // R) // repeats)
    # Consecutive places go to consecutive ranks: the copies of an image are spread over
    # min(repeats, R) ranks, no rank holding more than ceil(repeats / R) of them.
    for rs in where.values():
        if len(rs) == repeats:
            assert len(set(rs)) == min(repeats, R)
            assert max(rs.count(r) for r in rs) == -(-repeats // R)
    seeds = [seed for samples in got for _, seed in samples]
    assert len(set(seeds)) == len(seeds)  # every copy gets its own augmentation seed


def test_seeded_dataset_fixed_augmentation_and_global_rng_untouched():
    ds = D.SeededDataset(NoisyDataset(10))
    torch.manual_seed(123)
    random.seed(123)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    x1, _ = ds[(4, 99)]
    x2, _ = ds[(4, 99)]
    x3, _ = ds[(4, 100)]
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert len(ds) == 10


def test_loader_identical_across_worker_counts_with_real_transform():
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    ds = D.ArrayDataset(images, torch.arange(24) % 10, D.CIFAR10_CLASSES,
                        transform=D.build_transform("cifar", True, 32, randaugment_magnitude=5))

    def run(num_workers, start=0, epoch=0):
        s = D.EpochSampler(len(ds), batch_size=4, seed=11, num_replicas=1)
        s.set_epoch(epoch)
        s.set_start_batch(start)
        return [(x.clone(), y.clone()) for x, y in D.make_loader(ds, s, num_workers=num_workers)]

    a, b = run(0), run(2)
    assert len(a) == len(b) == 6
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for workers in (0, 2):  # with workers, DataLoader calls iter() on the sampler twice
        tail = run(workers, start=4)
        assert len(tail) == 2
        assert all(torch.equal(x, xa) for (x, _), (xa, _) in zip(tail, a[4:], strict=True))
    other = run(0, epoch=1)
    assert not torch.equal(other[0][0], a[0][0])


def test_loader_with_python_random_dataset_and_two_workers():
    s = D.EpochSampler(12, batch_size=3, seed=2)
    a = [x for x, _ in D.make_loader(NoisyDataset(12), s, num_workers=0)]
    b = [x for x, _ in D.make_loader(NoisyDataset(12), s, num_workers=2)]
    assert len(a) == len(b) == 4  # zip alone would hide a loader that yields fewer batches
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
