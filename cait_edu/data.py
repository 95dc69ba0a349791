"""Datasets, augmentation recipes and reproducible, resumable sampling for CaiT.

What is in this file
--------------------
* **Where data lives**: :func:`resolve_data_dir` (argument > ``$CAIT_EDU_DATA`` >
  the repository's ``data/`` folder > ``./data``).
* **CIFAR-10**: :func:`load_cifar10` reads the offline JPEG copy
  ``cifar10-jpeg.npz`` or torchvision's extracted ``cifar-10-batches-py/`` (or
  downloads it with torchvision when asked) into an in-memory
  :class:`ArrayDataset` of uint8 ``(N, 3, 32, 32)`` images.
* **ImageNet**: :func:`load_imagenet` wraps ``torchvision.datasets.ImageFolder``.
* **Augmentation**: :func:`build_transform` builds the DeiT/CaiT ImageNet recipe
  (Touvron et al., "Training data-efficient image transformers & distillation
  through attention", 2021, whose recipe CaiT reuses: Touvron et al., "Going
  deeper with Image Transformers", 2021, Sec. 4 / Appendix "training details")
  and a lighter recipe for 32x32 CIFAR images. :class:`MixupCutmix` mixes whole
  batches (Mixup: Zhang et al. 2018; CutMix: Yun et al. 2019) with label
  smoothing, as in DeiT.
* **Sampling**: :class:`EpochSampler` yields batches of ``(index, sample_seed)``
  pairs for one rank of a (possibly distributed) run, with repeated augmentation
  (Hoffer et al. 2020, used by DeiT and CaiT with 3 repeats) and mid-epoch
  resume. :class:`SeededDataset` seeds every sample's augmentation from its
  ``sample_seed``, so a batch is bit-identical whatever worker process loads it,
  and :func:`make_loader` glues the two into a ``DataLoader``.

Everything random here is a pure function of ``(seed, epoch, position)`` or of an
explicit ``torch.Generator``: this is what lets the trainer stop anywhere and
resume to exactly the same batches.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import random
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayDataset",
    "EpochSampler",
    "MixupCutmix",
    "SeededDataset",
    "build_transform",
    "load_cifar10",
    "load_imagenet",
    "make_loader",
    "resolve_data_dir",
    "sample_beta",
    "smooth_one_hot",
]

# Per-channel statistics of the *original* CIFAR-10 training set (RGB, in [0, 1]).
# (The offline JPEG copy differs by < 0.003; the README gives its own values.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The usual ImageNet statistics, used by DeiT and CaiT.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

NPZ_NAME = "cifar10-jpeg.npz"
BATCHES_DIR = "cifar-10-batches-py"


# ----------------------------------------------------------------------------
# Where is the data?
# ----------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the directory that holds datasets.

    Priority: the explicit ``data_dir`` argument, then the environment variable
    ``CAIT_EDU_DATA``, then the repository's ``data/`` folder (present when the
    package is used from a clone or an editable install), then ``./data``.
    The directory is not required to exist.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("CAIT_EDU_DATA")
    if env:
        return Path(env).expanduser()
    repo_data = Path(__file__).resolve().parent.parent / "data"
    if repo_data.is_dir():
        return repo_data
    return Path("data")


# ----------------------------------------------------------------------------
# In-memory dataset
# ----------------------------------------------------------------------------
class ArrayDataset(Dataset):
    """A dataset held in memory as one uint8 image tensor plus int64 labels.

    Attributes:
        images: uint8 tensor (N, 3, H, W).
        labels: int64 tensor (N,).
        classes: class names, ``classes[label]``.
        source: human-readable description of where the data came from.
        transform: callable applied to one uint8 (3, H, W) image, or None.

    ``ds[i]`` returns ``(transform(images[i]), label)``, or, without a transform,
    ``(images[i].float() / 255, label)``: a float (3, H, W) tensor in [0, 1].
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str],
        source: str = "",
        transform: Callable | None = None,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images  # (N, 3, H, W) uint8
        self.labels = labels.long()  # (N,) int64
        self.classes = list(classes)
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]  # (3, H, W) uint8
        x = self.transform(img) if self.transform is not None else img.float() / 255
        return x, int(self.labels[i])

    def subset(self, n_or_indices: int | Sequence[int] | torch.Tensor, transform: Callable | None = None) -> "ArrayDataset":
        """A new dataset over the first ``n`` samples or over the given indices.

        ``transform=None`` keeps this dataset's transform. Tensors are indexed
        (a view for ``n``, a copy for index lists); the source string is kept.
        """
        if isinstance(n_or_indices, int):
            sel: slice | torch.Tensor = slice(0, n_or_indices)
        else:
            sel = torch.as_tensor(n_or_indices, dtype=torch.long)
        return ArrayDataset(
            self.images[sel], self.labels[sel], self.classes, self.source,
            transform if transform is not None else self.transform,
        )

    def __repr__(self) -> str:
        return (f"ArrayDataset(n={len(self)}, image_shape={tuple(self.images.shape[1:])}, "
                f"classes={len(self.classes)}, source={self.source!r})")


