"""Named training recipes for :mod:`cait_edu.train`.

A preset is a name, a docstring saying where its numbers come from, and the
:class:`~cait_edu.train.TrainConfig` fields it sets (everything else keeps the
dataclass default). ``python -m cait_edu.train --list-presets`` prints them;
``--set KEY=VALUE`` changes any field of a preset.

ImageNet presets (one per released CaiT model, plus the DeiT baselines)
-----------------------------------------------------------------------
CaiT (Touvron et al., "Going deeper with Image Transformers", ICCV 2021) trains
with the DeiT code and recipe, changing only the stochastic-depth rate per model:

* AdamW, betas (0.9, 0.999), eps 1e-8, weight decay 0.05, no decay on biases,
  norm weights, LayerScale gammas (every parameter with ``ndim <= 1``) and on
  ``pos_embed``/``cls_token`` (``model.no_weight_decay()``);
* global batch 1024, lr = 5e-4 x batch / 512 = 1e-3;
* 5 warmup epochs linear from 1e-6, then cosine down to 1e-5. The trainer steps
  the schedule **per iteration** (timm's scheduler in DeiT steps it per epoch;
  per iteration is smoother and makes the lr a pure function of the step);
* 400 epochs (DeiT baselines: 300), label smoothing 0.1, Mixup 0.8 / CutMix 1.0
  switching with probability 0.5, repeated augmentation x3, RandAugment m9,
  random erasing 0.25 (the "deit" recipe of :func:`cait_edu.data.build_transform`);
* EMA of the weights with decay 0.99996 existed in the DeiT code but was not used
  for the reported numbers: here it is off (``--set ema=true`` turns it on);
* mixed precision where there is a GPU (``amp="auto"``), no gradient clipping;
* evaluation at crop ratio 1.0 (CaiT); the DeiT baselines use DeiT's 0.875;
* no distillation, although the released CaiT models were trained with DeiT's hard
  distillation from a RegNetY-16GF teacher: ``--set distillation=hard --set
  teacher=regnet_y_16gf --set teacher_weights=IMAGENET1K_V2`` adds it (torchvision's
  weights for that architecture; see :mod:`cait_edu.training.distill`).

The released ``*_384``/``*_448`` CaiT models were obtained by fine-tuning the
224 model at the higher resolution. The presets named after them (``cait_s24_384``
...) train from scratch at that resolution with the 224 recipe (a simplification);
``cait_m48_448_finetune`` is the fine-tuning recipe the authors gave for M48 at
448 (issue #108 of their repository), and needs ``finetune`` (``--finetune
CHECKPOINT``). The other high-resolution fine-tunes have no published recipe, so
they have no preset.

CIFAR-10 presets (ours, for a CPU or a small GPU)
--------------------------------------------------
See the docstrings in :data:`PRESETS` (``cifar10_deit_tiny``,
``cifar10_cait_tiny``, ``cifar10_tiny``, and the two 2-hour CPU records
``cifar10_cpu_record`` and ``cifar10_cpu_record_conv``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .registry import MODEL_SPECS

__all__ = ["Preset", "PRESETS", "list_presets", "get_preset", "recipe_table"]


@dataclass(frozen=True)
class Preset:
    """A named recipe: ``fields`` are the TrainConfig values it sets; ``doc`` says why."""

    name: str
    doc: str
    fields: dict[str, Any] = field(default_factory=dict)
    requires: dict[str, str] = field(default_factory=dict)
    """Fields the preset cannot run without (``{field: why}``), checked by ``validate_config``."""


def _imagenet_recipe(model: str, *, epochs: int, crop_ratio: float, drop_path: float) -> dict[str, Any]:
    batch = 1024
    return dict(
        model=model,
        dataset="imagenet",
        recipe="deit",
        img_size=MODEL_SPECS[model].kwargs["img_size"],
        crop_ratio=crop_ratio,
        epochs=epochs,
        batch_size=batch,
        lr=5e-4 * batch / 512,
        min_lr=1e-5,
        warmup_epochs=5,
        warmup_lr=1e-6,
        weight_decay=0.05,
        betas=(0.9, 0.999),
        eps=1e-8,
        label_smoothing=0.1,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        mixup_switch_prob=0.5,
        mixup_prob=1.0,
        repeats=3,
        drop_path_rate=drop_path,
        ema=False,
        ema_decay=0.99996,
        amp="auto",
        grad_clip=None,
        num_workers=8,
        eval_every=1,
        log_every=50,
    )


def _m48_448_finetune() -> Preset:
    batch = 256
    doc = (
        "Fine-tune a CaiT-M48 trained at 224 px (give it with --finetune CHECKPOINT) at 448 px, with hard "
        "distillation. The authors' numbers (Hugo Touvron in facebookresearch/deit issue #108: 'fine-tuning with "
        "distillation'): batch 256, lr 5e-6, 60 epochs, weight decay 0.05, 5 warmup epochs, input 448, drop-path "
        "0.3, repeated augmentation, label smoothing 0.1, RandAugment, random erasing, Mixup 0.8, CutMix 1.0 (the "
        "ImageNet recipe's augmentation); CaiT's eval crop ratio 1.0; position embeddings resized bicubically "
        "(14x14 -> 28x28). Assumed here: (1) lr 5e-6 is DeiT's --lr argument, which DeiT's main.py scales by "
        "batch / 512, so the absolute lr is 2.5e-6 (as 5e-4 becomes 1e-3 in the 400-epoch presets); (2) the "
        "cosine schedule from warmup lr 1e-6 (DeiT's default) down to 1% of the peak (2.5e-8): the answer also "
        "lists decay-epochs 10 and decay-rate 0.5, which DeiT's code uses only with --sched step, not mentioned; "
        "DeiT's default min-lr 1e-5 would be above the peak; (3) the teacher: torchvision's regnet_y_16gf with "
        "weights IMAGENET1K_V2 (a RegNetY-16GF like DeiT's teacher, not the same training; it is fed the 448 px "
        "student input), and the distillation acts on the class token (CaiT has no distillation token; see "
        "cait_edu.training.distill); (4) the head is kept (ImageNet to ImageNet). EMA off, mixed precision "
        "where there is a GPU (the authors recommend fp32 for evaluating M48).")
    fields = dict(_imagenet_recipe("cait_m48_448", epochs=60, crop_ratio=1.0, drop_path=0.3),
                  batch_size=batch, lr=5e-6 * batch / 512, min_lr=5e-6 * batch / 512 / 100, warmup_epochs=5,
                  warmup_lr=1e-6, finetune_head="keep", distillation="hard", teacher="regnet_y_16gf",
                  teacher_weights="IMAGENET1K_V2")
    return Preset("cait_m48_448_finetune", doc, fields,
                  requires={"finetune": "the CaiT-M48 checkpoint trained at 224 px to start from (--finetune PATH)"})


def _build() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    for name, spec in MODEL_SPECS.items():
        if not name.startswith("cait_") or spec.checkpoint is None:
            continue  # only the released CaiT variants
        dpr = spec.kwargs["drop_path_rate"]
        res = spec.kwargs["img_size"]
        doc = (f"CaiT ImageNet-1k recipe for {name} (400 epochs, batch 1024, lr 1e-3, drop-path {dpr}, "
               f"eval crop 1.0, at {res}px"
               + (", trained from scratch at this resolution (the release fine-tuned the 224 model)"
                  if res != 224 else "") + ").")
        presets[name] = Preset(name, doc, _imagenet_recipe(name, epochs=400, crop_ratio=1.0, drop_path=dpr))
    presets["cait_m48_448_finetune"] = _m48_448_finetune()
    for size, dpr in (("tiny", 0.1), ("small", 0.1), ("base", 0.1)):
        name = f"deit_{size}_patch16_224"
        doc = (f"DeiT-{size} baseline with DeiT's recipe (300 epochs, batch 1024, lr 1e-3, drop-path {dpr}, "
               "eval crop 0.875), for comparing with CaiT.")
        presets[name] = Preset(name, doc, _imagenet_recipe(name, epochs=300, crop_ratio=0.875, drop_path=dpr))

    cifar = dict(
        dataset="cifar10",
        recipe="cifar",
        img_size=32,
        batch_size=128,
        lr=1e-3,
        min_lr=1e-5,
        warmup_lr=1e-6,
        weight_decay=0.05,
        label_smoothing=0.1,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        mixup_switch_prob=0.5,
        mixup_prob=0.5,
        repeats=1,
        drop_path_rate=0.1,
        num_workers=2,
        eval_every=5,
        log_every=50,
    )
    cifar_doc = (
        "{model} on all of CIFAR-10 (50k train / 10k test, 32x32, patch 4), 100 epochs. Recipe: AdamW "
        "lr 1e-3 at batch 128 (higher than DeiT's 5e-4 x 128/512 = 1.25e-4: a ~1M-parameter model with small "
        "batches trains stably and much faster at 1e-3), weight decay 0.05, 5 warmup epochs then cosine "
        "to 1e-5, label smoothing 0.1, drop-path 0.1. Augmentation is the 'cifar' recipe (random crop with "
        "4px reflect padding + flip) and Mixup/CutMix on only half of the batches (mixup_prob 0.5): the full "
        "DeiT mixing and RandAugment regularise for hundreds of epochs on ImageNet and make a small model "
        "underfit in 100 CIFAR epochs. No repeated augmentation (it helps large-batch ImageNet training, "
        "and costs distinct images per epoch on a small set). On a 2-core CPU an epoch takes minutes; use a GPU "
        "for the full run."
    )
    presets["cifar10_deit_tiny"] = Preset(
        "cifar10_deit_tiny", cifar_doc.format(model="deit_cifar_tiny (ViT baseline, width 128, 6 layers)"),
        dict(cifar, model="deit_cifar_tiny", epochs=100, warmup_epochs=5))
    presets["cifar10_cait_tiny"] = Preset(
        "cifar10_cait_tiny", cifar_doc.format(model="cait_cifar_tiny (CaiT, width 128, 6 SA + 2 CA layers)"),
        dict(cifar, model="cait_cifar_tiny", epochs=100, warmup_epochs=5))
    presets["cifar10_tiny"] = Preset(
        "cifar10_tiny",
        "Smoke run: cait_cifar_nano (width 64, 4 SA + 2 CA layers, 0.3M parameters) on a fixed random "
        "subset of 1024 CIFAR-10 training images for 5 epochs (80 steps of 64), evaluated on 256 test "
        "images after every epoch. Well under a minute on a 2-core CPU, a third of it decoding the CIFAR-10 "
        "file once. It reaches ~25-28% top-1 (chance: 10%): the point is to show that the loop works and "
        "learns, not to be accurate. Regularisation is off (no Mixup/CutMix, label smoothing or drop-path): "
        "in 80 steps it only slows learning. lr 2e-3 at batch 64 (a small model and a short run tolerate a "
        "high lr), 1 warmup epoch, cosine to 1e-5. One CPU thread (threads=1): the matrices of this model "
        "are too small to gain much from a second core, a busy machine makes two spinning threads several "
        "times slower (measured 105 s vs 42 s on a loaded 2-core machine), and the result no longer "
        "depends on the number of cores.",
        dict(cifar, model="cait_cifar_nano", train_subset=1024, val_subset=256, epochs=5, batch_size=64,
             lr=2e-3, warmup_epochs=1, label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0,
             mixup_prob=0.0, drop_path_rate=0.0, num_workers=0, eval_every=1, log_every=8, threads=1),
    )
    record = dict(
        cifar, model="cait_cifar_tiny", lr=2e-3, warmup_epochs=1, label_smoothing=0.1, mixup_alpha=0.0,
        cutmix_alpha=0.0, mixup_prob=0.0, drop_path_rate=0.0, num_workers=0, threads=2, eval_every=2,
        eval_hflip=True, log_every=50, save_every_steps=390)
    record_doc = (
        "CIFAR-10 time-to-accuracy record on a 2-core CPU: the highest test top-1 in 2 hours of wall time, "
        "data loading and evaluation included. CaiT with LayerScale, talking heads and 2 class-attention "
        "layers, width 128, 6 SA layers, 4 heads, patch 4, {stem}. The schedule is a fixed step count "
        "sized to end inside 2 hours: {epochs} epochs of 390 steps of 128 ({steps} steps), so the cosine "
        "lr has reached its minimum when time is up. It was sized from {sizing} on the book's 2-core Intel "
        "Xeon, plus an evaluation every 2 epochs on the full 10k test set with flip averaging (eval_hflip). A slower "
        "machine needs fewer epochs (--set epochs=N). Recipe for a short run: AdamW lr 2e-3 at batch 128, "
        "1 warmup epoch, cosine to 1e-5, weight decay 0.05, label smoothing 0.1, crop + flip only (no "
        "Mixup/CutMix, RandAugment or drop-path: each slowed the book's short runs, data/results/"
        "training_recipe.json), 2 threads in one process, no loader workers.")
    presets["cifar10_cpu_record"] = Preset(
        "cifar10_cpu_record",
        record_doc.format(
            stem="linear patch embedding (as in the paper)", epochs=31, steps=31 * 390,
            sizing="the speed this model sustained over a whole epoch, 242 img/s (the speed script's 40 "
                   "steps measured 265.5 img/s, data/results/cpu_record_speed.json, but a first record run "
                   "sized on that figure trained at 242 img/s and would have overrun the 2 hours)"),
        dict(record, epochs=31, model_kwargs=dict(dim=128, depth=6, num_heads=4, stem="linear")))
    presets["cifar10_cpu_record_conv"] = Preset(
        "cifar10_cpu_record_conv",
        record_doc.format(stem="a small convolutional tokenizer (stem='conv', Xiao et al. 2021) in place of the "
                               "linear patch embedding", epochs=30, steps=30 * 390,
                          sizing="the measured training speed of this model (231.9 img/s, "
                                 "data/results/cpu_record_speed.json)"),
        dict(record, epochs=30, model_kwargs=dict(dim=128, depth=6, num_heads=4, stem="conv")))
    return presets


PRESETS: dict[str, Preset] = _build()


def list_presets() -> list[str]:
    """All preset names."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The :class:`Preset` called ``name``; ``KeyError`` lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


