"""Self-supervised pretraining: MoCo v2 and HNCL (heatmap-neighbour contrastive learning), and their runs.

**MoCo v2** (He et al. 2020; Chen et al. 2020, "Improved baselines"): a query encoder and a momentum
(key) encoder, a 2-layer MLP head, InfoNCE against a queue of past keys. Defaults are MoCo v2's
(momentum 0.999, temperature 0.2), with its augmentations adapted to grey 48x48 faces (no hue or
saturation jitter) and a queue sized for FER datasets (8,192, not 65,536: FER2013 has 28,709 training
images). The reference code runs only under DistributedDataParallel and relies on shuffling the keys
across GPUs, so that batch-norm statistics cannot leak which key belongs to which query. On one device
this module substitutes the shuffle by computing the keys of a shuffled batch in ``key_bn_splits``
sub-batches, each normalised with its own statistics (as the official MoCo CIFAR demo's SplitBatchNorm
does). Under ``torchrun`` each process does the same locally, and keys are gathered from all processes
before they enter the queue, so every process holds the same queue.

**HNCL** (Liu et al., "Facial Expression Recognition With Heatmap Neighbor Contrastive Learning", IEEE
TMM 2025). No code is public; this is a reimplementation from the paper's description. For every image,
its ``k`` nearest neighbours in landmark-heatmap space (:mod:`utils.neighbours`) are positives besides
its other augmented view, in a multi-positive InfoNCE (:func:`utils.losses.multi_positive_info_nce`). The
neighbours' keys come from a bank holding the latest momentum-encoder embedding of every training image
(updated whenever the image is in a batch), so they cost no extra forward pass. The head is a 3-layer
projector with batch norm followed by a predictor. Negatives that are the query's own image or one of its
neighbours are masked out of the queue.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist_utils
from . import runs
from .augment import MOCO_V2_GREY, AugmentConfig, BatchAugment
from .engine import Method, TrainConfig, amp_dtype, config_dict, fit, load_checkpoint
from .evaluation import classification_metrics
from .loader import channel_count, face_tensors
from .losses import info_nce, multi_positive_info_nce
from .models import FERNet, count_parameters, create_model
from .neighbours import NeighbourConfig, build_index, label_agreement
from .probes import extract_features, knn_scores, linear_probe
from .runtime import pick_device, seed_everything

METHODS = ("moco_v2", "hncl")


@dataclass
class SSLConfig:
    """A self-supervised method, its network and its input.

    Attributes:
        method: ``"moco_v2"`` or ``"hncl"``.
        backbone: a name from :data:`utils.models.BACKBONES`.
        channels: input layout (``gray``, ``gray+heatmap``, ...), see :data:`utils.loader.CHANNELS`.
        stem_stride: stride of the small-image stem.
        dim: embedding size of the contrastive head (MoCo: 128).
        hidden: hidden width of the head (MoCo v2: the backbone's feature size).
        queue_size: negatives kept (a multiple of the global batch size).
        momentum: key-encoder momentum (MoCo v2: 0.999).
        temperature: InfoNCE temperature (MoCo v2: 0.2).
        key_bn_splits: sub-batches of the shuffled key batch (the single-device shuffle-BN substitute).
        augment: the two views' augmentation.
        neighbours: HNCL's neighbour index (k, heatmap space); ignored by MoCo v2.
        projector_layers: layers of the projection head (MoCo v2: 2 without batch norm; HNCL: 3 with).
        predictor: an MLP predictor on the query branch (HNCL).
    """

    method: str = "moco_v2"
    backbone: str = "resnet18"
    channels: str = "gray"
    stem_stride: int = 2
    dim: int = 128
    hidden: int = 512
    queue_size: int = 8192
    momentum: float = 0.999
    temperature: float = 0.2
    key_bn_splits: int = 4
    augment: AugmentConfig = field(default_factory=lambda: MOCO_V2_GREY)
    neighbours: NeighbourConfig = field(default_factory=NeighbourConfig)
    projector_layers: int = 2
    predictor: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")


def hncl_config(**overrides) -> SSLConfig:
    """HNCL's defaults: 3-layer batch-normed projector, predictor, k = 5 landmark-heatmap neighbours."""
    base = {"method": "hncl", "projector_layers": 3, "predictor": True}
    return SSLConfig(**{**base, **overrides})


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int, batch_norm: bool) -> nn.Sequential:
    """``layers`` linear layers with ReLU between; with ``batch_norm``, BN after each hidden layer and a
    non-affine BN on the output (MoCo v3's projector)."""
    modules: list[nn.Module] = []
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    for i in range(layers):
        last = i == layers - 1
        modules.append(nn.Linear(dims[i], dims[i + 1], bias=not batch_norm))
        if batch_norm:
            modules.append(nn.BatchNorm1d(dims[i + 1], affine=not last))
        if not last:
            modules.append(nn.ReLU(inplace=True))
    return nn.Sequential(*modules)


