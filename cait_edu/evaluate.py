"""``python -m cait_edu.evaluate``: top-1 / top-5 of trained weights on ImageNet-val, as the authors measure it.

    python -m cait_edu.evaluate --model cait_s24_224 --data /datasets/imagenet
    torchrun --standalone --nproc-per-node=8 -m cait_edu.evaluate --model cait_m48_448 --data /datasets/imagenet
    python -m cait_edu.evaluate --weights runs/s24/best.pt --data /datasets/imagenet

Weights: by default the authors' released file for ``--model`` (downloaded once, see
:func:`cait_edu.checkpoint.pretrained`); ``--weights`` takes a path or URL of a release-format file,
or a ``last.pt``/``best.pt`` of :mod:`cait_edu.train` (its model, resolution and crop ratio are read
from the checkpoint). Images: ``<data>/val/<class>/*`` (or ``<data>/imagenet/val``), resized to
``img_size / crop_ratio`` with bicubic interpolation and centre-cropped -- CaiT's crop ratio is 1.0,
DeiT's 0.875 (the preset of the model decides, as in training). Precision: float32 by default,
as the authors recommend for evaluating M48 (``--amp bf16`` is faster on a GPU). Under torchrun each
process evaluates its share of the images and the counts are summed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

__all__ = ["main", "load_for_eval"]


def load_for_eval(model: str | None, weights: str | None, img_size: int | None = None):
    """``(model, name, img_size, crop_ratio)``: the network in eval mode with its weights, and the
    evaluation settings that go with it."""
    from .checkpoint import load_official, pretrained, read_state_dict
    from .presets import PRESETS
    from .registry import create_model, get_spec
    from .training.config import config_from_dict, model_overrides

    ckpt = None
    if weights is not None and "://" not in weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"no weights file at {weights}")
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith("cait_edu.train/"):
        cfg = config_from_dict(ckpt["config"])  # a checkpoint of the trainer: build what it trained
        if model is not None and model != cfg.model:
            raise ValueError(f"{weights} holds a {cfg.model}, not a {model}")
        if img_size is not None and img_size != cfg.img_size:
            raise ValueError(f"{weights} was trained at {cfg.img_size} px; evaluate it at that size")
        state = ckpt["model"]
        net = create_model(cfg.model, **model_overrides(cfg, int(state["head.weight"].shape[0])))
        net.load_state_dict(state, strict=True)
        return net.eval(), cfg.model, cfg.img_size, cfg.crop_ratio
    if model is None:
        raise ValueError("--model is needed (unless --weights is a checkpoint of cait_edu.train)")
    spec = get_spec(model)
    size = spec.kwargs.get("img_size", 224)
    if img_size is not None and img_size != size:
        raise ValueError(f"{model} is built for {size} px (its position embeddings have that grid); "
                         "to evaluate at another size, fine-tune it there first (--finetune)")
    crop = PRESETS[model].fields["crop_ratio"] if model in PRESETS else 1.0
    if weights is None:
        net = pretrained(model)
    else:
        state = read_state_dict(ckpt if ckpt is not None else weights)
        net = create_model(model, num_classes=int(state["head.weight"].shape[0]))
        load_official(net, state)
    return net.eval(), model, size, crop


def main(argv: list[str] | None = None) -> int:
    from .data import build_transform, fixed_subset, load_imagefolder, load_imagenet
    from .training.evaluate import evaluate
    from .training.hardware import choose_amp, device_type, setup_distributed

    p = argparse.ArgumentParser(prog="python -m cait_edu.evaluate",
                                description="Top-1/top-5 of a model's weights on ImageNet-val (or any class-folder "
                                            "validation set).")
    p.add_argument("--model", help="registry name, e.g. cait_s24_224 (default weights: the authors' release)")
    p.add_argument("--weights", help="path or URL of a release-format file, or a last.pt/best.pt of cait_edu.train")
    p.add_argument("--data", help="folder holding val/<class>/* (default: $CAIT_EDU_DATA or the repo's data/)")
    p.add_argument("--img-size", type=int, help="input resolution (default: the model's)")
    p.add_argument("--crop-ratio", type=float, help="resize to img_size / crop_ratio, then centre-crop "
                                                    "(default: the model's preset, CaiT 1.0, DeiT 0.875)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch and process (default 128)")
    p.add_argument("--workers", type=int, default=8, help="data-loading processes per process (default 8)")
    p.add_argument("--amp", default="off", choices=("off", "auto", "bf16", "fp16"),
                   help="precision (default off: float32, the authors' advice for M48)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--subset", type=int, help="evaluate a fixed random subset of this many images")
    p.add_argument("--json", help="also write the result to this JSON file")
    args = p.parse_args(argv)

    dd = setup_distributed(device_type(args.device))
    try:
        try:
            net, name, size, crop = load_for_eval(args.model, args.weights, args.img_size)
            crop = args.crop_ratio or crop
            transform = build_transform("deit", False, size, crop_ratio=crop)
            try:
                val = load_imagenet("val", args.data, transform=transform)
            except FileNotFoundError:
                val = load_imagefolder("val", args.data, transform=transform)
            classes = int(net.head.weight.shape[0])
            if len(val.classes) != classes:
                raise ValueError(f"the model predicts {classes} classes but {val.root} has {len(val.classes)} "
                                 "class folders")
            val = fixed_subset(val, args.subset, "subset")
        except (ValueError, FileNotFoundError) as e:
            if dd.main:
                print(f"error: {e}", file=sys.stderr)
            return 2
        device = torch.device(f"cuda:{dd.local_rank}" if device_type(args.device) == "cuda" else "cpu")
        amp = choose_amp(args.amp, device)
        res = evaluate(net.to(device), val, batch_size=args.batch_size, device=device, amp=amp,
                       num_workers=args.workers, dd=dd)
        res.update(model=name, weights=args.weights or "released", img_size=size, crop_ratio=crop, amp=amp,
                   processes=dd.world)
        if dd.main:
            print(f"{name} at {size} px, crop ratio {crop:g}, {amp if amp != 'off' else 'float32'}: top-1 "
                  f"{res['val_top1']:.2f}%, top-5 {res['val_top5']:.2f}%, loss {res['val_loss']:.4f} "
                  f"on {res['val_samples']} images")
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=2))
        return 0
    finally:
        dd.close()


if __name__ == "__main__":
    sys.exit(main())
