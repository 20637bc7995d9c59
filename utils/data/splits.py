"""Splits for datasets that lack one (CK+, JAFFE), validation sets carved from train, and per-class subsets.

Every function is deterministic given its ``seed`` and returns a new :class:`FaceDataset` (or array); the
input is never modified. Splits are stratified by label. When the table has a ``subject`` column they are
also subject-independent: all images of a person land on the same side, so a model is never tested on a
face it was trained on. Groups cannot be split, so with few subjects the fractions are only approximate.

How subjects are placed: subjects are visited largest first (ties in seeded random order), and each goes
to the part whose per-class and overall counts it brings closest to the targets (a chi-square-like
criterion), so small parts are not overfilled by one large subject. Each part with a non-zero fraction
receives at least one subject when there are enough subjects.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .base import SPLITS, FaceDataset

SPLIT_NAMES = ("train", "val", "test")


def stratified_split(dataset: FaceDataset, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> FaceDataset:
    """Assign train / val / test to a dataset without an official split (every row's split is ``all``).

    Args:
        dataset: a dataset whose split is ``all`` (CK+, JAFFE).
        fractions: train, val and test fractions (non-negative, summing to 1; val or test may be 0).
        seed: random seed; the same seed gives the same split.

    Returns:
        A copy with the ``split`` column set, stratified by label and, when the table has a ``subject``
        column, subject-independent. ``info["split"]`` records how it was made.

    Raises:
        ValueError: when the dataset already has other splits than ``all``, or the fractions are invalid.
    """
    if set(dataset.table["split"]) != {"all"}:
        raise ValueError(
            f"{dataset.name}: stratified_split needs a dataset whose split is 'all', not {dataset.splits}; "
            "use ensure_val_split to add a validation split to an official train/test split"
        )
    fractions = _check_fractions(fractions, 3)
    groups = _groups(dataset)
    parts = _assign(dataset.labels, groups, fractions, seed)
    out = dataset.with_splits(np.asarray(SPLIT_NAMES)[parts])
    out.info = {
        **dataset.info,
        "split": {
            "method": "stratified_split",
            "fractions": tuple(float(f) for f in fractions),
            "seed": seed,
            "subject_independent": groups is not None,
        },
    }
    return out


def subject_folds(dataset: FaceDataset, n_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Subject-independent cross-validation folds (CK+'s and JAFFE's usual protocol).

    Args:
        dataset: a dataset with a ``subject`` column.
        n_folds: number of folds, at least 2 and at most the number of subjects.
        seed: random seed; the same seed gives the same folds.

    Returns:
        ``(N,)`` int fold id (``0..n_folds-1``) per table row. No subject appears in two folds; labels are
        spread over the folds as evenly as the subjects allow.

    Raises:
        ValueError: when there is no ``subject`` column or fewer subjects than folds.
    """
    if "subject" not in dataset.table:
        raise ValueError(f"{dataset.name}: subject_folds needs a 'subject' column; this dataset has none")
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer of at least 2, not {n_folds!r}")
    groups = _groups(dataset)
    n_subjects = len(np.unique(groups))
    if n_subjects < n_folds:
        raise ValueError(f"{dataset.name}: {n_subjects} subjects cannot fill {n_folds} subject-independent folds")
    return _assign(dataset.labels, groups, np.full(int(n_folds), 1.0 / n_folds), seed)


def ensure_val_split(dataset: FaceDataset, fraction: float = 0.1, seed: int = 0) -> FaceDataset:
    """A dataset that has a validation split, for model selection that never looks at the test split.

    - A ``val`` split already there is kept as it is.
    - With ``train`` but no ``val`` (RAF-DB; AffectNet, whose official validation set is used as the test
      set), ``fraction`` of the train rows become ``val``: stratified by label, subject-independent when
      there is a ``subject`` column. Test rows are untouched.
    - With only ``all`` (CK+, JAFFE): :func:`stratified_split` with fractions
      ``(1 - 2 * fraction, fraction, fraction)``, i.e. 80:10:10 by default.

    Nothing is printed or warned; ``info["val_split"]`` of the returned dataset records what was done.

    Args:
        dataset: any dataset.
        fraction: the share of train (or of all rows) to use for validation, between 0 and 0.5.
        seed: random seed; the same seed gives the same split.

    Returns:
        A new dataset (the input is not modified).

    Raises:
        ValueError: when the dataset has neither a ``val``, a ``train`` nor an ``all`` split.
    """
    if not 0.0 < fraction < 0.5:
        raise ValueError(f"fraction must be between 0 and 0.5, not {fraction!r}")
    present = dataset.splits
    if "val" in present:
        return replace(dataset, info={**dataset.info, "val_split": {"method": "existing"}})
    groups = _groups(dataset)
    if "train" in present:
        train = dataset.split_indices("train")
        parts = _assign(
            dataset.labels[train], None if groups is None else groups[train], (1 - fraction, fraction), seed
        )
        splits = dataset.table["split"].to_numpy(dtype=object).copy()
        splits[train[parts == 1]] = "val"
        out = dataset.with_splits(splits)
        out.info = {
            **dataset.info,
            "val_split": {
                "method": "carved from train",
                "fraction": float(fraction),
                "seed": seed,
                "subject_independent": groups is not None,
                "rows": int((parts == 1).sum()),
            },
        }
        return out
    if present == ["all"]:
        out = stratified_split(dataset, (1 - 2 * fraction, fraction, fraction), seed)
        out.info["val_split"] = {"method": "stratified_split", **out.info["split"]}
        return out
    raise ValueError(f"{dataset.name}: no train or all split to take a validation split from (splits: {present})")


def sample_per_class(dataset: FaceDataset, n: int, seed: int = 0, split: str | None = None) -> FaceDataset:
    """At most ``n`` rows per class, drawn at random (e.g. a class-balanced subset of AffectNet).

    Args:
        dataset: any dataset.
        n: the largest number of rows to keep per class; classes with fewer rows are kept whole.
        seed: random seed. Each (split, class) is drawn with its own seed derived from it, so the rows
            kept in one split do not depend on the other splits.
        split: None to subsample every split separately; a split name to subsample only that split and
            keep the other splits whole.

    Returns:
        A new dataset with the kept rows in their original order; ``info["sampled_per_class"]`` records
        ``n``, ``seed``, ``split`` and the number of rows before sampling.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, not {n!r}")
    if split is not None and split not in dataset.splits:
        raise ValueError(f"{dataset.name}: no split {split!r}; splits are {dataset.splits}")
    keep = _per_class_mask(dataset.table["split"].to_numpy(), dataset.labels, n, seed, split)
    out = dataset.subset(keep)
    out.info["sampled_per_class"] = {"n": int(n), "seed": seed, "split": split, "rows_before": len(dataset)}
    return out


# ----------------------------------------------------------------------------------------------- helpers


def _check_fractions(fractions, k: int) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (k,) or (f < 0).any() or not np.isclose(f.sum(), 1.0) or f[0] <= 0:
        raise ValueError(f"fractions must be {k} non-negative numbers summing to 1 with train > 0, not {fractions!r}")
    return f


def _groups(dataset: FaceDataset) -> np.ndarray | None:
    """The subject of each row as strings (a row without one is its own group), or None without a column."""
    if "subject" not in dataset.table:
        return None
    subject = dataset.table["subject"]
    groups = subject.astype(str).to_numpy(dtype=object)
    missing = subject.isna().to_numpy()
    groups[missing] = [f"\0row {i}" for i in np.flatnonzero(missing)]
    return groups


def _assign(labels: np.ndarray, groups: np.ndarray | None, fractions, seed: int) -> np.ndarray:
    """Part id (index into ``fractions``) per row: stratified by label, groups kept whole."""
    fractions = np.asarray(fractions, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if groups is None:
        return _assign_rows(labels, fractions, rng)
    return _assign_groups(labels, groups, fractions, rng)


def _assign_rows(labels: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each class shuffled and cut at the cumulative fractions (exactly stratified)."""
    parts = np.empty(len(labels), dtype=np.int64)
    cumulative = np.cumsum(fractions)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.floor(cumulative * len(rows) + 0.5).astype(np.int64)
        bounds[-1] = len(rows)
        start = 0
        for part, stop in enumerate(bounds):
            parts[rows[start:stop]] = part
            start = max(start, stop)
    return parts


def _assign_groups(labels: np.ndarray, groups: np.ndarray, fractions: np.ndarray, rng) -> np.ndarray:
    """Greedy placement of whole groups, largest first, each where it best approaches the per-class targets."""
    names, inverse = np.unique(groups.astype(str), return_inverse=True)
    classes, label_ids = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(names), len(classes)))
    np.add.at(counts, (inverse, label_ids), 1.0)
    sizes = counts.sum(axis=1)
    order = rng.permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]

    active = fractions > 0
    target = fractions[:, None] * counts.sum(axis=0)[None, :]  # (parts, classes)
    target_total = fractions * len(labels)
    weight = 1.0 / np.maximum(target, 1e-9)
    weight_total = 1.0 / np.maximum(target_total, 1e-9)
    filled = np.zeros_like(target)
    filled_total = np.zeros_like(target_total)
    group_part = np.empty(len(names), dtype=np.int64)
    for step, g in enumerate(order):
        c = counts[g]
        # change of sum((filled - target)^2 / target) when the group joins each part
        cost = (((2 * (filled - target) + c) * c) * weight).sum(axis=1)
        cost += (2 * (filled_total - target_total) + sizes[g]) * sizes[g] * weight_total
        allowed = active.copy()
        empty = active & (filled_total == 0)
        if empty.sum() >= len(order) - step:  # the last groups go to parts that would stay empty
            allowed = empty
        cost[~allowed] = np.inf
        part = int(np.argmin(cost))
        group_part[g] = part
        filled[part] += c
        filled_total[part] += sizes[g]
    return group_part[inverse]


def _per_class_mask(splits: np.ndarray, labels: np.ndarray, n: int, seed: int, only: str | None = None) -> np.ndarray:
    """Rows to keep so that each (split, class) has at most ``n``: each drawn with its own derived seed."""
    keep = np.ones(len(labels), dtype=bool)
    present = set(np.unique(splits).tolist())
    for name in [only] if only is not None else [s for s in SPLITS if s in present]:
        in_split = splits == name
        for label in np.unique(labels[in_split]):
            rows = np.flatnonzero(in_split & (labels == label))
            if len(rows) > n:
                rng = np.random.default_rng([seed, SPLITS.index(name), int(label)])
                keep[rows] = False
                keep[rng.choice(rows, size=int(n), replace=False)] = True
    return keep


__all__ = ["ensure_val_split", "sample_per_class", "stratified_split", "subject_folds"]
