"""Measuring what a residual scheme does to a network before training (book chapter 3).

Every block of a ViT or of CaiT's self-attention stage updates the residual stream twice,
``x' = x + u_attn`` and ``x_next = x' + u_mlp``, where each update ``u`` is a residual branch as
the block's scheme wraps it (``F(LN(x))``, ``alpha * F(x)``, ``diag(gamma) F(LN(x))``, ...; see
:mod:`cait_edu.blocks`). Two measurements show how a scheme starts out:

* :func:`residual_update_ratios` -- for every block and branch, how large the update is compared
  with the stream it is added to, ``||u|| / ||x||``. A ratio near 1 means the branch rewrites the
  stream; near 0, the block is close to the identity.
* :func:`layer_gradient_norms` -- after one backward pass of the cross-entropy, how large the
  gradient is that reaches each block: with respect to the stream entering it (``dL/dx_l``) and
  with respect to its own parameters.

Norms are Frobenius norms over the whole batch (all images, tokens and channels at once), so a
ratio is ``sqrt(sum u^2) / sqrt(sum x^2)``. Both functions run the model in evaluation mode (no
dropout, no stochastic depth) and leave it as they found it: same mode, no hooks, no ``.grad``.
They look at :class:`~cait_edu.blocks.Block` s only (a ViT's blocks, CaiT's self-attention stage),
in forward order.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import Block

__all__ = ["residual_blocks", "residual_update_ratios", "layer_gradient_norms"]


def residual_blocks(model: nn.Module) -> list[Block]:
    """The model's :class:`~cait_edu.blocks.Block` s in forward order (a ViT's blocks, or the
    self-attention stage of a CaiT). Raises ``ValueError`` if it has none."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no cait_edu.blocks.Block to measure")
    return blocks


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _norm(t: torch.Tensor) -> float:
    return t.detach().double().norm().item()


@torch.no_grad()
def residual_update_ratios(model: nn.Module, images: torch.Tensor) -> dict[str, list[float]]:
    """Per block, the size of each residual update relative to the stream it is added to.

    Returns ``{"attn": [...], "mlp": [...]}`` with one entry per block (forward order):
    ``||u_attn|| / ||x||`` for the attention branch and ``||u_mlp|| / ||x'||`` for the MLP branch,
    where ``x`` enters the block and ``x' = x + u_attn``.

    How it is measured, without changing the model's code: forward pre-hooks on each block's
    ``norm1`` and ``norm2`` (a LayerNorm, or an ``nn.Identity`` in norm-free schemes -- either way
    its input is the stream entering that branch) and a forward hook on the block's ``drop_path``,
    which every branch's scaled output passes through on its way into the stream (its output is
    exactly the update added; in evaluation mode it is the identity).
    """
    blocks = residual_blocks(model)
    events: list[list[tuple[str, float]]] = [[] for _ in blocks]
    handles = []
    for i, blk in enumerate(blocks):
        log = events[i]
        handles.append(blk.norm1.register_forward_pre_hook(lambda m, args, log=log: log.append(("x", _norm(args[0])))))
        handles.append(blk.norm2.register_forward_pre_hook(lambda m, args, log=log: log.append(("x", _norm(args[0])))))
        handles.append(blk.drop_path.register_forward_hook(lambda m, args, out, log=log: log.append(("u", _norm(out)))))
    try:
        with _eval_mode(model):
            model(images)
    finally:
        for h in handles:
            h.remove()
    ratios: dict[str, list[float]] = {"attn": [], "mlp": []}
    for i, log in enumerate(events):
        kinds = [k for k, _ in log]
        if kinds != ["x", "u", "x", "u"]:  # one pass through the block: stream, update, stream, update
            raise RuntimeError(f"block {i}: unexpected call order {kinds}; was it called more than once per forward?")
        (_, x), (_, u_attn), (_, x_mid), (_, u_mlp) = log
        ratios["attn"].append(u_attn / x)
        ratios["mlp"].append(u_mlp / x_mid)
    return ratios


def layer_gradient_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, list[float]]:
    """Per block, the size of the gradient of the mean cross-entropy after one backward pass.

    Returns ``{"stream": [...], "branch": [...], "scales": [...]}`` with one entry per block
    (forward order):

    * ``stream``: ``||dL/dx_l||``, the gradient reaching block ``l`` through the residual stream
      (``x_l`` is the block's input);
    * ``branch``: the gradient with respect to the parameters inside the block's two branches
      (attention, MLP and their LayerNorms, if any), all together;
    * ``scales``: the gradient with respect to the parameters the residual scheme adds to the
      block (LayerScale's or the scalar scheme's ``gamma_1``/``gamma_2``, ReZero's ``alpha``,
      Fixup's multipliers and scalar biases); ``0.0`` for schemes without any (``none``,
      ``tfixup``).

    The gradients are computed with ``torch.autograd.grad``: the parameters' ``.grad`` are not
    touched, so this can be called on a model in the middle of training.
    """
    blocks = residual_blocks(model)
    inputs: list[torch.Tensor | None] = [None] * len(blocks)
    handles = []
    for i, blk in enumerate(blocks):
        def keep(m, args, i=i):
            inputs[i] = args[0]
        handles.append(blk.register_forward_pre_hook(keep))
    try:
        with _eval_mode(model), torch.enable_grad():
            loss = F.cross_entropy(model(images), labels)
    finally:
        for h in handles:
            h.remove()
    if any(x is None or not x.requires_grad for x in inputs):
        raise RuntimeError("a block did not run, or its input does not depend on the model's parameters")
    groups = []  # per block: (its branches' parameters, the scheme's own parameters)
    for blk in blocks:
        own = {id(p) for p in blk.parameters(recurse=False)}
        params = [p for p in blk.parameters() if p.requires_grad]
        groups.append(([p for p in params if id(p) not in own], [p for p in params if id(p) in own]))
    flat = [p for branch, scales in groups for p in (*branch, *scales)]
    grads = torch.autograd.grad(loss, [*inputs, *flat], allow_unused=True)
    stream_grads, param_grads = grads[: len(blocks)], iter(grads[len(blocks):])

    def norm_of_next(n: int) -> float:
        sq = 0.0
        for _ in range(n):
            g = next(param_grads)
            if g is not None:
                sq += g.detach().double().pow(2).sum().item()
        return sq**0.5

    out: dict[str, list[float]] = {"stream": [], "branch": [], "scales": []}
    for g_x, (branch, scales) in zip(stream_grads, groups):
        out["stream"].append(0.0 if g_x is None else _norm(g_x))
        out["branch"].append(norm_of_next(len(branch)))
        out["scales"].append(norm_of_next(len(scales)))
    return out
