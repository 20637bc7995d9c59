"""AffectNet reader (manual annotations).

Two layouts are read:

- the official release: ``training.csv`` and ``validation.csv`` (directly under ``path`` or in
  ``Manually_Annotated_file_lists/``; ``.csv.gz`` too), columns ``subDirectory_filePath, face_x, face_y,
  face_width, face_height, facial_landmarks, expression, valence, arousal`` (a file without the header
  line, as some copies of ``validation.csv`` are, is read in that column order). Images are at
  ``Manually_Annotated_Images/<subDirectory_filePath>`` (also ``Manually_Annotated/Manually_Annotated_Images/``,
  or directly under ``path``). ``facial_landmarks`` holds 68 points as ``x;y;x;y...`` in the source image's
  pixels, and the face box is kept as the columns ``box_x, box_y, box_w, box_h``;
- folder per class ``{train,val,test}/<class>/*.jpg`` (Kaggle exports), where ``<class>`` is an expression
  name (``happy``, ``anger``...) or AffectNet's own number 0-7 (folders 8-10 are counted as excluded).
  Split folders keep their names; note that the ``val/`` of an export with only ``train/`` and ``val/``
  is usually AffectNet's official validation set, i.e. the set papers report as test.

AffectNet numbers its expressions 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger,
7 contempt (mapped with :data:`utils.data.labels.AFFECTNET_TO_CANONICAL`); 8 none, 9 uncertain and 10 non-face
are not expressions and are dropped, counted in ``excluded`` by reason.

Splits: AffectNet's test set was never released, so papers report results on its validation set.
``training.csv`` therefore becomes split ``train`` and ``validation.csv`` split ``test``. Model selection
(early stopping, hyper-parameters) must then use a validation split carved from train, never the test
split: see :func:`utils.data.splits.ensure_val_split`.
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd

from utils.data.labels import AFFECTNET_DROPPED, AFFECTNET_TO_CANONICAL, FOLDER_NAMES

from .base import DatasetError, FaceDataset, Problem, report, scan_class_folders
from .splits import _per_class_mask

NUM_CLASSES = 8
NUM_LANDMARKS = 68
COLUMNS = (
    "subdirectory_filepath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
CSV_SPLITS = {"training.csv": "train", "validation.csv": "test"}  # AffectNet's validation set is the test set
CSV_FOLDERS = (".", "Manually_Annotated_file_lists")
IMAGE_FOLDERS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images", ".")
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

LAYOUTS = (
    "AffectNet's training.csv and validation.csv (also in Manually_Annotated_file_lists/) with images in "
    "Manually_Annotated_Images/<subDirectory_filePath>, "
    "or class folders {train,val,test}/<class>/*.jpg with class names or AffectNet's numbers 0-7"
)

# Class folders: expression names, or AffectNet's numbers. Negative ids mark AffectNet's non-expressions.
FOLDER_LABELS: dict[str, int] = {
    **FOLDER_NAMES,
    **{str(number): label for number, label in AFFECTNET_TO_CANONICAL.items()},
    **{str(number): -number for number in AFFECTNET_DROPPED},
    **{name: -number for number, name in AFFECTNET_DROPPED.items()},
}


def read_affectnet(path, strict: bool = False, max_per_class: int | None = None, seed: int = 0) -> FaceDataset:
    """Read AffectNet's manual annotations, or a class-folder export (see the module docstring).

    Args:
        path: the AffectNet folder (holding the CSVs and ``Manually_Annotated_Images/``, or the
            ``train/``, ``val/``, ``test/`` class folders).
        strict: raise on the first bad line, missing image or unknown folder instead of skipping and
            reporting it.
        max_per_class: keep at most this many images per class in each split, drawn with ``seed`` (an
            AffectNet subset, e.g. to merge into FER2013 without swamping it). None keeps everything.
        seed: random seed for ``max_per_class``.

    Returns:
        A dataset with 8 classes. From the CSVs: splits train (``training.csv``) and test
        (``validation.csv``), columns ``box_x, box_y, box_w, box_h, valence, arousal`` and ``landmarks``
        ``(N, 68, 2)`` float32 (NaN for a row whose landmarks are missing or malformed; their number is
        ``info["landmarks_missing"]``). ``path`` is relative to ``path``.

    Raises:
        DatasetError: when nothing readable is at ``path`` (the message lists the accepted layouts), or in
            strict mode when a line or file is bad.
    """
    path = Path(path).expanduser()
    if max_per_class is not None and (int(max_per_class) != max_per_class or max_per_class < 1):
        raise ValueError(f"max_per_class must be a positive integer or None, not {max_per_class!r}")
    if not path.is_dir():
        raise DatasetError(f"{path}: {'is not a folder' if path.exists() else 'does not exist'}; expected {LAYOUTS}")
    csv_files = _csv_files(path)
    if csv_files:
        return _read_csvs(path, csv_files, strict, max_per_class, seed)
    split_dirs = {
        SPLIT_FOLDERS[sub.name.lower()]: sub
        for sub in sorted(path.iterdir())
        if sub.is_dir() and sub.name.lower() in SPLIT_FOLDERS
    }
    if split_dirs:
        return _read_folders(path, split_dirs, strict, max_per_class, seed)
    raise DatasetError(f"{path}: no AffectNet data found; expected {LAYOUTS}")


# --------------------------------------------------------------------------------------- CSV layout


def _csv_files(path: Path) -> list[Path]:
    for folder in CSV_FOLDERS:
        found = []
        for name in CSV_SPLITS:
            for candidate in (path / folder / name, path / folder / (name + ".gz")):
                if candidate.is_file():
                    found.append(candidate)
                    break
        if found:
            return found
    return []


def _csv_records(file: Path):
    """Generator over a CSV file, plain or gzipped: first the column names, then ``(line number, fields)``."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rt", encoding="utf-8-sig", newline="") as text:
            reader = csv.reader(text)
            first = next(reader, None)
            if first is None:
                raise DatasetError(f"{file}: empty file; expected columns {', '.join(COLUMNS)}")
            header = [c.strip().lower() for c in first]
            if header and header[0] == COLUMNS[0]:
                columns, pending = header, []
            elif len(first) == len(COLUMNS):  # no header line: AffectNet's column order
                columns, pending = list(COLUMNS), [(1, first)]
            else:
                raise DatasetError(
                    f"{file}: first line is neither AffectNet's header nor a {len(COLUMNS)}-column record; "
                    f"expected columns {', '.join(COLUMNS)}"
                )
            missing = [c for c in COLUMNS if c not in columns]
            if missing:
                raise DatasetError(f"{file}: missing columns {missing}; expected {', '.join(COLUMNS)}")
            yield columns
            yield from pending
            for fields in reader:
                yield reader.line_num, fields
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as e:
        raise DatasetError(f"{file}: not a readable CSV file ({e})") from e


