"""The residual schemes of CaiT Sec. 3.1 / Fig. 3 as options of ``Block``: initial state of each
scheme as its paper defines it, LayerNorm present or not, weight-decay grouping, one training step.

Expected values are written from the papers' formulas here, not taken from ``cait_edu.blocks``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cait_edu
from cait_edu.blocks import Block, ClassAttentionBlock, init_residual_scheme
from cait_edu.train import param_groups

SCHEMES = ["none", "rezero", "fixup", "tfixup", "scalar", "layerscale"]
NORM_FREE = {"rezero", "fixup", "tfixup"}
MODELS = ["deit_cifar_tiny", "cait_cifar_nano"]  # a ViT and a CaiT, made tiny below
DIM, DEPTH = 32, 4


def tiny(name: str, scheme: str, **kw) -> nn.Module:
    """Built through the registry, to check that the options are reachable as overrides."""
    kw = {"dim": DIM, "depth": DEPTH, "num_heads": 4, "residual_scale": scheme, **kw}
    return cait_edu.create_model(name, **kw)


def xavier_bound(fan_in: int, fan_out: int) -> float:
    return (6.0 / (fan_in + fan_out)) ** 0.5


def assert_uniform_with_bound(w: torch.Tensor, bound: float) -> None:
    """``w`` looks like U(-bound, bound): its largest entry is just under the bound (for >= 1024
    entries, below 0.97 * bound has probability < 1e-13) and its std is bound / sqrt(3)."""
    assert w.numel() >= 1024
    top = w.abs().max().item()
    assert 0.97 * bound < top <= bound * (1 + 1e-6), (top, bound)
    assert w.std().item() == pytest.approx(bound / 3**0.5, rel=0.08)


def qkv_chunks(blk: Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = blk.attn.qkv.weight.detach().chunk(3, dim=0)  # rows: q, k, v (as the attention splits them)
    return q, k, v


def own_params(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a block holds itself (not those of its attention, MLP, norms)."""
    return dict(module.named_parameters(recurse=False))


# --- parameters and LayerNorm ---------------------------------------------------------------------
@pytest.mark.parametrize("scheme, expected", [
    ("none", set()),
    ("rezero", {"alpha"}),  # one scalar shared by both branches
    ("fixup", {"gamma_1", "gamma_2", "bias_1_in", "bias_1_out", "bias_2_in", "bias_2_act", "bias_2_fc2",
               "bias_2_out"}),
    ("tfixup", set()),
    ("scalar", {"gamma_1", "gamma_2"}),
    ("layerscale", {"gamma_1", "gamma_2"}),
])
def test_each_scheme_holds_its_own_parameters(scheme, expected):
    blk = Block(DIM, 4, residual_scale=scheme)
    params = own_params(blk)
    assert set(params) == expected
    for name, p in params.items():
        assert p.shape == ((DIM,) if scheme == "layerscale" else (1,)), name


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_layernorm_follows_the_scheme_and_the_switch(name, scheme):
    default = tiny(name, scheme)
    for blk in default.blocks:
        for n in (blk.norm1, blk.norm2):
            if scheme in NORM_FREE:
                assert isinstance(n, nn.Identity)
            else:
                assert isinstance(n, nn.LayerNorm)
    has_layernorm = any(isinstance(mod, nn.LayerNorm) for mod in default.blocks.modules())
    assert has_layernorm == (scheme not in NORM_FREE)
    # the adapted form: LayerNorm put back (and taken out of the others)
    for norm, cls in [(True, nn.LayerNorm), (False, nn.Identity)]:
        m = tiny(name, scheme, norm=norm)
        assert all(isinstance(b.norm1, cls) and isinstance(b.norm2, cls) for b in m.blocks)
        assert m.blocks[0].residual_scale == scheme
        assert isinstance(m.norm, nn.LayerNorm)  # the final norm stays in every scheme
    if name.startswith("cait"):  # the class-attention stage keeps LayerNorm and LayerScale
        for blk in default.blocks_token_only:
            assert isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)
            assert blk.residual_scale == "layerscale" and blk.gamma_1.shape == (DIM,)
            assert torch.all(blk.gamma_1 == 0.1) and torch.all(blk.gamma_2 == 0.1)


def test_unknown_schemes_are_rejected():
    with pytest.raises(ValueError, match="residual_scale"):
        Block(DIM, 4, residual_scale="fixup2")
    with pytest.raises(ValueError, match="residual_scale"):
        ClassAttentionBlock(DIM, 4, residual_scale="fixup")
    with pytest.raises(ValueError, match="one residual scheme"):
        init_residual_scheme([Block(DIM, 4, residual_scale="fixup"), Block(DIM, 4, residual_scale="tfixup")])


