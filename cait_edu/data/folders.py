"""Datasets stored as class folders of image files (``torchvision.datasets.ImageFolder``).

:func:`load_imagenet`: ImageNet-1k, ``<data_dir>/imagenet/<split>`` or
``<data_dir>/<split>``, split ``"train"`` or ``"val"``. It checks the layout
first and raises a ``FileNotFoundError`` that says which layout was expected.
"""

from __future__ import annotations

import os
from typing import Callable

from .datasets import resolve_data_dir

__all__ = ["load_imagenet"]


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


