"""Export a dataset to ``<split>/<class>/<image>.png`` folders (the seed project's first step).

Folder-per-class trees are what ``torchvision.datasets.ImageFolder`` and most FER tutorials read. Class
folders carry the canonical names, but note that ``ImageFolder`` numbers them alphabetically (angry 0,
disgust 1, fear 2, happy 3, neutral 4, sad 5, surprise 6), not in the canonical order: use
:func:`imagefolder_to_canonical` to map its targets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from utils.core.runtime import show_progress
from utils.data.labels import EMOTIONS

from .base import FaceDataset

_DONE = ".export-complete"


def export_image_folders(dataset: FaceDataset, folder, overwrite: bool = False, progress: bool = True) -> Path:
    """Write every image of ``dataset`` as a lossless PNG into ``folder/<split>/<class>/``.

    The export is written to ``<folder>.partial`` and renamed when complete, so an interrupted export
    is redone rather than half-used. An existing complete export is kept unless ``overwrite``.

    Returns:
        ``folder``.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    if (folder / _DONE).is_file() and not overwrite:
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for split in dataset.splits:
        for name in dataset.classes:
            (partial / split / name).mkdir(parents=True, exist_ok=True)
    width = len(str(len(dataset)))
    table = dataset.table
    for i in tqdm(
        range(len(dataset)), desc=f"exporting {dataset.name}", disable=not show_progress(progress), mininterval=1.0
    ):
        split, label = table.at[i, "split"], table.at[i, "label"]
        stem = Path(table.at[i, "path"]).stem if "path" in table else f"{i:0{width}d}"
        image = dataset.image(i)
        Image.fromarray(np.asarray(image)).save(partial / split / EMOTIONS[label] / f"{stem}.png")
    (partial / _DONE).write_text(f"{len(dataset)} images\n")
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder


def imagefolder_to_canonical(class_names) -> dict[int, int]:
    """Map ``ImageFolder``'s alphabetical class indices to canonical ids, from its ``classes`` list."""
    from utils.data.labels import folder_label

    mapping = {}
    for index, name in enumerate(class_names):
        label = folder_label(name)
        if label is None:
            raise ValueError(f"folder {name!r} is not an expression name")
        mapping[index] = label
    return mapping