# --- ReZero ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_rezero_starts_at_zero_and_is_the_identity(name):
    torch.manual_seed(0)
    m = tiny(name, "rezero")
    x = torch.randn(2, 7, DIM) * 3
    for blk in m.blocks:
        assert torch.all(blk.alpha == 0)
        assert blk.gamma_1 is None and blk.gamma_2 is None
        torch.testing.assert_close(blk(x), x, rtol=0, atol=0)


def test_rezero_one_alpha_scales_both_branches_without_layernorm():
    torch.manual_seed(0)
    blk = Block(DIM, 4, residual_scale="rezero").eval()
    with torch.no_grad():
        blk.alpha.fill_(0.7)
    x = torch.randn(2, 7, DIM)
    y = x + 0.7 * blk.attn(x)
    z = y + 0.7 * blk.mlp(y)
    torch.testing.assert_close(blk(x), z)


# --- Fixup -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("depth", [2, 8])
@pytest.mark.parametrize("norm", [None, True])
def test_fixup_initial_state(name, depth, norm):
    """Zero last layer per branch and zero head; qkv and fc1 = Xavier x L^(-1/(2m-2)) with L = 2 * depth
    branches and m = 2 layers per branch; multipliers 1, scalar biases 0."""
    torch.manual_seed(0)
    m = tiny(name, "fixup", depth=depth, norm=norm)
    factor = (2 * depth) ** -0.5
    for blk in m.blocks:
        for w in qkv_chunks(blk):
            assert_uniform_with_bound(w, xavier_bound(DIM, DIM) * factor)
        assert_uniform_with_bound(blk.mlp.fc1.weight.detach(), xavier_bound(DIM, 4 * DIM) * factor)
        for lin in (blk.attn.proj, blk.mlp.fc2):
            assert torch.all(lin.weight == 0) and torch.all(lin.bias == 0)
        assert torch.all(blk.attn.qkv.bias == 0) and torch.all(blk.mlp.fc1.bias == 0)
        assert torch.all(blk.gamma_1 == 1) and torch.all(blk.gamma_2 == 1)
        for n, p in own_params(blk).items():
            if n.startswith("bias_"):
                assert torch.all(p == 0), n
    assert torch.all(m.head.weight == 0) and torch.all(m.head.bias == 0)
    if name.startswith("cait"):  # talking heads keep the model's init (std 0.02)
        assert m.blocks[0].attn.proj_l.weight.abs().max() < 0.2


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("norm", [None, True])
def test_fixup_blocks_are_the_identity_at_init(name, norm):
    torch.manual_seed(0)
    m = tiny(name, "fixup", norm=norm)
    x = torch.randn(2, 7, DIM) * 3
    for blk in m.blocks:
        torch.testing.assert_close(blk(x), x, rtol=0, atol=0)
    logits = m(torch.randn(2, 3, 32, 32))
    assert torch.all(logits == 0)  # zero classifier
    # a stack built by hand and initialised by the same function
    blocks = [Block(DIM, 4, residual_scale="fixup") for _ in range(3)]
    init_residual_scheme(blocks)
    for blk in blocks:
        torch.testing.assert_close(blk(x), x, rtol=0, atol=0)


def test_fixup_multipliers_and_scalar_biases_sit_where_documented():
    torch.manual_seed(0)
    blk = Block(DIM, 4, residual_scale="fixup").eval()
    vals = {"gamma_1": 1.5, "gamma_2": -0.5, "bias_1_in": 0.1, "bias_1_out": 0.2, "bias_2_in": -0.3,
            "bias_2_act": 0.4, "bias_2_fc2": -0.6, "bias_2_out": 0.7}
    with torch.no_grad():
        for n, v in vals.items():
            getattr(blk, n).fill_(v)
    x = torch.randn(2, 7, DIM)
    y = x + 1.5 * blk.attn(x + 0.1) + 0.2
    h = F.gelu(blk.mlp.fc1(y - 0.3) + 0.4)
    z = y + -0.5 * blk.mlp.fc2(h - 0.6) + 0.7
    torch.testing.assert_close(blk(x), z)


