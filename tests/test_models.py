"""Unit tests of the layers, blocks and models: shapes, the paper's details, and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import cait_edu
from cait_edu.blocks import Block, ClassAttentionBlock, layerscale_init_for_depth
from cait_edu.layers import Attention, ClassAttention, DropPath, TalkingHeadsAttention
from cait_edu.measure import cait_param_formula
from cait_edu.models import CaiT, ViT

RELEASED = [n for n in cait_edu.list_models("cait_") if cait_edu.get_spec(n).checkpoint]


def meta_model(name, **kw):
    with torch.device("meta"):
        return cait_edu.create_model(name, **kw)


def test_registry_lists_the_ten_released_models_and_presets():
    assert sorted(RELEASED) == sorted([
        "cait_xxs24_224", "cait_xxs24_384", "cait_xxs36_224", "cait_xxs36_384", "cait_xs24_384",
        "cait_s24_224", "cait_s24_384", "cait_s36_384", "cait_m36_384", "cait_m48_448",
    ])
    names = cait_edu.list_models()
    for n in ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
              "deit_cifar_tiny", "cait_cifar_tiny", "cait_cifar_nano"]:
        assert n in names


@pytest.mark.parametrize("name", RELEASED)
def test_released_architecture_matches_paper(name):
    """Sizes, LayerScale eps of the released code, params by the closed form and vs the paper."""
    size = name.split("_")[1]
    depth, dim, heads = {"xxs24": (24, 192, 4), "xxs36": (36, 192, 4), "xs24": (24, 288, 6), "s24": (24, 384, 8),
                         "s36": (36, 384, 8), "m36": (36, 768, 16), "m48": (48, 768, 16)}[size]
    eps = {"xxs24": 1e-5, "xxs36": 1e-5, "xs24": 1e-5, "s24": 1e-5, "s36": 1e-6, "m36": 1e-6, "m48": 1e-6}[size]
    res = int(name.split("_")[2])
    m = meta_model(name)
    assert isinstance(m, CaiT)
    assert (m.depth, m.dim, m.blocks[0].attn.num_heads, len(m.blocks_token_only)) == (depth, dim, heads, 2)
    assert m.init_scale == eps
    assert m.patch_embed.patch_size == 16 and m.img_size == res
    assert tuple(m.pos_embed.shape) == (1, (res // 16) ** 2, dim)  # patches only: no slot for cls
    n_params = cait_edu.count_params(m)
    assert n_params == cait_param_formula(dim, depth, heads, (res // 16) ** 2)
    # at 224 the paper's table (M, 2 decimals); other resolutions only add position embeddings
    at224 = n_params - ((res // 16) ** 2 - 196) * dim
    assert round(at224 / 1e6, 2) == pytest.approx(cait_edu.get_spec(name).paper["params_m_at_224"], abs=0.006)


def test_layerscale_gammas_hold_the_initial_value():
    m = cait_edu.create_model("cait_xxs24_224")
    for blk in list(m.blocks) + list(m.blocks_token_only):
        assert torch.all(blk.gamma_1 == 1e-5) and torch.all(blk.gamma_2 == 1e-5)
        assert blk.gamma_1.shape == (192,)


def test_layerscale_rule_by_depth():
    assert layerscale_init_for_depth(12) == 0.1
    assert layerscale_init_for_depth(18) == 0.1
    assert layerscale_init_for_depth(24) == 1e-5
    assert layerscale_init_for_depth(36) == 1e-6
    # the CIFAR presets follow the rule; an explicit value wins
    assert cait_edu.create_model("cait_cifar_tiny").init_scale == 0.1
    assert cait_edu.create_model("cait_cifar_tiny", depth=24).init_scale == 1e-5
    assert cait_edu.create_model("cait_cifar_tiny", init_scale=1e-3).init_scale == 1e-3


@pytest.mark.parametrize("name", ["cait_cifar_nano", "cait_cifar_tiny", "deit_cifar_tiny"])
def test_forward_shapes(name):
    torch.manual_seed(0)
    m = cait_edu.create_model(name).eval()
    x = torch.randn(3, 3, 32, 32)
    tokens = m.forward_features(x)
    assert tokens.shape == (3, 1 + 64, m.dim)
    assert m(x).shape == (3, 10)


def test_deit_has_class_token_position():
    m = cait_edu.create_model("deit_cifar_tiny")
    assert m.pos_embed.shape == (1, 1 + 64, 128)


def test_bad_input_gives_clear_errors():
    m = cait_edu.create_model("cait_cifar_nano")
    with pytest.raises(ValueError, match="takes 32x32 images, got 64x64"):
        m(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="expected 3 channels, got 1"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D batch"):
        m(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="channels-first"):
        m(torch.randn(1, 32, 32, 3))
    with pytest.raises(TypeError):
        m([[0.0]])
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        cait_edu.create_model("cait_cifar_nano", img_size=30)
    with pytest.raises(ValueError, match="not divisible by the number of heads"):
        cait_edu.create_model("cait_cifar_nano", num_heads=5)
    with pytest.raises(KeyError, match="unknown model 'cait_huge'"):
        cait_edu.create_model("cait_huge")
    with pytest.raises(TypeError, match="takes: .*depth"):
        cait_edu.create_model("cait_cifar_nano", depht=3)
    with pytest.raises(ValueError, match="residual_scale"):
        cait_edu.create_model("cait_cifar_nano", residual_scale="fancy")


def test_class_attention_updates_only_the_class_token():
    """After the SA stage the patch tokens are frozen: the output patches are LN(SA-stage output)."""
    torch.manual_seed(0)
    m = cait_edu.create_model("cait_cifar_nano").eval()
    # make the CA layers matter: large gammas
    for blk in m.blocks_token_only:
        nn.init.constant_(blk.gamma_1, 1.0)
        nn.init.constant_(blk.gamma_2, 1.0)
    seen = {}
    m.blocks[-1].register_forward_hook(lambda mod, inp, out: seen.setdefault("sa", out))
    x = torch.randn(2, 3, 32, 32)
    tokens = m.forward_features(x)
    torch.testing.assert_close(tokens[:, 1:], m.norm(seen["sa"]))
    # and the class token is changed by the CA stage
    cls0 = m.cls_token.expand(2, -1, -1)
    assert not torch.allclose(tokens[:, :1], m.norm(cls0))
    # one CA block: output is the class token only, and depends on the patches
    blk = m.blocks_token_only[0]
    out1 = blk(seen["sa"], cls0)
    out2 = blk(seen["sa"] + torch.randn_like(seen["sa"]), cls0)  # (a constant shift would vanish in LN)
    assert out1.shape == (2, 1, 64)
    assert not torch.allclose(out1, out2)


def test_class_token_is_inserted_late_and_gets_no_position_embedding():
    """Changing cls_token cannot change anything in the SA stage."""
    torch.manual_seed(0)
    m = cait_edu.create_model("cait_cifar_nano").eval()
    seen = []
    m.blocks[-1].register_forward_hook(lambda mod, inp, out: seen.append(out))
    x = torch.randn(2, 3, 32, 32)
    m(x)
    with torch.no_grad():
        m.cls_token.add_(1.0)
    m(x)
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)


def _copy_attention(src: nn.Module, dst: nn.Module) -> None:
    dst.qkv.load_state_dict(src.qkv.state_dict())
    dst.proj.load_state_dict(src.proj.state_dict())


def test_talking_heads_with_identity_mixing_equals_multi_head_attention():
    torch.manual_seed(0)
    th = TalkingHeadsAttention(64, num_heads=4).eval()
    mha = Attention(64, num_heads=4).eval()
    _copy_attention(th, mha)
    with torch.no_grad():
        for lin in (th.proj_l, th.proj_w):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    x = torch.randn(2, 10, 64)
    torch.testing.assert_close(th(x), mha(x), rtol=1e-5, atol=1e-6)
    # and a non-identity mixing changes the result (the test above can fail)
    with torch.no_grad():
        th.proj_l.weight.copy_(torch.eye(4).roll(1, 0))
    assert not torch.allclose(th(x), mha(x), atol=1e-4)


def test_talking_heads_matches_a_direct_formula():
    """Mixing heads = sum_h' W[h, h'] * A[h'] + b[h], before and after the softmax."""
    torch.manual_seed(1)
    th = TalkingHeadsAttention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    B, N, C, h = 2, 7, 32, 4
    q, k, v = th.qkv(x).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1) / (C // h) ** 0.5
    mixed = torch.einsum("gh,bhij->bgij", th.proj_l.weight, logits) + th.proj_l.bias[None, :, None, None]
    w = mixed.softmax(-1)
    w = torch.einsum("gh,bhij->bgij", th.proj_w.weight, w) + th.proj_w.bias[None, :, None, None]
    expected = th.proj((w @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(th(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [Attention, ClassAttention])
def test_fused_and_explicit_attention_agree(layer):
    torch.manual_seed(0)
    attn = layer(32, num_heads=4).eval()
    x = torch.randn(2, 9, 32)
    fast = attn(x)
    attn.keep_attn = True
    slow = attn(x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    rows = attn.attn_map.sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    expected_shape = (2, 4, 9, 9) if layer is Attention else (2, 4, 1, 9)
    assert attn.attn_map.shape == expected_shape


def test_drop_path_is_identity_in_eval_and_per_sample_in_training():
    dp = DropPath(0.5)
    x = torch.ones(1000, 4, 8)
    assert torch.equal(dp.eval()(x), x)
    torch.manual_seed(0)
    y = dp.train()(x)
    per_sample = y.flatten(1)
    # each sample is either dropped entirely or kept and scaled by 1/(1-p)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    kept = (per_sample[:, 0] > 0).float().mean().item()
    assert 0.45 < kept < 0.55
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_drop_path_rate_is_uniform_in_sa_and_zero_in_ca():
    m = meta_model("cait_s36_384")
    assert {blk.drop_path.p for blk in m.blocks} == {0.2}
    assert {blk.drop_path.p for blk in m.blocks_token_only} == {0.0}
    m = cait_edu.create_model("cait_cifar_nano", drop_path_rate=0.3)
    assert {blk.drop_path.p for blk in m.blocks} == {0.3}
    m = cait_edu.create_model("cait_cifar_nano", drop_path_rate=0.3, drop_path_schedule="linear")
    assert [blk.drop_path.p for blk in m.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_vit_drop_path_ramps_linearly_as_deit():
    """DeiT (timm's VisionTransformer) ramps stochastic depth from 0 at the first block to the rate
    at the last; checked against timm itself, an independent implementation."""
    timm = pytest.importorskip("timm")
    ours = cait_edu.create_model("deit_small_patch16_224", drop_path_rate=0.1).to("meta")
    with torch.device("meta"):
        ref = timm.create_model("deit_small_patch16_224", drop_path_rate=0.1)
    ref_rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, "drop_prob") else 0.0 for blk in ref.blocks]
    assert [blk.drop_path.p for blk in ours.blocks] == pytest.approx(ref_rates)
    assert ref_rates[0] == 0.0 and ref_rates[-1] == pytest.approx(0.1)
    uniform = cait_edu.create_model("deit_cifar_tiny", drop_path_rate=0.2, drop_path_schedule="uniform")
    assert {blk.drop_path.p for blk in uniform.blocks} == {0.2}
    with pytest.raises(ValueError, match="drop_path_schedule"):
        cait_edu.create_model("deit_cifar_tiny", drop_path_schedule="cosine")


def test_model_without_dropout_is_deterministic_in_training_mode():
    torch.manual_seed(0)
    m = cait_edu.create_model("cait_cifar_nano").train()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    m = cait_edu.create_model("cait_cifar_nano", drop_path_rate=0.5).train()
    assert not torch.allclose(m(x), m(x))


def test_initialisation_follows_the_released_code():
    torch.manual_seed(0)
    m = cait_edu.create_model("cait_xxs24_224")
    w = m.blocks[0].mlp.fc1.weight
    # timm's trunc_normal_(std=.02) as the authors call it truncates at +-2 in absolute value,
    # i.e. 100 standard deviations: in effect a plain normal with std 0.02
    assert abs(w.std().item() - 0.02) < 0.0005 and w.abs().max().item() <= 2.0
    assert torch.all(m.blocks[0].attn.qkv.bias == 0)
    assert torch.all(m.head.bias == 0)
    assert m.patch_embed.proj.bias.abs().sum() > 0  # PyTorch's default conv init is kept
    assert abs(m.pos_embed.std().item() - 0.02) < 0.002
    assert torch.all(m.norm.weight == 1) and torch.all(m.norm.bias == 0)


def test_residual_scaling_options():
    """The block option that later chapters sweep (the other schemes: tests/test_residual_schemes.py)."""
    x = torch.randn(2, 5, 16)
    for kind, shape in [("none", None), ("scalar", (1,)), ("layerscale", (16,))]:
        blk = Block(16, 4, residual_scale=kind, init_scale=0.0)
        if shape is None:
            assert blk.gamma_1 is None
        else:
            assert blk.gamma_1.shape == shape
            # a zero-initialised scale makes the block the identity (ReZero's starting point)
            torch.testing.assert_close(blk(x), x, rtol=0, atol=0)
    blk = Block(16, 4, residual_scale="scalar", init_scale=0.0, norm=False)
    assert isinstance(blk.norm1, nn.Identity)
    vit = ViT(img_size=32, patch_size=4, num_classes=10, dim=32, depth=2, num_heads=4, residual_scale="layerscale", init_scale=0.1)
    assert vit.blocks[0].gamma_1.shape == (32,) and torch.all(vit.blocks[0].gamma_1 == 0.1)
    assert "blocks.0.gamma_1" in vit.state_dict()


def test_ca_block_without_scale():
    blk = ClassAttentionBlock(16, 4, residual_scale="none")
    out = blk(torch.randn(2, 5, 16), torch.randn(2, 1, 16))
    assert out.shape == (2, 1, 16)


def test_no_weight_decay_names_exist():
    m = cait_edu.create_model("cait_cifar_nano")
    names = dict(m.named_parameters())
    assert all(n in names for n in m.no_weight_decay())


def test_count_macs_matches_paper_for_s24():
    """The paper's 9.4 GFLOPs (README 9.33 G) for S24 at 224 are multiply-accumulates."""
    m = cait_edu.create_model("cait_s24_224")
    assert round(cait_edu.count_macs(m) / 1e9, 2) == 9.33
    assert all(p.requires_grad for p in m.parameters())  # flags restored


def test_count_macs_counts_attention_products():
    """ViT-style closed form: per layer 12 N d^2 (linear layers) + 2 N^2 d (q k^T and attn v)."""
    m = cait_edu.create_model("deit_cifar_tiny")
    N, d, L = 65, 128, 6
    patch = 64 * (3 * 4 * 4) * d
    expected = L * (12 * N * d * d + 2 * N * N * d) + patch + d * 10
    assert cait_edu.count_macs(m) == expected


@pytest.mark.parametrize("name", ["deit_cifar_tiny", "cait_cifar_nano"])
def test_count_macs_builds_its_input_on_the_models_device_and_dtype(name):
    """A model on another device (``meta``: FlopCounterMode counts shapes, no data needed) or in
    another dtype is counted like the CPU fp32 model, instead of failing on a CPU fp32 input."""
    m = cait_edu.create_model(name)
    expected = cait_edu.count_macs(m)
    assert cait_edu.count_macs(m.double()) == expected
    assert cait_edu.count_macs(m.to("meta")) == expected


def test_wrong_image_dtype_says_what_the_model_expects():
    model = cait_edu.create_model("cait_cifar_nano").eval()
    with pytest.raises(TypeError, match=r"expected float images normalised .* got torch.uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"images are torch.float64 but the model's weights are torch.float32"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision still takes float32 images
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert model.double()(torch.zeros(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("name", ["cait_cifar_nano", "deit_cifar_tiny"])
def test_conv_stem_is_a_drop_in_patch_embedding(name):
    from cait_edu.layers import ConvStem

    torch.manual_seed(0)
    model = cait_edu.create_model(name, stem="conv")
    stem = model.patch_embed
    assert isinstance(stem, ConvStem) and stem.num_patches == 64  # same 8x8 grid as patch 4
    strided = [m for m in stem.proj if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 2 and all(m.kernel_size == (3, 3) for m in strided)  # log2(4) layers
    assert [m.out_channels for m in stem.proj if isinstance(m, nn.Conv2d)] == [model.dim // 2, model.dim, model.dim]
    x = torch.randn(2, 3, 32, 32)
    assert stem(x).shape == (2, 64, model.dim) and model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="takes 32x32 images"):
        model(torch.randn(2, 3, 40, 40))
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert stem.proj[0].weight.grad is not None and stem.proj[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="power-of-two patch size"):
        ConvStem(30, 6, 3, 32)
    with pytest.raises(ValueError, match="unknown stem 'resnet'"):
        cait_edu.create_model(name, stem="resnet")
