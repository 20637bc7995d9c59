"""What every dataset reader returns: a :class:`FaceDataset`, one row per image, labels in canonical order."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from utils.data.labels import class_names

SPLITS: tuple[str, ...] = ("train", "val", "test", "all", "unlabelled")
"""Split names: a dataset with an official split uses train / val / test, one without it uses all; faces without
labels (:func:`utils.data.folder.read_faces`, label ``UNLABELLED``) are in unlabelled, which only pretraining reads."""

UNLABELLED = -1
"""The label of a face that has none (pretraining data)."""

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")


class DatasetError(ValueError):
    """Nothing readable at a path, or (in strict mode) a bad row or file. The message names the path."""


@dataclass(frozen=True)
class Problem:
    """One bad row or file that a reader skipped: where it is (row number or file name) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class FaceDataset:
    """A dataset as read from disk, before any face preprocessing.

    Attributes:
        name: registry name, e.g. ``"fer2013"``.
        root: the path the dataset was read from.
        layout: which of the accepted layouts was found (shown by ``check``).
        table: one row per image, index ``0..N-1``. Columns: ``split`` (see :data:`SPLITS`), ``label``
            (canonical class id, see :mod:`utils.data.labels`), ``source`` (row number or file name, for
            messages); optional ``path`` (image file) and ``subject`` (person id, for
            subject-independent splits).
        num_classes: 7, or 8 when the dataset has contempt.
        pixels: ``(N, H, W)`` uint8 images for layouts that store pixels (FER2013 CSV), else None.
        soft_labels: ``(N, num_classes)`` float32 label distributions (FERPlus), else None.
        landmarks: ``(N, 68, 2)`` float32 landmarks in source pixels when the dataset ships them (NaN
            where a row has none), else None.
        problems: rows or files that were skipped, each with its reason. Never dropped silently.
        excluded: images left out by the dataset's own rules (AffectNet's non-face, FERPlus's unknown),
            reason -> count. They are not errors, but they are counted and shown.
        info: reader-specific facts, e.g. FERPlus's label mode.
    """

    name: str
    root: Path
    layout: str
    table: pd.DataFrame
    num_classes: int
    pixels: np.ndarray | None = None
    soft_labels: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    problems: list[Problem] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.table = self.table.reset_index(drop=True)
        n = len(self.table)
        for attr in ("pixels", "soft_labels", "landmarks"):
            value = getattr(self, attr)
            if value is not None and len(value) != n:
                raise ValueError(f"{attr} has {len(value)} rows, the table {n}")
        unknown = set(self.table["split"]) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; expected some of {SPLITS}")

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s} {n}" for s, n in self.split_sizes().items())
        return f"FaceDataset({self.name!r}, {len(self)} images: {sizes}; layout {self.layout!r})"

    @property
    def classes(self) -> tuple[str, ...]:
        return class_names(self.num_classes)

    @property
    def labels(self) -> np.ndarray:
        return self.table["label"].to_numpy(np.int64)

    @property
    def splits(self) -> list[str]:
        present = set(self.table["split"])
        return [s for s in SPLITS if s in present]

    def split_sizes(self) -> dict[str, int]:
        counts = self.table["split"].value_counts()
        return {s: int(counts[s]) for s in self.splits}

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class name: count}}``, classes in canonical order, zero counts included; faces without a
        label are counted under ``"unlabelled"``."""
        out = {}
        for split in self.splits:
            labels = self.table.loc[self.table["split"] == split, "label"].to_numpy()
            per_class = np.bincount(labels[labels >= 0], minlength=self.num_classes)
            out[split] = {name: int(c) for name, c in zip(self.classes, per_class)}
            if (labels == UNLABELLED).any():
                out[split]["unlabelled"] = int((labels == UNLABELLED).sum())
        return out

    def counts_frame(self) -> pd.DataFrame:
        """:meth:`counts` as a table: one row per class, one column per split, plus a total."""
        counts = self.counts()
        rows = list(self.classes) + (["unlabelled"] if any("unlabelled" in c for c in counts.values()) else [])
        frame = pd.DataFrame(counts).reindex(rows).fillna(0).astype(int)
        frame.loc["total"] = frame.sum()
        return frame

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def subset(self, rows) -> FaceDataset:
        """A new dataset holding ``rows`` (indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)

        def take(a):
            return None if a is None else a[rows]

        return replace(
            self,
            table=self.table.iloc[rows].reset_index(drop=True),
            pixels=take(self.pixels),
            soft_labels=take(self.soft_labels),
            landmarks=take(self.landmarks),
            problems=list(self.problems),
            excluded=dict(self.excluded),
            info=dict(self.info),
        )

    def with_splits(self, splits) -> FaceDataset:
        """A copy whose ``split`` column is replaced by ``splits`` (one name per row)."""
        table = self.table.copy()
        table["split"] = np.asarray(splits)
        return replace(
            self, table=table, problems=list(self.problems), excluded=dict(self.excluded), info=dict(self.info)
        )

    def image(self, i: int, color: str = "gray") -> np.ndarray:
        """Image ``i`` at its source resolution: ``(H, W)`` uint8 for gray, ``(H, W, 3)`` RGB for rgb."""
        if self.pixels is not None:
            img = self.pixels[i]
            return img if color == "gray" else np.repeat(img[..., None], 3, axis=2)
        return read_image(self.root / self.table.at[i, "path"], color)


def read_image(path: Path, color: str = "gray") -> np.ndarray:
    """Decode an image file to uint8 gray ``(H, W)`` or RGB ``(H, W, 3)``; palette and 16-bit files too.

    Raises:
        DatasetError: naming the file, when it cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    if color not in ("gray", "rgb"):
        raise ValueError(f"color must be 'gray' or 'rgb', not {color!r}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):  # 16-bit greys (some CK+ exports): scale to 8 bits
                a = np.asarray(im, dtype=np.float32)
                a = a * (255.0 / max(float(a.max()), 1.0))
                im = Image.fromarray(a.astype(np.uint8))
            im = im.convert("L" if color == "gray" else "RGB")  # also expands palette images (JAFFE)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from e


def report(problems: list[Problem], source: Path | str, strict: bool, what: str = "rows") -> None:
    """Raise (strict) or warn about skipped rows/files; a no-op when there are none."""
    if not problems:
        return
    shown = "; ".join(str(p) for p in problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    message = f"{source}: {len(problems)} bad {what} skipped: {shown}{more}"
    if strict:
        raise DatasetError(message.replace("skipped", "found") + " [strict mode]")
    warnings.warn(message, stacklevel=3)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (deterministic across file systems)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_class_folders(folder: Path, root: Path, names: dict[str, int]) -> tuple[list[str], list[int], list[Problem]]:
    """Images in ``folder/<class>/``, labelled by ``names`` (folder name -> canonical id).

    Returns the image paths relative to ``root``, their labels, and a problem for each folder that is not
    a known class (its images are counted, not read). Labels never come from the folders' sort order.
    """
    paths: list[str] = []
    labels: list[int] = []
    problems: list[Problem] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = names.get(sub.name.strip().lower())
        files = list_images(sub)
        if label is None:
            if files:
                problems.append(
                    Problem(
                        str(sub.relative_to(root)),
                        f"folder name is not a known class ({len(files)} images skipped); "
                        f"expected one of {sorted(set(names))}",
                    )
                )
            continue
        paths += [str(f.relative_to(root)) for f in files]
        labels += [label] * len(files)
    return paths, labels, problems
