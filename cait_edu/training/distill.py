"""Hard-label distillation (DeiT) on CaiT's class token.

DeiT (Touvron et al. 2021, "Training data-efficient image transformers & distillation through
attention", Sec. 5) trains a student against a teacher's decisions: with ``Z_s`` the student's
logits, ``Z_t`` the teacher's and ``y_t = argmax_c Z_t(c)`` the teacher's hard label, the
"hard-label distillation" objective is

    L = 1/2 CE(softmax(Z_s), y) + 1/2 CE(softmax(Z_s), y_t).

DeiT's own models compute the second term on a separate *distillation token* with its own head;
the teacher is a RegNetY-16GF convnet.

**What the authors' CaiT code does.** CaiT's README says the released CaiT models were trained with
distillation (DeiT's machinery, a RegNetY-16GF teacher, hard distillation), but ``cait_models.py``
has no distillation token or head, the released checkpoints hold no such tensors, and DeiT's loss
code expects a (class, distillation) pair of outputs from a model when distillation is on. How
CaiT was distilled was asked and is unanswered (facebookresearch/deit issue #119).

**What this book does.** Both terms act on the one head CaiT has, the class token's:

    loss = 1/2 soft_CE(Z_s, targets) + 1/2 CE(Z_s, argmax Z_t)

Since cross-entropy is linear in its target, this is one cross-entropy against the average of the
two targets: half the (mixed, smoothed) true label, half the teacher's one-hot decision. At test
time there is nothing to average (DeiT averages its two heads): the class-token head is the model.
The details follow DeiT's training code:

* **Mixup/CutMix**: the teacher sees the *mixed* batch, exactly the images the student sees, and
  its argmax on a mixed image is a single class (DeiT's criterion receives the batch after mixing).
* **Label smoothing** applies to the true-label term only (it is in the targets that
  :class:`~cait_edu.data.MixupCutmix` produces); the teacher's label is not smoothed.
* **The teacher** is frozen: eval mode (BatchNorm uses its running statistics, no dropout), no
  gradients (``no_grad``, ``requires_grad=False``, not in the optimizer), run inside the same
  autocast as the student, on each rank's own shard of the batch. It is not saved in checkpoints:
  a resumed run loads it again from its source, and a fingerprint of its weights stored in
  ``last.pt`` refuses a teacher that changed in between.
* It sees the student's input as it is: the same resolution (448 px for the M48 fine-tune; a
  torchvision RegNetY trained at 224 or 384 px then runs at another resolution than it was
  trained at) and the same normalisation (the ImageNet mean/std for the "deit" recipe, which is
  what torchvision's ImageNet weights expect).

The teacher (``TrainConfig.teacher``) is a torchvision classification model name with
``teacher_weights`` (DeiT's teacher was the RegNetY-16GF its authors trained, not torchvision's;
torchvision's ``regnet_y_16gf`` weights are other trainings of the same architecture), or a file: a
``last.pt``/``best.pt`` of :mod:`cait_edu.train` (rebuilt from its saved config), or a module of
any architecture saved by ``torch.export.save`` (exported in eval mode with a dynamic batch
dimension; the recommended form) or as TorchScript (``torch.jit``, which PyTorch deprecates).
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import create_model
from .config import ConfigError, TrainConfig, config_from_dict, model_overrides
from .optim import soft_target_cross_entropy
from .seeds import TEACHER_STREAM, derived_seed

__all__ = ["hard_distillation_loss", "HardDistillation", "plain_loss", "make_criterion", "check_teacher_config",
           "prepare_teacher", "TeacherSource", "fingerprint"]


def hard_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           targets: torch.Tensor) -> torch.Tensor:
    """``1/2 soft_CE(student, targets) + 1/2 CE(student, argmax teacher)`` (float32).

    student_logits, teacher_logits (B, C); targets (B, C) soft targets (mixed, smoothed; rows sum to 1)."""
    teacher_labels = teacher_logits.argmax(dim=-1)  # (B,) the teacher's decision on each (mixed) image
    return 0.5 * soft_target_cross_entropy(student_logits, targets) + 0.5 * F.cross_entropy(
        student_logits.float(), teacher_labels)


def plain_loss(images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss without distillation: soft-target cross-entropy (``images`` unused)."""
    return soft_target_cross_entropy(logits, targets)


