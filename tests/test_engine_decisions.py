"""The engine's hardware decisions with the hardware mocked (CI has no GPU), strict metrics
files, and the declared minimum torch version."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from cait_edu.training import hardware
from cait_edu.training.metrics import MetricsLog

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("capability,expected", [((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 0), "fp16"),
                                                 ((8, 0), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16")],
                         ids=["T4", "V100", "P100", "A100", "L4", "H100"])
def test_auto_amp_follows_native_bf16_not_emulation(monkeypatch, capability, expected):
    # On a T4 or V100 torch.cuda.is_bf16_supported() answers True (bf16 is emulated, slowly):
    # the decision must not rest on it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert hardware.choose_amp("auto", torch.device("cuda", 0)) == expected
    assert hardware.choose_amp("bf16", torch.device("cuda", 0)) == "bf16"  # an explicit choice stands
    assert hardware.choose_amp("auto", torch.device("cpu")) == "off"


def test_resolve_amp_rules():
    assert hardware.resolve_amp("auto", "cpu", bf16_supported=True) == "off"
    assert hardware.resolve_amp("auto", "cuda", bf16_supported=True) == "bf16"
    assert hardware.resolve_amp("auto", "cuda", bf16_supported=False) == "fp16"
    assert hardware.resolve_amp("off", "cuda", True) == "off" and hardware.resolve_amp("bf16", "cpu", False) == "bf16"
    with pytest.raises(hardware.ConfigError, match="amp must be one of"):
        hardware.resolve_amp("fp8", "cpu", False)


def test_device_type_and_process_group_backend(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.device_type("auto") == "cuda" and hardware.device_type("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.device_type("auto") == "cpu" and hardware.device_type("cuda") == "cuda"

    calls = {}
    monkeypatch.setattr(hardware.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(hardware.dist, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    monkeypatch.setattr(hardware.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(hardware.dist, "get_world_size", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    dd = hardware.setup_distributed("cuda")
    assert calls == {"device": 3, "backend": "nccl"} and (dd.rank, dd.world, dd.local_rank, dd.owned) == (3, 8, 3, True)
    calls.clear()
    hardware.setup_distributed("cpu")
    assert calls == {"backend": "gloo"}
    monkeypatch.setenv("WORLD_SIZE", "1")
    calls.clear()
    assert hardware.setup_distributed("cuda") == hardware.Dist() and calls == {}


def test_tf32_flags_are_restored_after_a_run():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with hardware.tf32_matmuls(True):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        with pytest.raises(RuntimeError):
            with hardware.tf32_matmuls(True):
                raise RuntimeError("a run that fails")
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_metrics_lines_are_strict_json(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"kind": "train", "step": 1, "loss": 2.5, "grad_norm": math.inf})
    log.write({"kind": "train", "step": 2, "loss": math.nan, "grad_norm": 1.0, "extra": [1.0, -math.inf]})
    recs = [_strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["grad_norm"] is None and recs[0]["loss"] == 2.5
    assert recs[1]["loss"] is None and recs[1]["extra"] == [1.0, None]
    log.keep_up_to(1)
    assert [_strict(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]


# What the package calls that old releases lack, with the release that introduced it. A guard, not
# a proof: an API missing from this table is not checked, so add one here when you use it.
NEWER_APIS = {
    "torch.nn.utils.get_total_norm": ((2, 6), "torch"),
    "torch.nn.attention": ((2, 3), "torch"),
    "torch.amp.GradScaler": ((2, 3), "torch"),
    "torch.utils.flop_counter": ((2, 1), "torch"),
    "torch.compile": ((2, 0), "torch"),
    "scaled_dot_product_attention": ((2, 0), "torch"),
    "v2.ToImage": ((0, 16), "torchvision"),
    "torchvision.transforms import v2": ((0, 16), "torchvision"),
}


def _floor(spec_list: list[str], name: str) -> tuple[int, int]:
    for spec in spec_list:
        m = re.fullmatch(rf"{name}\s*>=\s*(\d+)\.(\d+)(\.\d+)?", spec.strip())
        if m:
            return int(m.group(1)), int(m.group(2))
    raise AssertionError(f"no '{name}>=' floor in {spec_list}")


def test_declared_torch_floor_covers_the_apis_the_package_uses():
    deps = re.findall(r'"(torch(?:vision)?\s*>=[^"]*)"', (REPO / "pyproject.toml").read_text())
    floors = {"torch": _floor(deps, "torch"), "torchvision": _floor(deps, "torchvision")}
    source = "\n".join(p.read_text() for p in (REPO / "cait_edu").rglob("*.py"))
    used = {api: need for api, need in NEWER_APIS.items() if api in source}
    assert "torch.nn.utils.get_total_norm" in used  # the table is about this package
    for api, (version, package) in used.items():
        assert floors[package] >= version, f"{api} needs {package} >= {version}, pyproject says >= {floors[package]}"
    # torchvision releases pair with torch releases: 0.(x+15) goes with 2.x
    assert floors["torchvision"][1] - 15 == floors["torch"][1]