def csv_rows(file: Path, problems: list):
    """The records of an AffectNet-style CSV (:func:`_csv_records`) as ``(where, fields, at)``: ``where`` names the
    file and line, ``at`` maps a column name to its index. Blank lines are skipped; a record with the wrong number
    of fields goes to ``problems`` (a :class:`Problem`) and is skipped."""
    records = _csv_records(file)
    columns = next(records)
    at = {name: columns.index(name) for name in columns}
    for line, fields in records:
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        where = f"{file.name} line {line}"
        if len(fields) != len(columns):
            problems.append(Problem(where, f"{len(fields)} fields, expected {len(columns)}"))
            continue
        yield where, fields, at


def _image_root(path: Path) -> Path:
    return next(path / f for f in IMAGE_FOLDERS if (path / f).is_dir())


def _listing(folder: Path) -> set[str]:
    """Every file under ``folder`` as a relative posix path: one walk instead of a stat per CSV line."""
    found = set()
    for current, _, files in os.walk(folder):
        rel = Path(current).relative_to(folder).as_posix()
        prefix = "" if rel == "." else rel + "/"
        found.update(prefix + name for name in files)
    return found


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return np.nan


def _read_csvs(path: Path, files: list[Path], strict: bool, max_per_class, seed: int) -> FaceDataset:
    image_root = _image_root(path)
    present = _listing(image_root)
    rel_root = image_root.relative_to(path).as_posix()
    prefix = "" if rel_root == "." else rel_root + "/"

    rows, marks, problems = [], [], []
    excluded: dict[str, int] = {}
    listed = 0
    for file in files:
        split = CSV_SPLITS[file.name.removesuffix(".gz")]
        for where, fields, at in csv_rows(file, problems):
            value = fields[at["expression"]].strip()
            try:
                expression = int(value)
            except ValueError:
                expression = None
            if expression in AFFECTNET_DROPPED:
                reason = f"{AFFECTNET_DROPPED[expression]} (expression {expression})"
                excluded[reason] = excluded.get(reason, 0) + 1
                continue
            label = AFFECTNET_TO_CANONICAL.get(expression)
            if label is None:
                problems.append(Problem(where, f"unknown expression {value!r}; expected 0-10"))
                continue
            name = fields[at["subdirectory_filepath"]].strip().replace("\\", "/").lstrip("/")
            listed += 1
            if name not in present:
                problems.append(Problem(where, f"image {prefix}{name} not found"))
                continue
            box = [_number(fields[at[c]]) for c in ("face_x", "face_y", "face_width", "face_height")]
            rows.append(
                (
                    split,
                    label,
                    where,
                    prefix + name,
                    *box,
                    _number(fields[at["valence"]]),
                    _number(fields[at["arousal"]]),
                )
            )
            marks.append(fields[at["facial_landmarks"]])

    if not rows:
        hint = f"; none of the {listed} images listed were found under {image_root}" if listed else ""
        raise DatasetError(
            f"{path}: no readable AffectNet lines in {', '.join(f.name for f in files)} "
            f"({len(problems)} bad lines{hint}); expected {LAYOUTS}"
        )
    report(problems, path, strict, what="lines")
    columns = ["split", "label", "source", "path", "box_x", "box_y", "box_w", "box_h", "valence", "arousal"]
    table = pd.DataFrame(rows, columns=columns)
    info = {"test_split": "validation.csv (AffectNet's official validation set; its test set is unreleased)"}
    if max_per_class is not None:
        keep = np.flatnonzero(
            _per_class_mask(table["split"].to_numpy(), table["label"].to_numpy(), max_per_class, seed)
        )
        info["sampled_per_class"] = {"n": int(max_per_class), "seed": seed, "split": None, "rows_before": len(table)}
        table = table.iloc[keep].reset_index(drop=True)
        marks = [marks[i] for i in keep]
    landmarks = _parse_landmarks(marks)
    info["landmarks_missing"] = int(np.isnan(landmarks[:, 0, 0]).sum())
    layout = " + ".join(f.relative_to(path).as_posix() for f in files) + f" + {prefix or './'}<subDirectory_filePath>"
    return FaceDataset(
        "affectnet",
        path,
        layout,
        table,
        NUM_CLASSES,
        landmarks=landmarks,
        problems=problems,
        excluded=excluded,
        info=info,
    )


