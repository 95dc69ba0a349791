"""Models: the ViT/DeiT baseline and CaiT, sharing the layers and blocks of this package.

* :class:`ViT`  -- Dosovitskiy et al. 2021 / DeiT (Touvron et al. 2021): the class token is part of
  the sequence from the first layer, the position embedding covers class token + patches.
* :class:`CaiT` -- Touvron et al. 2021 (Sec. 3, Fig. 2): a self-attention stage over patch tokens
  only (talking heads, LayerScale), then the class token is inserted and a class-attention stage of
  two layers updates it alone. The class token gets no position embedding.

Both expose ``forward_features`` (normalised tokens), ``forward_head`` and ``forward`` (logits).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import Block, ClassAttentionBlock, drop_path_rates, init_residual_scheme, layerscale_init_for_depth
from .layers import Attention, ConvStem, PatchEmbed, TalkingHeadsAttention

__all__ = ["ViT", "CaiT", "init_weights"]


def _trunc_normal_(t: torch.Tensor, std: float = 0.02) -> None:
    # As the released code calls it: truncation at +-2 in absolute value (not +-2 std), so for
    # std 0.02 this is in effect a normal distribution.
    nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0)


def init_weights(module: nn.Module) -> None:
    """The released code's initialisation: Linear weights ~ truncated normal(0.02), biases 0,
    LayerNorm weight 1 and bias 0. Conv layers (the patch embedding) keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        _trunc_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


STEMS = ("linear", "conv")


def _make_stem(stem: str, img_size: int, patch_size: int, in_chans: int, dim: int) -> PatchEmbed:
    """``"linear"``: the paper's patch embedding; ``"conv"``: a convolutional stem (Xiao et al. 2021)."""
    if stem == "linear":
        return PatchEmbed(img_size, patch_size, in_chans, dim)
    if stem == "conv":
        return ConvStem(img_size, patch_size, in_chans, dim)
    raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")


