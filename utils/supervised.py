"""Supervised training of a classifier on prepared faces: the baseline every other method is compared with.

>>> run = train_supervised(prepared, ModelConfig("resnet18"), TrainConfig(epochs=30))   # doctest: +SKIP
>>> run.record["evaluations"]["supervised"]["val"]["accuracy"]                          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import runs
from .augment import AugmentConfig, BatchAugment
from .engine import FitResult, Method, TrainConfig, amp_dtype, class_weights, config_dict, fit, load_checkpoint
from .evaluation import classification_metrics, predict
from .loader import channel_count, face_tensors
from .models import FERNet, count_parameters, create_model
from .runtime import pick_device, seed_everything


@dataclass
class ModelConfig:
    """The network and its input.

    Attributes:
        backbone: a name from :data:`utils.models.BACKBONES`.
        pretrained: start from ImageNet weights (the seed project's "ResNet-50 (T)").
        channels: input layout, see :data:`utils.loader.CHANNELS` (``gray``, ``gray+heatmap``, ...).
        stem_stride: stride of the small-image stem (1 full resolution, 2 a quarter of the cost).
        dropout: dropout before the classifier.
        label_smoothing: cross-entropy label smoothing.
        augment: training augmentation.
        tta: test-time augmentation of the final evaluation (None, ``flip``, ``tencrop``).
    """

    backbone: str = "resnet18"
    pretrained: bool = False
    channels: str = "gray"
    stem_stride: int = 1
    dropout: float = 0.0
    label_smoothing: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta: str | None = "flip"


class Supervised(Method):
    """Cross-entropy on augmented images (optionally class-weighted and label-smoothed)."""

    def __init__(self, model: FERNet, augment: BatchAugment | None, weights=None, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.augment = augment
        self.label_smoothing = label_smoothing
        self.register_buffer("weights", weights if weights is not None else torch.empty(0), persistent=False)

    def forward(self, x, y, rows, generator):
        if self.augment is not None:
            x = self.augment(x, generator)
        logits = self.model(x)  # (B, C)
        weight = self.weights if self.weights.numel() else None
        loss = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        return loss, {"acc": accuracy.item()}

    @torch.no_grad()
    def embed(self, x):
        return self.model.features(x)


@dataclass
class Run:
    """A trained (or loaded) run: its folder, the model with its best weights, and its ``metrics.json``."""

    run_dir: Path
    model: torch.nn.Module
    record: dict
    loaded: bool
    fit: FitResult | None = None

    @property
    def history(self) -> list[dict]:
        return self.record.get("history", [])


def data_record(prepared) -> dict:
    """What identifies the training data in a run's configuration and record."""
    sizes = {s: int((prepared.splits == s).sum()) for s in dict.fromkeys(prepared.splits)}
    return {
        "name": prepared.name,
        "classes": list(prepared.classes),
        "split_sizes": sizes,
        "faces": asdict(prepared.config),
    }


def evaluate_splits(model, prepared, channels: str, splits, device, tta=None, amp=None, batch_size: int = 512) -> dict:
    """:func:`~utils.evaluation.classification_metrics` of ``model`` on each split that ``prepared`` has."""
    out = {}
    for split in splits:
        if not (prepared.splits == split).any():
            continue
        data = face_tensors(prepared, split, channels, device)
        probs = predict(model, data, batch_size=batch_size, tta=tta, amp_dtype=amp)
        out[split] = classification_metrics(data.y.cpu().numpy(), probs, prepared.classes)
    return out


def train_supervised(
    prepared,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    name: str | None = None,
    checkpoint_dir=None,
    device=None,
    force: bool = False,
    progress: bool = True,
    steps_per_epoch: int | None = None,
    init: str | Path | None = None,
    method: str = "supervised",
    protocol: str = "supervised",
) -> Run:
    """Train a classifier on ``prepared``'s train split, selecting the epoch on its val split.

    A finished run with the same configuration is loaded instead of trained again (``force`` retrains);
    an interrupted one resumes. The best epoch is evaluated on val and, when present, test, with and
    without the model's test-time augmentation; everything lands in ``<run_dir>/metrics.json``.

    Args:
        init: backbone weights to start from (a pretraining run's ``backbone.pt``): fine-tuning.
        method, protocol: how the record names the method and the evaluation (``"moco_v2"``,
            ``"finetune"`` for a fine-tuned MoCo v2 backbone).
    """
    mc = model_config or ModelConfig()
    tc = train_config or TrainConfig()
    device = pick_device(device) if not isinstance(device, torch.device) else device
    if not (prepared.splits == "val").any():
        raise ValueError(
            f"{prepared.name} has no val split to select the epoch on; carve one from train with "
            "utils.data.ensure_val_split before preparing (never select on test)"
        )
    config = {"method": method, **config_dict(model=mc, train=tc, data=data_record(prepared))}
    if init is not None:  # the starting weights are part of the configuration, by content
        config["init_sha1"] = hashlib.sha1(Path(init).read_bytes()).hexdigest()
    name = name or f"supervised-{prepared.name}-{mc.backbone}"
    folder = runs.run_dir(name, config, checkpoint_dir)
    seed_everything(tc.seed, tc.deterministic)  # before the model: initial weights depend on the seed only
    model = create_model(
        mc.backbone,
        num_classes=prepared.num_classes,
        in_channels=channel_count(mc.channels),
        pretrained=mc.pretrained,
        input_size=prepared.images.shape[1],
        stem_stride=mc.stem_stride,
        dropout=mc.dropout,
    ).to(device)
    record = None if force else runs.finished(folder)
    if record is not None:
        model.load_state_dict(load_checkpoint(folder / "model.pt", map_location=device))
        model.eval()
        if progress:
            print(f"loaded finished run {folder.name} (force=True retrains)")
        return Run(folder, model, record, loaded=True)
    if force:
        for stale in ("last.pt", "best.pt", runs.METRICS_FILE):
            (folder / stale).unlink(missing_ok=True)

    if init is not None:
        missing, unexpected = model.load_state_dict(load_checkpoint(Path(init), map_location=device), strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(
                f"{init}: not a backbone of {mc.backbone} (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    train = face_tensors(prepared, "train", mc.channels, device)
    val = face_tensors(prepared, "val", mc.channels, device)
    weights = class_weights(train.y, prepared.num_classes) if tc.balance == "weights" else None
    augment = BatchAugment(mc.augment, image_channels=train.image_channels)
    trainer = Supervised(model, augment, weights, mc.label_smoothing).to(device)
    amp = amp_dtype(device, tc.amp)

    def validate(m):
        probs = predict(m.model, val, amp_dtype=amp)
        y = val.y.cpu()
        p = torch.from_numpy(probs)
        accuracy = float((p.argmax(1) == y).float().mean())
        loss = float(F.nll_loss(torch.log(p.clamp_min(1e-8)), y))
        return {"score": accuracy, "accuracy": accuracy, "loss": loss}

    tic = time.perf_counter()
    result = fit(trainer, train, tc, folder, validate, progress=progress, steps_per_epoch=steps_per_epoch)
    evaluations = {protocol: evaluate_splits(model, prepared, mc.channels, ("val", "test"), device, None, amp)}
    if mc.tta:
        evaluations[f"{protocol}+{mc.tta}"] = evaluate_splits(
            model, prepared, mc.channels, ("val", "test"), device, mc.tta, amp
        )
    torch.save(model.state_dict(), folder / "model.pt")
    record = {
        "run": name,
        "method": method,
        "protocol": protocol,
        "init": None if init is None else str(init),
        "config": config,
        "dataset": config["data"],
        "seed": tc.seed,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch + 1,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - tic, 1),
        "parameters": count_parameters(model),
        "device": str(device),
        "amp": str(amp),
        "history": result.history,
        "evaluations": evaluations,
    }
    runs.write_record(folder, record)
    return Run(folder, model, runs.finished(folder), loaded=False, fit=result)
