"""CK+ (Extended Cohn-Kanade) reader, for the widely shared ``CK+48`` export.

Layout: one folder per expression, ``anger/``, ``contempt/``, ``disgust/``, ``fear/``, ``happy/``,
``sadness/``, ``surprise/`` (any spelling of :data:`utils.data.labels.FOLDER_NAMES`), holding 48x48 faces
named ``S010_004_00000017.png``: subject ``S010``, sequence ``004``, frame ``00000017`` (the last frames
of each posed sequence). The folders may sit directly under ``path`` or in a ``CK+48/`` subfolder.

CK+ has no official split: every image gets split ``all``, and the ``subject`` column (from the file
name) lets :mod:`utils.data.splits` build subject-independent splits or the usual 10 subject folds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from utils.data.labels import FOLDER_NAMES

from .base import DatasetError, FaceDataset, Problem, report, scan_class_folders

NUM_CLASSES = 8  # the seven basic expressions and contempt
NAME_PATTERN = re.compile(r"^(S\d+)_(\d+)_(\d+)$", re.IGNORECASE)  # S010_004_00000017

LAYOUTS = (
    "the CK+48 layout <class>/S010_004_00000017.png with class folders anger, contempt, disgust, fear, "
    "happy, sadness, surprise (directly under the path or in a CK+48/ subfolder)"
)


def read_ckplus(path, strict: bool = False) -> FaceDataset:
    """Read the CK+48 export (see the module docstring).

    Args:
        path: the folder holding the class folders, or its parent holding ``CK+48/``.
        strict: raise on the first bad file or folder instead of skipping and reporting it.

    Returns:
        A dataset with 8 classes, split ``all``, and columns ``subject`` (``S010``) and ``sequence``
        (``S010_004``); ``path`` is relative to ``path``.

    Raises:
        DatasetError: when no class folders are at ``path`` (the message lists the accepted layout), or
            in strict mode when a file name does not follow ``S010_004_00000017`` or a folder is not a class.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{path}: {'is not a folder' if path.exists() else 'does not exist'}; expected {LAYOUTS}")
    folder = next((f for f in (path, path / "CK+48") if f.is_dir() and _has_class_folders(f)), None)
    if folder is None:
        raise DatasetError(f"{path}: no CK+ class folders found; expected {LAYOUTS}")

    paths, labels, problems = scan_class_folders(folder, path, FOLDER_NAMES)
    rows = []
    for rel, label in zip(paths, labels):
        match = NAME_PATTERN.match(Path(rel).stem)
        if match is None:
            problems.append(Problem(rel, "file name does not follow S010_004_00000017 (subject_sequence_frame)"))
            continue
        subject = match.group(1).upper()
        rows.append(("all", label, rel, rel, subject, f"{subject}_{match.group(2)}"))

    report(problems, folder, strict, what="files")
    if not rows:
        raise DatasetError(f"{folder}: no readable images in the class folders; expected {LAYOUTS}")
    table = pd.DataFrame(rows, columns=["split", "label", "source", "path", "subject", "sequence"])
    layout = ("CK+48/" if folder != path else "") + "<class>/S###_###_########.png"
    return FaceDataset("ckplus", path, layout, table, NUM_CLASSES, problems=problems)


def _has_class_folders(folder: Path) -> bool:
    return any(sub.is_dir() and sub.name.strip().lower() in FOLDER_NAMES for sub in folder.iterdir())


__all__ = ["read_ckplus"]
