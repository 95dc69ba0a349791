"""Parity with an independent implementation: timm's ``cait.py`` and ``vision_transformer.py``.

timm's CaiT is the reference port of the authors' code with identical key names. For every
released variant we build timm's model with random weights, load those weights into ours through
``load_official`` (the same path the official checkpoints take), and require equal parameter
counts and equal logits (fp32, eval mode).
"""
from __future__ import annotations

import pytest
import torch

import cait_edu

timm = pytest.importorskip("timm")

RELEASED = [n for n in cait_edu.list_models("cait_") if cait_edu.get_spec(n).checkpoint]
DEIT = {  # ours -> timm
    "deit_tiny_patch16_224": "deit_tiny_patch16_224",
    "deit_small_patch16_224": "deit_small_patch16_224",
    "deit_base_patch16_224": "deit_base_patch16_224",
}


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every tensor a random value of a scale at which every path matters.

    At initialisation the comparison would be weak: LayerScale's 1e-5 makes every residual branch
    nearly invisible, and 0.02-std weights make attention nearly uniform. Here LayerScale and
    talking-heads matrices are O(1) and linear layers keep activations O(1), so a wrong softmax
    axis, a missing head mixing or a misplaced norm changes the logits.
    """
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        r = torch.randn(t.shape, generator=g)
        if "gamma" in name:
            t.copy_(0.5 + 0.5 * torch.rand(t.shape, generator=g))
        elif ("proj_l" in name or "proj_w" in name) and t.ndim == 2:  # talking heads: (h, h)
            t.copy_(torch.eye(t.shape[0]) + 0.5 * r)
        elif name.endswith("weight") and t.ndim >= 2:
            t.copy_(r / t[0].numel() ** 0.5 * 1.5)  # keeps activations O(1); 1.5 sharpens attention
        elif "norm" in name and name.endswith("weight"):
            t.copy_(1.0 + 0.2 * r)
        else:  # biases, cls_token, pos_embed
            t.copy_(0.2 * r)


def _check_parity(ours_name: str, timm_name: str, batch: int = 2) -> float:
    torch.manual_seed(0)
    ref = timm.create_model(timm_name, pretrained=False).eval()
    randomize_(ref)
    ref_state = ref.state_dict()
    with torch.device("meta"):
        ours = cait_edu.create_model(ours_name)
    # identical key names and shapes, so load_official needs no renaming
    own = ours.state_dict()
    assert set(own) == set(ref_state)
    assert all(own[k].shape == ref_state[k].shape for k in own)
    # load a copy in the authors' on-disk format: {"model": {"module." + key: tensor}}
    official = {"model": {"module." + k: v.clone() for k, v in ref_state.items()}}
    cait_edu.load_official(ours, official)
    ours.eval()
    assert cait_edu.count_params(ours) == sum(p.numel() for p in ref.parameters())
    assert all(p.requires_grad for p in ours.parameters())
    size = ours.img_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = ours(x), ref(x)
    assert a.shape == b.shape == (batch, 1000)
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    assert diff <= 1e-5 * max(scale, 1.0), f"{ours_name}: max |logit diff| {diff:.3e} (logit scale {scale:.3f})"
    return diff


@pytest.mark.parametrize("name", RELEASED)
def test_cait_logits_equal_timm(name):
    _check_parity(name, name, batch=1 if name.startswith("cait_m") else 2)


@pytest.mark.parametrize("name", list(DEIT))
def test_deit_logits_equal_timm(name):
    _check_parity(name, DEIT[name])


def test_parity_check_detects_a_difference():
    """The comparison above is able to fail: a small change deep inside changes the logits."""
    ref = timm.create_model("cait_xxs24_224", pretrained=False).eval()
    randomize_(ref)
    ours = cait_edu.load_official(cait_edu.create_model("cait_xxs24_224"), ref.state_dict()).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        scale = ref(x).abs().max()
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5 * scale)
        # "forget" the after-softmax head mixing in one layer: the logits move far past tolerance
        ours.blocks[3].attn.proj_w.weight.copy_(torch.eye(4))
        ours.blocks[3].attn.proj_w.bias.zero_()
        assert (ours(x) - ref(x)).abs().max() > 1e-2 * scale
