"""The machine and its reference rates: hardware and software versions, the measured fp32 GEMM
rate, and the FLOPs of one training step (to turn a step time into an achieved FLOP rate)."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .workload import sync


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model and SIMD flags, cores, memory, versions, threads; the GPU's name on CUDA."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    try:
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        gcc = None
    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    info = {
        "cpu_model": cpu,
        "cpu_flags_simd": [f for f in flags if f.startswith(("avx", "fma", "amx"))],
        "logical_cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm_version,
        "gcc": gcc,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "dtype": "float32",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def gemm_rate(size: int, repeats: int, device: torch.device) -> list[float]:
    """GFLOP/s of ``size x size`` fp32 matmuls (2 n^3 FLOPs each), one value per repeat."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device)
    b = torch.randn(size, size, generator=g).to(device)
    c = torch.empty(size, size, device=device)
    torch.mm(a, b, out=c)  # warm-up
    iters = max(1, int(2e9 // (2 * size**3)))  # about 2 GFLOP per timing
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=c)
        sync(device)
        out.append(2 * size**3 * iters / (time.perf_counter() - t0) / 1e9)
    return out


def train_step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of forward + cross-entropy + backward (``FlopCounterMode``; fails under no_grad,
    so gradients are on). Matrix products, attention and convolutions, as the counter counts them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.train()
    # fused attention kernels are invisible to FlopCounterMode: count the math path instead
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    model.train(was)
    return int(counter.get_total_flops())