# ----------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------
# Decoded splits, keyed by (resolved path of the file/folder, split), so that a
# notebook calling load_cifar10 twice only decodes once.
_CIFAR_CACHE: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, list[str]]] = {}


def _decode_npz(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode one split of ``cifar10-jpeg.npz`` (JPEGs back to back + offsets)."""
    from PIL import Image

    with np.load(path) as z:  # only the requested arrays are read
        buf = z[f"{split}_jpeg"]  # (n_bytes,) uint8
        offsets = z[f"{split}_offsets"]  # (N + 1,) int64
        labels = z[f"y_{split}"]  # (N,) int64
        classes = [str(c) for c in z["classes"]] if "classes" in z.files else list(CIFAR10_CLASSES)
    n = len(offsets) - 1
    if n < 1:
        raise ValueError(f"{path} has no {split} images")
    bounds = offsets.tolist()  # python ints: faster slicing than numpy scalars
    view = memoryview(buf)
    hwc: np.ndarray | None = None  # (N, H, W, 3), allocated once the size is known
    for i in range(n):  # a plain single-threaded loop: ~0.15 ms per 32x32 JPEG
        im = Image.open(io.BytesIO(view[bounds[i]:bounds[i + 1]]))
        im.load()
        if im.mode != "RGB":
            im = im.convert("RGB")
        if hwc is None:
            hwc = np.empty((n, im.height, im.width, 3), dtype=np.uint8)
        hwc[i] = np.asarray(im)  # (H, W, 3)
    out = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))  # (N, 3, H, W)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64)), classes


def _read_batches(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read torchvision's extracted ``cifar-10-batches-py`` (pickled dicts)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)  # (n, 3072): R plane, G plane, B plane
        images.append(data.reshape(-1, 3, 32, 32))  # (n, 3, 32, 32)
        labels.append(np.asarray(d[b"labels"], dtype=np.int64))
    classes = list(CIFAR10_CLASSES)
    meta = folder / "batches.meta"
    if meta.exists():
        with open(meta, "rb") as f:
            classes = [c.decode() for c in pickle.load(f, encoding="bytes")[b"label_names"]]
    return (torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), classes)


def load_cifar10(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    transform: Callable | None = None,
) -> ArrayDataset:
    """Load a CIFAR-10 split as an in-memory :class:`ArrayDataset`.

    Looks in :func:`resolve_data_dir` ``(data_dir)`` for, in order,

    1. ``cifar10-jpeg.npz``: an offline copy whose images are JPEG (quality 75)
       bytes; pixels differ slightly from the original release;
    2. ``cifar-10-batches-py/``: the original release as torchvision extracts it.

    If neither exists and ``download=True``, torchvision downloads and extracts
    the original release into that directory (needs internet, ~170 MB);
    otherwise a ``FileNotFoundError`` explains how to get the data.

    Decoded splits are cached in-process, so calling twice is cheap; the returned
    datasets share the cached image tensor (do not modify it in place).

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000 images).
        data_dir: where to look; see :func:`resolve_data_dir`.
        download: download with ``torchvision.datasets.CIFAR10`` if missing.
        transform: callable applied to each uint8 (3, 32, 32) image.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = resolve_data_dir(data_dir)
    npz, batches = root / NPZ_NAME, root / BATCHES_DIR

    if npz.is_file():
        path, kind = npz.resolve(), "npz"
        source = f"{NPZ_NAME} (offline JPEG q75 copy) at {path}"
    elif batches.is_dir():
        path, kind = batches.resolve(), "batches"
        source = f"torchvision CIFAR-10 ({BATCHES_DIR}) at {path}"
    elif download:
        import torchvision

        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.CIFAR10(str(root), train=(split == "train"), download=True)
        path, kind = batches.resolve(), "batches"
        source = f"torchvision CIFAR-10 ({BATCHES_DIR}) at {path}"
    else:
        raise FileNotFoundError(
            f"CIFAR-10 not found in {root.resolve()} (looked for {NPZ_NAME} and {BATCHES_DIR}/).\n"
            "To get it, either\n"
            "  * call load_cifar10(..., download=True), which downloads the original release "
            "with torchvision.datasets.CIFAR10 (needs internet, ~170 MB), or\n"
            f"  * place {NPZ_NAME} (offline JPEG copy) or the extracted {BATCHES_DIR}/ folder "
            "in that directory.\n"
            "The directory is the data_dir argument, else $CAIT_EDU_DATA, else the repository's "
            "data/ folder, else ./data."
        )

    key = (str(path), split)
    if key not in _CIFAR_CACHE:
        _CIFAR_CACHE[key] = _decode_npz(path, split) if kind == "npz" else _read_batches(path, split)
    images, labels, classes = _CIFAR_CACHE[key]
    return ArrayDataset(images, labels, classes, source=f"{source} [{split}]", transform=transform)


