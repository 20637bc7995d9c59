"""Splits: subject independence, stratification, fractions and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.data import FaceDataset, ensure_val_split, sample_per_class, stratified_split, subject_folds


def dataset(n_subjects=40, split="all", subjects=True, seed=0, n_classes=7):
    """Subjects of 2-12 images each, labels drawn per image."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        for _ in range(rng.integers(2, 13)):
            rows.append((split, int(rng.integers(0, n_classes)), f"S{s:03d}"))
    table = pd.DataFrame(rows, columns=["split", "label", "subject"])
    table["source"] = [f"row {i}" for i in range(len(table))]
    if not subjects:
        table = table.drop(columns="subject")
    return FaceDataset("synthetic", Path("."), "test", table, n_classes)


def subjects_by_split(ds):
    return {s: set(ds.table.loc[ds.table["split"] == s, "subject"]) for s in ds.splits}


def test_stratified_split_is_subject_independent_and_near_fractions():
    ds = dataset()
    out = stratified_split(ds, (0.8, 0.1, 0.1), seed=0)
    groups = subjects_by_split(out)
    assert out.splits == ["train", "val", "test"]
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not groups[a] & groups[b]
    sizes = out.split_sizes()
    assert abs(sizes["train"] / len(ds) - 0.8) < 0.06
    assert abs(sizes["val"] / len(ds) - 0.1) < 0.04
    assert abs(sizes["test"] / len(ds) - 0.1) < 0.04
    assert len(out) == len(ds) and list(out.table["source"]) == list(ds.table["source"])  # rows unchanged
    assert set(ds.table["split"]) == {"all"}  # input untouched
    assert out.info["split"]["subject_independent"] is True


def test_stratified_split_without_subjects_is_stratified():
    ds = dataset(n_subjects=200, subjects=False)
    out = stratified_split(ds, (0.7, 0.15, 0.15), seed=1)
    counts = out.counts_frame()
    per_class = counts.drop(index="total")
    share = per_class["train"] / per_class.sum(axis=1)
    assert ((share - 0.7).abs() < 0.03).all()
    assert abs(out.split_sizes()["test"] / len(ds) - 0.15) < 0.01


def test_stratified_split_deterministic_by_seed():
    ds = dataset()
    a = stratified_split(ds, seed=5).table["split"].tolist()
    b = stratified_split(ds, seed=5).table["split"].tolist()
    c = stratified_split(ds, seed=6).table["split"].tolist()
    assert a == b and a != c


def test_stratified_split_needs_all():
    with pytest.raises(ValueError, match="all"):
        stratified_split(dataset(split="train"))
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(dataset(), (0.5, 0.2, 0.2))


def test_subject_folds():
    ds = dataset(n_subjects=45)
    folds = subject_folds(ds, n_folds=10, seed=0)
    assert folds.shape == (len(ds),) and set(folds) == set(range(10))
    fold_of = {}
    for subject, fold in zip(ds.table["subject"], folds):
        assert fold_of.setdefault(subject, fold) == fold  # a subject lives in exactly one fold
    sizes = np.bincount(folds)
    assert sizes.min() > 0.5 * len(ds) / 10 and sizes.max() < 1.5 * len(ds) / 10
    assert (subject_folds(ds, 10, seed=0) == folds).all()
    assert not (subject_folds(ds, 10, seed=1) == folds).all()
    with pytest.raises(ValueError, match="subject"):
        subject_folds(dataset(subjects=False))
    with pytest.raises(ValueError, match="subjects"):
        subject_folds(dataset(n_subjects=5), n_folds=10)


def test_ensure_val_split_carves_from_train():
    ds = dataset(n_subjects=300, subjects=False)
    splits = np.where(np.arange(len(ds)) % 5 == 0, "test", "train")
    ds = ds.with_splits(splits)
    out = ensure_val_split(ds, fraction=0.1, seed=0)
    assert out.splits == ["train", "val", "test"]
    assert (out.table["split"] == "test").sum() == (ds.table["split"] == "test").sum()
    assert (out.table.loc[ds.table["split"] == "test", "split"] == "test").all()  # test untouched
    n_train = (ds.table["split"] == "train").sum()
    assert abs(out.split_sizes()["val"] - 0.1 * n_train) <= 7  # per-class rounding
    assert out.info["val_split"]["method"] == "carved from train"
    assert "val_split" not in ds.info and ds.splits == ["train", "test"]
    again = ensure_val_split(ds, fraction=0.1, seed=0)
    assert again.table["split"].tolist() == out.table["split"].tolist()


def test_ensure_val_split_subject_independent_from_train():
    ds = dataset(n_subjects=60)
    ds = ds.with_splits(np.where(ds.table["subject"] < "S010", "test", "train"))
    out = ensure_val_split(ds, 0.1, seed=2)
    groups = subjects_by_split(out)
    assert not groups["train"] & groups["val"]
    assert groups["test"] == subjects_by_split(ds)["test"]
    assert out.info["val_split"]["subject_independent"] is True


def test_ensure_val_split_keeps_existing_and_splits_all():
    ds = dataset(split="train")
    ds = ds.with_splits(np.where(np.arange(len(ds)) % 10 == 0, "val", "train"))
    kept = ensure_val_split(ds)
    assert kept.table["split"].tolist() == ds.table["split"].tolist()
    assert kept.info["val_split"]["method"] == "existing"
    out = ensure_val_split(dataset())
    assert out.splits == ["train", "val", "test"]
    assert abs(out.split_sizes()["train"] / len(out) - 0.8) < 0.06
    with pytest.raises(ValueError):
        ensure_val_split(dataset(split="test"))


def test_ensure_val_split_is_silent(recwarn, capsys):
    ensure_val_split(dataset())
    ensure_val_split(dataset(split="train"))
    assert len(recwarn) == 0
    assert capsys.readouterr() == ("", "")


def test_sample_per_class():
    ds = dataset(n_subjects=100, split="train")
    ds = ds.with_splits(np.where(np.arange(len(ds)) % 3 == 0, "test", "train"))
    out = sample_per_class(ds, 5, seed=0)
    for split, counts in out.counts().items():
        full = ds.counts()[split]
        for name, n in counts.items():
            assert n == min(5, full[name])
    assert sample_per_class(ds, 5, seed=0).table["source"].tolist() == out.table["source"].tolist()
    assert sample_per_class(ds, 5, seed=1).table["source"].tolist() != out.table["source"].tolist()
    only_train = sample_per_class(ds, 5, seed=0, split="train")
    assert only_train.split_sizes()["test"] == ds.split_sizes()["test"]
    assert max(only_train.counts()["train"].values()) == 5
    # rows keep their original order
    positions = [int(s.split()[1]) for s in out.table["source"]]
    assert positions == sorted(positions)
