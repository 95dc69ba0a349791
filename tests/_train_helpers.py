"""Shared helpers for tests/test_train.py and tests/test_train_ddp.py (not a test module)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def write_fake_cifar(folder: Path, n_train: int = 128, n_test: int = 64, seed: int = 0) -> Path:
    """Write ``folder/cifar10-jpeg.npz`` in the offline format, with learnable images: each class is
    a colour gradient in its own direction, plus noise. Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n, dtype=np.int64) % 10
        rng.shuffle(labels)
        blobs = []
        for y in labels:
            ang = 2 * np.pi * y / 10
            base = np.cos(ang) * xx + np.sin(ang) * yy  # (32, 32)
            img = np.stack([base, 1 - base, 0.5 + 0.5 * np.sin(3 * base + y)], axis=-1) * 200
            img = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
            b = io.BytesIO()
            Image.fromarray(img).save(b, format="JPEG", quality=90)
            blobs.append(b.getvalue())
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(x) for x in blobs]).astype(np.int64)
        arrays[f"y_{split}"] = labels
    arrays["classes"] = np.array(["c%d" % i for i in range(10)])
    np.savez(folder / "cifar10-jpeg.npz", **arrays)
    return folder


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 32) -> Path:
    """``root/{train,val}/class_k/*.png``: small PNGs whose mean colour depends on the class."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for k in range(classes):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                colour = np.zeros(3)
                colour[k % 3] = 200
                img = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def env() -> dict:
    """Environment for subprocesses: the repository importable, no progress bar."""
    e = os.environ.copy()
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["CAIT_EDU_NO_PROGRESS"] = "1"
    # One intra-op thread: these models are tiny, and on a busy 2-core machine two spinning OpenMP
    # threads per process make a step ~10x slower. In-process tests set torch.set_num_threads(1) too,
    # so runs compared bit for bit use the same thread count.
    e["OMP_NUM_THREADS"] = "1"
    return e


def set_args(values: dict) -> list[str]:
    """``{"lr": 1e-3, "betas": (0.9, 0.99), "x": None}`` -> ``["--set", "lr=0.001", ...]``."""
    out = []
    for k, v in values.items():
        if v is None:
            s = "none"
        elif isinstance(v, bool):
            s = "true" if v else "false"
        elif isinstance(v, (tuple, list)):
            s = ",".join(str(x) for x in v)
        elif isinstance(v, dict):
            s = json.dumps(v)
        else:
            s = str(v)
        out += ["--set", f"{k}={s}"]
    return out


def run_cli(args: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cait_edu.train", *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def read_metrics(out: Path, strict: bool = True) -> list[dict]:
    """Records of ``out/metrics.jsonl``; ``strict=False`` skips a line being written (or cut by a kill)."""
    recs = []
    path = out / "metrics.jsonl"
    if not path.exists():
        return recs
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            if strict:
                raise
    return recs
