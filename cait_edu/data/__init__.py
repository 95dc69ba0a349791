"""Datasets, augmentation recipes and reproducible, resumable sampling for CaiT.

Every public name is importable from ``cait_edu.data`` directly; the modules
split the work as follows:

* :mod:`~cait_edu.data.datasets` -- where data lives (:func:`resolve_data_dir`:
  argument > ``$CAIT_EDU_DATA`` > the repository's ``data/`` folder >
  ``./data``), the in-memory :class:`ArrayDataset`, and :func:`fixed_subset`
  (the same ``n`` samples on every call).
* :mod:`~cait_edu.data.cifar10` -- :func:`load_cifar10` reads the offline JPEG
  copy ``cifar10-jpeg.npz`` or torchvision's extracted ``cifar-10-batches-py/``
  (or downloads it with torchvision when asked) into an :class:`ArrayDataset`
  of uint8 ``(N, 3, 32, 32)`` images.
* :mod:`~cait_edu.data.folders` -- class-folder datasets through
  ``torchvision.datasets.ImageFolder``: :func:`load_imagenet` (ImageNet-1k) and
  :func:`load_imagefolder` (any ``<data_dir>/<split>/<class>/<image>`` tree).
* :mod:`~cait_edu.data.imagenet_prep` -- :func:`prepare_imagenet_val` moves the 50,000 ImageNet
  validation images into ``val/<wnid>/`` folders from a labels file (the devkit's, or others);
  ``python -m cait_edu.data imagenet-val VAL_DIR LABELS`` on the command line.
* :mod:`~cait_edu.data.transforms` -- :func:`build_transform` builds the
  DeiT/CaiT ImageNet recipe (Touvron et al., "Training data-efficient image
  transformers & distillation through attention", 2021, whose recipe CaiT
  reuses: Touvron et al., "Going deeper with Image Transformers", 2021, Sec. 4 /
  Appendix "training details") and a lighter recipe for 32x32 CIFAR images;
  also the CIFAR-10 and ImageNet normalisation statistics.
* :mod:`~cait_edu.data.mixing` -- :class:`MixupCutmix` mixes whole batches
  (Mixup: Zhang et al. 2018; CutMix: Yun et al. 2019) with label smoothing
  (:func:`smooth_one_hot`), as in DeiT; :func:`sample_beta` draws its ``lam``.
* :mod:`~cait_edu.data.sampling` -- :class:`EpochSampler` yields batches of
  ``(index, sample_seed)`` pairs for one rank of a (possibly distributed) run,
  with repeated augmentation (Hoffer et al. 2020, used by DeiT and CaiT with 3
  repeats) and mid-epoch resume. :class:`SeededDataset` seeds every sample's
  augmentation from its ``sample_seed``, so a batch is bit-identical whatever
  worker process loads it, and :func:`make_loader` glues the two into a
  ``DataLoader``.

Everything random here is a pure function of ``(seed, epoch, position)`` or of an
explicit ``torch.Generator``: this is what lets the trainer stop anywhere and
resume to exactly the same batches.
"""

from .cifar10 import BATCHES_DIR, CIFAR10_CLASSES, NPZ_NAME, load_cifar10
from .datasets import ArrayDataset, fixed_subset, resolve_data_dir
from .folders import load_imagefolder, load_imagenet
from .imagenet_prep import prepare_imagenet_val, read_val_labels
from .mixing import MixupCutmix, sample_beta, smooth_one_hot
from .sampling import EpochSampler, SeededDataset, make_loader
from .transforms import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, build_transform

__all__ = [
    "BATCHES_DIR",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NPZ_NAME",
    "ArrayDataset",
    "EpochSampler",
    "MixupCutmix",
    "SeededDataset",
    "build_transform",
    "fixed_subset",
    "load_cifar10",
    "load_imagefolder",
    "load_imagenet",
    "make_loader",
    "prepare_imagenet_val",
    "read_val_labels",
    "resolve_data_dir",
    "sample_beta",
    "smooth_one_hot",
]
