"""Putting the ImageNet validation images into class folders.

The training archive of ImageNet-1k (ILSVRC 2012) unpacks into one folder per class, named by its
WordNet id (``train/n01440764/*.JPEG``), which is what ``ImageFolder`` and :func:`load_imagenet`
read. The validation archive does not: it is 50,000 files in one folder,
``ILSVRC2012_val_00000001.JPEG`` ... ``ILSVRC2012_val_00050000.JPEG``, and their classes are in a
separate labels file. :func:`prepare_imagenet_val` moves each file into ``val/<wnid>/``.

Label files it reads (:func:`read_val_labels`):

* the devkit's ``data/ILSVRC2012_validation_ground_truth.txt``: line k holds the class of image k
  as an ILSVRC2012_ID (1 to 1000), which the devkit's ``data/meta.mat`` maps to WordNet ids (pass
  it as ``meta_file``; reading it needs SciPy);
* one WordNet id per line, line k for image k (what the devkit labels become once mapped);
* ``<file name> <wnid>`` per line (a space or a comma between them);
* Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first word of the
  prediction string is the class).

Files are matched by name without extension. Nothing is moved until every image has a label and
every label an image; running it again on a prepared folder moves nothing.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

__all__ = ["VAL_NAME", "read_val_labels", "read_devkit_meta", "prepare_imagenet_val"]

VAL_NAME = "ILSVRC2012_val_{:08d}"
"""Stem of validation image k (1-based) in the ILSVRC 2012 archive."""

_WNID = re.compile(r"n\d{8}")


def read_devkit_meta(meta_file: str | os.PathLike) -> dict[int, str]:
    """``{ILSVRC2012_ID: wnid}`` for the 1000 classes (the leaf synsets) of the devkit's ``meta.mat``."""
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - SciPy comes with scikit-image
        raise ImportError("reading the devkit's meta.mat needs SciPy (pip install scipy)") from e
    synsets = loadmat(os.fspath(meta_file), squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}


def read_val_labels(labels_file: str | os.PathLike, meta_file: str | os.PathLike | None = None) -> dict[str, str]:
    """``{image stem: wnid}`` from a labels file in one of the formats listed in the module docstring.

    Raises ``ValueError`` for a line it cannot read, a class that is not a WordNet id, an image
    listed twice, or devkit IDs without ``meta_file``."""
    path = Path(labels_file)
    lines = [line.strip() for line in path.read_text().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path}: no labels")
    labels: dict[str, str] = {}
    ids: dict[int, str] | None = None

    def add(stem: str, wnid: str, where: str) -> None:
        if not _WNID.fullmatch(wnid):
            raise ValueError(f"{path}, {where}: {wnid!r} is not a WordNet id (n followed by 8 digits)")
        if stem in labels:
            raise ValueError(f"{path}, {where}: {stem} is labelled twice")
        labels[stem] = wnid

    csv = lines[0].replace(" ", "").lower().startswith("imageid,")
    for k, line in enumerate(lines[1:] if csv else lines, start=1):
        where = f"line {k + 1 if csv else k}"
        if csv:
            image, _, prediction = line.partition(",")
            if not prediction.split():
                raise ValueError(f"{path}, {where}: no class in {line!r}")
            add(Path(image).stem, prediction.split()[0], where)
            continue
        words = line.replace(",", " ").split()
        if len(words) == 2:
            add(Path(words[0]).stem, words[1], where)
        elif len(words) == 1 and words[0].isdigit():
            if meta_file is None:
                raise ValueError(f"{path} holds ILSVRC2012_IDs (line {k}: {words[0]}): pass meta_file, the devkit's "
                                 "data/meta.mat, which maps them to WordNet ids")
            ids = read_devkit_meta(meta_file) if ids is None else ids
            if int(words[0]) not in ids:
                raise ValueError(f"{path}, {where}: class id {words[0]} is not one of the {len(ids)} classes "
                                 f"of {meta_file}")
            add(VAL_NAME.format(k), ids[int(words[0])], where)
        elif len(words) == 1:
            add(VAL_NAME.format(k), words[0], where)
        else:
            raise ValueError(f"{path}, {where}: cannot read {line!r} (expected a wnid, a class id, or "
                             "'<file> <wnid>')")
    return labels


def prepare_imagenet_val(val_dir: str | os.PathLike, labels_file: str | os.PathLike, *,
                         meta_file: str | os.PathLike | None = None, dry_run: bool = False) -> dict:
    """Move every image of ``val_dir`` into ``val_dir/<wnid>/`` as ``labels_file`` says.

    Checks everything first and raises ``ValueError`` before moving any file when an image has no
    label, a labelled image is missing, or a file would overwrite another. Images already in
    their class folder are left alone (so a second run moves nothing). ``dry_run`` checks only.
    Moves are renames within the folder: no copy, no extra disk space.

    Returns ``{"moved": n, "already_in_place": m, "classes": k, "images": n + m}`` (with ``dry_run``,
    ``moved`` counts the files that would move).
    """
    root = Path(val_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}")
    labels = read_val_labels(labels_file, meta_file)
    loose = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    placed = {p.stem: d.name for d in root.iterdir() if d.is_dir() for p in d.iterdir() if p.is_file()}
    unlabelled = [p.name for p in loose if p.stem not in labels]
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} image(s) in {root} have no label in {labels_file}, e.g. "
                         f"{', '.join(unlabelled[:3])}")
    misplaced = [f"{s} in {d}/ (labelled {labels[s]})" for s, d in placed.items() if s in labels and labels[s] != d]
    if misplaced:
        raise ValueError(f"{len(misplaced)} image(s) are in the wrong class folder, e.g. {misplaced[0]}")
    present = {p.stem for p in loose} | set(placed)
    missing = sorted(set(labels) - present)
    if missing:
        raise ValueError(f"{len(missing)} labelled image(s) are not in {root}, e.g. {', '.join(missing[:3])}")
    stems = Counter(p.stem for p in loose)
    twice = [s for s, n in stems.items() if n > 1 or s in placed]
    if twice:
        raise ValueError(f"{len(twice)} image(s) appear twice in {root} (e.g. {twice[0]})")
    if not dry_run:
        for p in loose:
            target = root / labels[p.stem]
            target.mkdir(exist_ok=True)
            os.replace(p, target / p.name)
    classes = set(labels[s] for s in present if s in labels)
    return {"moved": len(loose), "already_in_place": len(placed), "classes": len(classes),
            "images": len(loose) + len(placed)}