# --- T-Fixup ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("depth", [2, 8])
@pytest.mark.parametrize("norm", [None, True])
def test_tfixup_initial_state(name, depth, norm):
    """Xavier everywhere in the blocks; v, proj, fc1, fc2 scaled by 0.67 N^(-1/4); q, k not."""
    torch.manual_seed(0)
    m = tiny(name, "tfixup", depth=depth, norm=norm)
    factor = 0.67 * depth**-0.25
    for blk in m.blocks:
        q, k, v = qkv_chunks(blk)
        assert_uniform_with_bound(q, xavier_bound(DIM, DIM))
        assert_uniform_with_bound(k, xavier_bound(DIM, DIM))
        assert_uniform_with_bound(v, xavier_bound(DIM, DIM) * factor)
        assert_uniform_with_bound(blk.attn.proj.weight.detach(), xavier_bound(DIM, DIM) * factor)
        assert_uniform_with_bound(blk.mlp.fc1.weight.detach(), xavier_bound(DIM, 4 * DIM) * factor)
        assert_uniform_with_bound(blk.mlp.fc2.weight.detach(), xavier_bound(4 * DIM, DIM) * factor)
        for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            assert torch.all(lin.bias == 0)
        assert own_params(blk) == {}
    # the head keeps the model's init (truncated normal, std 0.02), not zero
    assert m.head.weight.std().item() == pytest.approx(0.02, rel=0.15)


# --- scalar / LayerScale ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("scheme", ["scalar", "layerscale"])
@pytest.mark.parametrize("depth, eps", [(12, 0.1), (18, 0.1), (24, 1e-5), (36, 1e-6)])
def test_scalar_and_layerscale_start_at_eps_by_depth(name, scheme, depth, eps):
    with torch.device("meta"):  # shapes and the rule only; values are checked below on CPU
        m = tiny(name, scheme, depth=depth)
    assert m.init_scale == eps
    small = tiny(name, scheme, depth=2, init_scale=eps)  # the value lands in the parameters
    shape = (1,) if scheme == "scalar" else (DIM,)
    for blk in small.blocks:
        assert blk.gamma_1.shape == shape and blk.gamma_2.shape == shape
        assert torch.all(blk.gamma_1 == eps) and torch.all(blk.gamma_2 == eps)
        assert isinstance(blk.norm1, nn.LayerNorm)
    assert tiny(name, scheme, depth=24, init_scale=1e-3).init_scale == 1e-3  # an explicit value wins


def test_none_is_the_prenorm_vit_block():
    torch.manual_seed(0)
    blk = Block(DIM, 4, residual_scale="none").eval()
    x = torch.randn(2, 7, DIM)
    y = x + blk.attn(blk.norm1(x))
    torch.testing.assert_close(blk(x), y + blk.mlp(blk.norm2(y)))
    assert isinstance(blk.norm1, nn.LayerNorm) and blk.gamma_1 is None


# --- weight decay ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_only_weight_matrices_are_decayed(name, scheme):
    """The optimiser's rule: decay iff ndim > 1 and not named in no_weight_decay(). Every scale,
    ReZero's alpha and Fixup's scalar biases must fall outside it; the decayed set is exactly the
    weights of the Linear and Conv layers."""
    m = tiny(name, scheme)
    skip = set(m.no_weight_decay())
    decayed = {n for n, p in m.named_parameters() if p.ndim > 1 and n not in skip}
    layers = {f"{mn}.weight" for mn, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))}
    assert decayed == layers
    scheme_params = [n for n, _ in m.named_parameters()
                     if n.rsplit(".", 1)[-1].startswith(("gamma", "alpha", "bias_"))]
    if scheme != "none" and scheme != "tfixup":
        assert any(n.startswith("blocks.") for n in scheme_params)
    assert not decayed & set(scheme_params)
    # and the trainer's grouping agrees
    groups = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[id(p)] for p in groups[0]["params"]} == decayed


# --- one training step -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("scheme, norm", [(s, None) for s in SCHEMES] + [("fixup", True), ("tfixup", True)])
def test_each_scheme_trains_one_step(name, scheme, norm):
    torch.manual_seed(0)
    m = tiny(name, scheme, norm=norm).train()
    opt = torch.optim.AdamW(param_groups(m, 0.05), lr=1e-3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for _ in range(2):
        loss = F.cross_entropy(m(x), y)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        for n, p in m.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), n
        opt.step()
    for n, p in m.named_parameters():
        assert torch.isfinite(p).all(), n
    assert any(not torch.equal(before[n], p) for n, p in m.named_parameters())
    assert torch.isfinite(F.cross_entropy(m(x), y))