# ----------------------------------------------------------------------------
# ImageNet
# ----------------------------------------------------------------------------
def load_imagenet(split: str, data_dir: str | os.PathLike | None = None, transform: Callable | None = None):
    """ImageNet-1k as a ``torchvision.datasets.ImageFolder``.

    Layout rule: the split folder is ``<data_dir>/imagenet/<split>`` if that
    exists, else ``<data_dir>/<split>`` (so ``data_dir`` may be the ImageNet root
    itself). Each split folder holds one sub-folder per class (WordNet id)::

        train/n01440764/*.JPEG   val/n01440764/*.JPEG   ...

    ``split`` is ``"train"`` or ``"val"``. Images are PIL; the transforms of
    :func:`build_transform` accept them.
    """
    from torchvision.datasets import ImageFolder

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = resolve_data_dir(data_dir)
    candidates = [root / "imagenet" / split, root / split]
    folder = next((c for c in candidates if c.is_dir()), None)
    layout = ("expected an ImageFolder layout: <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG, "
              f"with <root> = {root / 'imagenet'} or {root}")
    if folder is None:
        raise FileNotFoundError(f"ImageNet split {split!r} not found in {root}; {layout}.")
    has_images = any(p.is_file() for d in folder.iterdir() if d.is_dir() for p in d.iterdir())
    if not has_images:
        raise FileNotFoundError(f"ImageNet split folder {folder} has no class folders with images; {layout}.")
    return ImageFolder(str(folder), transform=transform)


