"""Transformer blocks: the self-attention block (with a choice of residual scaling) and CaiT's
class-attention block.

Residual scaling (CaiT Sec. 3.1, Fig. 3) is an option of :class:`Block`, so the same code runs
every variant the book compares:

=================  ==========================================  =============================
``residual_scale`` update of the residual branch ``F``           as in
=================  ==========================================  =============================
``"none"``         ``x + F(LN(x))``                            ViT / DeiT
``"scalar"``       ``x + a * F(LN(x))``, one learned scalar a   ReZero / SkipInit (with ``norm=False``, a=0)
``"layerscale"``   ``x + diag(g) F(LN(x))``, g per channel      CaiT's LayerScale (Eq. 4)
=================  ==========================================  =============================

The scale parameters are named ``gamma_1`` (attention branch) and ``gamma_2`` (MLP branch), as in
the authors' released checkpoints, so official weights load without renaming.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from .layers import Attention, ClassAttention, DropPath, Mlp

__all__ = ["Block", "ClassAttentionBlock", "layerscale_init_for_depth", "drop_path_rates", "RESIDUAL_SCALES",
           "DROP_PATH_SCHEDULES"]

ResidualScale = Literal["none", "scalar", "layerscale"]
RESIDUAL_SCALES = ("none", "scalar", "layerscale")


def layerscale_init_for_depth(depth: int) -> float:
    """The paper's rule for LayerScale's initial value ``eps`` by depth (CaiT Sec. 3.1).

    ``0.1`` up to depth 18, ``1e-5`` for depth 24 and ``1e-6`` for deeper networks. (The released
    models do not all follow it: XXS-36 ships with 1e-5. See :mod:`cait_edu.registry`.)
    """
    if depth <= 18:
        return 0.1
    if depth <= 24:
        return 1e-5
    return 1e-6


DROP_PATH_SCHEDULES = ("uniform", "linear")


def drop_path_rates(rate: float, depth: int, schedule: str) -> list[float]:
    """Stochastic-depth rate of each of ``depth`` blocks (Huang et al. 2016, "Deep networks with
    stochastic depth").

    * ``"uniform"``: every block drops its residual branch with probability ``rate``. CaiT's
      released code does this in the self-attention stage (the authors report that a linear ramp
      makes little difference).
    * ``"linear"``: the rate grows linearly from 0 at the first block to ``rate`` at the last, as in
      DeiT / timm's VisionTransformer (and the original stochastic-depth paper), so the average rate
      is about ``rate / 2``.
    """
    if schedule == "uniform":
        return [float(rate)] * depth
    if schedule == "linear":
        return [float(rate) * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
    raise ValueError(f"unknown drop_path_schedule {schedule!r}; choose one of {DROP_PATH_SCHEDULES}")


def _make_scale(kind: str, dim: int, init: float) -> nn.Parameter | None:
    if kind == "none":
        return None
    if kind == "scalar":
        return nn.Parameter(torch.full((1,), float(init)))
    if kind == "layerscale":
        return nn.Parameter(torch.full((dim,), float(init)))
    raise ValueError(f"unknown residual_scale {kind!r}; choose one of {RESIDUAL_SCALES}")


def _scaled(gamma: nn.Parameter | None, branch: torch.Tensor) -> torch.Tensor:
    return branch if gamma is None else gamma * branch


class Block(nn.Module):
    """A pre-norm transformer block over a token sequence (CaiT Eq. 4 when ``residual_scale="layerscale"``).

    ``x = x + drop_path(gamma_1 * Attn(LN(x)))``; ``x = x + drop_path(gamma_2 * MLP(LN(x)))``.

    Args:
        dim, num_heads, mlp_ratio, qkv_bias: sizes.
        attn_layer: :class:`~cait_edu.layers.Attention` (ViT) or
            :class:`~cait_edu.layers.TalkingHeadsAttention` (CaiT).
        residual_scale: ``"none"``, ``"scalar"`` or ``"layerscale"`` (see the module docstring).
        init_scale: initial value of the scale(s) (LayerScale's ``eps``).
        norm: if False the LayerNorms are replaced by identities (ReZero/Fixup-style blocks).
        drop, attn_drop, drop_path: dropout on projections, on attention weights, and the
            stochastic-depth rate of this block.

    ``(B, N, dim) -> (B, N, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attn_layer: type[nn.Module] = Attention,
        residual_scale: ResidualScale = "none",
        init_scale: float = 1e-5,
        norm: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.residual_scale = residual_scale
        self.gamma_1 = _make_scale(residual_scale, dim, init_scale)
        self.gamma_2 = _make_scale(residual_scale, dim, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(_scaled(self.gamma_1, self.attn(self.norm1(x))))
        x = x + self.drop_path(_scaled(self.gamma_2, self.mlp(self.norm2(x))))
        return x


class ClassAttentionBlock(nn.Module):
    """CaiT's class-attention block (Sec. 3.2, Fig. 2): updates the class token only.

    With ``z = [x_class, x_patches]``:
    ``x_class = x_class + gamma_1 * CA(LN1(z))``; ``x_class = x_class + gamma_2 * MLP(LN2(x_class))``.
    The patch tokens pass through unchanged: they are frozen after the self-attention stage.
    No dropout or stochastic depth here in CaiT (defaults 0).

    ``x_patches (B, N, dim), x_class (B, 1, dim) -> x_class (B, 1, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        residual_scale: ResidualScale = "layerscale",
        init_scale: float = 1e-5,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ClassAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.residual_scale = residual_scale
        self.gamma_1 = _make_scale(residual_scale, dim, init_scale)
        self.gamma_2 = _make_scale(residual_scale, dim, init_scale)

    def forward(self, x_patches: torch.Tensor, x_class: torch.Tensor) -> torch.Tensor:
        z = torch.cat((x_class, x_patches), dim=1)  # (B, 1 + N, dim)
        x_class = x_class + self.drop_path(_scaled(self.gamma_1, self.attn(self.norm1(z))))
        x_class = x_class + self.drop_path(_scaled(self.gamma_2, self.mlp(self.norm2(x_class))))
        return x_class
