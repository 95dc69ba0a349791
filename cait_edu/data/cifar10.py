"""CIFAR-10: decoding the two on-disk formats into an in-memory dataset.

:func:`load_cifar10` reads the offline JPEG copy ``cifar10-jpeg.npz`` or
torchvision's extracted ``cifar-10-batches-py/`` (or downloads it with
torchvision when asked) into an :class:`~cait_edu.data.ArrayDataset` of uint8
``(N, 3, 32, 32)`` images. Decoded splits are cached in-process.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .datasets import ArrayDataset, resolve_data_dir

__all__ = ["BATCHES_DIR", "CIFAR10_CLASSES", "NPZ_NAME", "load_cifar10"]

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

NPZ_NAME = "cifar10-jpeg.npz"
BATCHES_DIR = "cifar-10-batches-py"

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
