"""Loading the authors' checkpoint format strictly, and failing loudly on anything else."""
from __future__ import annotations

import collections
import pathlib

import pytest
import torch

import cait_edu
from cait_edu.checkpoint import CheckpointMismatchError, load_official, pretrained, read_state_dict, resize_pos_embed


def official_format(model: torch.nn.Module) -> dict:
    return {"model": {"module." + k: v.clone() for k, v in model.state_dict().items()}}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return cait_edu.create_model("cait_cifar_nano")


def test_round_trip_official_format_on_disk(tmp_path, nano):
    path = tmp_path / "nano.pth"
    torch.save(official_format(nano), path)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("module.") for k in raw["model"])
    loaded = load_official(cait_edu.create_model("cait_cifar_nano"), path)
    assert_same_weights(loaded, nano)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), nano.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["bare", "bare_prefixed", "wrapped"])
def test_accepts_dicts_with_and_without_prefix(nano, fmt):
    state = nano.state_dict()
    src = {
        "bare": dict(state),
        "bare_prefixed": {"module." + k: v for k, v in state.items()},
        "wrapped": {"model": dict(state)},
    }[fmt]
    assert_same_weights(load_official(cait_edu.create_model("cait_cifar_nano"), src), nano)


def test_loads_into_a_meta_model_without_random_init(nano):
    with torch.device("meta"):
        empty = cait_edu.create_model("cait_cifar_nano")
    load_official(empty, official_format(nano))
    assert_same_weights(empty, nano)
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in empty.parameters())


def test_checkpoint_of_another_variant_fails_loudly(nano):
    other = cait_edu.create_model("cait_cifar_tiny")
    with pytest.raises(CheckpointMismatchError) as e:
        load_official(other, official_format(nano))
    msg = str(e.value)
    assert "cait_cifar_tiny" in msg
    assert "checkpoint: 4 SA layers + 2 CA layers, width 64" in msg
    assert "model:      6 SA layers + 2 CA layers, width 128" in msg
    assert "unexpected in checkpoint" not in msg and "missing from checkpoint (" in msg
    assert "shape mismatch" in msg


def test_vit_checkpoint_into_cait_fails(nano):
    vit = cait_edu.create_model("deit_cifar_tiny")
    with pytest.raises(CheckpointMismatchError, match="missing from checkpoint"):
        load_official(nano, vit.state_dict())


def test_other_resolution_is_rejected_unless_asked(nano):
    big = cait_edu.create_model("cait_cifar_nano", img_size=48)
    with pytest.raises(CheckpointMismatchError, match="allow_resize=True"):
        load_official(big, nano.state_dict())
    load_official(big, nano.state_dict(), allow_resize=True)
    assert big.pos_embed.shape == (1, 144, 64)
    torch.testing.assert_close(big.blocks[0].attn.qkv.weight, nano.blocks[0].attn.qkv.weight)
    assert big(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_resize_pos_embed():
    pe = torch.randn(1, 1 + 16, 8)
    assert resize_pos_embed(pe, 4, num_prefix_tokens=1) is pe
    out = resize_pos_embed(pe, 6, num_prefix_tokens=1)
    assert out.shape == (1, 1 + 36, 8)
    assert torch.equal(out[:, :1], pe[:, :1])  # the class-token slot is kept
    const = torch.full((1, 16, 3), 0.7)
    torch.testing.assert_close(resize_pos_embed(const, 7), torch.full((1, 49, 3), 0.7))
    with pytest.raises(ValueError, match="square grid"):
        resize_pos_embed(torch.randn(1, 15, 8), 4)


def test_corrupt_file_is_reported(tmp_path, nano):
    path = tmp_path / "cut.pth"
    torch.save(official_format(nano), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_official(cait_edu.create_model("cait_cifar_nano"), path)
    with pytest.raises(FileNotFoundError):
        load_official(nano, tmp_path / "missing.pth")


class _Evil:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path("/tmp/cait_edu_pwned"),))


def test_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Evil()}, path)
    marker = pathlib.Path("/tmp/cait_edu_pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="could not read"):
        read_state_dict(path)
    assert not marker.exists()


def test_not_a_state_dict():
    with pytest.raises(ValueError, match="not a state dict"):
        read_state_dict({"model": {"a": 1}})
    with pytest.raises(ValueError, match="not a state dict"):
        read_state_dict(collections.OrderedDict(epoch=3))


def test_non_finite_weights_are_rejected(nano):
    state = {k: v.clone() for k, v in nano.state_dict().items()}
    state["head.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointMismatchError, match="non-finite"):
        load_official(cait_edu.create_model("cait_cifar_nano"), state)


def test_pretrained_downloads_once_and_loads(tmp_path, monkeypatch):
    """The real download path, pointed at a local file:// 'server' holding XXS24_224.pth."""
    torch.manual_seed(0)
    ref = cait_edu.create_model("cait_xxs24_224")
    server = tmp_path / "server"
    server.mkdir()
    torch.save(official_format(ref), server / "XXS24_224.pth")
    cache = tmp_path / "cache"
    model = pretrained("cait_xxs24_224", base_url=server.as_uri(), cache_dir=cache, progress=False)
    assert not model.training
    assert_same_weights(model, ref)
    assert (cache / "XXS24_224.pth").is_file()
    # second call: served from the cache (the 'server' is gone)
    (server / "XXS24_224.pth").unlink()
    again = pretrained("cait_xxs24_224", base_url=server.as_uri(), cache_dir=cache, progress=False)
    assert_same_weights(again, ref)


def test_pretrained_without_network_says_what_to_do(tmp_path):
    with pytest.raises(OSError, match="place it at"):
        pretrained("cait_xxs24_224", base_url=(tmp_path / "nowhere").as_uri(), cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.pth"))  # no partial file left in the cache
    with pytest.raises(ValueError, match="no released weights"):
        pretrained("cait_cifar_nano", cache_dir=tmp_path)


def test_released_checkpoint_names_follow_the_authors():
    assert cait_edu.get_spec("cait_s24_224").checkpoint == "S24_224.pth"
    assert cait_edu.get_spec("cait_m48_448").checkpoint == "M48_448.pth"