class _VisionTransformerBase(nn.Module):
    """What both models share: input checks, the head, and the parameter groups."""

    patch_embed: PatchEmbed
    norm: nn.LayerNorm
    head: nn.Module

    @property
    def img_size(self) -> int:
        return self.patch_embed.img_size

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides 1-D tensors (DeiT/CaiT recipe)."""
        return {"pos_embed", "cls_token"}

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Classify from the (normalised) class token, which is token 0. ``(B, T, dim) -> (B, classes)``."""
        return self.head(self.head_drop(tokens[:, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def _finish_init(self) -> None:
        _trunc_normal_(self.pos_embed)
        _trunc_normal_(self.cls_token)
        self.apply(init_weights)


class ViT(_VisionTransformerBase):
    """The ViT/DeiT baseline (class token from the start).

    ``x0 = [cls, patches] + pos_embed`` (pos_embed of shape ``(1, 1 + N, dim)``), then ``depth``
    :class:`~cait_edu.blocks.Block` s with plain attention, a final LayerNorm, and a linear head on
    the class token. ``residual_scale``/``init_scale``/``norm`` select the residual scheme of
    CaiT Fig. 3 (``"none"``, ``"rezero"``, ``"fixup"``, ``"tfixup"``, ``"scalar"``,
    ``"layerscale"``; see :mod:`cait_edu.blocks`), e.g. ``residual_scale="layerscale"`` gives
    DeiT + LayerScale (Table 1). ``init_scale=None`` applies the paper's rule by depth
    (:func:`~cait_edu.blocks.layerscale_init_for_depth`); ``norm=None`` the scheme's default.
    The depth-dependent initialisation of Fixup/T-Fixup is applied after the default one
    (:func:`~cait_edu.blocks.init_residual_scheme`); Fixup also zeroes the head.
    ``stem="conv"`` replaces the linear patch embedding by a convolutional stem
    (:class:`~cait_edu.layers.ConvStem`). Stochastic depth ramps linearly from 0 to
    ``drop_path_rate`` over the blocks, as in DeiT
    (``drop_path_schedule="uniform"`` gives every block the same rate, as CaiT does).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        residual_scale: str = "none",
        init_scale: float | None = None,
        norm: bool | None = None,
        drop_path_schedule: str = "linear",
        stem: str = "linear",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.dim = dim
        self.depth = depth
        self.patch_embed = _make_stem(stem, img_size, patch_size, in_chans, dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        init_scale = layerscale_init_for_depth(depth) if init_scale is None else init_scale
        self.init_scale = init_scale
        self.blocks = nn.ModuleList(
            Block(
                dim, num_heads, mlp_ratio, qkv_bias, attn_layer=Attention,
                residual_scale=residual_scale, init_scale=init_scale, norm=norm,
                drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr,
            )
            for dpr in drop_path_rates(drop_path_rate, depth, drop_path_schedule)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self._finish_init()
        init_residual_scheme(self.blocks, self.head)  # after the default init, which would undo it

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, 1 + N, dim)`` (class token first)."""
        self.patch_embed.check_input(x)
        x = self.patch_embed(x)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        x = self.pos_drop(torch.cat((cls, x), dim=1) + self.pos_embed)  # (B, 1 + N, dim)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class CaiT(_VisionTransformerBase):
    """Class-Attention in Image Transformers (Touvron et al. 2021, Fig. 2 right).

    1. Patch embedding + position embedding ``(1, N, dim)`` (patches only).
    2. Self-attention stage: ``depth`` blocks with talking-heads attention and LayerScale
       (Eq. 4), stochastic depth ``drop_path_rate`` in each (the same rate in every block, as the
       released code; ``drop_path_schedule="linear"`` ramps it from 0 as DeiT does).
    3. Class-attention stage: the class token is inserted now and ``depth_token_only`` (2)
       :class:`~cait_edu.blocks.ClassAttentionBlock` s update it alone; patches stay frozen.
    4. LayerNorm and a linear head on the class token.

    ``init_scale=None`` applies the paper's rule by depth (:func:`layerscale_init_for_depth`);
    the released models pass their own value (see :mod:`cait_edu.registry`).
    ``residual_scale``/``norm`` switch the self-attention stage to another residual scheme of
    Fig. 3 (see :mod:`cait_edu.blocks`; Fixup also zeroes the head); the class-attention stage keeps
    LayerScale with ``init_scale`` whatever the scheme.
    ``talking_heads=False`` swaps in plain attention (the ablation of Sec. 4). ``stem="conv"``
    replaces the linear patch embedding by a convolutional stem (:class:`~cait_edu.layers.ConvStem`).

    Where the class token joins (the ablation of Sec. 4 / Table 3): ``class_token_layer=k`` inserts
    it before self-attention block ``k``, so blocks ``k .. depth-1`` process it together with the
    patches as ordinary self-attention layers; ``0`` is ViT's choice (from the start), ``depth``
    (the default, None) is CaiT's (after the self-attention stage). ``depth_token_only`` sets the
    number of class-attention layers that follow (0, 1, 2, ...). Inserted late or early, the class
    token gets no position embedding. A class token that joins after the last self-attention block
    with no class-attention layer would never see the patches, and is refused.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        dim: int = 384,
        depth: int = 24,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_scale: float | None = None,
        depth_token_only: int = 2,
        residual_scale: str = "layerscale",
        talking_heads: bool = True,
        drop_path_schedule: str = "uniform",
        norm: bool | None = None,
        class_token_layer: int | None = None,
        stem: str = "linear",
    ):
        super().__init__()
        class_token_layer = depth if class_token_layer is None else class_token_layer
        if not 0 <= class_token_layer <= depth:
            raise ValueError(f"class_token_layer must be in [0, depth={depth}], got {class_token_layer}")
        if class_token_layer == depth and depth_token_only < 1:
            raise ValueError("with class_token_layer=depth the class token joins after the last self-attention "
                             "block, so it needs at least one class-attention layer (depth_token_only >= 1)")
        self.class_token_layer = class_token_layer
        self.num_classes = num_classes
        self.dim = dim
        self.depth = depth
        self.patch_embed = _make_stem(stem, img_size, patch_size, in_chans, dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, dim))  # patches only
        self.pos_drop = nn.Dropout(drop_rate)
        init_scale = layerscale_init_for_depth(depth) if init_scale is None else init_scale
        self.init_scale = init_scale
        attn_layer = TalkingHeadsAttention if talking_heads else Attention
        self.blocks = nn.ModuleList(
            Block(
                dim, num_heads, mlp_ratio, qkv_bias, attn_layer=attn_layer,
                residual_scale=residual_scale, init_scale=init_scale, norm=norm,
                drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr,
            )
            for dpr in drop_path_rates(drop_path_rate, depth, drop_path_schedule)
        )
        self.blocks_token_only = nn.ModuleList(
            ClassAttentionBlock(dim, num_heads, mlp_ratio, qkv_bias, residual_scale="layerscale", init_scale=init_scale)
            for _ in range(depth_token_only)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Identity()  # CaiT applies no dropout before the head
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self._finish_init()
        init_residual_scheme(self.blocks, self.head)  # after the default init, which would undo it

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised tokens ``(B, 1 + N, dim)`` (class token first)."""
        self.patch_embed.check_input(x)
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim), no position embedding
        k = self.class_token_layer
        for blk in self.blocks[:k]:  # self-attention over the patches only (all blocks in CaiT)
            x = blk(x)
        if k < self.depth:  # the class token joins ordinary self-attention layers
            z = torch.cat((cls, x), dim=1)  # (B, 1 + N, dim)
            for blk in self.blocks[k:]:
                z = blk(z)
            cls, x = z[:, :1], z[:, 1:]
        for blk in self.blocks_token_only:  # class-attention stage: cls only, patches frozen
            cls = blk(x, cls)
        return self.norm(torch.cat((cls, x), dim=1))
