"""Datasets stored as class folders of image files (``torchvision.datasets.ImageFolder``).

* :func:`load_imagenet`: ImageNet-1k, ``<data_dir>/imagenet/<split>`` or
  ``<data_dir>/<split>``, split ``"train"`` or ``"val"``.
* :func:`load_imagefolder`: any dataset laid out as
  ``<data_dir>/<split>/<class>/<image>`` (e.g. a small custom dataset).

Both check the layout first and raise a ``FileNotFoundError`` that says which
layout was expected.
"""

from __future__ import annotations

import os
from typing import Callable

from .datasets import resolve_data_dir

__all__ = ["load_imagefolder", "load_imagenet"]


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



def load_imagefolder(split: str, data_dir: str | os.PathLike | None = None, transform: Callable | None = None):
    """A split of a generic image-folder dataset, as a ``torchvision.datasets.ImageFolder``.

    Layout rule: the split folder is ``<data_dir>/<split>`` (``data_dir`` as in
    :func:`resolve_data_dir`), with one sub-folder per class::

        train/<class>/<image>   val/<class>/<image>   ...

    Class indices follow the sorted class-folder names, so ``train`` and ``val``
    get the same labels only if they hold the same class folders (the caller
    should compare ``.classes``). Images are PIL; the transforms of
    :func:`build_transform` accept them.

    Raises:
        FileNotFoundError: the split folder does not exist, or it has no class
            folders or no valid image files; the message states the layout.
    """
    from torchvision.datasets import ImageFolder

    root = resolve_data_dir(data_dir)
    folder = root / split
    layout = f"expected <data_dir>/train/<class>/<image> and <data_dir>/val/<class>/<image> with data_dir={root}"
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder split {split!r} not found: {folder} does not exist; {layout}")
    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no valid images
        raise FileNotFoundError(f"{folder}: {e}; {layout}") from None
