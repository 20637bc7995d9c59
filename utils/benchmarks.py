"""Speed measurements, run on your machine: ``python -m utils.benchmarks WHAT --data PATH``.

``prepare``     FER2013 CSV to the face cache (dlib, landmarks, alignment, heatmaps), wall time.
``loader``      augmented images per second: the suite's in-memory batch loader against a torchvision
                ``ImageFolder`` + PIL-transforms ``DataLoader`` (the seed project's pipeline) on the same
                images (notebook 01's export), alternating, in one process.
``neighbours``  the heatmap-neighbour index: wall time at several dataset sizes; with ``--search approximate``
                the faiss index's time, its recall@5 against the exact search (on 2,000 query rows with a
                face) and, up to 60,000 images, the exact search's time and both label agreements.
                Sizes beyond the training split add faces made by jittering its landmarks (see
                :func:`bench_neighbours`), never repeated heatmaps.
``pretrain``    MoCo v2 or BYOL (``--method``) pretraining images per second: the suite (as
                :func:`~utils.core.engine.fit` runs it) against the same method built from the ``lightly`` package
                (``pip install lightly``) as its documentation builds it, same backbone, batch, input and
                mixed precision.
``methods``     pretraining images per second of several of the suite's methods (``--methods byol fra``),
                relative to the first: what a method costs beside another.
``compile``     a classifier's training images per second eager and under ``torch.compile``, in float32 and
                bfloat16 (where the CPU has it), and the compile time.

Timings are medians over repeats; every comparison runs both sides alternately in one process, so a
shared, noisy machine affects both alike. Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _prepared(data: str, dataset: str = "fer2013"):
    from utils.data.faces import prepare, remembered_config

    from .data import load_dataset

    ds = load_dataset(dataset, data)
    return prepare(ds, remembered_config(ds.name), progress=False)


def bench_prepare(args) -> dict:
    import tempfile

    from utils.data.faces import FaceConfig, prepare

    from .data import load_dataset

    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache_dir:
            tic = time.perf_counter()
            ds = load_dataset("fer2013", args.data)
            prepared = prepare(ds, FaceConfig(), cache_dir=cache_dir, progress=False)
            total = time.perf_counter() - tic
            tic = time.perf_counter()
            prepare(ds, FaceConfig(), cache_dir=cache_dir, progress=False)
            reload = time.perf_counter() - tic
        times.append((total, reload))
    return {
        "benchmark": "prepare",
        "images": len(prepared),
        "seconds_median": statistics.median(t[0] for t in times),
        "seconds_all": [round(t[0], 1) for t in times],
        "reload_seconds_median": statistics.median(t[1] for t in times),
        "face_found": prepared.detection_stats()["face_found"],
    }


def bench_loader(args) -> dict:
    from torchvision import datasets, transforms

    from utils.core.augment import AugmentConfig, BatchAugment
    from utils.core.loader import BatchLoader, face_tensors

    torch.set_num_threads(args.threads)
    prepared = _prepared(args.data)
    train = face_tensors(prepared, "train", "gray")
    aug_cfg = AugmentConfig()
    suite_aug = BatchAugment(aug_cfg)
    suite = BatchLoader(train, args.batch_size, shuffle=True)
    folder = Path(args.images)
    side = prepared.images.shape[1]
    pil = transforms.Compose(  # the same augmentations, image by image
        [
            transforms.Grayscale(1),
            transforms.RandomHorizontalFlip(aug_cfg.flip),
            transforms.RandomAffine(aug_cfg.rotate, translate=(aug_cfg.translate, aug_cfg.translate)),
            transforms.RandomResizedCrop(side, scale=aug_cfg.scale, ratio=aug_cfg.ratio, antialias=True),
            transforms.ColorJitter(aug_cfg.brightness, aug_cfg.contrast),
            transforms.ToTensor(),
        ]
    )
    image_folder = datasets.ImageFolder(str(folder / "train"), transform=pil)
    dataloader = torch.utils.data.DataLoader(
        image_folder,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )

    def run_suite(batches):
        g = torch.Generator().manual_seed(0)
        n, tic = 0, time.perf_counter()
        for b, (x, _y, _rows) in enumerate(suite):
            x = suite_aug(x, g)
            n += len(x)
            if b + 1 == batches:
                break
        return n / (time.perf_counter() - tic)

    def run_folder(batches):
        n, tic = 0, time.perf_counter()
        for b, (x, _y) in enumerate(dataloader):
            n += len(x)
            if b + 1 == batches:
                break
        return n / (time.perf_counter() - tic)

    run_suite(2), run_folder(2)  # warm-up (worker start-up, allocator)
    suite_rates, folder_rates = [], []
    for _ in range(args.repeats):
        time.sleep(1.0)  # let the DataLoader's workers finish prefetching, so they do not slow the suite's turn
        suite_rates.append(run_suite(args.batches))
        folder_rates.append(run_folder(args.batches))
    s, f = statistics.median(suite_rates), statistics.median(folder_rates)
    return {
        "benchmark": "loader",
        "suite_images_per_s": round(s),
        "imagefolder_images_per_s": round(f),
        "ratio": round(s / f, 2),
        "suite_all": [round(r) for r in suite_rates],
        "imagefolder_all": [round(r) for r in folder_rates],
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": args.threads,
    }


def bench_neighbours(args) -> dict:
    """The neighbour index at ``args.sizes`` images of the training split.

    ``--search exact`` times descriptors + exact search (median over repeats). ``--search approximate``
    times the descriptors and the faiss search apart, measures recall@k of the faiss neighbours against
    the exact ones on 2,000 random query rows that have landmarks (exact search of those rows only:
    among the identical empty heatmaps of faces without landmarks any neighbours are as good, which recall
    would count as misses), and up to 60,000 images also times the exact search of all rows and, when all
    images are real, compares both indexes' label agreement.

    Sizes up to the training split take a random subset of it. Larger sizes take all of it and add
    new faces (repeated heatmaps would be exact duplicates, whose neighbours recall cannot judge): the
    landmarks of training faces (each in turn), moved by a random similarity transform about their centre
    (rotation within +-5 degrees, scale within +-5 %, shift within +-1 px) plus 0.3 px of noise per point,
    seeded, and redrawn as heatmaps (:func:`~utils.data.faces.landmark_heatmaps`, the preparation's sigma).
    """
    from utils.methods.neighbours import (
        NeighbourConfig,
        approximate_neighbours,
        heatmap_descriptors,
        label_agreement,
        nearest_neighbours,
        recall_at_k,
    )

    prepared = _prepared(args.data)
    train = prepared.split_indices("train")
    config = NeighbourConfig()
    out = {"benchmark": "neighbours", "search": args.search, "train_images": len(train), "sizes": {}}
    for size in args.sizes:
        rng = np.random.default_rng(0)
        heat, real, has_face = _neighbour_heatmaps(prepared, train, size, rng)
        if args.search == "exact":
            times = []
            for _ in range(args.repeats):
                tic = time.perf_counter()
                feats = heatmap_descriptors(heat, config.pool, config.components)
                nearest_neighbours(feats, config.k, config.seed)
                times.append(time.perf_counter() - tic)
            out["sizes"][size] = round(statistics.median(times), 2)
            # progress on stderr, so a long run at large sizes shows what it has measured so far
            print(json.dumps({"size": size, "seconds": times}), file=sys.stderr, flush=True)
            continue

        describe, search = [], []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            feats = heatmap_descriptors(heat, config.pool, config.components)
            describe.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            found, _ = approximate_neighbours(feats, config.k, config.seed)
            search.append(time.perf_counter() - tic)
        with_face = np.flatnonzero(has_face)
        queries = np.sort(rng.choice(with_face, min(args.queries, len(with_face)), replace=False))
        exact_queries, _ = nearest_neighbours(feats, config.k, config.seed, rows=queries)
        entry = {
            "synthetic_images": int(size - len(real)),
            "descriptors_seconds": round(statistics.median(describe), 2),
            "approximate_seconds": round(statistics.median(search), 2),
            f"recall_at_{config.k}": round(recall_at_k(found[queries], exact_queries), 4),
            "recall_queries": len(queries),
        }
        if size <= args.exact_up_to:
            exact_times = []
            for _ in range(args.repeats):
                tic = time.perf_counter()
                exact, _ = nearest_neighbours(feats, config.k, config.seed)
                exact_times.append(time.perf_counter() - tic)
            entry["exact_seconds"] = round(statistics.median(exact_times), 2)
            if len(real) == size:  # real faces only: their labels mean something
                labels = prepared.labels[train[real]]
                exact_agreement, found_agreement = label_agreement(exact, labels), label_agreement(found, labels)
                entry["label_agreement"] = {
                    "exact": round(exact_agreement["agreement"], 4),
                    "approximate": round(found_agreement["agreement"], 4),
                    "chance": round(exact_agreement["chance"], 4),
                }
        out["sizes"][size] = entry
        print(json.dumps({"size": size, **entry}), file=sys.stderr, flush=True)
    return out


def _neighbour_heatmaps(prepared, train: np.ndarray, size: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``size`` heatmaps for :func:`bench_neighbours`: real training faces, then jittered ones.

    Returns:
        ``(heatmaps, real, has_face)``: ``(size, S, S)`` uint8; positions within ``train`` of the real
        faces (the first ``len(real)`` heatmaps); whether each heatmap has landmarks.
    """
    from utils.data.faces import landmark_heatmaps

    landmarks = prepared.landmarks[train]
    found = np.isfinite(landmarks).all(axis=(1, 2))
    if size <= len(train):
        real = np.sort(rng.choice(len(train), size, replace=False))
        return prepared.heatmaps[train[real]], real, found[real]
    extra = size - len(train)
    sources = np.resize(rng.permutation(np.flatnonzero(found)), extra)  # every face with landmarks in turn
    points = landmarks[sources].astype(np.float64)  # (extra, 68, 2)
    centre = points.mean(axis=1, keepdims=True)
    angle = np.deg2rad(rng.uniform(-5, 5, extra))
    scale = rng.uniform(0.95, 1.05, extra)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # (extra, 2, 2)
    moved = (points - centre) @ rotation.transpose(0, 2, 1) + centre + rng.uniform(-1, 1, (extra, 1, 2))
    moved += rng.normal(0, 0.3, moved.shape)
    side = prepared.images.shape[1]
    jittered = landmark_heatmaps(moved.astype(np.float32), side, prepared.config.sigma)
    heat = np.concatenate([prepared.heatmaps[train], jittered])
    return heat, np.arange(len(train)), np.concatenate([found, np.ones(extra, dtype=bool)])


def _suite_stepper(method, train, batch_size: int, lr: float, weight_decay: float, device, dtype):
    """A function ``steps -> images/s`` that trains ``method`` as :func:`~utils.core.engine.fit` does (channels-last
    weights, the method's parameter groups, autocast, the after-step hook)."""
    from utils.core.engine import TrainConfig, make_optimizer, to_channels_last
    from utils.core.loader import BatchLoader

    config = TrainConfig(lr=lr, weight_decay=weight_decay)
    to_channels_last(method, device)
    optimizer = make_optimizer(method.param_groups(config.weight_decay), config)
    loader = BatchLoader(train, batch_size, shuffle=True, drop_last=True)

    def run(steps):
        g = torch.Generator().manual_seed(0)
        seen, tic = 0, time.perf_counter()
        method.train()
        for b, (x, y, rows) in enumerate(loader):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, _ = method(x, y, rows, g)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            method.after_step(0.5)
            seen += len(x)
            if b + 1 == steps:
                break
        return seen / (time.perf_counter() - tic)

    return run


def _interleaved(runners: dict, batches: int, repeats: int) -> dict:
    """Median images/s of each runner, the runners taking turns (a noisy machine slows them alike)."""
    for run in runners.values():
        run(2)  # warm-up
    rates = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            time.sleep(1.0)  # let DataLoader workers finish prefetching, so they do not slow the next turn
            rates[name].append(run(batches))
    return {name: (statistics.median(r), [round(v, 1) for v in r]) for name, r in rates.items()}


def bench_methods(args) -> dict:
    """Pretraining images/s of the suite's methods on the same data, batch and precision; the first is the
    reference of the ratios. ``--methods byol fra fra:region_stage=layer3,last_stride=2``."""
    from utils.core.engine import TrainConfig, amp_dtype
    from utils.core.loader import face_tensors

    from . import methods
    from .methods import InputSpec

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    dtype = amp_dtype(device, not args.fp32)
    prepared = _prepared(args.data)
    runners = {}
    for text in args.methods:
        config = methods.config_from_text(text)
        cls = methods.for_config(config)
        train = face_tensors(prepared, "train", config.channels)
        spec = InputSpec(1 + ("+" in config.channels), 1, tuple(prepared.classes), prepared.images.shape[1], len(train))
        torch.manual_seed(0)
        method = cls(config, spec)
        if hasattr(method, "prepare"):
            method.prepare(train, prepared, TrainConfig())
        defaults = {"lr": 0.05, "weight_decay": 1e-4, **cls.train_defaults}
        runners[text] = _suite_stepper(
            method, train, args.batch_size, defaults["lr"], defaults["weight_decay"], device, dtype
        )
    rates = _interleaved(runners, args.batches, args.repeats)
    first = rates[args.methods[0]][0]
    return {
        "benchmark": "methods",
        "images_per_s": {name: round(r[0], 1) for name, r in rates.items()},
        "relative_to_first": {name: round(r[0] / first, 3) for name, r in rates.items()},
        "all": {name: r[1] for name, r in rates.items()},
        "batch_size": args.batch_size,
        "amp": str(dtype),
    }


def bench_compile(args) -> dict:
    """Training images/s of a classifier (``--model``) eager and under ``torch.compile`` (its network compiled;
    augmentation and loss stay eager), in float32 and, where the CPU has it, bfloat16 autocast, and the compile
    time: how much longer the compiled model's first 3 steps take than the eager model's."""
    from utils.core.engine import amp_dtype
    from utils.core.loader import face_tensors

    from . import methods
    from .methods import InputSpec

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    prepared = _prepared(args.data)
    config = methods.config_from_text(args.model)
    cls = methods.for_config(config)
    train = face_tensors(prepared, "train", config.channels)
    spec = InputSpec(1 + ("+" in config.channels), 1, tuple(prepared.classes), prepared.images.shape[1], len(train))
    defaults = {"lr": 0.05, "weight_decay": 5e-4, **cls.train_defaults}
    out = {"benchmark": "compile", "model": args.model, "batch_size": args.batch_size, "torch": torch.__version__}
    precisions = {"float32": None}
    if amp_dtype(device) is not None:
        precisions["bfloat16"] = amp_dtype(device)
    for label, dtype in precisions.items():
        runners, first = {}, {}
        for mode in ("eager", "compiled"):
            torch.manual_seed(0)
            method = cls(config, spec)
            if mode == "compiled":
                torch._dynamo.reset()
                method.encoder = torch.compile(method.encoder)
            run = _suite_stepper(
                method, train, args.batch_size, defaults["lr"], defaults["weight_decay"], device, dtype
            )
            tic = time.perf_counter()
            run(3)
            first[mode] = time.perf_counter() - tic
            runners[mode] = run
        rates = _interleaved(runners, args.batches, args.repeats)
        out[label] = {
            "eager_images_per_s": round(rates["eager"][0], 1),
            "compiled_images_per_s": round(rates["compiled"][0], 1),
            "speed_up": round(rates["compiled"][0] / rates["eager"][0], 3),
            "compile_seconds": round(first["compiled"] - first["eager"], 1),
            "eager_all": rates["eager"][1],
            "compiled_all": rates["compiled"][1],
        }
        print(json.dumps({label: out[label]}), file=sys.stderr, flush=True)
    return out


def bench_pretrain(args) -> dict:
    """MoCo v2 or BYOL images/s: the suite's method vs the same method assembled from lightly as its
    documentation does (its transforms on PIL images in DataLoader workers, its heads, loss and momentum
    update), same backbone, batch, input and precision."""
    try:
        import lightly
    except ImportError:
        sys.exit("this benchmark needs lightly: pip install lightly")
    import copy

    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, MoCoV2Transform
    from torchvision import datasets

    from utils.core.engine import amp_dtype, to_channels_last
    from utils.core.loader import face_tensors
    from utils.methods.models import create_model

    from .methods import InputSpec
    from .methods.byol import BYOL, BYOLConfig
    from .methods.moco import MoCo, MoCoConfig

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    dtype = amp_dtype(device, not args.fp32)
    prepared = _prepared(args.data)
    train = face_tensors(prepared, "train", "gray")
    size = prepared.images.shape[1]
    spec = InputSpec(1, 1, tuple(prepared.classes), size, len(train))
    torch.manual_seed(0)
    byol = args.method == "byol"
    if byol:
        suite = BYOL(BYOLConfig(), spec)
        run_suite = _suite_stepper(suite, train, args.batch_size, 0.1, 1e-5, device, dtype)
    else:
        suite = MoCo(MoCoConfig(queue_size=8192), spec)
        run_suite = _suite_stepper(suite, train, args.batch_size, 0.06, 1e-4, device, dtype)

    class Lightly(torch.nn.Module):
        """The method as lightly's examples assemble it, on the suite's backbone (same stem, same size)."""

        def __init__(self):
            super().__init__()
            self.backbone = create_model("resnet18", 0, 1, stem_stride=2)
            if byol:
                self.projection_head = BYOLProjectionHead(512, 4096, 256)
                self.prediction_head = BYOLPredictionHead(256, 4096, 256)
            else:
                self.projection_head = MoCoProjectionHead(512, 512, 128)
                self.prediction_head = torch.nn.Identity()
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

        def forward(self, x):
            return self.prediction_head(self.projection_head(self.backbone(x)))

        def forward_momentum(self, x):
            return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    model = Lightly()
    to_channels_last(model, device)  # the same kernels as the suite
    grey = {"input_size": size, "cj_hue": 0.0, "cj_sat": 0.0, "random_gray_scale": 0.0, "normalize": None}
    if byol:
        criterion = NegativeCosineSimilarity()
        transform = BYOLTransform(BYOLView1Transform(**grey), BYOLView2Transform(**grey))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
    else:
        criterion = NTXentLoss(temperature=0.2, memory_bank_size=(8192, 128))
        transform = MoCoV2Transform(**grey)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=1e-4)
    image_folder = datasets.ImageFolder(
        str(Path(args.images) / "train"),
        transform=transform,
        loader=lambda p: __import__("PIL.Image").Image.open(p).convert("L"),
    )
    dataloader = torch.utils.data.DataLoader(
        image_folder,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )

    def run_lightly(steps):
        images, tic = 0, time.perf_counter()
        model.train()
        for b, ((x0, x1), _) in enumerate(dataloader):
            update_momentum(model.backbone, model.backbone_momentum, m=0.99)
            update_momentum(model.projection_head, model.projection_head_momentum, m=0.99)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                if byol:  # lightly's BYOL example: both directions, halved
                    p0, p1 = model(x0), model(x1)
                    z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
                    loss = 0.5 * (criterion(p0.float(), z1.float()) + criterion(p1.float(), z0.float()))
                else:
                    loss = criterion(model(x0).float(), model.forward_momentum(x1).float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images += len(x0)
            if b + 1 == steps:
                break
        return images / (time.perf_counter() - tic)

    rates = _interleaved({"suite": run_suite, "lightly": run_lightly}, args.batches, args.repeats)
    s, li = rates["suite"][0], rates["lightly"][0]
    return {
        "benchmark": "pretrain",
        "method": args.method,
        "suite_images_per_s": round(s, 1),
        "lightly_images_per_s": round(li, 1),
        "ratio": round(s / li, 2),
        "suite_all": rates["suite"][1],
        "lightly_all": rates["lightly"][1],
        "lightly_version": lightly.__version__,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "amp": str(dtype),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["prepare", "loader", "neighbours", "pretrain", "methods", "compile"])
    parser.add_argument("--method", default="moco_v2", choices=["moco_v2", "byol"], help="pretrain: which method")
    parser.add_argument("--methods", nargs="+", default=["byol", "fra"], help="methods: name[:field=value,...]")
    parser.add_argument("--model", default="supervised:stem_stride=2", help="compile: the classifier timed")
    parser.add_argument("--fp32", action="store_true", help="no mixed precision, even where the CPU has bf16")
    parser.add_argument("--data", default="data/fer2013", help="FER2013 CSV or folder")
    parser.add_argument("--images", default="data/exports/fer2013", help="notebook 01's image-folder export")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the compared pipeline")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sizes", type=int, nargs="+", default=[7000, 14000, 28709, 57418])
    parser.add_argument(
        "--search", default="exact", choices=["exact", "approximate"], help="neighbours: which search to time"
    )
    parser.add_argument("--queries", type=int, default=2000, help="neighbours: query rows recall is measured on")
    parser.add_argument("--exact-up-to", type=int, default=60000, help="neighbours: largest size also searched exactly")
    args = parser.parse_args(argv)
    result = {
        "prepare": bench_prepare,
        "loader": bench_loader,
        "neighbours": bench_neighbours,
        "pretrain": bench_pretrain,
        "methods": bench_methods,
        "compile": bench_compile,
    }[args.what](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
