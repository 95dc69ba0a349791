"""Where datasets live, the in-memory :class:`ArrayDataset`, and fixed subsets.

* :func:`resolve_data_dir`: argument > ``$CAIT_EDU_DATA`` > the repository's
  ``data/`` folder > ``./data``.
* :class:`ArrayDataset`: uint8 ``(N, 3, H, W)`` images plus labels, held in
  memory (what :func:`~cait_edu.data.load_cifar10` returns).
* :func:`fixed_subset`: the same ``n`` samples of a dataset on every call, for
  short runs on part of a dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset, Subset

__all__ = ["ArrayDataset", "fixed_subset", "resolve_data_dir"]

# The repository root when the package is used from a clone or an editable
# install: cait_edu/data/datasets.py -> parents[2].
_REPO_ROOT = Path(__file__).resolve().parents[2]


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
    repo_data = _REPO_ROOT / "data"
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
# Fixed subsets
# ----------------------------------------------------------------------------
def fixed_subset(ds: Dataset, n: int | None, what: str) -> Dataset:
    """The first ``n`` of a fixed random permutation (generator seed 0), in index order.

    The same ``n`` gives the same samples on every call and in every process, so
    a run on part of a dataset is reproducible. ``n=None`` returns ``ds`` itself.
    An :class:`ArrayDataset` gives an :class:`ArrayDataset` (same transform);
    any other dataset gives a ``torch.utils.data.Subset``. ``what`` names the
    setting in the error message, e.g. ``"train_subset"``.

    Raises:
        ValueError: ``n`` is larger than the dataset.
    """
    if n is None:
        return ds
    if n > len(ds):
        raise ValueError(f"{what}={n} but the dataset has only {len(ds)} images")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].sort().values
    if isinstance(ds, ArrayDataset):
        return ds.subset(idx)
    return Subset(ds, idx.tolist())
