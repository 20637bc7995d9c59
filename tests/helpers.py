"""Small builders the unit tests share (plain functions, not fixtures)."""

from __future__ import annotations

import torch

from utils.methods import InputSpec

# BYOL-family heads small enough for a CPU test
BYOL_SMALL = {"stem_stride": 4, "projector_hidden": 64, "projector_dim": 32, "predictor_hidden": 64}


def randn(*shape, seed=0):
    """A seeded standard-normal tensor, independent of the global generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def spec(train_size=100):
    """A grey 48-px, 7-class input description."""
    return InputSpec(1, 1, tuple("abcdefg"), 48, train_size)
