"""RAF-DB (Real-world Affective Faces, basic emotions) reader.

Two layouts are read:

- the official release: ``EmoLabel/list_patition_label.txt`` (the file name's misspelling is RAF-DB's),
  one ``<image name> <label>`` line per image, e.g. ``train_00001.jpg 5`` or ``test_0001.jpg 1``, with the
  aligned faces at ``Image/aligned/train_00001_aligned.jpg`` (``Image/original/train_00001.jpg`` is used
  when there is no ``aligned`` folder). The split comes from the name's ``train_`` / ``test_`` prefix. The
  release may also sit in a ``basic/`` subfolder of ``path``;
- the Kaggle export ``DATASET/{train,test}/{1..7}/*.jpg`` (also ``{train,test}/{1..7}/`` directly under
  ``path``; class-named folders such as ``surprise/`` are accepted as well).

Both number the classes RAF-DB's way, from 1: surprise, fear, disgust, happiness, sadness, anger,
neutral. They are mapped with :data:`utils.data.labels.RAFDB_TO_CANONICAL`, never by folder sort order.
RAF-DB has no validation split; carve one from train with :func:`utils.data.splits.ensure_val_split`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from utils.data.labels import FOLDER_NAMES, NUM_BASIC, RAFDB_TO_CANONICAL

from .base import DatasetError, FaceDataset, Problem, report, scan_class_folders

LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
PREFIX_TO_SPLIT = {"train": "train", "test": "test"}

LAYOUTS = (
    "the RAF-DB release EmoLabel/list_patition_label.txt with Image/aligned/*_aligned.jpg "
    "(also in a basic/ subfolder), "
    "or the Kaggle layout DATASET/{train,test}/{1..7}/*.jpg (also {train,test}/{1..7}/ directly under the path)"
)

# Folder names of the Kaggle layout: RAF-DB's numbers 1-7, or the basic expressions' names.
FOLDER_LABELS: dict[str, int] = {
    **{name: label for name, label in FOLDER_NAMES.items() if label < NUM_BASIC},
    **{str(number): label for number, label in RAFDB_TO_CANONICAL.items()},
}


def read_rafdb(path, strict: bool = False) -> FaceDataset:
    """Read RAF-DB basic from either of its layouts (see the module docstring).

    Args:
        path: the RAF-DB folder (holding ``EmoLabel/`` and ``Image/``, or ``DATASET/``, or ``train/`` and
            ``test/``), or the ``list_patition_label.txt`` file itself.
        strict: raise on the first bad line or folder instead of skipping and reporting it.

    Returns:
        A dataset with 7 classes and the splits train and test; ``path`` is relative to ``path``.

    Raises:
        DatasetError: when nothing readable is at ``path`` (the message lists the accepted layouts), or
            in strict mode when a line names a missing image, has a bad label or is malformed.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: does not exist; expected {LAYOUTS}")
    if path.is_file():
        if path.name != LABEL_FILE.name:
            raise DatasetError(f"{path}: not a RAF-DB label file; expected {LAYOUTS}")
        return _read_label_file(path.parent.parent, path, strict)
    for root in (path, path / "basic"):
        if (root / LABEL_FILE).is_file():
            return _read_label_file(path, root / LABEL_FILE, strict)
    for folder in (path / "DATASET", path):
        if any((folder / split).is_dir() for split in PREFIX_TO_SPLIT):
            return _read_folders(path, folder, strict)
    raise DatasetError(f"{path}: no RAF-DB data found; expected {LAYOUTS}")


def _read_label_file(path: Path, label_file: Path, strict: bool) -> FaceDataset:
    """The official layout: one ``name label`` line per image, images in ``Image/aligned``."""
    base = label_file.parent.parent
    aligned = (base / "Image" / "aligned").is_dir()
    image_dir = base / "Image" / ("aligned" if aligned else "original")
    if not image_dir.is_dir():
        raise DatasetError(f"{label_file}: no image folder {base / 'Image' / 'aligned'}; expected {LAYOUTS}")
    present = {entry.name for entry in os.scandir(image_dir) if entry.is_file()}  # one listing, no stat per line
    rel_dir = image_dir.relative_to(path).as_posix()

    try:
        lines = label_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{label_file}: cannot read the label file ({e})") from e

    rows, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{label_file.name} line {number}"
        fields = line.split()
        if len(fields) != 2:
            problems.append(Problem(where, f"expected '<image name> <label>', got {line.strip()!r}"))
            continue
        name, value = fields
        stem, dot, suffix = name.rpartition(".")
        prefix = stem.split("_", 1)[0].lower()
        if not dot or prefix not in PREFIX_TO_SPLIT:
            problems.append(Problem(where, f"image name {name!r} does not start with train_ or test_"))
            continue
        try:
            label = RAFDB_TO_CANONICAL.get(int(value))
        except ValueError:
            label = None
        if label is None:
            problems.append(Problem(where, f"unknown label {value!r}; expected 1-7"))
            continue
        file = f"{stem}_aligned.{suffix}" if aligned else name
        if file not in present:
            problems.append(Problem(where, f"image {rel_dir}/{file} not found"))
            continue
        rows.append((PREFIX_TO_SPLIT[prefix], label, name, f"{rel_dir}/{file}"))

    report(problems, label_file, strict, what="lines")
    if not rows:
        raise DatasetError(f"{label_file}: no readable lines ({len(problems)} bad lines); expected {LAYOUTS}")
    table = pd.DataFrame(rows, columns=["split", "label", "source", "path"])
    layout = f"EmoLabel/list_patition_label.txt + Image/{image_dir.name}"
    return FaceDataset("rafdb", path, layout, table, NUM_BASIC, problems=problems)


def _read_folders(path: Path, folder: Path, strict: bool) -> FaceDataset:
    """The Kaggle layout ``{train,test}/<1..7>/*.jpg``."""
    rows, problems = [], []
    for split in PREFIX_TO_SPLIT.values():
        if (folder / split).is_dir():
            paths, labels, found = scan_class_folders(folder / split, path, FOLDER_LABELS)
            rows += [(split, label, p, p) for p, label in zip(paths, labels)]
            problems += found
    report(problems, folder, strict, what="folders")
    if not rows:
        raise DatasetError(f"{folder}: no images in {{train,test}}/<1..7>/; expected {LAYOUTS}")
    table = pd.DataFrame(rows, columns=["split", "label", "source", "path"])
    layout = ("DATASET/" if folder != path else "") + "{train,test}/<1..7>/*.jpg"
    return FaceDataset("rafdb", path, layout, table, NUM_BASIC, problems=problems)


__all__ = ["read_rafdb"]
