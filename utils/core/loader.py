"""Batches from preprocessed faces, held as one uint8 tensor on the training device, or streamed from the store.

FER datasets are small enough to sit in memory (FER2013 with a heatmap channel: 149 MB), so instead of a
``DataLoader`` decoding files in worker processes, a split is converted once to ``(N, C, H, W)`` uint8 on
the device and batches are slices of it, augmented there (:mod:`utils.core.augment`). Shuffling and sampling
use a generator seeded by ``(seed, epoch)``, so an epoch's batches are the same after a resume.

A split too large for that (a million faces: 4.6 GB with the heatmaps; see :func:`streams`) is read from the
memory-mapped face store instead (:class:`MappedFaces`): each batch reads its rows when it is drawn, in
shuffled blocks of neighbouring rows (:attr:`BatchLoader.block`), so the pages read are few and memory stays
flat however many faces there are. Under ``torchrun`` each process reads only its own share of every batch.
"""

from __future__ import annotations

import os
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


class MappedFaces:
    """The ``x`` of a split too large for memory: ``(N, C, H, W)`` uint8 rows, read from the store when indexed.

    Indexing it with row positions (a tensor, array or slice) reads those faces (and heatmaps) from the
    memory-mapped arrays, in storage order, and returns a uint8 tensor on ``device``.
    """

    def __init__(self, prepared, rows: np.ndarray, channels: str, device="cpu"):
        self.prepared, self.rows, self.channels = prepared, np.asarray(rows, dtype=np.int64), channels
        self.device = torch.device(device)
        side = prepared.images.shape[1]
        self.image_channels = 3 if channels.startswith("rgb") else 1
        self.shape = (len(self.rows), channel_count(channels), side, side)
        self.dtype = torch.uint8

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device) -> MappedFaces:
        return MappedFaces(self.prepared, self.rows, self.channels, device)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        positions = np.arange(*index.indices(len(self.rows))) if isinstance(index, slice) else np.asarray(index)
        return _stack_channels(self.prepared, self.rows[positions], self.channels).to(self.device)


def streams(nbytes: int, device) -> bool:
    """Whether a split of ``nbytes`` is streamed from the store rather than held as one tensor.

    ``FER_STREAM=1`` or ``0`` decides; otherwise a split streams when it would take more than a quarter of
    the machine's memory (of the GPU's, on CUDA).
    """
    forced = os.environ.get("FER_STREAM", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    device = torch.device(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # no sysconf (Windows): assume 8 GB
            total = 8 << 30
    return nbytes > total // 4


def split_rows(prepared, split) -> np.ndarray:
    """Positions of the rows of ``split`` (a name, several names, or None for all) in ``prepared``."""
    if split is None:
        return np.arange(len(prepared))
    if isinstance(split, str):
        return prepared.split_indices(split)
    return np.flatnonzero(np.isin(prepared.splits, list(split)))


def _stack_channels(prepared, rows: np.ndarray, channels: str) -> torch.Tensor:
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
        parts.append(np.asarray(prepared.heatmap("centre")[rows])[:, None])
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1)))


def face_tensors(prepared, split=None, channels: str = "gray", device="cpu", stream: bool | None = None) -> FaceTensors:
    """The images of ``split`` (a name, several names, or None for all) of a
    :class:`~utils.data.faces.PreparedFaces` as tensors.

    Args:
        channels: one of :data:`CHANNELS`: ``gray+heatmap`` adds the landmark heatmap channel,
            ``gray+centre`` the seed project's centred Gaussian (the same for every image).
        stream: read batches from the store (:class:`MappedFaces`) instead of holding the split in memory;
            None: when the split is too large for memory (:func:`streams`).
    """
    channel_count(channels)
    rows = split_rows(prepared, split)
    side = prepared.images.shape[1]
    stored_channels = 3 if prepared.images.ndim == 4 else 1
    if channels.startswith("gray") and stored_channels == 3:
        raise ValueError("the faces were prepared in RGB; use channels 'rgb' or 'rgb+heatmap'")
    y = torch.from_numpy(np.asarray(prepared.labels[rows]).astype(np.int64))
    soft = None if prepared.soft_labels is None else torch.from_numpy(np.asarray(prepared.soft_labels[rows]))
    if stream is None:
        stream = streams(len(rows) * channel_count(channels) * side * side, device)
    if stream:
        x = MappedFaces(prepared, rows, channels, device)
        return FaceTensors(x, y.to(device), None if soft is None else soft.to(device), rows, x.image_channels)
    x = _stack_channels(prepared, rows, channels)
    return FaceTensors(x, y, soft, rows, stored_channels if not channels.startswith("rgb") else 3).to(device)


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
        shard: ``(rank, world)``: this process's share of every batch (``torchrun``): the batch's rows are drawn
            alike on every process, and each reads only its own ``batch_size // world`` of them.

    Yields:
        ``(x, y, rows)``: float ``(B, C, H, W)`` in ``[0, 1]``, labels, and row positions in ``data``.
    """

    block = 4096
    """Streamed data (:class:`MappedFaces`) is shuffled in blocks of this many neighbouring rows: the blocks in a
    random order, then the rows of every :attr:`window` blocks mixed, so that a batch reads from a few places."""
    window = 8

    def __init__(
        self,
        data: FaceTensors,
        batch_size: int,
        shuffle: bool = False,
        augment: BatchAugment | None = None,
        balanced: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ):
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.balanced = balanced
        self.drop_last = drop_last
        self.seed = seed
        self.shard = shard
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
        if self.shuffle and isinstance(self.data.x, MappedFaces):
            return block_shuffle(n, self.block, self.window, generator).to(device)
        if self.shuffle:
            return torch.randperm(n, device=device, generator=generator)
        return torch.arange(n, device=device)

    def __iter__(self):
        generator = epoch_generator(self.seed, self.epoch, self.data.x.device)
        order = self.order(generator)
        for b in range(len(self)):
            rows = order[b * self.batch_size : (b + 1) * self.batch_size]
            rank, world = self.shard
            if world > 1:
                share = len(rows) // world
                rows = rows[rank * share : (rank + 1) * share]
            x = self.data.x[rows].float().div_(255)
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, self.data.y[rows], rows


def block_shuffle(n: int, block: int, window: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of ``range(n)`` that reads from few places at a time: blocks of ``block`` neighbouring rows
    in a random order, the rows of each group of ``window`` consecutive blocks mixed among themselves."""
    gen = generator if generator.device.type == "cpu" else torch.Generator().manual_seed(generator.initial_seed())
    starts = torch.randperm(-(-n // block), generator=gen) * block
    pieces = []
    for w in range(0, len(starts), window):
        rows = torch.cat([torch.arange(int(s), min(n, int(s) + block)) for s in starts[w : w + window]])
        pieces.append(rows[torch.randperm(len(rows), generator=gen)])
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)
