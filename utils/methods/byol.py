"""BYOL: Bootstrap Your Own Latent (Grill et al., "Bootstrap Your Own Latent: A New Approach to
Self-Supervised Learning", NeurIPS 2020).

An online network (encoder, projector, predictor) predicts, from one augmented view, the target network's
projection of the other view; the target network (encoder and projector) is an exponential moving average
of the online one, whose rate rises from ``base_momentum`` (paper: 0.996) to 1 on a cosine over training.
The loss is ``2 - 2 cos`` between the normalised prediction and target (paper, eq. 2), symmetrised over the
two views in the paper (``L + L~``). No negatives, no queue: a batch of any size works.

Choices for 48-px grey faces on a CPU (the paper: ResNet-50 at 224 px, LARS, batch 4,096, 300+ epochs):

- **The target must leave its random start.** Over 0.996 -> 1, the target keeps
  ``exp(-(1 - 0.996) T / 2)`` of its random weights after ``T`` steps: nothing after the paper's ~94,000
  steps, but 42-50 % after the 350-440 steps of a 30-minute CPU run, whose target then barely learned.
  ``random_start_share`` (1 % in the CPU recipe, ``recipes/``) lowers the base rate for short runs so that the
  target keeps at most that share: ``base = min(base_momentum, 1 - 2 ln(1 / share) / T)``
  (:func:`sized_base_momentum`). The default, None, is the paper's fixed base.
- **One direction per step** (``symmetric=False``, the CPU recipe): the online network sees one view and the
  target the other, as MoCo v2 does here; both views are drawn alike, so the one-way loss is an unbiased
  half of the symmetrised one, at half the cost per image. ``symmetric=True``, the default, is the paper's.
- **Head sizes**: the paper's projector and predictor (4,096 hidden, 256 out, batch norm on the hidden
  layer) are kept: on a ResNet-18 at 48 px their cost is small beside the backbone's (measured in notebook
  05), and solo-learn keeps the same sizes for ResNet-18 on 32-px CIFAR.
- **Augmentation**: the same MoCo v2-style augmentation as MoCo v2 and HNCL (:data:`utils.core.augment.MOCO_V2_GREY`:
  crops of 20-100 % of the area, not BYOL's 8-100 %, which at 48 px leaves 14-px crops; no colour, no
  solarisation, on grey faces), so that the methods differ in their loss, not their views.
- **The predictor's learning rate** can be a multiple of the rest's (``predictor_lr_scale``): Tian, Chen and
  Ganguli ("Understanding Self-Supervised Learning Dynamics without Contrastive Pairs", ICML 2021) found that a
  predictor learning faster than the encoder keeps BYOL from collapsing and helps short runs; SimSiam keeps
  its predictor's learning rate fixed for the same reason.
- **Optimiser**: the settings MoCo v2 and HNCL use here (SGD, lr 0.06 at batch 256 with warm-up and cosine,
  weight decay 1e-4, none on norms and biases; no LARS), so that the four methods differ in their loss only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from utils.core.augment import MOCO_V2_GREY, AugmentConfig, BatchAugment
from utils.methods.heads import frozen_copy, mlp, update_momentum
from utils.methods.losses import byol_loss

from .base import EncoderConfig, Method, register


@dataclass
class BYOLConfig(EncoderConfig):
    """BYOL's settings.

    Attributes:
        projector_hidden: hidden width of the projector (paper: 4,096).
        projector_dim: output size of the projector and the predictor (paper: 256).
        predictor_hidden: hidden width of the predictor (paper: 4,096).
        base_momentum: the target network's EMA rate at the start; it rises to 1 on a cosine (paper: 0.996).
        random_start_share: the largest share of its random initial weights the target may keep at the end; a
            run too short for ``base_momentum`` to get there starts from a lower rate (None: ``base_momentum``
            whatever the run's length, as the paper).
        symmetric: both directions in every step (the paper), or one, at half the cost (see above).
        predictor_lr_scale: the predictor's learning rate as a multiple of the rest's (the paper: 1).
        augment: the two views' augmentation.
    """

    projector_hidden: int = 4096
    projector_dim: int = 256
    predictor_hidden: int = 4096
    base_momentum: float = 0.996
    random_start_share: float | None = None
    symmetric: bool = True
    predictor_lr_scale: float = 1.0
    augment: AugmentConfig = field(default_factory=lambda: MOCO_V2_GREY)


def target_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: ``1 - (1 - base) * (cos(pi * progress) + 1) / 2``, from ``base`` at the start to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


def sized_base_momentum(base: float, total_steps: int, random_start_share: float | None) -> float:
    """The base rate of :func:`target_momentum` for a run of ``total_steps``: ``base``, or lower so that the target
    keeps at most ``random_start_share`` of its initial weights after the run. On the cosine from ``b`` to 1 the
    target keeps ``prod_t m_t ~ exp(-(1 - b) T / 2)`` of them (the mean of ``(1 + cos)/2`` is 1/2)."""
    if random_start_share is None:
        return base
    if not 0.0 < random_start_share < 1.0:
        raise ValueError(f"random_start_share is a share in (0, 1), not {random_start_share!r}")
    return min(base, 1.0 - 2.0 * math.log(1.0 / random_start_share) / max(1, total_steps))


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
        # the base rate sized to the run (on_schedule); not saved: every fit, resumed or not, sizes it again
        self.register_buffer("base_momentum", torch.tensor(c.base_momentum, dtype=torch.float64), persistent=False)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The base class's groups, with the predictor's (and a subclass's predictors') learning rate scaled by
        ``predictor_lr_scale``."""
        scale = self.config.predictor_lr_scale
        predictors = {id(p) for module in self.predictors() for p in module.parameters()}
        groups = []
        for group in super().param_groups(weight_decay):
            mine = [p for p in group["params"] if id(p) in predictors]
            rest = [p for p in group["params"] if id(p) not in predictors]
            groups += [{**group, "params": rest}, {**group, "params": mine, "lr_scale": scale}]
        return [g for g in groups if g["params"]]

    def predictors(self) -> list[torch.nn.Module]:
        """The modules that predict the target's output (their learning rate: ``predictor_lr_scale``)."""
        return [self.predictor]

    def momentum_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """``(online, target)`` modules the EMA updates."""
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def views(self, x: torch.Tensor, generator) -> list[torch.Tensor]:
        """The two augmented views of a batch."""
        return [self.augment(x, generator), self.augment(x, generator)]

    def directions(self) -> tuple[tuple[int, int], ...]:
        """``(online view, target view)`` pairs of a step: both ways (symmetric) or the first view online."""
        return ((0, 1), (1, 0)) if self.config.symmetric else ((0, 1),)

    def forward(self, x, y, rows, generator):
        views = self.views(x, generator)
        loss = 0.0
        for i, j in self.directions():
            prediction = self.predictor(self.projector(self.encoder(views[i])))  # (B, D)
            with torch.no_grad():
                target = self.target_projector(self.target_encoder(views[j]))  # (B, D)
            loss = loss + byol_loss(prediction, target)
        return loss, {"momentum": float(self.momentum)}

    def on_schedule(self, total_steps: int) -> None:
        c = self.config
        self.base_momentum.fill_(sized_base_momentum(c.base_momentum, total_steps, c.random_start_share))

    def after_step(self, progress: float) -> None:
        self.momentum.fill_(target_momentum(float(self.base_momentum), progress))
        update_momentum(self.momentum_pairs(), float(self.momentum))
