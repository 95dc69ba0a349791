"""Layers of a vision transformer and of CaiT, each with one job.

Read top-down, this file follows the paper (Touvron et al., "Going deeper with Image
Transformers", ICCV 2021, arXiv:2103.17239):

* :class:`PatchEmbed`     -- image to patch tokens (ViT, Dosovitskiy et al. 2021, Sec. 3.1).
* :class:`ConvStem`       -- image to tokens through a few strided 3x3 convolutions instead
  (Xiao et al. 2021, "Early convolutions help transformers see better").
* :class:`Mlp`            -- the feed-forward network of every block (ratio 4, GELU).
* :class:`Attention`      -- plain multi-head self-attention (the ViT/DeiT baseline).
* :class:`TalkingHeadsAttention` -- CaiT's self-attention: logits mixed across heads before
  the softmax and weights mixed after it (Shazeer et al. 2020; CaiT Sec. 3 and Appendix).
* :class:`ClassAttention` -- CaiT's class-attention: only the class token queries (Sec. 3.2, Eq. 5).
* :class:`DropPath`       -- stochastic depth, per sample (Huang et al. 2016; CaiT Sec. 4).

Attention maps: every attention layer keeps its last attention weights in ``.attn_map`` when
``.keep_attn`` is True (see :func:`cait_edu.viz.record_attention`). Otherwise the fast fused
``F.scaled_dot_product_attention`` is used wherever the maths allows it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "PatchEmbed",
    "ConvStem",
    "Mlp",
    "Attention",
    "TalkingHeadsAttention",
    "ClassAttention",
    "DropPath",
    "drop_path",
]


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping ``patch_size`` patches and embed each linearly.

    A ``Conv2d(in_chans, dim, patch_size, stride=patch_size)`` is exactly a linear map applied to
    every flattened patch. CaiT keeps PyTorch's default initialisation here (non-zero bias).

    ``(B, C, H, W) -> (B, N, dim)`` with ``N = (H / p) * (W / p)``.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, dim: int = 768):
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(
                f"image size {img_size} is not divisible by the patch size {patch_size}"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for input this model cannot take (instead of a wrong answer)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a tensor of images, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(
                f"expected a 4-D batch (B, {self.in_chans}, {self.img_size}, {self.img_size}), "
                f"got shape {tuple(x.shape)}; use x.unsqueeze(0) for a single image"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                "images must be channels-first (B, C, H, W)"
            )
        if x.shape[2] != self.img_size or x.shape[3] != self.img_size:
            raise ValueError(
                f"this model takes {self.img_size}x{self.img_size} images, got "
                f"{x.shape[2]}x{x.shape[3]}; resize the input, or build the model for that size with "
                f"create_model(name, img_size=...) and adapt the weights with resize_pos_embed"
            )
        weight_dtype = next(self.parameters()).dtype
        if not x.is_floating_point():
            raise TypeError(
                f"expected float images normalised like the training data, got {x.dtype} values; "
                "convert and normalise first, e.g. cait_edu.data.build_transform(recipe, train=False, "
                f"img_size={self.img_size}) on each uint8 image, or (x.float() / 255 - mean) / std"
            )
        if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"the images are {x.dtype} but the model's weights are {weight_dtype}; "
                f"use x.to({weight_dtype}) (or convert the model with model.to({x.dtype}))"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, dim, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, dim)


class ConvStem(PatchEmbed):
    """A convolutional stem in place of the linear patch embedding (Xiao et al. 2021, "Early
    convolutions help transformers see better", Sec. 3).

    For a patch size ``p = 2^k``: ``k`` layers of 3x3 convolution with stride 2, BatchNorm and ReLU,
    the channels doubling up to ``dim`` (``dim / 2^(k-1)``, ..., ``dim / 2``, ``dim``), then a 1x1
    convolution to ``dim``. The tokens come out on the same ``H/p x W/p`` grid as
    :class:`PatchEmbed`'s, so the rest of the model is unchanged; what changes is that each token
    sees overlapping neighbourhoods through a few non-linear layers instead of one linear map of its
    own ``p x p`` pixels. (Xiao et al. use 4 stride-2 layers for 16 px patches and remove one
    transformer block to keep the compute; here the stem is an option of the model, and the
    parameter and MAC counts say what it costs.)

    ``(B, C, H, W) -> (B, N, dim)``.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, dim: int = 768):
        super().__init__(img_size, patch_size, in_chans, dim)
        k = patch_size.bit_length() - 1
        if patch_size < 2 or 2**k != patch_size:
            raise ValueError(f"a convolutional stem needs a power-of-two patch size >= 2, got {patch_size}")
        layers: list[nn.Module] = []
        channels = in_chans
        for i in range(k):
            out = max(1, dim // 2 ** (k - 1 - i))
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)


