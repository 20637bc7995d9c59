"""Unlabelled faces: any folder tree of face images, for pretraining.

Every image file under ``path`` (any depth, any size, suffixes :data:`utils.data.base.IMAGE_SUFFIXES` in any
case) becomes one row with split ``unlabelled`` and label :data:`utils.data.base.UNLABELLED` (-1). Such a
dataset is for self-supervised pretraining only: evaluation (linear probe, fine-tuning, test accuracy) stays on
a labelled dataset.

>>> from utils.data import load_dataset
>>> faces = load_dataset("faces", "data/my_faces")       # doctest: +SKIP
>>> faces.counts()["unlabelled"]["unlabelled"]            # doctest: +SKIP
12345

Files are listed with ``os.scandir`` (one ``stat`` per image, for its size; no image is opened), so that a
tree of a million files stays cheap to list. Hidden files and folders (names starting with ``.``, e.g. ``.DS_Store``)
are not looked at, files that are not images are ignored, and rows are sorted by path, so the order is the
same on every file system. An empty (0-byte) image is skipped and listed in ``problems``; a corrupt image is
not decoded here (face preparation counts those).

Two published layouts are recognised (``layout`` names the one found); anything else is read as a plain tree
(layout ``"folder"``):

- **AffectNet's automatically annotated part** (layout ``"affectnet-automatic"``): ``automatically_annotated.csv``
  (or ``.csv.gz``) directly under ``path``, in the columns of AffectNet's manual CSVs (``subDirectory_filePath,
  face_x, face_y, face_width, face_height, facial_landmarks, expression, valence, arousal``), images at
  ``Automatically_Annotated_Images/<subDirectory_filePath>`` (or ``<subDirectory_filePath>`` relative to
  ``path``). Rows keep the CSV's order; a row whose image is missing or empty is a problem. The 68 landmarks go
  into ``landmarks`` as in :func:`utils.data.affectnet.read_affectnet`, the face box into ``box_x, box_y,
  box_w, box_h``. The automatic labels are machine guesses, not used as labels: AffectNet's expression number
  (0-10, 10 non-face) is kept in the column ``auto_expression``, valence and arousal in ``auto_valence,
  auto_arousal``.
- **VGGFace2** (layout ``"vggface2"``): ``train/`` and/or ``test/`` holding identity folders named like
  ``n000002`` of ``.jpg`` files. Only those two folders are read (``bb_landmark/`` and the list files are
  ignored); the identity folder is the ``subject`` column. Every row is still split ``unlabelled``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .affectnet import _number, _parse_landmarks, csv_rows
from .base import IMAGE_SUFFIXES, UNLABELLED, DatasetError, FaceDataset, Problem, report
from .labels import NUM_BASIC

AUTOMATIC_CSV = "automatically_annotated.csv"
AUTOMATIC_IMAGES = "Automatically_Annotated_Images"
VGGFACE2_SPLITS = ("train", "test")
IDENTITY_PATTERN = re.compile(r"^n\d+$")  # VGGFace2 identity folders: n000002
EMPTY = "empty file (0 bytes)"
LANDMARK_CHUNK = 10_000  # landmark strings parsed per batch, so a 1M-line CSV never holds them all at once

LAYOUTS = (
    f"a folder of face images ({'/'.join(IMAGE_SUFFIXES)}, any depth); recognised layouts: AffectNet's "
    f"{AUTOMATIC_CSV} (or .csv.gz) with images in {AUTOMATIC_IMAGES}/, and VGGFace2's "
    "{train,test}/n000002/*.jpg"
)


def read_faces(path, strict: bool = False, max_images: int | None = None) -> FaceDataset:
    """Read a folder tree of unlabelled face images (see the module docstring).

    Args:
        path: the folder; images are found at any depth.
        strict: raise on empty image files (and, for AffectNet's CSV, missing images or bad lines) instead of
            skipping and reporting them.
        max_images: keep only the first this many images (in path order; AffectNet's CSV: in its order), e.g.
            for a quick run. None keeps everything.

    Returns:
        A dataset with 7 classes, every row split ``unlabelled`` with label -1; columns ``split, label,
        source, path`` (``path`` relative to ``path``, POSIX style), plus ``subject`` for VGGFace2 and, for
        AffectNet's automatic part, ``box_x, box_y, box_w, box_h, auto_expression, auto_valence,
        auto_arousal`` and ``landmarks`` ``(N, 68, 2)`` float32 (NaN where a row's are malformed; their
        number is ``info["landmarks_missing"]``).

    Raises:
        DatasetError: when ``path`` does not exist, is not a folder, or holds no image file (the message names
            the path and the accepted layouts), or in strict mode when a file or line is bad.
    """
    path = Path(path).expanduser()
    if max_images is not None and (int(max_images) != max_images or max_images < 1):
        raise ValueError(f"max_images must be a positive integer or None, not {max_images!r}")
    if not path.is_dir():
        raise DatasetError(f"{path}: {'is not a folder' if path.exists() else 'does not exist'}; expected {LAYOUTS}")
    csv_file = next((path / n for n in (AUTOMATIC_CSV, AUTOMATIC_CSV + ".gz") if (path / n).is_file()), None)
    if csv_file is not None:
        return _read_automatic(path, csv_file, strict, max_images)
    identity_roots = [path / s for s in VGGFACE2_SPLITS if _holds_identities(path / s)]
    if identity_roots:
        return _read_tree(path, identity_roots, "vggface2", strict, max_images)
    return _read_tree(path, [path], "folder", strict, max_images)


# ------------------------------------------------------------------------------------------ listing files


def scan_images(folder: Path, root: Path | None = None, exclude: Path | None = None) -> list[tuple[str, int]]:
    """Image files under ``folder`` (recursive, hidden ones skipped): ``(path relative to root, size)``, sorted.

    One ``os.scandir`` and one ``stat`` per folder, one ``stat`` per image file (for its size); nothing is
    opened. Folders are walked in name order. Symbolic links are followed; a folder reached twice (a link
    loop, or two links to it) is listed once. The folder ``exclude`` (if given) is not entered.
    """
    root = folder if root is None else root
    prefix = Path(os.path.relpath(folder, root)).as_posix()
    start = "" if prefix == "." else prefix + "/"
    found: list[tuple[str, int]] = []
    seen = {_identity(os.stat(folder))}
    skip = None if exclude is None else os.path.normpath(exclude)
    stack = [(os.fspath(folder), start)]
    while stack:
        current, rel = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)  # the same walk on every file system
        except OSError:  # unreadable folder: nothing to list (the caller reports an empty tree)
            continue
        below = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if skip is not None and os.path.normpath(entry.path) == skip:
                        continue
                    key = _identity(entry.stat())  # one stat per folder (a link's target): loops are not entered
                    if key in seen:
                        continue
                    seen.add(key)
                    below.append((entry.path, rel + name + "/"))
                elif os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    found.append((rel + name, entry.stat().st_size))
            except OSError:  # a broken link or a file removed while listing
                continue
        stack += reversed(below)  # depth first, in name order
    found.sort()
    return found


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _holds_identities(folder: Path) -> bool:
    """Whether ``folder`` has a VGGFace2 identity subfolder (``n000002``)."""
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(IDENTITY_PATTERN.match(e.name) and e.is_dir() for e in entries)


# ---------------------------------------------------------------------------------------- plain and VGGFace2


def _read_tree(path: Path, folders: list[Path], layout: str, strict: bool, max_images) -> FaceDataset:
    files = sorted(f for folder in folders for f in scan_images(folder, path))
    rows, problems = [], []
    for rel, size in files:
        if max_images is not None and len(rows) == max_images:
            break
        if size == 0:
            problems.append(Problem(rel, EMPTY))
            continue
        rows.append(("unlabelled", UNLABELLED, rel, rel))
    report(problems, path, strict, "files")
    if not rows:
        where = " in " + " and ".join(f.name + "/" for f in folders) if layout == "vggface2" else ""
        empty = f" ({len(problems)} empty)" if problems else ""
        raise DatasetError(f"{path}: no image file found{where}{empty}; expected {LAYOUTS}")
    table = pd.DataFrame(rows, columns=["split", "label", "source", "path"])
    info = {}
    if layout == "vggface2":  # train/n000002/0001_01.jpg -> n000002
        table["subject"] = [p.split("/")[1] if p.count("/") >= 2 else "" for p in table["path"]]
        info["vggface2_folders"] = [f.name for f in folders]
    return FaceDataset("faces", path, layout, table, NUM_BASIC, problems=problems, info=info)


# ------------------------------------------------------------------------------ AffectNet's automatic part


def _read_automatic(path: Path, csv_file: Path, strict: bool, max_images) -> FaceDataset:
    images = path / AUTOMATIC_IMAGES
    sizes = dict(scan_images(images, path)) if images.is_dir() else {}
    rest: dict[str, int] | None = None  # the files of path outside images/, listed if a name is not in it
    prefix = AUTOMATIC_IMAGES + "/"

    rows, chunks, marks, problems = [], [], [], []
    for where, fields, at in csv_rows(csv_file, problems):
        if max_images is not None and len(rows) == max_images:
            break
        name = fields[at["subdirectory_filepath"]].strip().replace("\\", "/").lstrip("/")
        rel = next((r for r in (prefix + name, name) if r in sizes), None)
        if rel is None:  # relative to path, outside the images folder: list the rest of the tree, once
            if rest is None:
                rest = dict(scan_images(path, exclude=images))
            rel = name if name in rest else None
        if rel is None:
            problems.append(Problem(where, f"image {prefix}{name} not found (nor {name})"))
            continue
        size = sizes[rel] if rel in sizes else rest[rel]
        if size == 0:
            problems.append(Problem(where, f"image {rel}: {EMPTY}"))
            continue
        expression = _number(fields[at["expression"]])
        rows.append(
            (
                "unlabelled",
                UNLABELLED,
                where,
                rel,
                *(_number(fields[at[c]]) for c in ("face_x", "face_y", "face_width", "face_height")),
                int(expression) if np.isfinite(expression) else None,
                _number(fields[at["valence"]]),
                _number(fields[at["arousal"]]),
            )
        )
        marks.append(fields[at["facial_landmarks"]])
        if len(marks) == LANDMARK_CHUNK:
            chunks.append(_parse_landmarks(marks))
            marks = []

    report(problems, path, strict, "lines")
    if not rows:
        raise DatasetError(
            f"{path}: no image of {csv_file.name} found ({len(problems)} bad lines; images are looked for in "
            f"{AUTOMATIC_IMAGES}/ and under the folder itself); expected {LAYOUTS}"
        )
    columns = ["split", "label", "source", "path", "box_x", "box_y", "box_w", "box_h"]
    columns += ["auto_expression", "auto_valence", "auto_arousal"]
    table = pd.DataFrame(rows, columns=columns)
    table["auto_expression"] = table["auto_expression"].astype("Int64")  # AffectNet's 0-10; <NA> if unreadable
    landmarks = np.concatenate(chunks + [_parse_landmarks(marks)])
    info = {
        "landmarks_missing": int(np.isnan(landmarks[:, 0, 0]).sum()),
        "auto_expression": "AffectNet's automatic expression number (0-10), not a label",
    }
    return FaceDataset(
        "faces", path, "affectnet-automatic", table, NUM_BASIC, landmarks=landmarks, problems=problems, info=info
    )


__all__ = ["read_faces", "scan_images"]
