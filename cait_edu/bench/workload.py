"""What is timed: the two models with identical weights, their inputs, optimizer and one step."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def default_batches(name: str) -> tuple[int, int]:
    """(train batch, inference batch): sizes that take a few seconds per step on a 2-core CPU."""
    from ..registry import get_spec

    size = get_spec(name).kwargs.get("img_size", 224)
    if size <= 64:
        return 128, 128
    if size <= 224:
        return 32, 64
    return 8, 16


def cait_kwargs(name: str) -> dict[str, Any]:
    """The constructor arguments of ``timm.models.cait.Cait`` for our model ``name``."""
    from ..blocks import layerscale_init_for_depth
    from ..models import CaiT
    from ..registry import get_spec

    spec = get_spec(name)
    if spec.cls is not CaiT:
        raise ValueError(f"{name} is not a CaiT model; the benchmark compares CaiT with timm's Cait")
    defaults = {k: p.default for k, p in inspect.signature(CaiT.__init__).parameters.items() if k != "self"}
    kw = {**defaults, **spec.kwargs}
    init = kw["init_scale"] if kw["init_scale"] is not None else layerscale_init_for_depth(kw["depth"])
    return dict(
        img_size=kw["img_size"], patch_size=kw["patch_size"], in_chans=kw["in_chans"],
        num_classes=kw["num_classes"], embed_dim=kw["dim"], depth=kw["depth"], num_heads=kw["num_heads"],
        mlp_ratio=kw["mlp_ratio"], qkv_bias=kw["qkv_bias"], init_values=init,
        depth_token_only=kw["depth_token_only"],
    )


def build_timm(name: str) -> nn.Module:
    """timm's CaiT of the same architecture: ``timm.create_model(name)`` for the released names,
    ``timm.models.cait.Cait(**same sizes)`` for our presets (e.g. the CIFAR ones)."""
    import timm
    from timm.models.cait import Cait

    kw = cait_kwargs(name)
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=kw["num_classes"])
    return Cait(**kw)


def build_pair(name: str, device: torch.device, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(ours, timm) with identical weights (timm's random init loaded into ours), no drop-path."""
    from ..checkpoint import load_official
    from ..registry import create_model

    torch.manual_seed(seed)
    ref = build_timm(name)
    ours = create_model(name, drop_path_rate=0.0)
    load_official(ours, ref.state_dict())
    return ours.to(device), ref.to(device)


def build_one(name: str, impl: str, device: torch.device, seed: int = 0) -> nn.Module:
    """``ours`` or ``timm`` alone, with the same weights :func:`build_pair` gives it."""
    ours, ref = build_pair(name, device, seed)
    return ours if impl == "ours" else ref


def make_inputs(model_name: str, batch: int, device: torch.device, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch of images and labels (drawn on the CPU, so every device sees the same)."""
    kw = cait_kwargs(model_name)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, kw["in_chans"], kw["img_size"], kw["img_size"], generator=g)
    y = torch.randint(0, kw["num_classes"], (batch,), generator=g)
    return x.to(device), y.to(device)


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where this device and build have one, else the default one."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)


def make_step(task: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              optimizer: torch.optim.Optimizer | None) -> Callable[[], None]:
    """One training step (forward, cross-entropy, backward, AdamW) or one inference forward."""
    if task == "train":
        assert optimizer is not None

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        return train_step

    def infer_step() -> None:
        with torch.inference_mode():
            model(x)

    return infer_step


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously to the Python thread)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