class Mlp(nn.Module):
    """The position-wise feed-forward network: ``fc2(drop(GELU(fc1(x))))`` with hidden width ``ratio * dim``."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact (erf) GELU, as in the released code
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class _AttentionBase(nn.Module):
    """Shared bookkeeping: head split, scale, and the optional record of the attention map."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.keep_attn = False  # when True, forward() stores the weights in self.attn_map
        self.attn_map: torch.Tensor | None = None

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape  # (B, N, dim) -> (B, h, N, dim/h)
        return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, h, N, hd = t.shape  # (B, h, N, dim/h) -> (B, N, dim)
        return t.transpose(1, 2).reshape(B, N, h * hd)


class Attention(_AttentionBase):
    """Multi-head self-attention (Vaswani et al. 2017) as in ViT/DeiT.

    ``softmax(q k^T / sqrt(d_h)) v`` per head, with a fused ``qkv`` projection (with bias) and an
    output projection. ``(B, N, dim) -> (B, N, dim)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, N, d_h)
        if self.keep_attn:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
            self.attn_map = attn.detach()
            out = self.attn_drop(attn) @ v
        else:
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj_drop(self.proj(self._merge_heads(out)))


class TalkingHeadsAttention(_AttentionBase):
    """Talking-heads attention (Shazeer et al. 2020), CaiT's self-attention layer.

    Like :class:`Attention`, but the ``h`` heads talk to each other twice:

    1. the logits ``A = q k^T / sqrt(d_h)`` of shape ``(B, h, N, N)`` are mixed across heads by a
       learned ``Linear(h, h)`` (``proj_l``) **before** the softmax;
    2. the softmax weights are mixed across heads by another ``Linear(h, h)`` (``proj_w``) **after**
       it -- so rows no longer sum to one.

    The fused kernel cannot be used: the logits themselves are needed. ``(B, N, dim) -> (B, N, dim)``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj_l = nn.Linear(num_heads, num_heads)  # mixes logits across heads
        self.proj_w = nn.Linear(num_heads, num_heads)  # mixes weights across heads

    @staticmethod
    def _mix_heads(attn: torch.Tensor, mix: nn.Linear) -> torch.Tensor:
        """Apply ``mix`` (a ``Linear(h, h)``) across the head axis: ``out[:, g] = sum_k W[g, k] attn[:, k] + b[g]``.

        The same maths as ``mix(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)`` (the released code),
        done as one batched ``(h, h) @ (h, N*N)`` product per sample with the bias added in the same
        call: no permuted copies, and the result stays contiguous in ``(B, h, N, N)`` for the softmax
        and for ``attn @ v``. (Several times faster on CPU, forward and backward.)
        """
        B, h, N, M = attn.shape
        out = torch.baddbmm(mix.bias.view(1, h, 1), mix.weight.expand(B, h, h), attn.reshape(B, h, N * M))
        return out.view(B, h, N, M)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, N, d_h)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
        attn = self._mix_heads(logits, self.proj_l).softmax(dim=-1)
        attn = self._mix_heads(attn, self.proj_w)
        if self.keep_attn:
            self.attn_map = attn.detach()
        out = self.attn_drop(attn) @ v  # (B, h, N, d_h)
        return self.proj_drop(self.proj(self._merge_heads(out)))


class ClassAttention(_AttentionBase):
    """Class-attention (CaiT Sec. 3.2, Eq. 5): only the class token asks, every token answers.

    Input ``z = [x_class, x_patches]`` of shape ``(B, 1 + N, dim)``; the query comes from the class
    token alone, keys and values from all ``1 + N`` tokens (separate ``q``, ``k``, ``v`` layers):
    ``softmax(q k^T / sqrt(d_h)) v``. Output: the class token's update, ``(B, 1, dim)``.
    The patch tokens are not updated, so the cost is linear in ``N`` rather than quadratic.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.q(z[:, :1]))  # (B, h, 1, d_h)
        k = self._split_heads(self.k(z))  # (B, h, 1+N, d_h)
        v = self._split_heads(self.v(z))  # (B, h, 1+N, d_h)
        if self.keep_attn:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, 1, 1+N)
            self.attn_map = attn.detach()
            out = self.attn_drop(attn) @ v
        else:
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj_drop(self.proj(self._merge_heads(out)))  # (B, 1, dim)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for a random subset of samples, rescale the rest.

    Each sample of the batch keeps the branch with probability ``1 - p``; kept branches are divided
    by ``1 - p`` so the expectation is unchanged. Identity when ``p == 0`` or not training.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (per-sample stochastic depth, Huang et al. 2016)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
