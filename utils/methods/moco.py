"""MoCo v2 (He et al. 2020; Chen et al. 2020, "Improved baselines with momentum contrastive learning").

A query encoder with a 2-layer MLP head (no batch norm), a key encoder and head that are its exponential
moving average, and InfoNCE of each query against its key (the other augmented view) and a queue of past
keys. Defaults are MoCo v2's (key momentum 0.999, temperature 0.2), with its augmentations adapted to grey
48x48 faces (:data:`utils.core.augment.MOCO_V2_GREY`) and a queue sized for FER datasets (8,192, not 65,536:
FER2013 has 28,709 training images).

Shuffle-BN: the reference code shuffles the key batch across GPUs so that batch-norm statistics cannot
reveal which key belongs to which query. Here the **key** encoder encodes a shuffled batch in
``key_bn_splits`` sub-batches, each normalised with its own statistics (the official CIFAR demo's
SplitBatchNorm does the same); the **query** encoder sees the whole batch at once. Under ``torchrun`` each
process does this locally and the keys of all processes are gathered before they enter the queue, so every
process holds the same queue.

A query's own earlier keys (its image was in an earlier batch still in the queue) are never negatives.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from utils.core import distributed as dist_utils
from utils.core.augment import MOCO_V2_GREY, AugmentConfig, BatchAugment
from utils.methods.heads import frozen_copy, mlp, update_momentum
from utils.methods.losses import info_nce

from .base import EncoderConfig, Method, register


@dataclass
class MoCoConfig(EncoderConfig):
    """MoCo v2's settings.

    Attributes:
        dim: embedding size of the contrastive head (MoCo: 128).
        hidden: hidden width of the head (MoCo v2: the backbone's feature size, 512 for ResNet-18).
        queue_size: negatives kept. Any size works; more than the training set holds several keys per image.
        key_momentum: the key encoder's EMA rate (MoCo v2: 0.999; for runs of ~1,500 steps, 30 CPU-minutes
            on FER2013, 0.99: with 0.999 the key encoder, time constant 1,000 steps, barely leaves its start).
        temperature: InfoNCE temperature (MoCo v2: 0.2).
        key_bn_splits: sub-batches of the shuffled key batch (the single-device shuffle-BN substitute).
        augment: the two views' augmentation.
    """

    dim: int = 128
    hidden: int = 512
    queue_size: int = 8192
    key_momentum: float = 0.999
    temperature: float = 0.2
    key_bn_splits: int = 4
    augment: AugmentConfig = field(default_factory=lambda: MOCO_V2_GREY)


@register
class MoCo(Method):
    """MoCo v2: query encoder + head, momentum key encoder + head, a queue of negative keys."""

    name = "moco_v2"
    Config = MoCoConfig
    train_defaults = {"lr": 0.06, "weight_decay": 1e-4, "warmup_epochs": 1.0, "batch_size": 256}

    def __init__(self, config: MoCoConfig, spec):
        super().__init__(config, spec)
        self.augment = BatchAugment(config.augment, spec.image_channels)
        self.encoder = config.encoder(spec)
        self.projector, self.predictor = self.heads(self.encoder.feature_dim)
        self.key_encoder = frozen_copy(self.encoder)
        self.key_projector = frozen_copy(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.dim), dim=1))  # (K, dim)
        self.register_buffer("queue_rows", torch.full((config.queue_size,), -1, dtype=torch.long))  # (K,) image ids
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def heads(self, feature_dim: int) -> tuple[nn.Module, nn.Module]:
        """``(projector, predictor)``: MoCo v2's 2-layer head without batch norm, no predictor."""
        return mlp(feature_dim, self.config.hidden, self.config.dim, layers=2), nn.Identity()

    def check_sizes(self, dataset_size: int, global_batch: int) -> None:
        if self.config.queue_size > dataset_size:
            warnings.warn(
                f"the queue ({self.config.queue_size}) is larger than the dataset ({dataset_size}): it holds several "
                "keys of every image; a query's own image (and, for HNCL, its neighbours) is masked out of the "
                "negatives, but consider a smaller queue_size",
                stacklevel=2,
            )

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.predictor(self.projector(self.encoder(x))).float(), dim=1)  # (B, dim)

    @torch.no_grad()
    def keys(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Key embeddings ``(B, dim)``: shuffled, encoded in ``key_bn_splits`` sub-batches, unshuffled."""
        order = torch.randperm(len(x), device=x.device, generator=generator)
        chunks = x[order].chunk(max(1, min(self.config.key_bn_splits, len(x) // 2)))
        k = torch.cat([self.key_projector(self.key_encoder(c)) for c in chunks])
        return F.normalize(k[torch.argsort(order)].float(), dim=1)

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
        own = self.queue_rows[None, :] == rows[:, None]  # (B, K): earlier keys of the query's own image
        return info_nce(q, k, self.queue.clone(), self.config.temperature, own), {}

    def forward(self, x, y, rows, generator):
        q = self.query(self.augment(x, generator))  # (B, dim)
        k = self.keys(self.augment(x, generator), generator)  # (B, dim)
        loss, logs = self.contrastive_loss(q, k, rows)
        self.remember(dist_utils.gather(k), dist_utils.gather(rows))
        with torch.no_grad():
            logs["pos_sim"] = float((q * k).sum(dim=1).mean())
        return loss, logs

    @torch.no_grad()
    def remember(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Enqueue the keys of the whole (global) batch in place of the oldest, wrapping around the end; a batch
        of any size works (the last, shorter batch of an epoch included)."""
        size = self.config.queue_size
        keys, rows = keys[-size:], rows[-size:]  # a batch larger than the queue keeps its last keys
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(len(keys), device=keys.device)) % size  # (n,)
        self.queue[slots] = keys
        self.queue_rows[slots] = rows
        self.queue_ptr.fill_((ptr + len(keys)) % size)

    def after_step(self, progress: float) -> None:
        update_momentum(
            [(self.encoder, self.key_encoder), (self.projector, self.key_projector)], self.config.key_momentum
        )
