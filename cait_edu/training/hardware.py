"""Where a run executes: the device, the precision, the process group, and the GPU's math flags.

Every decision that depends on the hardware is a small function of what the hardware reports, so
the tests can mock a T4, an A100 or eight GPUs on a machine that has none:

* :func:`device_type` -- ``"cuda"`` or ``"cpu"`` from the config's ``device``;
* :func:`choose_amp` -- the precision ``amp="auto"`` means on a device: off on CPU, bf16 on GPUs
  that compute in bf16 natively (compute capability 8.0 and up: A100, H100, RTX 30xx/40xx), fp16
  with a GradScaler on older ones (T4 -- Colab's free GPU -- and V100). ``torch.cuda.is_bf16_supported()``
  is not used for this: it also answers True where bf16 is only emulated, which is slow;
* :func:`setup_distributed` -- the process group under ``torchrun``: NCCL on GPUs, Gloo on CPUs;
* :func:`tf32_matmuls` -- TF32 matrix products on Ampere+ GPUs for the duration of a run, with the
  previous flags restored afterwards;
* :func:`adamw_options` -- the fused AdamW kernel on GPUs.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from .config import CHOICES, ConfigError

__all__ = ["device_type", "gpu_has_native_bf16", "resolve_amp", "choose_amp", "autocast", "world_from_env",
           "Dist", "setup_distributed", "tf32_matmuls", "adamw_options"]


def device_type(requested: str) -> str:
    """``"cuda"`` for ``device="cuda"``, or ``"auto"`` when a CUDA GPU is visible; else ``"cpu"``."""
    return "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"


def gpu_has_native_bf16(index: int = 0) -> bool:
    """True when GPU ``index`` has bf16 tensor cores (compute capability >= 8.0, Ampere and later)."""
    major, _ = torch.cuda.get_device_capability(index)
    return major >= 8


def resolve_amp(amp: str, device_type: str, bf16_supported: bool) -> str:
    """The precision actually used: "off", "bf16" or "fp16" (fp16 implies a GradScaler).

    "auto" is "off" on CPU (CPU autocast helps little and changes numerics), "bf16" on a GPU with
    native bf16 (no loss scaling needed), else "fp16". An explicit choice is kept as it is.
    """
    if amp not in CHOICES["amp"]:
        raise ConfigError(f"amp must be one of {', '.join(CHOICES['amp'])}; got {amp!r}")
    if amp != "auto":
        return amp
    if device_type != "cuda":
        return "off"
    return "bf16" if bf16_supported else "fp16"


def choose_amp(amp: str, device: torch.device) -> str:
    """:func:`resolve_amp` for a concrete device, asking the GPU for its real capability."""
    native = device.type == "cuda" and gpu_has_native_bf16(device.index or 0)
    return resolve_amp(amp, device.type, native)


def autocast(amp: str, device: torch.device):
    """The autocast context of a resolved precision (a no-op for "off")."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def world_from_env() -> int:
    """The number of processes of this run: the process group's size, else ``$WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Dist:
    """This process's place in the run. ``owned``: we initialised the process group (so we destroy it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def main(self) -> bool:
        """Rank 0 logs, shows progress and writes the files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device_type: str) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...): NCCL between GPUs, Gloo between CPU processes.
    A single process (no ``WORLD_SIZE`` > 1) gets ``Dist()`` and no process group."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)  # before NCCL, so each rank's communicator uses its own GPU
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, True)


@contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """Allow TF32 in CUDA matrix products and convolutions inside the block (Ampere+ GPUs run fp32
    GEMMs ~8x faster in TF32, at 10 bits of mantissa); the previous flags are restored on exit, so
    a notebook that trains and then compares fp32 numbers is not silently changed."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def adamw_options(device: torch.device) -> dict:
    """Extra ``torch.optim.AdamW`` arguments for ``device``: ``fused=True`` on a GPU.

    PyTorch's default AdamW on CUDA is the multi-tensor ("foreach") implementation, a handful of
    kernel launches per step for each parameter group; the fused one updates every parameter of a
    group in one kernel, and with fp16 it also skips the update itself when the GradScaler found
    inf/NaN gradients. The update is the same AdamW (the last bits may differ). On the CPU the
    default is kept, so CPU runs stay bit for bit what they were."""
    return {"fused": True} if device.type == "cuda" else {}
