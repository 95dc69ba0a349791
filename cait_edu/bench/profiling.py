"""Where the time of one training step goes: ``torch.profiler`` with the activity of the device,
and each operator or kernel sorted into matrix products ("gemm"), the optimizer, or the rest.

On the CPU the work is done by the aten operators themselves, so their self CPU time is counted,
by operator name. On a GPU the CPU only launches kernels: the time that counts is the GPU kernels'
own time (``ProfilerActivity.CUDA``), and the kernels are named by the library that wrote them
(cuBLAS ``*gemm*``, CUTLASS, the attention kernels ``fmha_*`` / ``flash_*``, the fused AdamW
``multi_tensor_apply_kernel<...FusedAdamMathFunctor...>``), so they are sorted by name patterns.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn as nn

from .workload import make_step, sync

# CPU: aten operators that are matrix products (attention and convolution included) / the optimizer
CPU_GEMM_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
    "aten::convolution_backward", "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
})
CPU_OPTIMIZER_OPS = frozenset({"aten::_fused_adamw_", "Optimizer.step#AdamW.step"})
# CUDA: lower-case pieces of kernel names (cuBLAS/cuDNN GEMMs and implicit-GEMM convolutions,
# CUTLASS, the memory-efficient / flash / cuDNN attention kernels, Inductor's GEMM templates)
CUDA_GEMM_PATTERNS = ("gemm", "gemv", "xmma", "cutlass", "splitkreduce", "fmha", "flash_fwd", "flash_bwd",
                      "sdpa", "triton_tem_")
CUDA_OPTIMIZER_PATTERNS = ("fusedadam", "multi_tensor_apply")


def op_kind(name: str, device_type: str) -> str:
    """"gemm", "optimizer" or "other" for an operator (CPU) or kernel (CUDA) name."""
    if device_type == "cuda":
        low = name.lower()
        if any(p in low for p in CUDA_GEMM_PATTERNS):
            return "gemm"
        return "optimizer" if any(p in low for p in CUDA_OPTIMIZER_PATTERNS) else "other"
    return "gemm" if name in CPU_GEMM_OPS else "optimizer" if name in CPU_OPTIMIZER_OPS else "other"


def _is_gpu_kernel(event: Any) -> bool:
    from torch.autograd import DeviceType

    return event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)


def profile_step(step: Callable[[], None], device: torch.device, top: int = 15) -> dict[str, Any]:
    """Profile one call of ``step`` on ``device``: the top operators (CPU) or kernels (CUDA) by
    self time, and the shares of that time spent in GEMMs / the optimizer / the rest."""
    import torch.profiler as tp

    on_gpu = device.type == "cuda"
    activities = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if on_gpu else [])
    with tp.profile(activities=activities) as prof:
        step()
        sync(device)
    if on_gpu:
        basis, unit = "self CUDA kernel time", "self_cuda_ms"
        rows = [(e.key, e.self_device_time_total, e.count) for e in prof.key_averages()
                if _is_gpu_kernel(e) and e.self_device_time_total > 0]
    else:
        basis, unit = "self CPU time", "self_cpu_ms"
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(t for _, t, _ in rows) or 1.0
    rows.sort(key=lambda r: r[1], reverse=True)
    shares = {"gemm": 0.0, "optimizer": 0.0, "other": 0.0}
    for name, t, _ in rows:
        shares[op_kind(name, device.type)] += t / total
    return {
        "activities": [a.name.lower() for a in activities],
        "time_basis": basis,
        "total_" + unit: round(total / 1e3, 1),
        "share": {k: round(v, 4) for k, v in shares.items()},
        "top_ops": [
            {"op": name, unit: round(t / 1e3, 2), "share": round(t / total, 4), "calls": n,
             "kind": op_kind(name, device.type)}
            for name, t, n in rows[:top]
        ],
    }


def profile_compiled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                     device: torch.device) -> dict[str, Any]:
    """Profile a compiled training step. On the CPU, Inductor's per-kernel profiling is switched on
    so that its fused C++ kernels (``cpp_fused_*``) show up by name (this recompiles the model once);
    on a GPU its Triton kernels are GPU kernels and show up by name anyway."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    names = (inductor_config.patch({"cpp.enable_kernel_profile": True}) if device.type == "cpu"
             else contextlib.nullcontext())
    with names:
        step = make_step("train", torch.compile(model), x, y, opt)
        step()
        step()
        out = profile_step(step, device)
    torch._dynamo.reset()
    return out
