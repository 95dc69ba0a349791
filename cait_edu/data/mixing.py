"""Batch-level target mixing: label smoothing, Mixup and CutMix, as in DeiT.

:class:`MixupCutmix` mixes whole batches (Mixup: Zhang et al. 2018; CutMix:
Yun et al. 2019) and smooths the labels (:func:`smooth_one_hot`). All its
randomness comes from an explicit ``torch.Generator`` (:func:`sample_beta`
draws Beta variates from one), so a batch's mixing is reproducible on resume.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MixupCutmix", "sample_beta", "smooth_one_hot"]


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