class MoCo(Method):
    """MoCo v2: query encoder + head, momentum key encoder + head, a queue of negative keys.

    Args:
        encoder: a :class:`~utils.models.FERNet` feature extractor (``num_classes=0``).
        config: the method's settings.
        image_channels: how many input channels are image (the rest are heatmaps).
    """

    def __init__(self, encoder: FERNet, config: SSLConfig, image_channels: int = 1):
        super().__init__()
        self.config = config
        self.augment = BatchAugment(config.augment, image_channels)
        self.encoder_q = encoder
        self.head_q = mlp(
            encoder.feature_dim, config.hidden, config.dim, config.projector_layers, config.projector_layers > 2
        )
        self.predictor = mlp(config.dim, config.hidden, config.dim, 2, True) if config.predictor else nn.Identity()
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.head_k = copy.deepcopy(self.head_q)
        for p in [*self.encoder_k.parameters(), *self.head_k.parameters()]:
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.dim), dim=1))  # (K, dim)
        self.register_buffer("queue_rows", torch.full((config.queue_size,), -1, dtype=torch.long))  # (K,)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def check_sizes(self, dataset_size: int, global_batch: int) -> None:
        """The queue must hold whole batches; warn when it is larger than the dataset."""
        k = self.config.queue_size
        if k % global_batch:
            raise ValueError(f"queue_size {k} must be a multiple of the global batch size {global_batch}")
        if k > dataset_size:
            warnings.warn(
                f"the queue ({k}) is larger than the dataset ({dataset_size}): it holds several keys of every "
                "image, so negatives would include the positives themselves; a query's own image (and, for "
                "HNCL, its neighbours) is masked out of the negatives, but consider a smaller queue_size",
                stacklevel=2,
            )

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.predictor(self.head_q(self.encoder_q(x))).float(), dim=1)  # (B, dim)

    @torch.no_grad()
    def keys(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Key embeddings ``(B, dim)``: shuffled, encoded in ``key_bn_splits`` sub-batches, unshuffled."""
        order = torch.randperm(len(x), device=x.device, generator=generator)
        chunks = x[order].chunk(max(1, min(self.config.key_bn_splits, len(x) // 2)))
        k = torch.cat([self.head_k(self.encoder_k(c)) for c in chunks])
        k = k[torch.argsort(order)]
        return F.normalize(k.float(), dim=1)

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
        own = self.queue_rows[None, :] == rows[:, None]  # (B, K): earlier keys of the query's own image
        return info_nce(q, k, self.queue.clone(), self.config.temperature, own), {}

    def forward(self, x, y, rows, generator):
        q = self.query(self.augment(x, generator))  # (B, dim)
        k = self.keys(self.augment(x, generator), generator)  # (B, dim)
        loss, logs = self.contrastive_loss(q, k, rows)
        self.remember(dist_utils.gather(k), dist_utils.gather(rows))
        with torch.no_grad():
            logs["pos_sim"] = float((q * k).sum(dim=1).mean())
        return loss, logs

    @torch.no_grad()
    def remember(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Enqueue the keys of the whole (global) batch, replacing the oldest."""
        n = len(keys)
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + n] = keys
        self.queue_rows[ptr : ptr + n] = rows
        self.queue_ptr.fill_((ptr + n) % self.config.queue_size)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = self.config.momentum
        params_q = [*self.encoder_q.parameters(), *self.head_q.parameters()]
        params_k = [*self.encoder_k.parameters(), *self.head_k.parameters()]
        torch._foreach_mul_(params_k, m)
        torch._foreach_add_(params_k, [p.detach() for p in params_q], alpha=1 - m)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features (before the head): what the probes and fine-tuning use."""
        return self.encoder_q(x)


class HNCL(MoCo):
    """MoCo with heatmap neighbours as extra positives (see the module docstring).

    Args:
        neighbours: ``(N, k)`` positions (within the training split) of each training image's neighbours.
    """

    def __init__(self, encoder: FERNet, config: SSLConfig, neighbours: torch.Tensor, image_channels: int = 1):
        super().__init__(encoder, config, image_channels)
        n = len(neighbours)
        self.register_buffer("neighbours", neighbours.long())  # (N, k)
        self.register_buffer("bank", F.normalize(torch.randn(n, config.dim), dim=1))  # (N, dim) latest keys
        self.register_buffer("bank_filled", torch.zeros(n, dtype=torch.bool))  # (N,)

    def contrastive_loss(self, q, k, rows):
        nb = self.neighbours[rows]  # (B, k)
        positives = torch.cat([k[:, None], self.bank[nb]], dim=1)  # (B, 1 + k, dim)
        valid = torch.cat([torch.ones_like(nb[:, :1], dtype=torch.bool), self.bank_filled[nb]], dim=1)  # (B, 1 + k)
        related = torch.cat([rows[:, None], nb], dim=1)  # (B, 1 + k): the image and its neighbours
        not_negative = (self.queue_rows[None, None, :] == related[:, :, None]).any(dim=1)  # (B, K)
        loss = multi_positive_info_nce(q, positives, self.queue.clone(), self.config.temperature, valid, not_negative)
        return loss, {"neighbours_used": float(valid[:, 1:].float().mean())}

    @torch.no_grad()
    def remember(self, keys, rows):
        super().remember(keys, rows)
        self.bank[rows] = keys
        self.bank_filled[rows] = True


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class PretrainRun:
    """A pretraining run: folder, the method (with its best weights), ``metrics.json`` record."""

    run_dir: Path
    method: MoCo
    record: dict
    loaded: bool

    @property
    def backbone_path(self) -> Path:
        return self.run_dir / "backbone.pt"

    @property
    def history(self) -> list[dict]:
        return self.record.get("history", [])


def _data_record(prepared) -> dict:
    from .supervised import data_record

    return data_record(prepared)


def build_method(config: SSLConfig, in_channels: int, image_channels: int, neighbours=None) -> MoCo:
    encoder = create_model(config.backbone, 0, in_channels, stem_stride=config.stem_stride)
    if config.method == "hncl":
        if neighbours is None:
            raise ValueError("HNCL needs its neighbour index")
        return HNCL(encoder, config, torch.as_tensor(neighbours), image_channels)
    return MoCo(encoder, config, image_channels)


def representation_metrics(
    embed, prepared, channels: str, device, amp=None, knn_k: int = 20, probe: bool = True
) -> dict:
    """kNN and linear-probe metrics of a frozen representation on every split besides train.

    Returns:
        ``{"knn": {split: metrics}, "linear": {split: metrics, ...}}``; the linear entry also records
        the chosen C.
    """
    sets = {}
    for split in ("train", "val", "test"):
        if (prepared.splits == split).any():
            data = face_tensors(prepared, split, channels, device)
            sets[split] = (extract_features(embed, data, amp_dtype=amp), data.y.cpu().numpy())
    return probe_metrics(sets, prepared.classes, knn_k=knn_k, probe=probe)


def probe_metrics(sets: dict, classes, knn_k: int = 20, probe: bool = True) -> dict:
    """kNN and linear-probe metrics from features per split ``{split: (features, labels)}`` (train included)."""
    train_x, train_y = sets["train"]
    evals = {name: v for name, v in sets.items() if name != "train"}
    out = {"knn": {}}
    for name, (x, y) in evals.items():
        scores = knn_scores(train_x, train_y, x, len(classes), k=knn_k)
        out["knn"][name] = classification_metrics(y, scores, classes)
    if probe:
        result = linear_probe(train_x, train_y, evals, len(classes))
        out["linear"] = {
            name: classification_metrics(y, result["probs"][name], classes) for name, (x, y) in evals.items()
        }
        out["linear"]["C"] = result["C"]
        out["linear"]["accuracy_by_C"] = {str(c): a for c, a in result["accuracy_by_C"].items()}
    return out


def pretrain(
    prepared,
    config: SSLConfig | None = None,
    train_config: TrainConfig | None = None,
    name: str | None = None,
    checkpoint_dir=None,
    device=None,
    force: bool = False,
    progress: bool = True,
    knn_monitor_size: int = 5000,
    steps_per_epoch: int | None = None,
) -> PretrainRun:
    """Pretrain ``config.method`` on ``prepared``'s train split without its labels; evaluate the result.

    Labels are used only by the evaluations: the kNN monitor on the val split after every epoch (which
    selects the epoch kept), and at the end kNN and a linear probe (trained on train labels) on val and
    test. Like every run, a finished one is loaded instead of trained again and an interrupted one resumes.
    """
    cfg = config or SSLConfig()
    tc = train_config or TrainConfig(lr=0.06, weight_decay=1e-4, warmup_epochs=1, batch_size=256)
    device = pick_device(device) if not isinstance(device, torch.device) else device
    if not (prepared.splits == "val").any():
        raise ValueError(f"{prepared.name} has no val split; use utils.data.ensure_val_split before preparing")
    setup = {"method": cfg.method, **config_dict(model=cfg, train=tc, data=_data_record(prepared))}
    name = name or f"{cfg.method}-{prepared.name}"
    folder = runs.run_dir(name, setup, checkpoint_dir)
    in_channels = channel_count(cfg.channels)
    seed_everything(tc.seed, tc.deterministic)
    dist_utils.init_from_env(device.type)

    train = face_tensors(prepared, "train", cfg.channels, device)
    index = None
    if cfg.method == "hncl":
        index = build_index(prepared, train.index, cfg.neighbours, device=device)
    method = build_method(cfg, in_channels, train.image_channels, None if index is None else index["neighbours"]).to(
        device
    )

    record = None if force else runs.finished(folder)
    if record is not None:
        method.load_state_dict(load_checkpoint(folder / "model.pt", map_location=device))
        method.eval()
        if progress and dist_utils.is_main():
            print(f"loaded finished run {folder.name} (force=True retrains)")
        return PretrainRun(folder, method, record, loaded=True)
    if force and dist_utils.is_main():
        for stale in ("last.pt", "best.pt", runs.METRICS_FILE):
            (folder / stale).unlink(missing_ok=True)
    method.check_sizes(len(train), tc.batch_size * dist_utils.world_size())

    amp = amp_dtype(device, tc.amp)
    val = face_tensors(prepared, "val", cfg.channels, device)
    monitor_rows = np.sort(np.random.default_rng(tc.seed).permutation(len(train))[:knn_monitor_size])
    monitor = train.subset(monitor_rows)

    def validate(m):
        bank = extract_features(m.embed, monitor, amp_dtype=amp)
        queries = extract_features(m.embed, val, amp_dtype=amp)
        scores = knn_scores(bank, monitor.y.cpu().numpy(), queries, prepared.num_classes)
        accuracy = float((scores.argmax(1) == val.y.cpu().numpy()).mean())
        return {"score": accuracy, "knn_accuracy": accuracy}

    tic = time.perf_counter()
    result = fit(method, train, tc, folder, validate, progress=progress, steps_per_epoch=steps_per_epoch)
    record = {
        "run": name,
        "method": cfg.method,
        "config": setup,
        "dataset": setup["data"],
        "seed": tc.seed,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch + 1,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.train_seconds, 1),
        "images_per_second": round(result.epochs_run * len(train) / max(result.train_seconds, 1e-9), 1),
        "parameters": count_parameters(method.encoder_q),
        "device": str(device),
        "amp": str(amp),
        "history": result.history,
    }
    if index is not None:
        agreement = label_agreement(index["neighbours"], train.y.cpu().numpy())
        record["neighbours"] = {
            **asdict(cfg.neighbours),
            "index_seconds": round(index["seconds"], 2),
            "label_agreement": agreement["agreement"],
            "chance_agreement": agreement["chance"],
        }
    if dist_utils.is_main():
        record["evaluations"] = representation_metrics(method.embed, prepared, cfg.channels, device, amp)
        record["wall_seconds"] = round(time.perf_counter() - tic, 1)
        torch.save(method.state_dict(), folder / "model.pt")
        torch.save(method.encoder_q.state_dict(), folder / "backbone.pt")
        runs.write_record(folder, record)
    dist_utils.barrier()
    return PretrainRun(folder, method, runs.finished(folder) or record, loaded=False)


def floor_run(
    kind: str,
    prepared,
    channels: str,
    backbone: str = "resnet18",
    stem_stride: int = 2,
    seed: int = 0,
    checkpoint_dir=None,
    device=None,
    force: bool = False,
) -> dict:
    """The linear-probe floor ``kind`` (``random-init`` or ``raw-pixels``), recorded like any run."""
    from .probes import floor_features

    device = pick_device(device) if not isinstance(device, torch.device) else device
    model = {"backbone": backbone if kind == "random-init" else None, "channels": channels, "stem_stride": stem_stride}
    setup = {"method": kind, "model": model, "seed": seed, "data": _data_record(prepared)}
    folder = runs.run_dir(f"floor-{kind}-{prepared.name}", setup, checkpoint_dir)
    record = None if force else runs.finished(folder)
    if record is not None:
        return record
    tic = time.perf_counter()
    sets = floor_features(kind, prepared, channels, backbone, stem_stride, seed, device, amp_dtype(device))
    evaluations = probe_metrics(sets, prepared.classes, probe=True)
    record = {
        "run": f"floor-{kind}",
        "method": kind,
        "config": setup,
        "dataset": setup["data"],
        "seed": seed,
        "train_seconds": 0.0,
        "wall_seconds": round(time.perf_counter() - tic, 1),
        "evaluations": evaluations,
    }
    runs.write_record(folder, record)
    return runs.finished(folder)


def finetune(
    pretrained: PretrainRun,
    prepared,
    train_config: TrainConfig | None = None,
    tta: str | None = "flip",
    checkpoint_dir=None,
    device=None,
    progress: bool = True,
    steps_per_epoch: int | None = None,
):
    """Fine-tune a pretrained backbone with a new linear head: every weight trains, with class-weighted
    cross-entropy and early stopping on the val split (:func:`utils.supervised.train_supervised`)."""
    from .supervised import ModelConfig, train_supervised

    model = pretrained.record["config"]["model"]
    tc = train_config or TrainConfig(epochs=30, lr=0.02, balance="weights", patience=5, warmup_epochs=1)
    mc = ModelConfig(backbone=model["backbone"], channels=model["channels"], stem_stride=model["stem_stride"], tta=tta)
    return train_supervised(
        prepared,
        mc,
        tc,
        name=f"finetune-{pretrained.run_dir.name}",
        checkpoint_dir=checkpoint_dir,
        device=device,
        progress=progress,
        steps_per_epoch=steps_per_epoch,
        init=pretrained.backbone_path,
        method=pretrained.record["method"],
        protocol="finetune",
    )
