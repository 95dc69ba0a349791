"""An exponential moving average of the weights (Polyak averaging), as DeiT's ``ModelEma``.

The DeiT/CaiT code keeps one with decay 0.99996 per step, but the paper's numbers come from the
live weights; short runs on small data can gain from it (decay 0.999 and below).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["ModelEma"]


class ModelEma:
    """``ema = decay * ema + (1 - decay) * w`` for every parameter after each optimizer step;
    buffers are copied. ``.module`` is an eval-mode copy of the model that receives no gradients."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
