"""Small builders the unit tests share (plain functions, not fixtures)."""

from __future__ import annotations

import torch

from utils.core.engine import FitResult, TrainConfig, fit
from utils.core.loader import face_tensors
from utils.methods import InputSpec
from utils.methods.byol import BYOLConfig
from utils.methods.floors import RandomInitConfig, RawPixelsConfig
from utils.methods.fra import FRAConfig
from utils.methods.hncl import HNCLConfig
from utils.methods.moco import MoCoConfig
from utils.methods.neighbours import NeighbourConfig
from utils.methods.ran import RANConfig
from utils.methods.supervised import SupervisedConfig

# BYOL-family networks and heads small enough for a CPU test (width 32: the CPU recipes')
BYOL_SMALL = {"width": 32, "stem_stride": 4, "projector_hidden": 64, "projector_dim": 32, "predictor_hidden": 64}
# FRA on top of them: at stem stride 4 layer2 is the 6x6 map that layer3 is at stride 2, for half the step time
FRA_SMALL = {**BYOL_SMALL, "region_stage": "layer2", "dense_hidden": 32}

# the finished runs the unit tests share (conftest's ``finished_runs``): every method, 1 epoch of 2 steps
RAN_SHARED_MAP = {"crops": "three", "regions_from": "layer3", "region_size": 4}  # the CPU recipe's regions
RUN_TRAIN = TrainConfig(epochs=1, batch_size=32, lr=0.05, warmup_epochs=0, seed=0)
RUN_STEPS = 2  # per epoch


def run_configs() -> dict:
    """A small config of every method, by method name."""
    small = {"width": 32, "stem_stride": 4}  # the CPU recipes' width, a quarter of the cost
    ssl = {**small, "queue_size": 64, "hidden": 32, "dim": 16, "key_momentum": 0.99}
    return {
        "supervised": SupervisedConfig(**small, tta="flip"),
        "moco_v2": MoCoConfig(**ssl),
        "hncl": HNCLConfig(**ssl, neighbours=NeighbourConfig(k=3)),
        "byol": BYOLConfig(**BYOL_SMALL),
        "fra": FRAConfig(**FRA_SMALL),
        "ran": RANConfig(**small, tta="flip", **RAN_SHARED_MAP),
        "random-init": RandomInitConfig(**small),
        "raw-pixels": RawPixelsConfig(),
    }


def randn(*shape, seed=0):
    """A seeded standard-normal tensor, independent of the global generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def spec(train_size=100):
    """A grey 48-px, 7-class input description."""
    return InputSpec(1, 1, tuple("abcdefg"), 48, train_size)


def train_on_sample(method_class, config, sample, epochs: int, steps: int, seed: int = 0):
    """A self-supervised method, seeded, trained ``epochs`` x ``steps`` steps of 16 grey sample faces at lr 0.05
    (no warm-up, no autocast): the method and its :class:`FitResult`."""
    train = face_tensors(sample, "train", "gray")
    torch.manual_seed(seed)
    method = method_class(config, spec(len(train)))
    settings = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, amp=False, warmup_epochs=0, weight_decay=1e-5)
    result: FitResult = fit(method, train, settings, None, progress=False, steps_per_epoch=steps)
    return method, result