# How recipe_table names the settings, in the order it shows them. "start" (from random weights or a
# checkpoint, and what happens to the head) and "teacher" (distillation, teacher, its weights) each
# fold several config fields into one cell, so that the table stays narrow enough to read.
_RECIPE_LABELS = {
    "img_size": "res", "start": "starts from", "epochs": "epochs", "batch_size": "batch", "lr": "lr",
    "warmup_epochs": "warmup epochs", "warmup_lr": "warmup from lr", "min_lr": "final lr",
    "drop_path_rate": "drop-path", "crop_ratio": "eval crop", "teacher": "distillation", "dataset": "data",
    "recipe": "augmentation", "weight_decay": "weight decay", "betas": "AdamW betas", "eps": "AdamW eps",
    "label_smoothing": "label smoothing", "mixup_alpha": "Mixup alpha", "cutmix_alpha": "CutMix alpha",
    "mixup_switch_prob": "probability of CutMix instead of Mixup", "mixup_prob": "probability a batch is mixed",
    "repeats": "repeated augmentation", "ema": "EMA of the weights", "grad_clip": "gradient clipping",
    "amp": "precision", "num_workers": "loader workers per process",
}


def _recipe_value(key: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if key == "recipe":
        return {"deit": "DeiT's: random-resized crop (bicubic), flip, RandAugment m9, random erasing 0.25",
                "cifar": "crop + flip"}.get(value, str(value))
    if key == "amp":
        return {"auto": "mixed (bf16, or fp16 + loss scaling) on GPUs"}.get(value, str(value))
    if key == "repeats":
        return f"x{value}"
    if isinstance(value, tuple):
        return ", ".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _recipe_cells(name: str) -> dict[str, str]:
    """One preset's settings as table cells (``_RECIPE_LABELS`` keys)."""
    from .training.config import make_config

    cfg = make_config(name)
    cells = {k: _recipe_value(k, getattr(cfg, k)) for k in _RECIPE_LABELS if k not in ("start", "teacher")}
    if "finetune" in PRESETS[name].requires:
        head = {"keep": "head kept", "reset": "new head", "auto": "head kept if the classes match"}[cfg.finetune_head]
        cells["start"] = f"a checkpoint at lower resolution (--finetune), {head}"
    else:
        cells["start"] = "random weights"
    cells["teacher"] = ("none" if cfg.distillation == "none" else
                        f"{cfg.distillation}, teacher {cfg.teacher}" + (f" ({cfg.teacher_weights})" if cfg.teacher_weights
                                                                         else ""))
    return cells


def recipe_table(names: list[str] | None = None) -> str:
    """The recipes of ``names`` (default: every CaiT ImageNet preset) as Markdown, from :data:`PRESETS`.

    First a table with one row per preset and a column for each setting that differs between
    them; then a table of the settings they all share. Nothing is typed twice: a change to a
    preset changes the table. A preset whose model is not the one it is named after says so
    (``cait_m48_448_finetune (cait_m48_448)``)."""
    if names is None:
        names = [n for n, p in PRESETS.items() if p.fields.get("dataset") == "imagenet" and n.startswith("cait_")]
    rows = [(name if PRESETS[name].fields["model"] == name else f"{name} ({PRESETS[name].fields['model']})",
             _recipe_cells(name)) for name in names]
    differ = [k for k in _RECIPE_LABELS if len({r[k] for _, r in rows}) > 1]
    shared = [k for k in _RECIPE_LABELS if k not in differ]
    lines = ["| preset | " + " | ".join(_RECIPE_LABELS[k] for k in differ) + " |",
             "|---|" + "---|" * len(differ)]
    lines += [f"| {name} | " + " | ".join(r[k] for k in differ) + " |" for name, r in rows]
    lines += ["", "| shared by every row | |", "|---|---|"]
    lines += [f"| {_RECIPE_LABELS[k]} | {rows[0][1][k]} |" for k in shared]
    return "\n".join(lines)