class HardDistillation:
    """The training criterion ``(images, student_logits, targets) -> loss`` with a frozen teacher."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher

    def __call__(self, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(images)  # (B, C), in the caller's autocast
        return hard_distillation_loss(logits, teacher_logits, targets)


def make_criterion(teacher: nn.Module | None) -> Callable[..., torch.Tensor]:
    """:class:`HardDistillation` with a teacher, else :func:`plain_loss`."""
    return plain_loss if teacher is None else HardDistillation(teacher)


def fingerprint(module: nn.Module) -> str:
    """A short hash of every tensor of ``module``'s state (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _torchvision_classifiers() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def check_teacher_config(cfg: TrainConfig) -> None:
    """The teacher fields' rules, checked before any work (no file is read; a path must exist)."""
    if cfg.distillation == "none":
        if cfg.teacher is not None or cfg.teacher_weights is not None:
            raise ConfigError("a teacher is set but distillation='none'; set distillation=hard to use it")
        return
    if cfg.teacher is None:
        raise ConfigError("distillation=hard needs a teacher: a torchvision model name (e.g. teacher=regnet_y_16gf "
                          "teacher_weights=IMAGENET1K_V2) or the path of a teacher file (a last.pt/best.pt of "
                          "cait_edu.train, or a module saved with torch.export.save or TorchScript)")
    if cfg.teacher in _torchvision_classifiers():
        if cfg.teacher_weights is not None:
            from torchvision.models import get_model_weights

            members = list(get_model_weights(cfg.teacher).__members__)
            if cfg.teacher_weights not in members:
                raise ConfigError(f"teacher_weights {cfg.teacher_weights!r} is not a weights set of torchvision's "
                                  f"{cfg.teacher}; choose one of {', '.join(members)} (or none for random weights)")
        return
    if not Path(cfg.teacher).is_file():
        raise ConfigError(f"teacher {cfg.teacher!r} is neither a torchvision classification model name (e.g. "
                          "regnet_y_16gf; see torchvision.models.list_models()) nor an existing file")
    if cfg.teacher_weights is not None:
        raise ConfigError("teacher_weights names torchvision weights; a teacher file holds its own weights")


class _Exported(nn.Module):
    """A ``torch.export`` program as a teacher. Its graph was fixed in the mode it was exported in
    (eval, for a teacher), so ``train()``/``eval()`` have nothing to switch and leave it as it is."""

    def __init__(self, program_module: nn.Module):
        super().__init__()
        self.program = program_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> "_Exported":
        return self


@dataclass
class TeacherSource:
    """A teacher ready to build: ``make(num_classes)`` returns it on the CPU; ``about`` describes it."""

    about: str
    make: Callable[[int], nn.Module] = field(repr=False)

    def build(self, num_classes: int, img_size: int, device: torch.device, seed: int) -> tuple[nn.Module, str]:
        """The frozen teacher on ``device`` and its :func:`fingerprint`. One dry forward pass checks
        that it maps a ``(1, 3, img_size, img_size)`` batch to ``(1, num_classes)`` logits."""
        with torch.random.fork_rng(devices=[]):  # a random teacher's init leaves the run's RNG alone
            torch.manual_seed(derived_seed(seed, TEACHER_STREAM))
            teacher = self.make(num_classes)
        prints = fingerprint(teacher)
        teacher = teacher.to(device).eval()
        for p in teacher.parameters():  # (a TorchScript module has no requires_grad_())
            p.requires_grad_(False)
        with torch.no_grad():
            out = teacher(torch.zeros(1, 3, img_size, img_size, device=device))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"the teacher ({self.about}) returns {got} for one image, expected logits of shape "
                              f"(1, {num_classes}): hard distillation needs a teacher that predicts the dataset's "
                              f"{num_classes} classes (in the same order)")
        return teacher, prints

    def check_resume(self, saved: str | None, now: str) -> None:
        """Refuse to continue a run whose teacher's weights changed (``saved``: from its last.pt)."""
        if saved is not None and saved != now:
            raise ConfigError(f"cannot resume: the teacher ({self.about}) has other weights than the one this run "
                              f"was trained with (fingerprint {now}, checkpoint {saved})")


