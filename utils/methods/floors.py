"""The two floors of every representation table, as methods that do not train: a frozen, randomly initialised
backbone, and the raw pixels. A pretraining method has learned something only if its kNN and linear probe
beat both. On the suite's eye-aligned faces raw pixels are a high floor (FER2013: 45.6 % linear, README).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.core.loader import channel_count

from .base import EncoderConfig, Method, register


@dataclass
class RandomInitConfig(EncoderConfig):
    """The backbone as built, with the seed's random weights, frozen and in eval mode."""


@register
class RandomInit(Method):
    name = "random-init"
    Config = RandomInitConfig
    trains = False

    def __init__(self, config: RandomInitConfig, spec):
        super().__init__(config, spec)
        self.encoder = config.encoder(spec)


@dataclass
class RawPixelsConfig:
    """The input channels themselves, flattened (nothing random: one run serves every seed)."""

    channels: str = "gray"

    def __post_init__(self):
        channel_count(self.channels)


@register
class RawPixels(Method):
    name = "raw-pixels"
    Config = RawPixelsConfig
    trains = False
    seeded = False

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)  # (B, C * H * W) in [0, 1]


def floors(prepared, encoder: EncoderConfig, seed: int = 0, **kwargs) -> list:
    """Both floors for ``encoder``'s backbone and input on ``prepared`` (finished ones are loaded).

    Returns:
        Two :class:`~utils.core.runs.Run`: random-init, raw pixels.
    """
    from utils.core import runs
    from utils.core.engine import TrainConfig

    shared = {"backbone": encoder.backbone, "channels": encoder.channels, "stem_stride": encoder.stem_stride}
    random_init = RandomInitConfig(**shared, last_stride=encoder.last_stride, width=encoder.width)
    return [
        runs.run(random_init, prepared, TrainConfig(seed=seed), name=f"floor-random-init-{prepared.name}", **kwargs),
        runs.run(
            RawPixelsConfig(encoder.channels),
            prepared,
            TrainConfig(seed=seed),
            name=f"floor-raw-pixels-{prepared.name}",
            **kwargs,
        ),
    ]
