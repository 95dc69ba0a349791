"""The training engine, one job per module (read them in this order):

=================  ===================================================================
``config``         :class:`TrainConfig` (every field documented), presets + overrides -> config
``validate``       every value checked before any work; the rules for resuming a run
``hardware``       device, precision (AMP), torchrun process group, TF32 flags
``seeds``          all randomness derived from (seed, step, rank): why resume is exact
``optim``          learning-rate curve, AdamW parameter groups, soft-target loss
``ema``            exponential moving average of the weights
``checkpoints``    atomic checkpoint files and the start-or-resume decision
``metrics``        ``metrics.jsonl`` (strict JSON), the progress-bar switch
``datasets``       the train/val datasets a config asks for
``finetune``       starting from trained weights: position embeddings resized, head kept or reset
``distill``        DeiT's hard-label distillation on the class token, and the teacher
``evaluate``       loss / top-1 / top-5 on a validation set, sharded over ranks
``loop``           :class:`Trainer`: the loop itself
``run``            :func:`train`: a config in, a finished (or resumed) run out
``cli``            ``python -m cait_edu.train``
=================  ===================================================================

:mod:`cait_edu.train` re-exports the public names, so ``from cait_edu.train import train,
make_config`` is all a notebook needs.
"""
from .checkpoints import CHECKPOINT_FORMAT, atomic_torch_save, load_checkpoint
from .cli import main, presets_table
from .config import ConfigError, DivergenceError, TrainConfig, make_config, parse_set
from .distill import hard_distillation_loss
from .ema import ModelEma
from .evaluate import evaluate
from .hardware import choose_amp, resolve_amp
from .loop import Trainer, build_datasets
from .run import train
from .optim import lr_at_step, param_groups, soft_target_cross_entropy
from .validate import validate_config

__all__ = [
    "CHECKPOINT_FORMAT", "ConfigError", "DivergenceError", "ModelEma", "TrainConfig", "Trainer",
    "atomic_torch_save", "build_datasets", "choose_amp", "evaluate", "hard_distillation_loss", "load_checkpoint",
    "lr_at_step", "main", "make_config", "param_groups", "parse_set", "presets_table", "resolve_amp",
    "soft_target_cross_entropy", "train", "validate_config",
]
