"""Transformer blocks: the self-attention block (with every residual scheme CaiT compares) and
CaiT's class-attention block.

The residual schemes of CaiT Sec. 3.1 / Fig. 3 are one option of :class:`Block`, so the same code
runs every variant the book compares. ``F`` is a residual branch (attention or MLP), ``eps`` the
initial value ``init_scale``, ``N`` the number of blocks in the stack:

==================  ==============================================  =====  ===============================
``residual_scale``  update by each residual branch ``F``            LN     as in
==================  ==============================================  =====  ===============================
``"none"``          ``x + F(LN(x))``                                yes    ViT / DeiT (pre-norm)
``"rezero"``        ``x + a * F(x)``, one scalar ``a = 0`` shared   no     ReZero (Bachlechner et al.
                    by the block's two branches                            2020), Fig. 3(b)
``"fixup"``         ``x + m * F(x + b) + b'``, scalar multiplier    no     Fixup (Zhang, Dauphin, Ma 2019)
                    ``m = 1`` and scalar biases ``b = 0``; last            as ported to transformers,
                    layer of each branch and the head zero, the            Fig. 3(b)
                    others Xavier x ``(2N)^(-1/2)``
``"tfixup"``        ``x + F(x)``; Xavier init, value, output        no     T-Fixup (Huang et al. 2020),
                    projection and both MLP weights x                      Fig. 3(b)
                    ``0.67 N^(-1/4)``
``"scalar"``        ``x + a * F(LN(x))``, one scalar ``a = eps``    yes    CaiT Fig. 3(c)
                    per branch
``"layerscale"``    ``x + diag(g) F(LN(x))``, ``g = eps`` per       yes    CaiT's LayerScale, Eq. 4,
                    channel                                                Fig. 3(d)
==================  ==============================================  =====  ===============================

*LN* is each scheme's default for the ``norm`` switch. ``norm=True`` puts the pre-norm LayerNorms
back into the norm-free schemes: the CaiT paper reports that at ImageNet scale Fixup and T-Fixup
only converged with LayerNorm (and learning-rate warmup, a matter of the training configuration)
restored, and that is the form it compares.

The depth-dependent initialisations (Fixup, T-Fixup) need the number of blocks, which a single
block does not know: :func:`init_residual_scheme` applies them to a whole stack and is called by
:class:`~cait_edu.models.ViT` and :class:`~cait_edu.models.CaiT` after their default
initialisation, so nothing overwrites it. In CaiT the scheme applies to the self-attention stage;
the class-attention stage keeps LayerScale. The final LayerNorm before the head is kept in every
scheme (it is outside the residual stream).

Parameter names: the scales are ``gamma_1`` (attention branch) and ``gamma_2`` (MLP branch), as in
the authors' released checkpoints, so official weights load without renaming; ReZero's shared
scalar is ``alpha`` and Fixup's scalar biases are ``bias_1_*`` / ``bias_2_*``. All of them are 1-D,
so the optimiser's grouping (:func:`cait_edu.train.param_groups`) keeps them out of weight decay.
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
import torch.nn as nn

from .layers import Attention, ClassAttention, DropPath, Mlp

__all__ = ["Block", "ClassAttentionBlock", "layerscale_init_for_depth", "drop_path_rates", "init_residual_scheme",
           "default_norm", "RESIDUAL_SCALES", "DROP_PATH_SCHEDULES"]

ResidualScale = Literal["none", "rezero", "fixup", "tfixup", "scalar", "layerscale"]
RESIDUAL_SCALES = ("none", "rezero", "fixup", "tfixup", "scalar", "layerscale")
_NORM_FREE = ("rezero", "fixup", "tfixup")  # schemes whose source removes LayerNorm

# Fixup counts the layers along a residual branch: attention is qkv -> (mixing) -> proj on the path
# of the values, the MLP is fc1 -> GELU -> fc2. Both are m = 2 layers deep.
FIXUP_LAYERS_PER_BRANCH = 2
TFIXUP_GAIN = 0.67


def default_norm(residual_scale: str) -> bool:
    """Whether a scheme keeps the blocks' LayerNorms by default: False for ReZero, Fixup and T-Fixup
    (their papers remove normalisation), True for the others."""
    _check_scheme(residual_scale)
    return residual_scale not in _NORM_FREE


def _check_scheme(residual_scale: str) -> None:
    if residual_scale not in RESIDUAL_SCALES:
        raise ValueError(f"unknown residual_scale {residual_scale!r}; choose one of {RESIDUAL_SCALES}")


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
    """The LayerScale-family scale of one branch: None, a scalar, or a per-channel vector."""
    if kind == "none":
        return None
    if kind == "scalar":
        return nn.Parameter(torch.full((1,), float(init)))
    if kind == "layerscale":
        return nn.Parameter(torch.full((dim,), float(init)))
    raise ValueError(f"unknown residual_scale {kind!r}; choose one of ('none', 'scalar', 'layerscale')")


def _scaled(gamma: nn.Parameter | None, branch: torch.Tensor) -> torch.Tensor:
    return branch if gamma is None else gamma * branch


def _scalar(value: float) -> nn.Parameter:
    return nn.Parameter(torch.full((1,), float(value)))


class Block(nn.Module):
    """A transformer block over a token sequence with one of CaiT's residual schemes (Fig. 3).

    ``x = x + drop_path(branch_1(x))``; ``x = x + drop_path(branch_2(x))`` where the branches are
    attention and MLP wrapped as ``residual_scale`` says (table in :mod:`cait_edu.blocks`):

    * ``"none"`` -- the pre-norm ViT/DeiT block, ``x + F(LN(x))``.
    * ``"rezero"`` -- ReZero (Bachlechner et al. 2020, "ReZero is all you need", Eq. 4):
      ``x + alpha * F(x)`` with no LayerNorm and ``alpha`` a learned scalar initialised at 0, so the
      block starts as the identity. As in the authors' transformer layer, **one** ``alpha`` is
      shared by the attention and the MLP branch of a block (parameter ``alpha``; no ``gamma_*``).
    * ``"fixup"`` -- Fixup (Zhang, Dauphin, Ma 2019, "Fixup initialization", Sec. 3), adapted to a
      transformer as its authors' port did: no LayerNorm; each branch is
      ``gamma * F(x + b_in) + b_out`` with a scalar multiplier ``gamma`` (init 1) and scalar biases
      (init 0). Fixup puts a scalar bias before every linear layer and activation: the MLP branch has
      them before ``fc1``, the GELU and ``fc2`` (``bias_2_in``, ``bias_2_act``, ``bias_2_fc2``; the
      ResNet block's layout with conv -> linear), the attention branch before ``qkv``
      (``bias_1_in``). The bias before the attention's output projection is left out: it sits
      inside the attention layer, and since attention weights sum to one it would only shift the
      value projection's bias. Both branches end with ``bias_*_out`` after the multiplier. The
      Linear layers keep their own (zero-initialised) biases. The weight initialisation (last layer
      of each branch zero, the others scaled by ``L^(-1/(2m-2))``) needs the depth: see
      :func:`init_residual_scheme`; before it, a lone block is not yet a Fixup block.
    * ``"tfixup"`` -- T-Fixup (Huang, Perez, Ba, Volkovs 2020, Sec. 3): ``x + F(x)``, no LayerNorm,
      no extra parameters; the whole scheme is the initialisation of :func:`init_residual_scheme`.
    * ``"scalar"`` -- CaiT Fig. 3(c): LayerNorm kept, ``x + a * F(LN(x))`` with one learned scalar
      per branch initialised at ``init_scale``.
    * ``"layerscale"`` -- CaiT Eq. 4: LayerNorm kept, ``x + diag(g) F(LN(x))`` with ``g`` a learned
      per-channel vector initialised at ``init_scale``.

    Args:
        dim, num_heads, mlp_ratio, qkv_bias: sizes.
        attn_layer: :class:`~cait_edu.layers.Attention` (ViT) or
            :class:`~cait_edu.layers.TalkingHeadsAttention` (CaiT).
        residual_scale: one of :data:`RESIDUAL_SCALES`.
        init_scale: initial value of the ``"scalar"``/``"layerscale"`` scales (LayerScale's
            ``eps``); the other schemes ignore it (ReZero's ``alpha`` always starts at 0).
        norm: keep the pre-norm LayerNorms (True) or replace them by identities (False); None =
            the scheme's own choice (:func:`default_norm`). ``norm=True`` with ``"fixup"`` or
            ``"tfixup"`` is the adapted form the CaiT paper had to use at ImageNet scale.
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
        norm: bool | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        norm = default_norm(residual_scale) if norm is None else norm  # also validates the name
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.residual_scale = residual_scale
        if residual_scale in ("none", "scalar", "layerscale"):
            self.gamma_1 = _make_scale(residual_scale, dim, init_scale)
            self.gamma_2 = _make_scale(residual_scale, dim, init_scale)
        elif residual_scale == "rezero":
            self.gamma_1 = self.gamma_2 = None
            self.alpha = _scalar(0.0)  # shared by both branches
        elif residual_scale == "fixup":
            self.gamma_1, self.gamma_2 = _scalar(1.0), _scalar(1.0)  # multipliers
            self.bias_1_in, self.bias_1_out = _scalar(0.0), _scalar(0.0)
            self.bias_2_in, self.bias_2_act, self.bias_2_fc2, self.bias_2_out = (_scalar(0.0) for _ in range(4))
        else:  # tfixup: initialisation only
            self.gamma_1 = self.gamma_2 = None

    def _attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if self.residual_scale == "fixup":
            return self.gamma_1 * self.attn(h + self.bias_1_in) + self.bias_1_out
        if self.residual_scale == "rezero":
            return self.alpha * self.attn(h)
        return _scaled(self.gamma_1, self.attn(h))

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm2(x)
        if self.residual_scale == "fixup":  # Mlp.forward with a scalar bias before fc1, GELU, fc2
            m = self.mlp
            h = m.drop(m.act(m.fc1(h + self.bias_2_in) + self.bias_2_act))
            return self.gamma_2 * m.drop(m.fc2(h + self.bias_2_fc2)) + self.bias_2_out
        if self.residual_scale == "rezero":
            return self.alpha * self.mlp(h)
        return _scaled(self.gamma_2, self.mlp(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attn_branch(x))
        x = x + self.drop_path(self._mlp_branch(x))
        return x


def _xavier_(weight: torch.Tensor) -> None:
    """Xavier/Glorot uniform (Glorot & Bengio 2010) on a ``(fan_out, fan_in)`` weight, in place."""
    fan_out, fan_in = weight.shape
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    weight.uniform_(-bound, bound)


def _xavier_qkv_(qkv: nn.Linear) -> None:
    """Xavier on the fused ``qkv`` weight as if q, k and v were three ``(dim, dim)`` layers."""
    for w in qkv.weight.chunk(3, dim=0):  # rows: q, then k, then v (as the attention reads them)
        _xavier_(w)


@torch.no_grad()
def init_residual_scheme(blocks: Iterable[Block], head: nn.Module | None = None) -> None:
    """Apply the depth-dependent initialisation of the blocks' residual scheme to a stack of blocks.

    The models call it after their default initialisation (truncated normal 0.02, zero biases), so
    schemes without an initialisation rule of their own (``none``, ``rezero``, ``scalar``,
    ``layerscale``) are left exactly as they were. With ``N = len(blocks)``:

    * ``"fixup"`` (Zhang et al. 2019, Sec. 3, rules 1-2) with ``L = 2N`` residual branches and
      ``m = 2`` layers per branch (qkv -> proj on the values' path; fc1 -> fc2): the last layer of
      each branch (attention ``proj``, MLP ``fc2``) and the classifier ``head`` start at zero; the
      other branch weights (``qkv``, ``fc1``) take the standard initialisation scaled by
      ``L^(-1/(2m-2)) = (2N)^(-1/2)``. As the authors' transformer port, the standard
      initialisation is Xavier, with q, k and v treated as three layers. All Linear biases start
      at 0. The multipliers (1) and scalar biases (0) were set by :class:`Block`.
    * ``"tfixup"`` (Huang et al. 2020, Sec. 3.2, encoder rule): Xavier on every weight of the
      blocks' Linear layers (q, k, v as three layers), then the value projection, the attention
      output projection and both MLP weights scaled by ``0.67 N^(-1/4)``; q and k keep plain
      Xavier; biases 0. The paper's ``N(0, d^(-1/2))`` rule for input word embeddings has no
      counterpart here: the patch embedding, position embedding and head keep the model's init.

    CaiT's talking-heads matrices (``proj_l``, ``proj_w``) mix attention across heads, not the
    values' features, and keep the model's initialisation in every scheme.

    Args:
        blocks: the stack (all with the same ``residual_scale``).
        head: the classifier, zeroed by Fixup when it is a ``Linear``.
    """
    blocks = list(blocks)
    if not blocks:
        return
    schemes = {b.residual_scale for b in blocks}
    if len(schemes) != 1:
        raise ValueError(f"expected blocks with one residual scheme, got {sorted(schemes)}")
    scheme, n = schemes.pop(), len(blocks)
    if scheme == "fixup":
        factor = (2 * n) ** (-1.0 / (2 * FIXUP_LAYERS_PER_BRANCH - 2))
        for b in blocks:
            _xavier_qkv_(b.attn.qkv)
            b.attn.qkv.weight.mul_(factor)
            _xavier_(b.mlp.fc1.weight)
            b.mlp.fc1.weight.mul_(factor)
            nn.init.zeros_(b.attn.proj.weight)
            nn.init.zeros_(b.mlp.fc2.weight)
            for lin in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        if isinstance(head, nn.Linear):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
    elif scheme == "tfixup":
        factor = TFIXUP_GAIN * n ** -0.25
        for b in blocks:
            _xavier_qkv_(b.attn.qkv)
            b.attn.qkv.weight.chunk(3, dim=0)[2].mul_(factor)  # v only
            for lin in (b.attn.proj, b.mlp.fc1, b.mlp.fc2):
                _xavier_(lin.weight)
                lin.weight.mul_(factor)
            for lin in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)


class ClassAttentionBlock(nn.Module):
    """CaiT's class-attention block (Sec. 3.2, Fig. 2): updates the class token only.

    With ``z = [x_class, x_patches]``:
    ``x_class = x_class + gamma_1 * CA(LN1(z))``; ``x_class = x_class + gamma_2 * MLP(LN2(x_class))``.
    The patch tokens pass through unchanged: they are frozen after the self-attention stage.
    No dropout or stochastic depth here in CaiT (defaults 0). ``residual_scale`` is ``"none"``,
    ``"scalar"`` or ``"layerscale"``; :class:`~cait_edu.models.CaiT` always uses LayerScale here,
    whichever scheme its self-attention stage runs.

    ``x_patches (B, N, dim), x_class (B, 1, dim) -> x_class (B, 1, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        residual_scale: Literal["none", "scalar", "layerscale"] = "layerscale",
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
