"""Supervised training of a classifier: cross-entropy on augmented faces, the baseline every method is compared
with, and the fine-tuning protocol of the self-supervised ones (the same method started from their backbone).

>>> run = runs.run(SupervisedConfig(backbone="resnet18"), prepared, TrainConfig(epochs=30))   # doctest: +SKIP
>>> run.record["evaluations"]["supervised"]["val"]["accuracy"]                               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from utils.core.augment import MIX_MODES, AugmentConfig, BatchAugment, mix_batch
from utils.core.engine import class_weights
from utils.evaluation.metrics import TTA_MODES
from utils.methods.losses import LABEL_MODES, label_loss

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
        targets: what the loss trains on (:data:`utils.methods.losses.LABEL_MODES`): ``majority`` (the hard label), or
            FERPlus's ``crossentropy``, ``probability`` and ``multi_target`` on the vote distributions of a
            dataset read with the same mode (``load_dataset("ferplus", path, mode=...)``). Evaluation is always
            on the majority label.
        mix: ``mixup`` or ``cutmix`` (:func:`utils.core.augment.mix_batch`) after the augmentation, or None.
        mix_alpha: the mixing share is drawn from Beta(mix_alpha, mix_alpha) (DeiT's recipe: mixup 0.8,
            cutmix 1.0).
        mix_prob: share of the batches that are mixed.
        resize_from: progressive resizing (as FFCV's ImageNet recipes): training images start at this side in
            pixels, after the augmentation, and grow in steps of 8 px to the full side, reached at
            ``resize_until`` of the schedule (a share); evaluation is always at the full side. A step at 32 of
            48 px costs (32/48)^2 of a full one, and a time budget's schedule is fitted with that
            (:meth:`Supervised.step_cost`; fixed costs such as the augmentation at full size make a 32-px step
            take about 0.57 of a full one on a 2-core CPU, and the budget's re-fits correct for that). None:
            full size throughout. On FER2013 in 30 CPU-minutes it fitted 14 epochs instead of 11 and still
            ended below full size (the README's lever table): the network trained at 32 px scores poorly on
            48-px faces, and a quarter of the schedule at full size did not catch up.
        resize_until: share of the schedule after which training images are full size.
    """

    pretrained: bool = False
    stem_stride: int = 1
    dropout: float = 0.0
    label_smoothing: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta: str | None = "flip"
    targets: str = "majority"
    mix: str | None = None
    mix_alpha: float = 1.0
    mix_prob: float = 1.0
    resize_from: int | None = None
    resize_until: float = 0.75

    def __post_init__(self):
        super().__post_init__()
        if self.mix is not None and self.mix not in MIX_MODES:
            raise ValueError(f"mix must be None or one of {MIX_MODES}, not {self.mix!r}")
        if self.mix_alpha <= 0 or not 0.0 <= self.mix_prob <= 1.0:
            raise ValueError(
                f"mix_alpha must be positive and mix_prob in [0, 1], not {self.mix_alpha}, {self.mix_prob}"
            )
        if self.resize_from is not None and self.resize_from < RESIZE_STEP:
            raise ValueError(f"resize_from is a side in pixels, at least {RESIZE_STEP}, not {self.resize_from!r}")
        if not 0.0 < self.resize_until <= 1.0:
            raise ValueError(f"resize_until is a share of the schedule in (0, 1], not {self.resize_until!r}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, not {self.tta!r}")
        if self.targets not in LABEL_MODES:
            raise ValueError(f"targets must be one of {LABEL_MODES}, not {self.targets!r}")


RESIZE_STEP = 8  # progressive resizing grows the training images in steps of this many pixels


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
        if config.resize_from is not None and config.resize_from >= spec.input_size:
            raise ValueError(
                f"resize_from={config.resize_from} must be smaller than the images' side, {spec.input_size} px"
            )
        self.progress = 0.0  # share of the schedule done, for progressive resizing

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

    def before_step(self, progress: float) -> None:
        self.progress = progress

    def train_side(self, progress: np.ndarray) -> np.ndarray:
        """The side of the training images at these shares of the schedule (progressive resizing)."""
        full, start = self.spec.input_size, self.config.resize_from
        progress = np.asarray(progress, dtype=np.float64)
        if start is None:
            return np.full_like(progress, full, dtype=np.int64)
        grown = RESIZE_STEP * np.floor((full - start) * progress / self.config.resize_until / RESIZE_STEP)
        return np.where(progress >= self.config.resize_until, full, np.minimum(full, start + grown)).astype(np.int64)

    def step_cost(self, progress: np.ndarray) -> np.ndarray:
        """A step's compute relative to a full-size one: the share of the pixels (the convolutions' cost)."""
        return (self.train_side(progress) / self.spec.input_size) ** 2

    def inputs(self, x: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """A training batch as the network sees it: augmented, resized to :meth:`train_side` (antialiased) and
        mixed; returns ``(x, partner, lam)`` as :meth:`mix`."""
        x = self.augment(x, generator)
        side = int(self.train_side(self.progress))
        if side != x.shape[-1]:
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        return self.mix(x, generator)

    def mix(self, x: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """``(x, partner, lam)``: the batch mixed as configured, or ``(x, None, 1.0)`` when it is not."""
        cfg = self.config
        if cfg.mix is None or cfg.mix_prob == 0.0:
            return x, None, 1.0
        if cfg.mix_prob < 1.0 and float(torch.rand(1, device=x.device, generator=generator)) >= cfg.mix_prob:
            return x, None, 1.0
        return mix_batch(x, generator, cfg.mix, cfg.mix_alpha)

    def mixed_loss(self, logits, y, rows, generator, partner: torch.Tensor | None, lam: float) -> torch.Tensor:
        """The loss of a batch mixed by :meth:`mix`: ``lam`` times that of its labels plus ``1 - lam`` times
        that of its partners' labels."""
        loss = self.loss(logits, y, rows, generator)
        if partner is None:
            return loss
        return lam * loss + (1.0 - lam) * self.loss(logits, y[partner], rows[partner], generator)

    def forward(self, x, y, rows, generator):
        x, partner, lam = self.inputs(x, generator)
        logits = self.encoder(x)  # (B, C)
        loss = self.mixed_loss(logits, y, rows, generator, partner, lam)
        logs = {"acc": (logits.argmax(dim=1) == y).float().mean().item()}
        return loss, logs if self.config.resize_from is None else {**logs, "side": float(x.shape[-1])}

    def classifier(self):
        return self.encoder
