"""The configuration of a training run: :class:`TrainConfig`, and turning names and strings into one.

A run is fully described by one :class:`TrainConfig` (a dataclass: every field has a default and a
docstring, which ``python -m cait_edu.train --help`` prints). A config comes from a named preset
(:mod:`cait_edu.presets`) plus overrides (:func:`make_config`; ``--set KEY=VALUE`` on the command
line, parsed by :func:`parse_set`). :mod:`cait_edu.training.validate` then checks every value.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..presets import PRESETS, get_preset

__all__ = ["TrainConfig", "ConfigError", "DivergenceError", "RESUME_MAY_CHANGE", "CHOICES", "make_config",
           "parse_set", "config_from_dict", "replace_checked", "field_docs", "type_name", "model_overrides"]


class ConfigError(ValueError):
    """A configuration value cannot work; raised before any training work starts."""


class DivergenceError(RuntimeError):
    """The loss or the gradient became non-finite; the run stopped before updating the weights."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``batch_size`` is the GLOBAL batch."""

    # --- model
    model: str = "cait_cifar_nano"
    """Registry name of the model (:func:`cait_edu.registry.list_models`)."""
    drop_path_rate: Optional[float] = None
    """Stochastic-depth rate; None = the model's training value from the registry (0 if it has none)."""
    model_kwargs: dict = field(default_factory=dict)
    """Other constructor overrides, e.g. ``{"init_scale": 1e-5}`` or ``{"drop_path_schedule": "linear"}``
    (``--set model_kwargs='{...}'`` as JSON). ``num_classes`` always follows the dataset."""
    # --- data
    dataset: str = "cifar10"
    """"cifar10" (:func:`~cait_edu.data.load_cifar10`, val = the test split), "imagenet"
    (:func:`~cait_edu.data.load_imagenet`) or "imagefolder" (``<data_dir>/train/<class>/*`` and
    ``<data_dir>/val/<class>/*``, any image files PIL reads)."""
    data_dir: Optional[str] = None
    """Where the data is; None = :func:`~cait_edu.data.resolve_data_dir` ($CAIT_EDU_DATA, repo data/)."""
    download: bool = False
    """CIFAR-10 only: download with torchvision if not found (needs internet)."""
    train_subset: Optional[int] = None
    """Train on this many images only (a fixed random subset, the same for every seed); None = all."""
    val_subset: Optional[int] = None
    """Evaluate on this many images only (fixed random subset); None = all."""
    img_size: Optional[int] = None
    """Input resolution; None = the model's. Must be a multiple of the patch size."""
    recipe: str = "cifar"
    """Per-image augmentation, "deit" (ImageNet recipe) or "cifar" (:func:`~cait_edu.data.build_transform`)."""
    randaugment: Optional[int] = None
    """RandAugment magnitude; None = the recipe's default (9 for "deit", off for "cifar")."""
    crop_ratio: float = 1.0
    """Eval crop ratio of the "deit" recipe (CaiT 1.0, DeiT 0.875)."""
    # --- schedule and optimiser
    epochs: int = 10
    """Number of epochs; the cosine schedule spans ``epochs * steps_per_epoch`` steps."""
    batch_size: int = 128
    """GLOBAL batch size (per rank: ``batch_size / world_size``, which must divide evenly)."""
    lr: float = 1e-3
    """Peak (absolute) learning rate, reached at the end of warmup. Presets use 5e-4 x batch / 512."""
    min_lr: float = 1e-5
    """Learning rate at the end of the cosine."""
    warmup_epochs: float = 5.0
    """Linear warmup length in epochs (may be fractional), from ``warmup_lr`` to ``lr``."""
    warmup_lr: float = 1e-6
    """Learning rate at step 0."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay, applied to weight matrices only (see :func:`param_groups`)."""
    exempt_from_decay: bool = True
    """Exempt 1-D parameters (biases, norms, LayerScale gammas) and ``pos_embed``/``cls_token`` from
    weight decay, as the DeiT/CaiT recipe does; false decays every parameter (for the ablation)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (``--set betas=0.9,0.999``)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: Optional[float] = None
    """Clip the global gradient norm to this value; None = no clipping (CaiT/DeiT)."""
    # --- regularisation
    label_smoothing: float = 0.1
    """Label smoothing of the (mixed) soft targets."""
    mixup_alpha: float = 0.8
    """Mixup Beta(alpha, alpha); 0 = no Mixup."""
    cutmix_alpha: float = 1.0
    """CutMix Beta(alpha, alpha); 0 = no CutMix."""
    mixup_switch_prob: float = 0.5
    """Probability of CutMix rather than Mixup for a batch when both are on."""
    mixup_prob: float = 1.0
    """Probability that a batch is mixed at all."""
    repeats: int = 1
    """Repeated augmentation: each image appears this many times per epoch (CaiT/DeiT: 3)."""
    ema: bool = False
    """Keep an exponential moving average of the weights (saved in checkpoints)."""
    ema_decay: float = 0.99996
    """EMA decay per step: ``ema = decay * ema + (1 - decay) * w``."""
    eval_ema: bool = False
    """Also evaluate the EMA weights (``val_top1_ema`` ...); the model itself is always evaluated."""
    eval_hflip: bool = False
    """Test-time augmentation: every evaluation averages the logits of each image and of its mirror
    image (twice the evaluation cost; the training is unchanged)."""
    # --- starting point and teacher
    finetune: Optional[str] = None
    """Initialise the model from this checkpoint before step 0 (``--finetune PATH``): a ``last.pt`` or
    ``best.pt`` of this trainer (its ``model`` weights) or the authors' release format (``{"model":
    {...}}``, keys prefixed ``module.``). Position embeddings are resized bicubically to ``img_size``;
    every other tensor must match the model by name and shape (see ``finetune_head``). The optimizer
    and schedule start afresh. A resumed run continues from its own last.pt and does not re-read this
    file. None = random initialisation."""
    finetune_head: str = "auto"
    """The classification head of a ``finetune`` checkpoint: "keep" it (its class count must be the
    dataset's), "reset" it (the model's own random initialisation, as for a new task), or "auto":
    keep when the class counts agree, reset when they differ."""
    distillation: str = "none"
    """"none", or "hard": DeiT's hard-label distillation on the class token, loss = 1/2 CE(student,
    targets) + 1/2 CE(student, argmax of the teacher's logits); see :mod:`cait_edu.training.distill`."""
    teacher: Optional[str] = None
    """The teacher for ``distillation="hard"``: a torchvision model name (``regnet_y_16gf``, DeiT's
    teacher architecture) or a path to a teacher file (a ``last.pt``/``best.pt`` of this trainer,
    or a module saved with ``torch.export.save``, or TorchScript). It sees the student's (mixed) input batch and must predict the
    dataset's classes."""
    teacher_weights: Optional[str] = None
    """For a torchvision ``teacher``: the weights enum member, e.g. ``IMAGENET1K_V2`` or
    ``IMAGENET1K_SWAG_LINEAR_V1`` (downloaded once into torch.hub's cache; offline, put the file
    there). None = random weights, useful only for tests and demonstrations."""
    # --- hardware
    device: str = "auto"
    """"auto" (CUDA if available, else CPU), "cpu" or "cuda"."""
    amp: str = "auto"
    """Mixed precision: "auto" (off on CPU; bf16 on GPUs with native bf16, compute capability >= 8.0;
    fp16 with a GradScaler on older ones such as the T4 and V100), "bf16", "fp16" (GPU only) or "off"."""
    compile: bool = False
    """``torch.compile`` the model (checkpoints still hold the plain module's weights)."""
    num_workers: int = 2
    """DataLoader worker processes per rank (results do not depend on it)."""
    threads: Optional[int] = None
    """CPU intra-op threads (``torch.set_num_threads``) during the run, restored afterwards; None =
    PyTorch's default (one per core; torchrun sets 1 per rank). Different counts may change the last
    bits of the results."""
    # --- bookkeeping
    seed: int = 0
    """Seeds the weights' initialisation and every random choice of the run."""
    log_every: int = 50
    """Write a train line to metrics.jsonl every this many steps (mean loss since the last line)."""
    eval_every: int = 1
    """Evaluate every this many epochs (and always after the last one)."""
    out: Optional[str] = None
    """Output directory; None = ``runs/<preset or model>``."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps in total (the schedule still spans all epochs)."""
    save_every_steps: Optional[int] = None
    """Also write last.pt every this many steps (mid-epoch); None = at epoch ends only."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0 (also off with $CAIT_EDU_NO_PROGRESS=1, which the tests set)."""
    preset: Optional[str] = None
    """Name of the preset this config came from (informational)."""


# Fields that may change when resuming a run: they do not change the trajectory of the weights
# (``epochs`` re-stretches the cosine schedule from the current step, like extending a DeiT run).
RESUME_MAY_CHANGE = frozenset({
    "epochs", "out", "data_dir", "download", "num_workers", "log_every", "eval_every", "eval_ema",
    "eval_hflip", "max_steps", "save_every_steps", "progress", "preset", "threads",
})

CHOICES = {
    "dataset": ("cifar10", "imagenet", "imagefolder"),
    "recipe": ("deit", "cifar"),
    "amp": ("auto", "bf16", "fp16", "off"),
    "device": ("auto", "cpu", "cuda"),
    "finetune_head": ("auto", "keep", "reset"),
    "distillation": ("none", "hard"),
}


def field_types() -> dict[str, Any]:
    """``{field name: type}`` of :class:`TrainConfig`, with the annotations resolved."""
    return typing.get_type_hints(TrainConfig)


def _parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse the string of ``--set key=text`` into the field's type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType) and type(None) in args:
        if text.strip().lower() in ("none", "null"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_value(key, text, inner)
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp in (int, float, str):
            return tp(text)
        if origin is tuple:
            parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
            if len(parts) != len(args):
                raise ValueError
            return tuple(_parse_value(key, p, a) for p, a in zip(parts, args))
        if tp is dict or origin is dict:
            val = json.loads(text)
            if not isinstance(val, dict):
                raise ValueError
            return val
    except ValueError:  # json.JSONDecodeError is a ValueError
        pass
    name = getattr(tp, "__name__", str(tp))
    hint = {"bool": " (true/false)", "tuple": " (comma separated, e.g. 0.9,0.999)",
            "dict": " (a JSON object, e.g. {\"init_scale\": 1e-5})"}.get(name, "")
    raise ConfigError(f"--set {key}={text}: expected {name}{hint}")


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "ema=true"]`` -> ``{"lr": 0.001, "ema": True}``, typed by the TrainConfig fields.
    Unknown keys raise :class:`ConfigError` listing the valid ones."""
    hints = field_types()
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        _check_keys({key: None})
        out[key] = _parse_value(key, text, hints[key])
    return out


def _check_keys(overrides: dict) -> None:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(names)}")


def _tuple_betas(values: dict) -> dict:
    if isinstance(values.get("betas"), list):  # JSON has no tuples
        values["betas"] = tuple(values["betas"])
    return values


def make_config(preset: str | None = None, /, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a preset name (or the defaults) with ``overrides`` applied.

    Unknown preset names or field names raise :class:`ConfigError` listing the valid ones.
    The values themselves are checked by :func:`~cait_edu.training.validate.validate_config`
    (called by :func:`~cait_edu.training.run.train`).
    """
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        values.update(get_preset(preset).fields)
        values["preset"] = preset
    _check_keys(overrides)
    values.update(overrides)
    return TrainConfig(**_tuple_betas(values))


def config_from_dict(d: dict) -> TrainConfig:
    """Rebuild a config saved as JSON (``config.json``, a checkpoint's ``config``); keys that are not
    fields (``_runtime``, or fields of an older version) are ignored."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**_tuple_betas({k: v for k, v in d.items() if k in names}))


def replace_checked(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """``dataclasses.replace`` that names unknown keys in a :class:`ConfigError`."""
    _check_keys(overrides)
    return dataclasses.replace(cfg, **overrides)


def type_name(tp: Any) -> str:
    """How ``--help`` spells a field's type: ``int``, ``float or none``, ``float,float``, ``JSON object``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join("none" if a is type(None) else type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return ",".join(type_name(a) for a in args)
    return "JSON object" if tp is dict else getattr(tp, "__name__", str(tp))


def field_docs() -> dict[str, str]:
    """The docstring under each :class:`TrainConfig` field (read from the source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(TrainConfig)))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def model_overrides(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The :func:`~cait_edu.registry.create_model` overrides a (validated) config asks for."""
    from ..registry import get_spec

    overrides = dict(cfg.model_kwargs, drop_path_rate=cfg.drop_path_rate, num_classes=num_classes)
    if cfg.img_size != get_spec(cfg.model).kwargs.get("img_size"):
        overrides["img_size"] = cfg.img_size
    return overrides
