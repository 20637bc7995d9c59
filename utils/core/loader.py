"""Batches from preprocessed faces, held as one uint8 tensor on the training device.

FER datasets are small enough to sit in memory (FER2013 with a heatmap channel: 149 MB), so instead of a
``DataLoader`` decoding files in worker processes, a split is converted once to ``(N, C, H, W)`` uint8 on
the device and batches are slices of it, augmented there (:mod:`utils.core.augment`). Shuffling and sampling
use a generator seeded by ``(seed, epoch)``, so an epoch's batches are the same after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.core.augment import BatchAugment

CHANNELS = ("gray", "gray+heatmap", "gray+centre", "rgb", "rgb+heatmap")
"""Input channel layouts: the image, optionally followed by a landmark or centred heatmap channel."""


def channel_count(channels: str) -> int:
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, not {channels!r}")
    return (3 if channels.startswith("rgb") else 1) + ("+" in channels)


@dataclass
class FaceTensors:
    """One split as tensors: ``x`` ``(N, C, H, W)`` uint8, ``y`` ``(N,)`` int64, optional soft labels."""

    x: torch.Tensor
    y: torch.Tensor
    soft: torch.Tensor | None = None
    index: np.ndarray | None = None  # rows in the PreparedFaces they came from
    image_channels: int = 1

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> FaceTensors:
        return FaceTensors(
            self.x.to(device),
            self.y.to(device),
            None if self.soft is None else self.soft.to(device),
            self.index,
            self.image_channels,
        )

    def subset(self, rows) -> FaceTensors:
        rows = torch.as_tensor(np.asarray(rows), device=self.x.device)
        return FaceTensors(
            self.x[rows],
            self.y[rows],
            None if self.soft is None else self.soft[rows],
            None if self.index is None else self.index[rows.cpu().numpy()],
            self.image_channels,
        )


def face_tensors(prepared, split: str | None = None, channels: str = "gray", device="cpu") -> FaceTensors:
    """The images of ``split`` (all when None) of a :class:`~utils.data.faces.PreparedFaces` as tensors.

    Args:
        channels: one of :data:`CHANNELS`: ``gray+heatmap`` adds the landmark heatmap channel,
            ``gray+centre`` the seed project's centred Gaussian (the same for every image).
    """
    channel_count(channels)
    rows = np.arange(len(prepared)) if split is None else prepared.split_indices(split)
    images = prepared.images[rows]
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    if channels.startswith("gray") and images.shape[1] == 3:
        raise ValueError("the faces were prepared in RGB; use channels 'rgb' or 'rgb+heatmap'")
    if channels.startswith("rgb") and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    parts = [images]
    if channels.endswith("heatmap"):
        parts.append(prepared.heatmap("landmarks")[rows][:, None])
    elif channels.endswith("centre"):
        parts.append(prepared.heatmap("centre")[rows][:, None])
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1)))
    y = torch.from_numpy(prepared.labels[rows].astype(np.int64))
    soft = None if prepared.soft_labels is None else torch.from_numpy(prepared.soft_labels[rows])
    return FaceTensors(x, y, soft, rows, images.shape[1]).to(device)


def epoch_generator(seed: int, epoch: int, device) -> torch.Generator:
    """The generator for one epoch's shuffling and augmentation, the same on every (re)run."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 100_003 + epoch)  # distinct seeds per epoch
    return g


class BatchLoader:
    """Iterate over a :class:`FaceTensors` in (augmented) float batches.

    Args:
        data: the split, already on the training device.
        batch_size: images per batch.
        shuffle: a new order each epoch.
        augment: a :class:`~utils.core.augment.BatchAugment`, or None.
        balanced: sample classes equally (with replacement, ``len(data)`` images per epoch).
        drop_last: skip the last incomplete batch (training).
        seed: base seed; :meth:`set_epoch` selects the epoch.

    Yields:
        ``(x, y, rows)``: float ``(B, C, H, W)`` in ``[0, 1]``, labels, and row positions in ``data``.
    """

    def __init__(
        self,
        data: FaceTensors,
        batch_size: int,
        shuffle: bool = False,
        augment: BatchAugment | None = None,
        balanced: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ):
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.balanced = balanced
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.data)
        device = self.data.x.device
        if self.balanced:
            counts = torch.bincount(self.data.y, minlength=int(self.data.y.max()) + 1).float()
            weights = (1.0 / counts.clamp(min=1))[self.data.y]
            return torch.multinomial(weights, n, replacement=True, generator=generator)
        if self.shuffle:
            return torch.randperm(n, device=device, generator=generator)
        return torch.arange(n, device=device)

    def __iter__(self):
        generator = epoch_generator(self.seed, self.epoch, self.data.x.device)
        order = self.order(generator)
        for b in range(len(self)):
            rows = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.data.x[rows].float().div_(255)
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, self.data.y[rows], rows