# ----------------------------------------------------------------------------
# Per-image transforms
# ----------------------------------------------------------------------------
def build_transform(
    recipe: str,
    train: bool,
    img_size: int,
    *,
    crop_ratio: float = 1.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    randaugment_magnitude: int | None = None,
):
    """Per-image augmentation (``torchvision.transforms.v2``).

    Input: a uint8 (3, H, W) tensor or a PIL image. Output: a plain float32
    (3, img_size, img_size) tensor, normalised with ``mean``/``std``.

    ``recipe="deit"`` -- the DeiT recipe that CaiT trains ImageNet with:

    * train: RandomResizedCrop(img_size, scale=(0.08, 1), bicubic), horizontal
      flip, RandAugment (timm's ``rand-m9-mstd0.5-inc1``), normalise, then
      RandomErasing(p=0.25) with per-pixel normal noise (timm's "pixel" mode).
      Approximation: torchvision's RandAugment has no magnitude noise
      (``mstd0.5`` draws each op's magnitude from N(9, 0.5)); we use a fixed
      magnitude 9 on an 11-bin scale (``num_magnitude_bins=11``), which makes
      magnitude/10 of each op's range the same as timm's m9. Its op list is also
      slightly different (no Invert/SolarizeAdd, has Identity), it fills
      with the mean colour like timm, and uses bilinear (not bicubic)
      interpolation, as torchvision's tensor affine kernel has no bicubic.
    * eval: Resize(int(img_size / crop_ratio), bicubic) + CenterCrop(img_size).
      DeiT used crop_ratio 0.875; CaiT evaluates at crop_ratio 1.0 (default).
      Mixup/CutMix (batch level) is :class:`MixupCutmix`.

    ``recipe="cifar"`` -- for 32x32 images and small ViTs trained briefly on a
    CPU. The ImageNet recipe is too aggressive there: a crop of 8 % of a 32 px
    image keeps a few pixels blown up to the full size, and heavy RandAugment +
    erasing mainly slow down short runs on a small model (such regularisation
    pays off only over hundreds of epochs). So:

    * train: RandomCrop(img_size, padding=img_size // 8 (4 for 32 px), reflect
      padding) + horizontal flip, optionally RandAugment(num_ops=2,
      magnitude=randaugment_magnitude) on timm's 0-10 scale, normalise;
    * eval: normalise only (images are used at their native size).

    ``mean``/``std`` default to ImageNet statistics for "deit" and CIFAR-10
    statistics for "cifar".
    """
    from torchvision.transforms import v2

    if recipe not in ("deit", "cifar"):
        raise ValueError(f"recipe must be 'deit' or 'cifar', got {recipe!r}")
    if mean is None:
        mean = IMAGENET_MEAN if recipe == "deit" else CIFAR10_MEAN
    if std is None:
        std = IMAGENET_STD if recipe == "deit" else CIFAR10_STD
    mean, std = list(mean), list(std)
    fill = [round(255 * m) for m in mean]  # RandAugment fills uncovered pixels with the mean colour
    bicubic = v2.InterpolationMode.BICUBIC

    def rand_augment(magnitude: int):
        return v2.RandAugment(num_ops=2, magnitude=magnitude, num_magnitude_bins=11,
                              interpolation=v2.InterpolationMode.BILINEAR, fill=fill)

    ops: list = [v2.ToImage()]  # PIL or uint8 tensor -> uint8 tv_tensors.Image (3, H, W)
    if recipe == "deit" and train:
        ops += [
            v2.RandomResizedCrop(img_size, scale=(0.08, 1.0), interpolation=bicubic, antialias=True),
            v2.RandomHorizontalFlip(),
            rand_augment(9 if randaugment_magnitude is None else randaugment_magnitude),
        ]
    elif recipe == "deit":
        ops += [v2.Resize(int(img_size / crop_ratio), interpolation=bicubic, antialias=True),
                v2.CenterCrop(img_size)]
    elif train:  # cifar
        ops += [v2.RandomCrop(img_size, padding=max(1, img_size // 8), padding_mode="reflect"),
                v2.RandomHorizontalFlip()]
        if randaugment_magnitude is not None:
            ops.append(rand_augment(randaugment_magnitude))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]  # uint8 -> float in [0,1] -> normalised
    if recipe == "deit" and train:
        ops.append(v2.RandomErasing(p=0.25, value="random"))
    ops.append(v2.ToPureTensor())  # tv_tensors.Image -> plain torch.Tensor
    return v2.Compose(ops)


# ----------------------------------------------------------------------------
# Batch transforms: label smoothing, Mixup, CutMix
# ----------------------------------------------------------------------------
def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing (timm's convention).

    labels (B,) int64 -> (B, num_classes) float: ``smoothing / num_classes`` off
    the label and ``1 - smoothing + smoothing / num_classes`` on it (rows sum to 1).
    """
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def _sample_gamma(shape: float, generator: torch.Generator) -> float:
    """Gamma(shape, 1) from the generator (Marsaglia & Tsang, 2000)."""
    if shape < 1.0:  # boost: Gamma(a) = Gamma(a + 1) * U^(1/a)
        u = torch.rand((), generator=generator).item()
        return _sample_gamma(shape + 1.0, generator) * u ** (1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = torch.randn((), generator=generator).item()
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = torch.rand((), generator=generator).item()
        if u <= 0.0:
            continue
        if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def sample_beta(a: float, b: float, generator: torch.Generator) -> float:
    """Beta(a, b) = G_a / (G_a + G_b), with all randomness from ``generator``.

    (``torch.distributions.Beta`` cannot take a generator.)
    """
    ga, gb = _sample_gamma(a, generator), _sample_gamma(b, generator)
    return ga / (ga + gb) if ga + gb > 0 else 0.5


class MixupCutmix:
    """Mixup or CutMix on a whole batch, with smoothed soft targets (DeiT setup).

    Per call, with probability ``prob`` the batch is mixed (else only label
    smoothing is applied); then CutMix is chosen with probability
    ``switch_prob``, Mixup otherwise (when one alpha is 0, only the other is
    used). One ``lam ~ Beta(alpha, alpha)`` per batch; each image is mixed with
    the image at the mirrored position (``images.flip(0)``), as in timm:

    * Mixup: ``x = lam * x + (1 - lam) * x.flip(0)``;
    * CutMix: a box of area ~ ``(1 - lam) * H * W`` (centre uniform, clipped at
      the border) is pasted from ``x.flip(0)``, and ``lam`` is then corrected to
      the fraction of pixels actually kept.

    Targets: ``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))``; rows sum to 1.
    All randomness comes from the ``generator`` argument, so a batch's mixing
    is reproducible and resumable. ``self.last`` records the last call's
    ``mode`` ("mixup", "cutmix" or "none"), ``lam`` and ``box`` (y0, y1, x0, x1).
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, prob: float = 1.0, label_smoothing: float = 0.1):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.prob = prob
        self.label_smoothing = label_smoothing
        self.last: dict = {}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        # images: (B, C, H, W) float; labels: (B,) int64
        def uniform() -> float:
            return torch.rand((), generator=generator).item()

        mode, lam, box = "none", 1.0, None
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and uniform() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                mode = "cutmix" if uniform() < self.switch_prob else "mixup"
            else:
                mode = "cutmix" if self.cutmix_alpha > 0 else "mixup"
            alpha = self.cutmix_alpha if mode == "cutmix" else self.mixup_alpha
            lam = sample_beta(alpha, alpha, generator)

        images = images.clone()
        flipped = images.flip(0)  # (B, C, H, W): partner of sample i is sample B-1-i
        if mode == "mixup":
            images = lam * images + (1.0 - lam) * flipped
        elif mode == "cutmix":
            H, W = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)  # box side ratio, so box area ~ (1 - lam)
            ch, cw = int(H * cut), int(W * cut)
            cy = int(torch.randint(0, H, (), generator=generator))
            cx = int(torch.randint(0, W, (), generator=generator))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
            images[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)  # fraction of own pixels kept
            box = (y0, y1, x0, x1)
        self.last = {"mode": mode, "lam": lam, "box": box}

        y = smooth_one_hot(labels, self.num_classes, self.label_smoothing)  # (B, num_classes)
        targets = lam * y + (1.0 - lam) * y.flip(0)
        return images, targets


