"""CaiT's options for the class-attention ablation (paper Sec. 4): where the class token joins,
how many class-attention layers follow, talking heads on/off; attention maps from every layer."""
from __future__ import annotations

import pytest
import torch

import cait_edu
from cait_edu.layers import Attention, TalkingHeadsAttention
from cait_edu.viz import record_attention


def _model(**kw):
    torch.manual_seed(0)
    m = cait_edu.create_model("cait_cifar_nano", init_scale=0.1, **kw).eval()  # 4 SA blocks, 2 CA
    with torch.no_grad():  # O(1) weights so every block changes its input visibly
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _by_hand(m, x):
    """The forward pass written out: patches + pos, SA blocks, class token joined at layer k, CA."""
    k = m.class_token_layer
    t = m.patch_embed(x) + m.pos_embed
    cls = m.cls_token.expand(x.shape[0], -1, -1)
    for i, blk in enumerate(m.blocks):
        if i == k:
            t = torch.cat((cls, t), dim=1)
        t = blk(t)
    if k < m.depth:
        cls, t = t[:, :1], t[:, 1:]
    for blk in m.blocks_token_only:
        cls = blk(t, cls)
    return m.head(m.norm(torch.cat((cls, t), dim=1))[:, 0])


def test_default_is_cait_and_unchanged():
    a, b = _model(), _model(class_token_layer=4)
    assert a.class_token_layer == 4
    with torch.no_grad():
        torch.testing.assert_close(a(X), b(X), rtol=0, atol=0)
        torch.testing.assert_close(a(X), _by_hand(a, X))


@pytest.mark.parametrize("k,ca", [(0, 0), (0, 2), (2, 0), (2, 1), (3, 2), (4, 1)])
def test_class_token_joins_at_layer_k(k, ca):
    m = _model(class_token_layer=k, depth_token_only=ca)
    assert len(m.blocks_token_only) == ca
    with torch.no_grad():
        out = m(X)
        torch.testing.assert_close(out, _by_hand(m, X))
        # the option matters: joining elsewhere gives other logits from the same weights
        m.class_token_layer = (k + 1) % 4 if ca == 0 else (k + 1) % 5
        assert not torch.allclose(out, m(X))


def test_impossible_or_out_of_range_insertions_are_refused():
    with pytest.raises(ValueError, match="needs at least one class-attention layer"):
        cait_edu.create_model("cait_cifar_nano", depth_token_only=0)
    with pytest.raises(ValueError, match=r"class_token_layer must be in \[0, depth=4\]"):
        cait_edu.create_model("cait_cifar_nano", class_token_layer=5)


@pytest.mark.parametrize("talking_heads", [True, False])
@pytest.mark.parametrize("k,ca", [(0, 0), (2, 1), (4, 2)])
def test_attention_maps_from_every_layer_in_every_configuration(k, ca, talking_heads):
    m = _model(class_token_layer=k, depth_token_only=ca, talking_heads=talking_heads)
    kind = TalkingHeadsAttention if talking_heads else Attention
    assert all(type(b.attn) is kind for b in m.blocks)
    with torch.no_grad(), record_attention(m) as maps:
        m(X)
    assert len(maps) == 4 + ca
    n = 64  # 8 x 8 patches
    for i in range(4):
        tokens = n + (i >= k)  # the class token is in the sequence from block k on
        assert maps[f"blocks.{i}.attn"].shape == (2, 4, tokens, tokens)
    for j in range(ca):
        assert maps[f"blocks_token_only.{j}.attn"].shape == (2, 4, 1, n + 1)
