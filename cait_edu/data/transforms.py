"""Per-image augmentation recipes and the normalisation statistics they use.

:func:`build_transform` builds the DeiT/CaiT ImageNet recipe (Touvron et al.,
"Training data-efficient image transformers & distillation through attention",
2021, whose recipe CaiT reuses: Touvron et al., "Going deeper with Image
Transformers", 2021, Sec. 4 / Appendix "training details") and a lighter recipe
for 32x32 CIFAR images. Batch-level mixing is in :mod:`cait_edu.data.mixing`.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN", "IMAGENET_STD", "build_transform"]

# Per-channel statistics of the *original* CIFAR-10 training set (RGB, in [0, 1]).
# (The offline JPEG copy differs by < 0.003; the README gives its own values.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The usual ImageNet statistics, used by DeiT and CaiT.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
