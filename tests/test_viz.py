"""Tests of cait_edu.viz: attention recording and the architecture diagram."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import cait_edu  # noqa: E402
from cait_edu.viz import attention_modules, draw_cait, record_attention  # noqa: E402


def _model(name, **kw):
    torch.manual_seed(0)
    return cait_edu.create_model(name, **kw).eval()


def _images(b=2):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _ones(shape):
    return torch.ones(shape, dtype=torch.float32)


def test_cait_one_map_per_attention_layer_with_the_right_shapes():
    m = _model("cait_cifar_nano")  # 4 SA + 2 CA layers, 4 heads, 64 patches
    x = _images(2)
    with record_attention(m) as maps:
        m(x)
    expected = [f"blocks.{i}.attn" for i in range(4)] + [f"blocks_token_only.{j}.attn" for j in range(2)]
    assert list(maps) == expected
    assert len(maps) == 6
    for i in range(4):
        assert maps[f"blocks.{i}.attn"].shape == (2, 4, 64, 64)
    for j in range(2):
        ca = maps[f"blocks_token_only.{j}.attn"]
        assert ca.shape == (2, 4, 1, 1 + 64)
        # class attention is a plain softmax over [CLS, patches]
        torch.testing.assert_close(ca.sum(-1), _ones((2, 4, 1)))
        assert (ca >= 0).all()


def test_talking_heads_maps_need_not_sum_to_one():
    m = _model("cait_cifar_nano")
    with record_attention(m) as maps:
        m(_images(2))
    sums = torch.stack([maps[f"blocks.{i}.attn"].sum(-1) for i in range(4)])
    # weights are mixed across heads after the softmax, so rows generally do not sum to one
    assert not torch.allclose(sums, torch.ones_like(sums), atol=1e-3)


def test_plain_attention_rows_sum_to_one():
    m = _model("cait_cifar_nano", talking_heads=False)
    with record_attention(m) as maps:
        m(_images(2))
    for i in range(4):
        a = maps[f"blocks.{i}.attn"]
        torch.testing.assert_close(a.sum(-1), _ones((2, 4, 64)))


def test_vit_maps_include_the_class_token():
    m = _model("deit_cifar_tiny")  # 6 layers, 4 heads, 1 + 64 tokens
    with record_attention(m) as maps:
        m(_images(3))
    assert list(maps) == [f"blocks.{i}.attn" for i in range(6)]
    for a in maps.values():
        assert a.shape == (3, 4, 65, 65)
        torch.testing.assert_close(a.sum(-1), _ones((3, 4, 65)))


@pytest.mark.parametrize("name", ["cait_cifar_nano", "deit_cifar_tiny"])
def test_recording_does_not_change_outputs(name):
    m = _model(name)
    x = _images(2)
    with torch.no_grad():
        plain = m(x)
        with record_attention(m):
            recorded = m(x)
    torch.testing.assert_close(recorded, plain)


def test_flags_restored_maps_cleared_and_snapshot_kept():
    m = _model("cait_cifar_nano")
    mods = attention_modules(m)
    assert len(mods) == 6
    with record_attention(m) as maps:
        assert all(mod.keep_attn for mod in mods.values())
        assert len(maps) == 0  # nothing has run yet
        with pytest.raises(KeyError, match="forward pass"):
            maps["blocks.0.attn"]
        m(_images(1))
        assert len(maps) == 6
    assert all(mod.keep_attn is False and mod.attn_map is None for mod in mods.values())
    # the record keeps its snapshot after the block
    assert maps["blocks.0.attn"].shape == (1, 4, 64, 64)
    with pytest.raises(KeyError, match="not an attention layer"):
        maps["head"]


def test_flags_restored_after_an_error():
    m = _model("cait_cifar_nano")
    with pytest.raises(ValueError, match="32x32"):
        with record_attention(m):
            m(torch.zeros(1, 3, 64, 64))
    assert all(mod.keep_attn is False and mod.attn_map is None for mod in attention_modules(m).values())


def test_model_without_attention_is_rejected():
    with pytest.raises(ValueError, match="no attention layers"):
        with record_attention(torch.nn.Linear(2, 2)):
            pass


@pytest.mark.parametrize("with_vit", [False, True])
def test_draw_cait_returns_a_figure(with_vit):
    fig = draw_cait(depth=24, dim=384, num_heads=8, with_vit=with_vit)
    try:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert len(ax.patches) > 0 and len(ax.texts) > 0
        texts = " ".join(t.get_text() for t in ax.texts)
        assert "self-attention stage × 24" in texts and "class-attention stage × 2" in texts
        assert ("ViT blocks × 12" in texts) == with_vit
        fig.canvas.draw()  # renders without error
    finally:
        plt.close(fig)