# ----------------------------------------------------------------------------
# Reproducible, resumable, distributed sampling
# ----------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_seeds(seed: int, epoch: int, positions: np.ndarray | None = None) -> np.ndarray:
    """Deterministic 63-bit ints from (seed, epoch[, position]); one per position."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
        h = _splitmix64(h ^ np.uint64(epoch & _MASK64))
        if positions is not None:
            h = _splitmix64(h ^ positions.astype(np.uint64))
    return h >> np.uint64(1)  # keep 63 bits: valid for torch.manual_seed and signed int64


class EpochSampler(Sampler):
    """Batch sampler for one rank: yields lists of ``(index, sample_seed)``.

    Per epoch (:meth:`set_epoch`) the global order is built from ``(seed,
    epoch)`` only:

    1. a permutation of ``range(dataset_len)`` from a ``torch.Generator`` seeded
       with hash(seed, epoch) (identity order if ``shuffle=False``);
    2. repeated augmentation (Hoffer et al. 2020; DeiT/CaiT use 3): every index
       appears ``repeats`` times in a row;
    3. padding (wrapping around) to a multiple of ``num_replicas``;
    4. rank ``r`` takes global positions ``r, r + R, r + 2R, ...`` (R =
       num_replicas), so the consecutive copies of one image go to different
       ranks (if ``repeats <= num_replicas``) and get different augmentations;
    5. each rank keeps only its first ``dataset_len // num_replicas`` samples:
       DeiT's rule, so an epoch is as long as without repeats (about
       ``dataset_len / repeats`` distinct images are seen per epoch). With
       ``drop_last`` this is rounded down to whole batches.

    With ``repeats=1`` this is an ordinary distributed shuffling sampler.
    ``sample_seed`` = hash(seed, epoch, global position), a 63-bit int: it fixes
    that sample's augmentation (see :class:`SeededDataset`) whatever process
    loads it.

    Mid-epoch resume: ``set_start_batch(k)`` makes the next ``iter()`` skip the
    first ``k`` batches of the current epoch; it is consumed (reset to 0) by
    that ``iter()`` call, so later epochs start from batch 0.
    """

    def __init__(self, dataset_len: int, *, batch_size: int, seed: int, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, repeats: int = 1, drop_last: bool = True):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if batch_size < 1 or repeats < 1 or dataset_len < 1:
            raise ValueError("dataset_len, batch_size and repeats must be >= 1")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.repeats = repeats
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self.num_samples = dataset_len // num_replicas  # samples per rank per epoch
        if drop_last:
            self.num_samples = self.num_samples // batch_size * batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (a new epoch starts at batch 0)."""
        if epoch != self.epoch:
            self.start_batch = 0
        self.epoch = epoch

    def set_start_batch(self, k: int) -> None:
        """Skip the first ``k`` batches of the current epoch (mid-epoch resume).

        The offset holds for every iteration of this epoch until :meth:`set_epoch` selects another
        one: a ``DataLoader`` with worker processes calls ``iter()`` on its sampler more than once.
        """
        if not 0 <= k <= len(self):
            raise ValueError(f"start batch must be in [0, {len(self)}], got {k}")
        self.start_batch = k

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(int(state["epoch"]))
        self.set_start_batch(int(state.get("start_batch", 0)))

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch."""
        return math.ceil(self.num_samples / self.batch_size)

    def epoch_samples(self, epoch: int | None = None) -> list[tuple[int, int]]:
        """This rank's ``(index, sample_seed)`` list for an epoch (default: current)."""
        epoch = self.epoch if epoch is None else epoch
        n, R = self.dataset_len, self.num_replicas
        if self.shuffle:
            g = torch.Generator().manual_seed(int(_hash_seeds(self.seed, epoch)[0]))
            order = torch.randperm(n, generator=g).numpy()  # (n,)
        else:
            order = np.arange(n)
        order = np.repeat(order, self.repeats)  # (n * repeats,): copies side by side
        total = math.ceil(len(order) / R) * R
        order = np.resize(order, total)  # pad by wrapping around to a multiple of R
        positions = np.arange(self.rank, total, R)[: self.num_samples]  # this rank's global positions
        seeds = _hash_seeds(self.seed, epoch, positions)
        return list(zip(order[positions].tolist(), seeds.tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = self.start_batch  # kept for this epoch (DataLoader may call iter() twice)
        samples = self.epoch_samples()
        bs = self.batch_size
        batches = [samples[i:i + bs] for i in range(0, len(samples), bs)]
        return iter(batches[start:])


class SeededDataset(Dataset):
    """Makes a dataset's random augmentation a function of a per-sample seed.

    ``ds[(index, sample_seed)]`` returns ``dataset[index]`` computed with torch's
    CPU RNG and Python's ``random`` seeded by ``sample_seed``; both RNG states
    are restored afterwards, so the caller's global randomness is untouched.
    (torchvision.transforms.v2 draws from torch's global CPU RNG.) A plain
    ``ds[index]`` is passed through unseeded.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, (tuple, list)):
            return self.dataset[key]
        index, sample_seed = key
        py_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):  # restores the CPU RNG on exit
                torch.default_generator.manual_seed(int(sample_seed))
                random.seed(int(sample_seed))
                return self.dataset[int(index)]
        finally:
            random.setstate(py_state)


def make_loader(dataset: Dataset, sampler: EpochSampler, *, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """``DataLoader`` over ``SeededDataset(dataset)`` driven by an :class:`EpochSampler`.

    Call ``sampler.set_epoch(e)`` (and, to resume, ``sampler.set_start_batch(k)``)
    before iterating. Workers are not persistent, so each epoch's iteration
    re-reads the sampler's state.
    """
    return DataLoader(SeededDataset(dataset), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False)
