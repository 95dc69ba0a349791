"""From a config to datasets: the train and val splits a run reads, with the config's transforms
and fixed subsets (the loaders themselves live in :mod:`cait_edu.data`)."""
from __future__ import annotations

from pathlib import Path

from .. import data as D
from .config import ConfigError, TrainConfig

__all__ = ["build_datasets"]


def build_datasets(cfg: TrainConfig):
    """(train, val, classes, source) for a validated config; raises the loaders' FileNotFoundError."""
    t_train = D.build_transform(cfg.recipe, True, cfg.img_size, randaugment_magnitude=cfg.randaugment)
    t_val = D.build_transform(cfg.recipe, False, cfg.img_size, crop_ratio=cfg.crop_ratio)
    if cfg.dataset == "cifar10":
        train = D.load_cifar10("train", cfg.data_dir, download=cfg.download, transform=t_train)
        val = D.load_cifar10("test", cfg.data_dir, download=cfg.download, transform=t_val)
        source = train.source.rsplit(" [", 1)[0]
    else:
        load = D.load_imagenet if cfg.dataset == "imagenet" else D.load_imagefolder
        train, val = load("train", cfg.data_dir, transform=t_train), load("val", cfg.data_dir, transform=t_val)
        what = "ImageNet folders" if cfg.dataset == "imagenet" else "image folders"
        source = f"{what} at {Path(train.root).parent}"
        if val.classes != train.classes:
            raise ConfigError(f"train and val have different class folders: {train.classes[:5]}... vs "
                              f"{val.classes[:5]}...; labels would not match")
    classes = list(train.classes)
    try:
        train = D.fixed_subset(train, cfg.train_subset, "train_subset")
        val = D.fixed_subset(val, cfg.val_subset, "val_subset")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return train, val, classes, source