def _parse_landmarks(texts: list[str]) -> np.ndarray:
    """``x;y;x;y...`` strings of 136 numbers -> ``(N, 68, 2)`` float32, NaN where missing or malformed."""
    out = np.full((len(texts), NUM_LANDMARKS * 2), np.nan, dtype=np.float32)
    for i, text in enumerate(texts):
        try:
            values = np.fromstring(text.strip().strip(";"), dtype=np.float32, sep=";")
        except ValueError:
            continue
        if values.size == NUM_LANDMARKS * 2:
            out[i] = values
    return out.reshape(-1, NUM_LANDMARKS, 2)


# ------------------------------------------------------------------------------------ folder layout


def _read_folders(path: Path, split_dirs: dict[str, Path], strict: bool, max_per_class, seed: int) -> FaceDataset:
    rows, problems = [], []
    excluded: dict[str, int] = {}
    for split in ("train", "val", "test"):
        if split not in split_dirs:
            continue
        paths, labels, found = scan_class_folders(split_dirs[split], path, FOLDER_LABELS)
        problems += found
        for rel, label in zip(paths, labels):
            if label < 0:
                reason = f"{AFFECTNET_DROPPED[-label]} (expression {-label})"
                excluded[reason] = excluded.get(reason, 0) + 1
            else:
                rows.append((split, label, rel, rel))
    report(problems, path, strict, what="folders")
    if not rows:
        raise DatasetError(f"{path}: no images in {{train,val,test}}/<class>/; expected {LAYOUTS}")
    table = pd.DataFrame(rows, columns=["split", "label", "source", "path"])
    info = {}
    if max_per_class is not None:
        keep = _per_class_mask(table["split"].to_numpy(), table["label"].to_numpy(), max_per_class, seed)
        info["sampled_per_class"] = {"n": int(max_per_class), "seed": seed, "split": None, "rows_before": len(table)}
        table = table[keep]
    layout = "{" + ",".join(d.name for d in split_dirs.values()) + "}/<class>/*.jpg"
    return FaceDataset("affectnet", path, layout, table, NUM_CLASSES, problems=problems, excluded=excluded, info=info)


__all__ = ["read_affectnet"]
