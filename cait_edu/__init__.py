"""cait_edu: CaiT ("Going deeper with Image Transformers", Touvron et al., ICCV 2021) from scratch.

Modules, in the order the book builds them: :mod:`~cait_edu.layers` -> :mod:`~cait_edu.blocks`
-> :mod:`~cait_edu.models` -> :mod:`~cait_edu.registry`; :mod:`~cait_edu.checkpoint` loads the
authors' weights; :mod:`~cait_edu.measure` counts parameters and MACs; :mod:`~cait_edu.analysis` measures what a
residual scheme does to a network before training; :mod:`~cait_edu.viz` draws.
"""
from .checkpoint import CheckpointMismatchError, load_official, pretrained, resize_pos_embed
from .measure import count_macs, count_params
from .models import CaiT, ViT
from .registry import create_model, get_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "CaiT",
    "ViT",
    "CheckpointMismatchError",
    "count_macs",
    "count_params",
    "create_model",
    "get_spec",
    "list_models",
    "load_official",
    "pretrained",
    "resize_pos_embed",
]
