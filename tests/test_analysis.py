"""Tests of cait_edu.analysis: residual-update ratios and per-block gradient norms.

Expected values are computed here by hand (the forward pass written out block by block, the
gradients with plain autograd), not by calling the functions under test another way.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cait_edu
from cait_edu.analysis import layer_gradient_norms, residual_blocks, residual_update_ratios

DIM, DEPTH = 32, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def vit(scheme: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"dim": DIM, "depth": DEPTH, "num_heads": 4, "mlp_ratio": 2.0, "residual_scale": scheme, **kw}
    return cait_edu.create_model("deit_cifar_tiny", **kw)


def batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@torch.no_grad()
def randomise_(model: nn.Module) -> None:
    """Give every block parameter (scales, zero-initialised layers, Fixup's scalars) a non-zero value,
    so that no branch is trivially zero."""
    g = torch.Generator().manual_seed(2)
    for blk in residual_blocks(model):
        for p in blk.parameters():
            p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))
    for p in model.head.parameters():
        p.copy_(0.1 * torch.randn(p.shape, generator=g))


def embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A ViT's stream before its first block, by hand."""
    tokens = model.patch_embed(images)
    cls = model.cls_token.expand(images.shape[0], -1, -1)
    return torch.cat([cls, tokens], dim=1) + model.pos_embed


def branches_by_hand(blk, x: torch.Tensor):
    """The two updates of one block, written from each scheme's definition; returns (u_attn, x', u_mlp)."""
    s = blk.residual_scale
    if s == "fixup":
        u_attn = blk.gamma_1 * blk.attn(blk.norm1(x) + blk.bias_1_in) + blk.bias_1_out
        mid = x + u_attn
        h = F.gelu(blk.mlp.fc1(blk.norm2(mid) + blk.bias_2_in) + blk.bias_2_act)
        return u_attn, mid, blk.gamma_2 * blk.mlp.fc2(h + blk.bias_2_fc2) + blk.bias_2_out
    scale_1 = {"none": 1.0, "tfixup": 1.0, "rezero": getattr(blk, "alpha", None)}.get(s, blk.gamma_1)
    scale_2 = {"none": 1.0, "tfixup": 1.0, "rezero": getattr(blk, "alpha", None)}.get(s, blk.gamma_2)
    u_attn = scale_1 * blk.attn(blk.norm1(x))
    mid = x + u_attn
    return u_attn, mid, scale_2 * blk.mlp(blk.norm2(mid))


def fro(t: torch.Tensor) -> float:
    return t.detach().double().norm().item()


# --- ratios ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme, norm", [("rezero", None), ("fixup", None), ("fixup", True)])
def test_ratios_are_exactly_zero_where_blocks_start_as_the_identity(scheme, norm):
    m = vit(scheme, norm=norm)
    r = residual_update_ratios(m, batch()[0])
    assert r == {"attn": [0.0] * DEPTH, "mlp": [0.0] * DEPTH}
    randomise_(m)  # and the same function does see updates once the branches are switched on
    r = residual_update_ratios(m, batch()[0])
    assert all(v > 1e-3 for v in r["attn"] + r["mlp"])


@pytest.mark.parametrize("scheme, norm", [("none", None), ("rezero", None), ("fixup", None), ("fixup", True),
                                          ("tfixup", None), ("tfixup", True), ("scalar", None), ("layerscale", None)])
def test_ratios_match_a_forward_pass_written_out_by_hand(scheme, norm):
    m = vit(scheme, norm=norm).eval()
    randomise_(m)
    images, _ = batch()
    got = residual_update_ratios(m, images)
    expected = {"attn": [], "mlp": []}
    with torch.no_grad():
        x = embed(m, images)
        for blk in m.blocks:
            u_attn, mid, u_mlp = branches_by_hand(blk, x)
            expected["attn"].append(fro(u_attn) / fro(x))
            expected["mlp"].append(fro(u_mlp) / fro(mid))
            torch.testing.assert_close(mid + u_mlp, blk(x))  # our walk is the block's own forward
            x = mid + u_mlp
    for k in ("attn", "mlp"):
        assert got[k] == pytest.approx(expected[k], rel=1e-5), k


def test_layerscale_ratio_is_eps_times_the_plain_branch():
    """Same seed -> same weights; LayerScale's update is eps * F(LN(x)), the plain block's F(LN(x))."""
    images, _ = batch()
    plain = residual_update_ratios(vit("none"), images)
    for eps in (1e-2, 1e-5):
        ls = residual_update_ratios(vit("layerscale", init_scale=eps), images)
        sc = residual_update_ratios(vit("scalar", init_scale=eps), images)
        # first branch: the same stream enters both models
        assert ls["attn"][0] == pytest.approx(eps * plain["attn"][0], rel=1e-5)
        for k in ("attn", "mlp"):
            assert sc[k] == pytest.approx(ls[k], rel=1e-5)  # at init a scalar eps and a vector of eps agree
            for r_ls, r_plain in zip(ls[k], plain[k]):
                assert 0.5 < r_ls / (eps * r_plain) < 2.0
    small = residual_update_ratios(vit("layerscale", init_scale=1e-6), images)
    big = residual_update_ratios(vit("layerscale", init_scale=1e-4), images)
    for a, b in zip(small["mlp"], big["mlp"]):
        assert b / a == pytest.approx(100.0, rel=1e-2)


def test_cait_measures_its_self_attention_stage():
    torch.manual_seed(0)
    m = cait_edu.create_model("cait_cifar_nano", dim=DIM, depth=DEPTH, residual_scale="layerscale", init_scale=0.1)
    images, labels = batch()
    r = residual_update_ratios(m, images)
    g = layer_gradient_norms(m, images, labels)
    assert len(r["attn"]) == len(r["mlp"]) == len(g["stream"]) == DEPTH  # not the 2 class-attention blocks
    assert all(0 < v < 1 for v in r["attn"] + r["mlp"])


# --- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["none", "fixup", "layerscale", "rezero"])
def test_gradients_match_autograd_by_hand(scheme):
    m = vit(scheme).eval()
    randomise_(m)
    images, labels = batch()
    got = layer_gradient_norms(m, images, labels)
    assert all(p.grad is None for p in m.parameters())  # the function leaves .grad alone

    x = embed(m, images)
    inputs = []
    for blk in m.blocks:
        x.retain_grad()
        inputs.append(x)
        x = blk(x)
    F.cross_entropy(m.head(m.norm(x)[:, 0]), labels).backward()
    for i, blk in enumerate(m.blocks):
        own = dict(blk.named_parameters(recurse=False))
        branch = [p for n, p in blk.named_parameters() if n not in own]
        assert got["stream"][i] == pytest.approx(fro(inputs[i].grad), rel=1e-5)
        assert got["branch"][i] == pytest.approx(sum(fro(p.grad) ** 2 for p in branch) ** 0.5, rel=1e-5)
        assert got["scales"][i] == pytest.approx(sum(fro(p.grad) ** 2 for p in own.values()) ** 0.5, rel=1e-5, abs=0)
    if scheme == "none":
        assert got["scales"] == [0.0] * DEPTH


def test_rezero_at_init_passes_the_same_gradient_to_every_block_and_none_to_its_branches():
    got = layer_gradient_norms(vit("rezero"), *batch())
    assert got["stream"][0] > 0 and got["stream"] == [got["stream"][0]] * DEPTH  # identity blocks
    assert got["branch"] == [0.0] * DEPTH  # alpha = 0 cuts the branches off
    assert all(g > 0 for g in got["scales"])  # only alpha learns at the first step


def test_fixup_at_init_sends_no_gradient_into_the_blocks():
    m = vit("fixup")
    got = layer_gradient_norms(m, *batch())
    assert got == {"stream": [0.0] * DEPTH, "branch": [0.0] * DEPTH, "scales": [0.0] * DEPTH}  # zero head
    with torch.no_grad():
        m.head.weight.normal_(std=0.1)  # once the head has moved, every (identity) block gets the same gradient
    got = layer_gradient_norms(m, *batch())
    assert got["stream"][0] > 0 and got["stream"] == pytest.approx([got["stream"][0]] * DEPTH, rel=1e-6)
    assert all(g > 0 for g in got["branch"])  # the zero last layers (proj, fc2) get a gradient


def test_model_is_left_as_it_was():
    m = vit("layerscale", drop_path_rate=0.5).train()
    images, labels = batch()
    r1, g1 = residual_update_ratios(m, images), layer_gradient_norms(m, images, labels)
    assert m.training and all(mod.training for mod in m.modules())
    for mod in m.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert all(p.grad is None for p in m.parameters())
    # evaluation mode inside: no stochastic depth, so the measurement is repeatable
    assert residual_update_ratios(m, images) == r1 and layer_gradient_norms(m, images, labels) == g1


def test_models_without_blocks_are_rejected():
    with pytest.raises(ValueError, match="no cait_edu.blocks.Block"):
        residual_update_ratios(nn.Linear(3, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="no cait_edu.blocks.Block"):
        layer_gradient_norms(nn.Linear(3, 3), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))
