"""FER2013 and FERPlus readers.

FER2013 circulates in several forms, all read here:

- ``fer2013.csv`` (the challenge file): ``emotion,pixels,Usage``;
- ``icml_face_data.csv`` (Kaggle): ``emotion, Usage, pixels`` with spaces in the column names;
- ``train.csv`` (``emotion,pixels``) and ``test.csv`` (labelled copies only; Kaggle's unlabelled
  ``test.csv`` has no ``emotion`` column and is reported and skipped);
- any of these gzipped (``.csv.gz``);
- the per-image export ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (Kaggle "msambare").

``Usage`` maps Training / PublicTest / PrivateTest to the splits train / val / test. FERPlus
(``fer2013new.csv``) relabels the same images by ten crowd votes each; its row *i* is row *i* of
``fer2013.csv``, and :func:`read_ferplus` joins them row by row.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from utils.data.labels import EMOTIONS, FER2013_TO_CANONICAL, FERPLUS_COLUMNS, FERPLUS_TO_CANONICAL, FOLDER_NAMES

from .base import DatasetError, FaceDataset, Problem, report, scan_class_folders

FER_SIDE = 48
FER_PIXELS = FER_SIDE * FER_SIDE  # 2304 values per row
USAGE_TO_SPLIT = {"training": "train", "publictest": "val", "privatetest": "test"}
CSV_NAMES = ("fer2013.csv", "icml_face_data.csv", "train.csv", "test.csv")

LAYOUTS = (
    "a FER2013 CSV file (fer2013.csv, icml_face_data.csv, train.csv/test.csv; .csv.gz too), "
    "a folder holding one (also in a fer2013/ subfolder), "
    "or the per-image layout train/<class>/*.jpg and test/<class>/*.jpg"
)


def parse_pixels(pixels, where) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Parse FER2013 ``pixels`` strings (2304 space-separated integers 0-255 each).

    Args:
        pixels: sequence of N strings.
        where: function of the row position giving the text that locates it in messages.

    Returns:
        images ``(M, 48, 48)`` uint8 for the good rows, their positions ``(M,)``, and a problem per bad row.
    """
    out = np.empty((len(pixels), FER_PIXELS), dtype=np.uint8)
    good = np.zeros(len(pixels), dtype=bool)
    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (instead of failing) on non-numeric text
        for i, text in enumerate(pixels):
            try:
                values = np.fromstring(str(text), dtype=np.int32, sep=" ")
            except (ValueError, DeprecationWarning):
                problems.append(Problem(where(i), "pixels are not all integers"))
                continue
            if values.size != FER_PIXELS:
                problems.append(Problem(where(i), f"{values.size} pixel values, expected {FER_PIXELS} (48x48)"))
                continue
            if values.min() < 0 or values.max() > 255:
                problems.append(Problem(where(i), "pixel values outside 0-255"))
                continue
            out[i] = values
            good[i] = True
    rows = np.flatnonzero(good)
    return out[rows].reshape(-1, FER_SIDE, FER_SIDE), rows, problems


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)  # keeps line numbers true
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable CSV file ({e})") from e
    frame.columns = [c.strip().lower() for c in frame.columns]
    return frame


def _csv_files(path: Path) -> list[Path]:
    """The FER2013 CSV file(s) at ``path``: the file itself, or the first known name in the folder."""
    if path.is_file():
        return [path]
    for folder in (path, path / "fer2013"):
        found = {}
        for name in CSV_NAMES:
            for candidate in (folder / name, folder / (name + ".gz")):
                if candidate.is_file():
                    found[name] = candidate
                    break
        for name in ("fer2013.csv", "icml_face_data.csv"):
            if name in found:
                return [found[name]]
        if "train.csv" in found:
            return [found["train.csv"]] + ([found["test.csv"]] if "test.csv" in found else [])
        if "test.csv" in found:  # read alone: the test split if labelled, a clear error if it is Kaggle's
            return [found["test.csv"]]
    return []


class _Unlabelled(DatasetError):
    """A FER2013 CSV without an ``emotion`` column (Kaggle's test.csv)."""


