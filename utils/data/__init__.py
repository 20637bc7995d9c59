"""Dataset readers: every supported FER dataset, read in its own published layouts, labelled in the one
canonical order of :mod:`utils.data.labels`.

>>> from utils.data import load_dataset
>>> ds = load_dataset("fer2013", "data/fer2013")      # doctest: +SKIP
>>> ds.counts()["train"]["disgust"]                     # doctest: +SKIP
436

From a shell, ``python -m utils.data check DATASET PATH [--json] [--strict]`` prints per-split, per-class
counts (see :mod:`utils.data.__main__`).
"""

from __future__ import annotations

from pathlib import Path

from .affectnet import read_affectnet
from .base import SPLITS, DatasetError, FaceDataset, Problem, read_image
from .ckplus import read_ckplus
from .export import export_image_folders, imagefolder_to_canonical
from .fer2013 import ferplus_distribution, read_fer2013, read_ferplus
from .folder import read_faces
from .jaffe import read_jaffe
from .rafdb import read_rafdb
from .splits import ensure_val_split, sample_per_class, stratified_split, subject_folds

READERS = {
    "fer2013": read_fer2013,
    "ferplus": read_ferplus,
    "rafdb": read_rafdb,
    "ckplus": read_ckplus,
    "affectnet": read_affectnet,
    "jaffe": read_jaffe,
    "faces": read_faces,  # any folder of face images without labels: pretraining data
}
"""Registry: dataset name -> reader. Every reader takes ``(path, strict=False, **options)``."""


def load_dataset_or_sample(name: str, path, quick: bool | None = None, **options) -> tuple[FaceDataset, bool]:
    """Read ``name`` from ``path``; in quick mode, or when nothing is there, the bundled sample instead.

    The fallback is announced loudly: the sample is synthetic, and results on it say nothing about real
    faces.

    Returns:
        ``(dataset, on_sample)``. The sample is named ``"sample"``, so its caches and runs never pass
        for the real dataset's.
    """
    from utils.core.runtime import SAMPLE_DIR, banner, quick_mode

    quick = quick_mode() if quick is None else quick
    reason = None
    if quick:
        reason = "QUICK MODE (FER_QUICK=1): running on the bundled synthetic sample with tiny settings."
    else:
        try:
            return load_dataset(name, path, **options), False
        except DatasetError as e:
            reason = (
                f"DATASET NOT FOUND: {e}\n"
                "Falling back to the bundled SYNTHETIC sample (data/sample), with quick settings.\n"
                "Results on it say nothing about real faces. See data/README.md for where datasets go."
            )
    banner(reason)
    if name.lower() == "ferplus":  # the sample's made-up votes: FERPlus's 8 classes and label modes
        sample = read_ferplus(SAMPLE_DIR, **options)
        sample.name = "sample-ferplus"
        return sample, True
    sample = read_fer2013(SAMPLE_DIR)
    sample.name = "sample"
    return sample, True


def load_dataset(name: str, path, strict: bool = False, **options) -> FaceDataset:
    """Read dataset ``name`` (a key of :data:`READERS`) from ``path``; ``options`` go to its reader."""
    key = name.strip().lower().replace("-", "").replace("+", "plus").replace("_", "")
    key = {"ck": "ckplus", "raf": "rafdb", "fer": "fer2013", "ferplus": "ferplus"}.get(key, key)
    if key not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(READERS)}")
    return READERS[key](Path(path), strict=strict, **options)


__all__ = [
    "READERS",
    "SPLITS",
    "DatasetError",
    "FaceDataset",
    "Problem",
    "ensure_val_split",
    "export_image_folders",
    "imagefolder_to_canonical",
    "ferplus_distribution",
    "load_dataset",
    "load_dataset_or_sample",
    "read_affectnet",
    "read_ckplus",
    "read_faces",
    "read_fer2013",
    "read_ferplus",
    "read_image",
    "read_jaffe",
    "read_rafdb",
    "sample_per_class",
    "stratified_split",
    "subject_folds",
]
