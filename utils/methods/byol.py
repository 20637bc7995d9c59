"""BYOL: Bootstrap Your Own Latent (Grill et al. 2020).

An online network (encoder, projector, predictor) predicts, from one augmented view, the target network's
projection of the other view; the target network (encoder and projector) is an exponential moving average
of the online one, whose rate rises from ``base_momentum`` (paper: 0.996) to 1 on a cosine over training.
The loss is ``2 - 2 cos`` between the normalised prediction and target, symmetrised over the two views
(paper, eq. 2: ``L + L~``). No negatives, no queue: a batch of any size works.

Choices for 48-px grey faces on a CPU (the paper: ResNet-50 at 224 px, LARS, batch 4,096, 300+ epochs):

- **Head sizes**: the paper's projector and predictor (4,096 hidden, 256 out, batch norm on the hidden
  layer) are kept: on a ResNet-18 at 48 px their cost is small beside the backbone's (measured in notebook
  05), and solo-learn keeps the same sizes for ResNet-18 on 32-px CIFAR.
- **Augmentation**: the same MoCo v2-style augmentation as MoCo v2 and HNCL (:data:`utils.augment.MOCO_V2_GREY`:
  crops of 20-100 % of the area, not BYOL's 8-100 %, which at 48 px leaves 14-px crops; no colour, no
  solarisation, on grey faces), so that the methods differ in their loss, not their views.
- **Optimiser**: the settings MoCo v2 and HNCL use here (SGD, lr 0.06 at batch 256 with warm-up and cosine,
  weight decay 1e-4, none on norms and biases; no LARS), so that the four methods differ in their loss only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..augment import MOCO_V2_GREY, AugmentConfig, BatchAugment
from ..heads import frozen_copy, mlp, update_momentum
from ..losses import byol_loss
from .base import EncoderConfig, Method, register


@dataclass
class BYOLConfig(EncoderConfig):
    """BYOL's settings.

    Attributes:
        projector_hidden: hidden width of the projector (paper: 4,096).
        projector_dim: output size of the projector and the predictor (paper: 256).
        predictor_hidden: hidden width of the predictor (paper: 4,096).
        base_momentum: the target network's EMA rate at the start; it rises to 1 on a cosine (paper: 0.996).
        augment: the two views' augmentation.
    """

    projector_hidden: int = 4096
    projector_dim: int = 256
    predictor_hidden: int = 4096
    base_momentum: float = 0.996
    augment: AugmentConfig = field(default_factory=lambda: MOCO_V2_GREY)


def target_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: ``1 - (1 - base) * (cos(pi * progress) + 1) / 2``, from ``base`` at the start to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


@register
class BYOL(Method):
    """Online encoder + projector + predictor; target encoder + projector, an EMA of the online ones."""

    name = "byol"
    Config = BYOLConfig
    train_defaults = {"lr": 0.06, "weight_decay": 1e-4, "warmup_epochs": 1.0, "batch_size": 256}

    def __init__(self, config: BYOLConfig, spec):
        super().__init__(config, spec)
        c = config
        self.augment = BatchAugment(c.augment, spec.image_channels)
        self.encoder = c.encoder(spec)
        self.projector = mlp(self.encoder.feature_dim, c.projector_hidden, c.projector_dim, 2, batch_norm=True)
        self.predictor = mlp(c.projector_dim, c.predictor_hidden, c.projector_dim, 2, batch_norm=True)
        self.target_encoder = frozen_copy(self.encoder)
        self.target_projector = frozen_copy(self.projector)
        self.register_buffer("momentum", torch.tensor(c.base_momentum, dtype=torch.float64))  # current EMA rate

    def momentum_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """``(online, target)`` modules the EMA updates."""
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def forward(self, x, y, rows, generator):
        views = [self.augment(x, generator), self.augment(x, generator)]
        predictions = [self.predictor(self.projector(self.encoder(v))) for v in views]  # 2 x (B, D)
        with torch.no_grad():
            targets = [self.target_projector(self.target_encoder(v)) for v in views]  # 2 x (B, D)
        loss = byol_loss(predictions[0], targets[1]) + byol_loss(predictions[1], targets[0])
        return loss, {"momentum": float(self.momentum)}

    def after_step(self, progress: float) -> None:
        self.momentum.fill_(target_momentum(self.config.base_momentum, progress))
        update_momentum(self.momentum_pairs(), float(self.momentum))
