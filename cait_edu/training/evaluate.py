"""Validation: loss, top-1 and top-5 of a model on a dataset, sharded over the ranks of a run."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .hardware import Dist, autocast

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, device: torch.device | str = "cpu",
             amp: str = "off", num_workers: int = 0, dd: Dist | None = None, hflip: bool = False) -> dict:
    """``{"val_loss", "val_top1", "val_top5", "val_samples"}`` over all of ``dataset`` (top-k in percent).

    ``hflip`` is test-time augmentation: the logits of each image and of its mirror image are
    averaged (a second forward pass per image).

    Under a process group (``dd``) rank ``r`` evaluates images ``r, r + world, ...`` and the sums
    are added up, so every rank returns the numbers of the whole set. The model's train/eval mode
    is restored afterwards.
    """
    dd = dd or Dist()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    shard = Subset(dataset, list(range(dd.rank, len(dataset), dd.world)))
    loader = DataLoader(shard, batch_size=max(1, batch_size), shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, images
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(amp, device):
            logits = model(images)  # (B, classes)
            if hflip:
                logits = (logits + model(images.flip(-1))) / 2
        sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]  # (B, k)
        sums[1] += hit[:, 0].sum()
        sums[2] += hit.any(dim=1).sum()
        sums[3] += labels.numel()
    dd.all_reduce_sum(sums)
    model.train(was_training)
    n = max(1.0, sums[3].item())
    return {"val_loss": sums[0].item() / n, "val_top1": 100.0 * sums[1].item() / n,
            "val_top5": 100.0 * sums[2].item() / n, "val_samples": int(sums[3].item())}
