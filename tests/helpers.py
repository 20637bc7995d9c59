"""Small builders the unit tests share (plain functions, not fixtures)."""

from __future__ import annotations

import torch

from utils.methods import InputSpec

# BYOL-family heads small enough for a CPU test
BYOL_SMALL = {"stem_stride": 4, "projector_hidden": 64, "projector_dim": 32, "predictor_hidden": 64}
# FRA on top of them: at stem stride 4 layer2 is the 6x6 map that layer3 is at stride 2, for half the step time
FRA_SMALL = {**BYOL_SMALL, "region_stage": "layer2", "dense_hidden": 32}


def randn(*shape, seed=0):
    """A seeded standard-normal tensor, independent of the global generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def spec(train_size=100):
    """A grey 48-px, 7-class input description."""
    return InputSpec(1, 1, tuple("abcdefg"), 48, train_size)