def _read_csv_rows(path: Path) -> tuple[pd.DataFrame, np.ndarray, list[Problem]]:
    """One FER2013 CSV file -> (table with split/label/source, pixels, problems)."""
    frame = _read_csv(path)
    name = path.name
    if "pixels" not in frame.columns:
        raise DatasetError(f"{path}: no 'pixels' column (columns: {list(frame.columns)}); expected {LAYOUTS}")
    if "emotion" not in frame.columns:
        raise _Unlabelled(
            f"{path}: no 'emotion' column, so no labels (Kaggle's test.csv is unlabelled); "
            "use fer2013.csv or icml_face_data.csv for the labelled test split"
        )
    if "usage" in frame.columns:
        usage = frame["usage"].str.strip().str.lower().map(USAGE_TO_SPLIT)
    else:  # train.csv / test.csv carry the split in their name
        usage = pd.Series("test" if name.startswith("test") else "train", index=frame.index)

    def where(i):
        return f"{name} line {i + 2}"  # line 1 is the header

    problems = []
    labels = np.full(len(frame), -1)
    for i, (value, split) in enumerate(zip(frame["emotion"], usage)):
        try:
            label = FER2013_TO_CANONICAL.get(int(value.strip()))
        except ValueError:
            label = None
        if label is None:
            problems.append(Problem(where(i), f"unknown label {value!r}; expected 0-6"))
        elif not isinstance(split, str):
            problems.append(
                Problem(where(i), f"unknown Usage {frame['usage'][i]!r}; expected Training/PublicTest/PrivateTest")
            )
        else:
            labels[i] = label
    valid = np.flatnonzero(labels >= 0)
    pixels, rows, pixel_problems = parse_pixels(frame["pixels"].to_numpy()[valid], lambda j: where(valid[j]))
    problems += pixel_problems
    keep = valid[rows]
    table = pd.DataFrame(
        {"split": usage.to_numpy()[keep], "label": labels[keep], "source": [where(i) for i in keep], "row": keep}
    )
    problems.sort(key=lambda p: int(p.where.rsplit(" ", 1)[1]))
    return table, pixels, problems


