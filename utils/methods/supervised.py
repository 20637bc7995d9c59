"""Supervised training of a classifier: cross-entropy on augmented faces, the baseline every method is compared
with, and the fine-tuning protocol of the self-supervised ones (the same method started from their backbone).

>>> run = runs.run(SupervisedConfig(backbone="resnet18"), prepared, TrainConfig(epochs=30))   # doctest: +SKIP
>>> run.record["evaluations"]["supervised"]["val"]["accuracy"]                               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..augment import AugmentConfig, BatchAugment
from ..engine import class_weights
from ..evaluation import TTA_MODES
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
    """

    pretrained: bool = False
    stem_stride: int = 1
    dropout: float = 0.0
    label_smoothing: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta: str | None = "flip"

    def __post_init__(self):
        super().__post_init__()
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, not {self.tta!r}")


@register
class Supervised(Method):
    """Cross-entropy on augmented images, optionally class-weighted (``TrainConfig.balance="weights"``) and
    label-smoothed."""

    name = "supervised"
    Config = SupervisedConfig
    kind = "classifier"

    def __init__(self, config: SupervisedConfig, spec):
        super().__init__(config, spec)
        self.encoder = config.encoder(spec, spec.num_classes, pretrained=config.pretrained, dropout=config.dropout)
        self.augment = BatchAugment(config.augment, spec.image_channels)
        self.register_buffer("weights", torch.empty(0), persistent=False)  # (C,) class weights, or empty

    def prepare(self, train, prepared, train_config) -> dict:
        if train_config.balance == "weights":
            self.weights = class_weights(train.y, self.spec.num_classes).to(self.weights.device)
        return {}

    def forward(self, x, y, rows, generator):
        x = self.augment(x, generator)
        logits = self.encoder(x)  # (B, C)
        weight = self.weights if self.weights.numel() else None
        loss = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=self.config.label_smoothing)
        return loss, {"acc": (logits.argmax(dim=1) == y).float().mean().item()}

    def classifier(self):
        return self.encoder
