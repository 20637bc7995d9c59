"""JAFFE (Japanese Female Facial Expression) reader.

Layout: image files named ``KA.AN1.39.tiff`` anywhere under ``path`` (searched recursively, so the
release's ``jaffe/`` or ``jaffedbase/`` folder works as it is): subject ``KA``, expression code ``AN``
(the letters of ``AN1``; the digit numbers the subject's repeats), image number ``39``. The codes AN DI
FE HA NE SA SU are mapped with :data:`utils.data.labels.JAFFE_TO_CANONICAL`.

JAFFE has no official split: every image gets split ``all``; the ``subject`` column lets
:mod:`utils.data.splits` build subject-independent splits (the usual protocol is leave-one-subject-out or
10 subject folds). Some JAFFE files are palette TIFFs; :func:`utils.data.base.read_image` expands them.
Hidden files (names starting with ``.``, e.g. macOS ``._KA.AN1.39.tiff``) and ``__MACOSX`` folders are
not part of the dataset and are not looked at; files that are not images (the README) are ignored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from utils.data.labels import JAFFE_TO_CANONICAL, NUM_BASIC

from .base import IMAGE_SUFFIXES, DatasetError, FaceDataset, Problem, report

NAME_PATTERN = re.compile(r"^([A-Za-z]+)\.([A-Za-z]+)(\d*)\.(\d+)$")  # KA.AN1.39

LAYOUTS = "image files named like KA.AN1.39.tiff (subject.expression+repeat.number) anywhere under the path"


def read_jaffe(path, strict: bool = False) -> FaceDataset:
    """Read JAFFE from a folder of ``KA.AN1.39.tiff`` files (see the module docstring).

    Args:
        path: a folder with the JAFFE images, at any depth.
        strict: raise on the first badly named image instead of skipping and reporting it.

    Returns:
        A dataset with 7 classes, split ``all``, a ``subject`` column (``KA``); ``path`` is relative to
        ``path``.

    Raises:
        DatasetError: when no JAFFE image is under ``path`` (the message lists the accepted layout), or in
            strict mode when an image's name does not follow the pattern or has an unknown expression code.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{path}: {'is not a folder' if path.exists() else 'does not exist'}; expected {LAYOUTS}")

    rows, problems = [], []
    for rel in _image_files(path):
        stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        match = NAME_PATTERN.match(stem)
        if match is None:
            problems.append(Problem(rel, "file name does not follow KA.AN1.39.tiff (subject.expression.number)"))
            continue
        subject, code = match.group(1).upper(), match.group(2).upper()
        label = JAFFE_TO_CANONICAL.get(code)
        if label is None:
            problems.append(
                Problem(rel, f"unknown expression code {code!r}; expected one of {', '.join(JAFFE_TO_CANONICAL)}")
            )
            continue
        rows.append(("all", label, rel, rel, subject))

    report(problems, path, strict, what="files")
    if not rows:
        raise DatasetError(f"{path}: no JAFFE images found ({len(problems)} badly named); expected {LAYOUTS}")
    table = pd.DataFrame(rows, columns=["split", "label", "source", "path", "subject"])
    return FaceDataset("jaffe", path, "**/KA.AN1.39.tiff", table, NUM_BASIC, problems=problems)


def _image_files(path: Path) -> list[str]:
    """Image files under ``path`` (recursive, hidden ones skipped), relative posix paths, sorted."""
    found = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
        rel_folder = Path(folder).relative_to(path)
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append((rel_folder / name).as_posix())
    return sorted(found)


__all__ = ["read_jaffe"]