def read_fer2013(path, strict: bool = False) -> FaceDataset:
    """Read FER2013 in any of its published forms (see the module docstring).

    Args:
        path: a CSV file, a folder holding one, or a folder with ``train/`` and ``test/`` class folders.
        strict: raise on the first bad row instead of skipping and reporting it.

    Raises:
        DatasetError: when nothing readable is at ``path`` (the message lists the accepted layouts), or
            in strict mode when a row is bad.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: does not exist; expected {LAYOUTS}")
    files = _csv_files(path)
    if files:
        parts, problems = [], []
        for f in files:
            try:
                parts.append(_read_csv_rows(f))
            except _Unlabelled:
                if len(files) == 1 or not f.name.startswith("test"):
                    raise
                # Kaggle's test.csv beside train.csv: reported and skipped, as the module docstring says
                problems.append(Problem(f.name, "no 'emotion' column (Kaggle's unlabelled test set); file skipped"))
        table = pd.concat([p[0] for p in parts], ignore_index=True)
        pixels = np.concatenate([p[1] for p in parts])
        problems += [q for p in parts for q in p[2]]
        report(problems, files[0] if len(files) == 1 else path, strict)
        if not len(table):
            raise DatasetError(f"{files[0]}: no readable rows ({len(problems)} bad rows)")
        layout = " + ".join(f.name for f in files)
        landmarks = _given_landmarks(files[0], table) if len(files) == 1 else None
        return FaceDataset("fer2013", path, layout, table, 7, pixels=pixels, landmarks=landmarks, problems=problems)
    return _read_image_folders(path, strict)


def _given_landmarks(csv_file: Path, table: pd.DataFrame) -> np.ndarray | None:
    """Landmarks shipped beside a FER2013 CSV (``<name>_landmarks.csv[.gz]``, as the bundled sample has).

    One row per CSV row, column ``landmarks``: 136 numbers ``x0 y0 ... x67 y67`` in 48x48 pixels.
    """
    stem = csv_file.name.split(".")[0]
    for name in (f"{stem}_landmarks.csv", f"{stem}_landmarks.csv.gz"):
        file = csv_file.parent / name
        if file.is_file():
            break
    else:
        return None
    frame = _read_csv(file)
    if "landmarks" not in frame.columns:
        raise DatasetError(f"{file}: no 'landmarks' column")
    out = np.full((len(frame), 68, 2), np.nan, dtype=np.float32)
    for i, text in enumerate(frame["landmarks"]):
        try:
            values = np.array(text.split(), dtype=np.float32)
        except ValueError:  # non-numeric text: this row has no landmarks (NaN), as an empty one
            continue
        if values.size == 136:
            out[i] = values.reshape(68, 2)
    rows = table["row"].to_numpy()
    if rows.max() >= len(out):
        raise DatasetError(f"{file}: {len(out)} rows, fewer than {csv_file.name}; expected one per CSV row")
    return out[rows]


def _read_image_folders(path: Path, strict: bool) -> FaceDataset:
    names = {k: v for k, v in FOLDER_NAMES.items() if v < 7}
    rows, problems = [], []
    for split in ("train", "val", "test"):
        folder = path / split
        if folder.is_dir():
            paths, labels, found = scan_class_folders(folder, path, names)
            rows += [(split, label, p, p) for p, label in zip(paths, labels)]
            problems += found
    if not rows:
        raise DatasetError(f"{path}: no FER2013 data found; expected {LAYOUTS}")
    report(problems, path, strict, what="folders")
    table = pd.DataFrame(rows, columns=["split", "label", "source", "path"])
    return FaceDataset("fer2013", path, "train|test/<class>/*.jpg", table, 7, problems=problems)


# ----------------------------------------------------------------------------------------------- FERPlus

FERPLUS_MODES = ("majority", "probability", "crossentropy", "multi_target")
_UNKNOWN, _NOT_FACE = 8, 9  # positions of `unknown` and `NF` after the eight emotion columns


def ferplus_distribution(votes, mode: str) -> np.ndarray:
    """The FERPlus reference rule turning ten crowd votes into a target (Barsoum et al. 2016, ``ferplus.py``).

    Args:
        votes: 10 vote counts in file order: the eight :data:`FERPLUS_COLUMNS`, then unknown and NF.
        mode: ``majority``, ``probability``, ``crossentropy`` or ``multi_target``.

    Returns:
        A distribution over the same 10 positions (sums to 1). Single votes are first zeroed as outliers;
        the image is excluded when the result peaks at unknown or NF (position 8 or 9).
    """
    if mode not in FERPLUS_MODES:
        raise ValueError(f"mode must be one of {FERPLUS_MODES}, not {mode!r}")
    raw = np.asarray(votes, dtype=np.float64).copy()
    raw[raw < 1.0 + sys.float_info.epsilon] = 0.0  # a single vote is an outlier
    total = raw.sum()
    unknown = np.zeros(10)
    unknown[_UNKNOWN] = 1.0
    target = np.zeros(10)
    if mode == "majority":
        if raw.max() > 0.5 * total:
            target[np.argmax(raw)] = raw.max()
        else:
            target = unknown
    elif mode in ("probability", "crossentropy"):
        # Take the largest vote counts (ties together) until 75% of the votes are covered, at most 3
        # emotions; stop at unknown/NF. Fewer than half the votes covered or > 3 emotions: unknown.
        part, count, valid = 0.0, 0, True
        while part < 0.75 * total and count < 3 and valid:
            peak = raw.max()
            for i in range(10):
                if raw[i] == peak:
                    target[i] = peak
                    raw[i] = 0.0
                    part += target[i]
                    count += 1
                    if i >= _UNKNOWN:
                        valid = False
                        if target.sum() > peak:  # other emotions came before unknown / NF
                            target[i] = 0.0
                            count -= 1
                        break
        if target.sum() <= 0.5 * total or count > 3:
            target = unknown
    else:  # multi_target: every emotion with at least 30% of the votes
        keep = raw >= 0.3 * total
        target[keep] = raw[keep]
        if target.sum() <= 0.5 * total:
            target = unknown
    return target / target.sum()


def read_ferplus(path, mode: str = "majority", fer2013=None, strict: bool = False) -> FaceDataset:
    """Read FERPlus: ``fer2013new.csv`` joined row by row with ``fer2013.csv``.

    Args:
        path: folder holding ``fer2013new.csv`` (and, unless ``fer2013`` is given, the FER2013 CSV), or
            the ``fer2013new.csv`` file itself.
        mode: label mode for the training split (``majority``, ``probability``, ``crossentropy``,
            ``multi_target``; see :func:`ferplus_distribution`). Validation and test are always majority,
            as in the FERPlus reference code.
        fer2013: the FER2013 CSV (file or folder) when it is not beside ``fer2013new.csv``.
        strict: raise on bad rows instead of skipping and reporting them.

    Returns:
        A dataset with 8 classes; ``soft_labels`` holds each image's target distribution (one-hot for
        majority), ``label`` its most voted class. Images without a name in FERPlus (not faces) and those
        whose votes end at unknown or not-a-face are counted in ``excluded``.
    """
    path = Path(path).expanduser()
    votes_file = path if path.is_file() else path / "fer2013new.csv"
    if not votes_file.is_file() and votes_file.with_name("fer2013new.csv.gz").is_file():
        votes_file = votes_file.with_name("fer2013new.csv.gz")
    if not votes_file.is_file():
        raise DatasetError(f"{path}: no fer2013new.csv; FERPlus expects fer2013new.csv beside fer2013.csv")
    fer_source = Path(fer2013).expanduser() if fer2013 is not None else votes_file.parent
    fer_files = _csv_files(fer_source)
    if len(fer_files) != 1 or not fer_files[0].name.startswith(("fer2013.csv", "icml_face_data.csv")):
        raise DatasetError(
            f"{fer_source}: FERPlus needs the full FER2013 CSV (fer2013.csv or icml_face_data.csv, "
            "optionally .gz) beside fer2013new.csv, or given as fer2013="
        )
    fer = _read_csv(fer_files[0])
    votes = _read_csv(votes_file)
    if len(fer) != len(votes):
        raise DatasetError(
            f"{votes_file}: {len(votes)} rows but {fer_files[0]} has {len(fer)}; FERPlus row i labels FER2013 row i"
        )
    columns = list(FERPLUS_COLUMNS) + ["unknown", "nf"]
    missing = [c for c in columns + ["usage", "image name"] if c not in votes.columns]
    if missing:
        raise DatasetError(f"{votes_file}: missing columns {missing}; expected Usage, Image name, {', '.join(columns)}")

    def where(i):
        return f"{votes_file.name} line {i + 2}"

    problems: list[Problem] = []
    excluded: dict[str, int] = {}
    fer_usage = fer["usage"].str.strip().str.lower().map(USAGE_TO_SPLIT) if "usage" in fer.columns else None
    split = votes["usage"].str.strip().str.lower().map(USAGE_TO_SPLIT)
    counts = votes[columns].apply(pd.to_numeric, errors="coerce").to_numpy()
    # FERPlus columns -> canonical classes
    to_canonical = np.array([FERPLUS_TO_CANONICAL[c] for c in FERPLUS_COLUMNS])
    keep, soft = [], []
    for i in range(len(votes)):
        if not votes["image name"][i].strip():
            excluded["not a face (no FERPlus image name)"] = excluded.get("not a face (no FERPlus image name)", 0) + 1
            continue
        if not isinstance(split[i], str):
            problems.append(Problem(where(i), f"unknown Usage {votes['usage'][i]!r}"))
            continue
        if fer_usage is not None and fer_usage[i] != split[i]:
            problems.append(Problem(where(i), f"Usage {votes['usage'][i]!r} differs from fer2013.csv's"))
            continue
        row = counts[i]
        if np.isnan(row).any() or (row < 0).any() or row.sum() == 0:
            problems.append(Problem(where(i), "vote counts are not non-negative numbers"))
            continue
        target = ferplus_distribution(row, mode if split[i] == "train" else "majority")
        if np.argmax(target) >= _UNKNOWN:
            reason = "votes end at unknown or not-a-face"
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        emotions = target[:8] / target[:8].sum()
        canonical = np.zeros(8, dtype=np.float32)
        canonical[to_canonical] = emotions
        keep.append(i)
        soft.append(canonical)
    keep = np.asarray(keep, dtype=np.int64)
    fer_pixels, rows, pixel_problems = parse_pixels(
        fer["pixels"].to_numpy()[keep], lambda j: f"{fer_files[0].name} line {keep[j] + 2}"
    )
    problems += pixel_problems
    report(problems, votes_file, strict)
    keep = keep[rows]
    soft = np.asarray(soft, dtype=np.float32).reshape(-1, 8)[rows]
    # The hard label is the most voted emotion, ties resolved in FERPlus column order (as its reference code).
    ferplus_order = soft[:, to_canonical]
    labels = to_canonical[np.argmax(ferplus_order, axis=1)]
    table = pd.DataFrame(
        {
            "split": split.to_numpy()[keep],
            "label": labels,
            "source": [where(i) for i in keep],
            "row": keep,
        }
    )
    return FaceDataset(
        "ferplus",
        path,
        f"fer2013new.csv + {fer_files[0].name}",
        table,
        8,
        pixels=fer_pixels,
        landmarks=_given_landmarks(fer_files[0], table),
        soft_labels=soft,
        problems=problems,
        excluded=excluded,
        info={"label_mode": mode},
    )


__all__ = ["EMOTIONS", "ferplus_distribution", "parse_pixels", "read_fer2013", "read_ferplus"]