def _fetch_torchvision_weights(name: str, weights: Any) -> None:
    """Make sure the weights file is in torch.hub's cache (downloading it once), or say how to get it."""
    import os

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:
        raise ConfigError(f"cannot get the teacher's weights {name} {weights.name} ({type(e).__name__}: {e}). They "
                          f"are downloaded from {weights.url} (needs internet). Offline: download that file on a "
                          f"machine with network and put it at {cached} (torch.hub's cache; $TORCH_HOME moves "
                          "it), then run again") from None


def _read_teacher_file(path: Path) -> TeacherSource:
    try:
        names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
    except (OSError, zipfile.BadZipFile):
        names = []
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):  # torch.export archive
        try:
            module = _Exported(torch.export.load(str(path)).module())
        except Exception as e:
            raise ConfigError(f"teacher: cannot load the torch.export file {path} ({type(e).__name__}: {e})") from None
        return TeacherSource(f"torch.export program {path}", lambda n: module)
    if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names):  # TorchScript archive
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise ConfigError(f"teacher: cannot load the TorchScript file {path} ({type(e).__name__}: {e})") from None
        return TeacherSource(f"TorchScript module {path}", lambda n: module)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"teacher: cannot read {path} ({type(e).__name__}: {e})") from None
    if not (isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith("cait_edu.train/")
            and isinstance(ckpt.get("config"), dict)):
        raise ConfigError(f"teacher: {path} is neither a checkpoint of cait_edu.train nor an exported module. A bare "
                          "state dict does not say which architecture it belongs to: save the teacher with "
                          "torch.export.save(torch.export.export(model.eval(), (images,), dynamic_shapes=({0: "
                          "torch.export.Dim('batch')},)), path), or train it with cait_edu.train")
    saved = config_from_dict(ckpt["config"])
    state = ckpt["model"]

    def make(num_classes: int) -> nn.Module:  # its own number of classes; build() checks it against the data
        model = create_model(saved.model, **model_overrides(saved, int(state["head.weight"].shape[0])))
        model.load_state_dict(state, strict=True)
        return model

    return TeacherSource(f"{saved.model} at {saved.img_size} px from {path} (step {ckpt.get('step')})", make)


def prepare_teacher(cfg: TrainConfig) -> TeacherSource:
    """Everything about the teacher that reads files or the network, before any data is read:
    a torchvision teacher's weights are found in (or downloaded to) torch.hub's cache, a teacher file
    is read. :meth:`TeacherSource.build` then makes the module once the classes are known."""
    if cfg.teacher in _torchvision_classifiers():
        from torchvision.models import get_model, get_model_weights

        name = cfg.teacher
        if cfg.teacher_weights is None:
            return TeacherSource(f"torchvision {name}, random weights",
                                 lambda n: get_model(name, weights=None, num_classes=n))
        weights = get_model_weights(name)[cfg.teacher_weights]
        _fetch_torchvision_weights(name, weights)
        top1 = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
        about = f"torchvision {name} {weights.name}" + (f" (ImageNet-1k top-1 {top1}% per torchvision)" if top1 else "")
        return TeacherSource(about, lambda n: get_model(name, weights=weights))
    return _read_teacher_file(Path(cfg.teacher))
