"""Running the training engine at ImageNet scale: command lines, the SLURM script, the bill.

* :func:`train_command` -- the command line that runs a preset on one GPU (``python -m
  cait_edu.train``), on the GPUs of one node (``torchrun --standalone``) or on several nodes
  (``torchrun`` with a c10d rendezvous). Chapter 7 prints the GPU versions and runs the same
  function's output on a CPU, so the commands shown are the commands tested.
* :data:`SBATCH_SCRIPT`, :func:`sbatch_script` -- ``train_imagenet.sbatch``, a SLURM batch script
  shipped inside the package (``python -m cait_edu.cluster`` prints its path): multi-node
  ``torchrun``, requeued on preemption or at the time limit, resumed from ``last.pt``.
* :func:`training_cost` -- the multiply-accumulates a preset's full run costs (3x the forward pass
  for forward + backward, plus a distillation teacher's forward pass), and the GPU-hours that
  follow from an *assumed* sustained throughput.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["SBATCH_SCRIPT", "sbatch_script", "train_command", "format_command", "set_args",
           "IMAGENET_TRAIN_IMAGES", "TrainingCost", "training_cost", "teacher_macs"]

SBATCH_SCRIPT = Path(__file__).resolve().with_name("train_imagenet.sbatch")
"""The SLURM batch script, installed with the package (package data)."""

IMAGENET_TRAIN_IMAGES = 1_281_167
"""Images in the ImageNet-1k (ILSVRC 2012) training set."""


def sbatch_script() -> str:
    """The text of :data:`SBATCH_SCRIPT`."""
    return SBATCH_SCRIPT.read_text()


def _set_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v)
    return str(v)


def set_args(values: Mapping[str, Any] | None) -> list[str]:
    """``{"epochs": 3, "betas": (0.9, 0.99)}`` -> ``["--set", "epochs=3", "--set", "betas=0.9,0.99"]``."""
    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set", f"{key}={_set_value(value)}"]
    return out


def train_command(preset: str | None, *, data: str | os.PathLike | None = None, out: str | os.PathLike,
                  nnodes: int = 1, nproc_per_node: int = 1, rdzv_endpoint: str | None = None,
                  rdzv_id: str = "cait", finetune: str | os.PathLike | None = None, resume: bool = False,
                  sets: Mapping[str, Any] | None = None, python: str = "python",
                  torchrun: Sequence[str] = ("torchrun",)) -> list[str]:
    """The argument list that trains ``preset`` into ``out``.

    * one process (``nnodes == nproc_per_node == 1``, no rendezvous): ``python -m cait_edu.train ...``;
    * one node: ``torchrun --standalone --nproc-per-node=N -m cait_edu.train ...``;
    * several nodes (or ``rdzv_endpoint`` given): ``torchrun --nnodes=M --nproc-per-node=N
      --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --rdzv-id=ID -m cait_edu.train ...``, the same
      command on every node; HOST is one of the nodes (it hosts the rendezvous store).

    ``sets`` become ``--set KEY=VALUE`` (after the preset, so they override it); ``torchrun`` is the
    launcher (e.g. ``[sys.executable, "-m", "torch.distributed.run"]`` where ``torchrun`` is not on
    the PATH). Under torchrun ``batch_size`` stays the GLOBAL batch: each process takes its share.
    """
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {nnodes} and {nproc_per_node}")
    if nnodes > 1 and rdzv_endpoint is None:
        raise ValueError("several nodes need rdzv_endpoint='HOST:PORT' (HOST: one of the nodes)")
    args: list[str] = []
    if preset is not None:
        args += ["--preset", preset]
    if data is not None:
        args += ["--data", os.fspath(data)]
    args += ["--out", os.fspath(out)]
    if finetune is not None:
        args += ["--finetune", os.fspath(finetune)]
    if resume:
        args.append("--resume")
    args += set_args(sets)
    if rdzv_endpoint is not None:
        launch = [*torchrun, f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}", "--rdzv-backend=c10d",
                  f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}", "-m", "cait_edu.train"]
    elif nproc_per_node > 1:
        launch = [*torchrun, "--standalone", f"--nproc-per-node={nproc_per_node}", "-m", "cait_edu.train"]
    else:
        launch = [python, "-m", "cait_edu.train"]
    return launch + args


def format_command(argv: Sequence[str], width: int = 100) -> str:
    """A shell-quoted command, broken before each option (``\\`` continuations) to fit ``width``."""
    words = [shlex.quote(a) for a in argv]
    groups: list[str] = []
    for w in words:  # keep an option with its value: "--set epochs=3", "--data /x"
        if groups and not w.startswith("-") and groups[-1].startswith("-") and " " not in groups[-1]:
            groups[-1] += " " + w
        else:
            groups.append(w)
    lines, line = [], ""
    for g in groups:
        if line and len(line) + 1 + len(g) > width - 2:
            lines.append(line)
            line = "    " + g
        else:
            line = f"{line} {g}" if line else g
    lines.append(line)
    return " \\\n".join(lines)


# ------------------------------------------------------------------------------------------ cost
@dataclass(frozen=True)
class TrainingCost:
    """What a full run of a preset computes (MACs: multiply-accumulates, the paper's "FLOPs")."""

    preset: str
    model: str
    img_size: int
    epochs: int
    batch_size: int
    steps: int
    images: int
    """Images the run pushes through the model: ``steps x batch_size`` (repeats included)."""
    forward_macs: int
    """One image, one forward pass of the model (:func:`cait_edu.count_macs`)."""
    teacher_macs: int
    """One image, one forward pass of the distillation teacher (0 without distillation)."""

    @property
    def train_macs_per_image(self) -> int:
        """Forward + backward ~ 3 forward passes (the backward computes two products per forward one),
        plus the teacher's forward pass."""
        return 3 * self.forward_macs + self.teacher_macs

    @property
    def total_flops(self) -> float:
        """FLOPs of the whole run (1 MAC = 2 FLOPs)."""
        return 2.0 * self.train_macs_per_image * self.images

    def gpu_hours(self, sustained_tflops: float) -> float:
        """GPU-hours if every GPU sustains ``sustained_tflops`` (1e12 FLOP/s) over the whole run --
        an assumption, never a measurement: data loading, communication and evaluation included."""
        if sustained_tflops <= 0:
            raise ValueError(f"sustained_tflops must be > 0, got {sustained_tflops}")
        return self.total_flops / (sustained_tflops * 1e12) / 3600.0


def teacher_macs(name: str, img_size: int) -> int:
    """MACs of one forward pass of torchvision classifier ``name`` on one ``img_size`` image,
    counted on the ``meta`` device (no memory, no weights)."""
    import torch
    from torchvision.models import get_model

    from ..measure import count_macs

    try:
        with torch.device("meta"):
            model = get_model(name, weights=None)
    except NotImplementedError:  # builders that compute their layout with real tensors (RegNet)
        model = _regnet_on_meta(name)
    return count_macs(model, img_size)


def _regnet_on_meta(name: str):
    """torchvision's RegNet builders compute block widths with tensor ops, which fail on ``meta``:
    compute them on the CPU, then build the layers on ``meta``."""
    import torch
    import torchvision.models.regnet as R

    real = R.BlockParams.from_init_params

    def on_cpu(*args, **kwargs):
        with torch.device("cpu"):
            return real(*args, **kwargs)

    R.BlockParams.from_init_params = on_cpu
    try:
        with torch.device("meta"):
            return getattr(R, name)(weights=None)
    finally:
        R.BlockParams.from_init_params = real


def training_cost(preset: str, *, world_size: int = 16, train_images: int = IMAGENET_TRAIN_IMAGES,
                  **overrides: Any) -> TrainingCost:
    """The computation of a full run of ``preset`` (``overrides`` change its fields, e.g. ``epochs``).

    Steps follow the engine's sampler: each of ``world_size`` processes takes ``train_images //
    world_size`` images per epoch (repeated augmentation keeps the epoch that long) in batches of
    ``batch_size / world_size``. With a ``distillation="hard"`` config whose teacher is a torchvision
    name, the teacher's forward pass at the student's resolution is added to every image.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..measure import count_macs
    from ..registry import create_model
    from ..training.config import make_config

    cfg = make_config(preset, **overrides)
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by world_size {world_size}")
    img_size = cfg.img_size
    with torch.device("meta"):
        model = create_model(cfg.model, **cfg.model_kwargs, **({} if img_size is None else {"img_size": img_size}))
    img_size = img_size or model.patch_embed.img_size
    with sdpa_kernel([SDPBackend.MATH]):
        fwd = count_macs(model, img_size)
    teacher = 0
    if cfg.distillation == "hard" and cfg.teacher is not None and not Path(cfg.teacher).is_file():
        teacher = teacher_macs(cfg.teacher, img_size)
    per_rank = cfg.batch_size // world_size
    steps_per_epoch = (train_images // world_size) // per_rank
    steps = cfg.epochs * steps_per_epoch
    return TrainingCost(preset=preset, model=cfg.model, img_size=img_size, epochs=cfg.epochs,
                        batch_size=cfg.batch_size, steps=steps, images=steps * cfg.batch_size,
                        forward_macs=int(fwd), teacher_macs=int(teacher))

