"""Supervised training of a classifier: cross-entropy on augmented faces, the baseline every method is compared
with, and the fine-tuning protocol of the self-supervised ones (the same method started from their backbone).

>>> run = runs.run(SupervisedConfig(backbone="resnet18"), prepared, TrainConfig(epochs=30))   # doctest: +SKIP
>>> run.record["evaluations"]["supervised"]["val"]["accuracy"]                               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..augment import AugmentConfig, BatchAugment
from ..engine import class_weights
from ..evaluation import TTA_MODES
from ..losses import LABEL_MODES, label_loss
from .base import EncoderConfig, Method, register


@dataclass
class SupervisedConfig(EncoderConfig):
    """A classifier and how it is trained.

    Attributes:
        pretrained: start from torchvision's ImageNet weights (the seed project's "ResNet-50 (T)").
        stem_stride: 1 by default here (full resolution); 2 is the CPU-budget setting.
        dropout: dropout before the classifier.
        label_smoothing: cross-entropy label smoothing.
        augment: training augmentation.
        tta: test-time augmentation of the final evaluation (None, ``flip``, ``tencrop``).
        targets: what the loss trains on (:data:`utils.losses.LABEL_MODES`): ``majority`` (the hard label), or
            FERPlus's ``crossentropy``, ``probability`` and ``multi_target`` on the vote distributions of a
            dataset read with the same mode (``load_dataset("ferplus", path, mode=...)``). Evaluation is always
            on the majority label.
    """

    pretrained: bool = False
    stem_stride: int = 1
    dropout: float = 0.0
    label_smoothing: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta: str | None = "flip"
    targets: str = "majority"

    def __post_init__(self):
        super().__post_init__()
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, not {self.tta!r}")
        if self.targets not in LABEL_MODES:
            raise ValueError(f"targets must be one of {LABEL_MODES}, not {self.targets!r}")


@register
class Supervised(Method):
    """Cross-entropy on augmented images, optionally class-weighted (``TrainConfig.balance="weights"``) and
    label-smoothed, on hard labels or on label distributions (``targets``)."""

    name = "supervised"
    Config = SupervisedConfig
    kind = "classifier"

    def __init__(self, config: SupervisedConfig, spec):
        super().__init__(config, spec)
        self.build(config, spec)
        self.augment = BatchAugment(config.augment, spec.image_channels)
        self.register_buffer("weights", torch.empty(0), persistent=False)  # (C,) class weights, or empty
        self.register_buffer("distributions", torch.empty(0), persistent=False)  # (N, C) training targets

    def build(self, config: SupervisedConfig, spec) -> None:
        """Create the networks: here a backbone with a linear head (a method built on this one, RAN, adds its
        own)."""
        self.encoder = config.encoder(spec, spec.num_classes, pretrained=config.pretrained, dropout=config.dropout)

    def prepare(self, train, prepared, train_config) -> dict:
        if train_config.balance == "weights":
            self.weights = class_weights(train.y, self.spec.num_classes).to(self.weights.device)
        if self.config.targets != "majority":
            if train.soft is None:
                raise ValueError(
                    f"targets={self.config.targets!r} trains on label distributions, and {prepared.name} has none: "
                    "read FERPlus with the same mode (load_dataset('ferplus', path, mode=...))"
                )
            self.distributions = train.soft.float().to(self.weights.device)
        return {}

    def loss(self, logits: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, generator) -> torch.Tensor:
        """The classification loss of a batch under the configured ``targets``."""
        return label_loss(
            logits,
            y,
            self.distributions[rows] if self.distributions.numel() else None,
            self.config.targets,
            generator,
            self.weights if self.weights.numel() else None,
            self.config.label_smoothing,
        )

    def forward(self, x, y, rows, generator):
        x = self.augment(x, generator)
        logits = self.encoder(x)  # (B, C)
        loss = self.loss(logits, y, rows, generator)
        return loss, {"acc": (logits.argmax(dim=1) == y).float().mean().item()}

    def classifier(self):
        return self.encoder
