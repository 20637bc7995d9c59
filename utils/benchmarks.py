"""Speed measurements, run on your machine: ``python -m utils.benchmarks WHAT --data PATH``.

``prepare``     FER2013 CSV to the face cache (dlib, landmarks, alignment, heatmaps), wall time.
``loader``      augmented images per second: the suite's in-memory batch loader against a torchvision
                ``ImageFolder`` + PIL-transforms ``DataLoader`` (the seed project's pipeline) on the same
                images (notebook 01's export), alternating, in one process.
``neighbours``  the heatmap-neighbour index: wall time at several dataset sizes.
``pretrain``    MoCo v2 pretraining images per second: the suite (as :func:`~utils.engine.fit` runs it) against
                the same method built from the ``lightly`` package (``pip install lightly``) as its
                documentation builds it, same backbone, batch, input and mixed precision.

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
    from .data import load_dataset
    from .faces import prepare, remembered_config

    ds = load_dataset(dataset, data)
    return prepare(ds, remembered_config(ds.name), progress=False)


def bench_prepare(args) -> dict:
    import tempfile

    from .data import load_dataset
    from .faces import FaceConfig, prepare

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

    from .augment import AugmentConfig, BatchAugment
    from .loader import BatchLoader, face_tensors

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
    from .neighbours import NeighbourConfig, heatmap_descriptors, nearest_neighbours

    prepared = _prepared(args.data)
    heat = prepared.heatmaps[prepared.split_indices("train")]
    config = NeighbourConfig()
    out = {"benchmark": "neighbours", "sizes": {}}
    rng = np.random.default_rng(0)
    for size in args.sizes:
        rows = rng.choice(len(heat), size, replace=size > len(heat))  # larger sizes: heatmaps repeated
        sample = heat[rows]
        times = []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            feats = heatmap_descriptors(sample, config.pool, config.components)
            nearest_neighbours(feats, config.k, config.seed)
            times.append(time.perf_counter() - tic)
        out["sizes"][size] = round(statistics.median(times), 2)
        # progress on stderr, so a long run at large sizes shows what it has measured so far
        print(json.dumps({"size": size, "seconds": times}), file=sys.stderr, flush=True)
    return out


def bench_pretrain(args) -> dict:
    """MoCo v2 images/s: the suite's method vs one assembled from lightly (its transforms, heads, loss)."""
    try:
        import lightly  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs lightly: pip install lightly")
    import copy

    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import MoCoV2Transform
    from torchvision import datasets

    from .engine import TrainConfig, amp_dtype, make_optimizer, to_channels_last
    from .loader import BatchLoader, face_tensors
    from .methods import InputSpec
    from .methods.moco import MoCo, MoCoConfig
    from .models import create_model

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    dtype = amp_dtype(device, True)
    prepared = _prepared(args.data)
    train = face_tensors(prepared, "train", "gray")
    torch.manual_seed(0)

    # --- the suite
    config = MoCoConfig(queue_size=8192)
    suite = MoCo(config, InputSpec(1, 1, tuple(prepared.classes), prepared.images.shape[1], len(train)))
    suite_config = TrainConfig(lr=0.06, weight_decay=1e-4)
    if suite_config.channels_last:  # as fit() trains it
        to_channels_last(suite, device)
    suite_opt = make_optimizer(suite.param_groups(suite_config.weight_decay), suite_config)
    loader = BatchLoader(train, args.batch_size, shuffle=True, drop_last=True)

    def run_suite(steps):
        g = torch.Generator().manual_seed(0)
        rows_seen, tic = 0, time.perf_counter()
        suite.train()
        for b, (x, y, rows) in enumerate(loader):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss, _ = suite(x, y, rows, g)
            suite_opt.zero_grad()
            loss.backward()
            suite_opt.step()
            suite.after_step(0.0)
            rows_seen += len(x)
            if b + 1 == steps:
                break
        return rows_seen / (time.perf_counter() - tic)

    # --- lightly: its MoCo v2 transform on PIL images, its projection head, memory-bank NT-Xent loss
    class LightlyMoCo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = create_model(config.backbone, 0, 1, stem_stride=config.stem_stride)
            self.projection_head = MoCoProjectionHead(512, 512, 128)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

        def forward(self, x):
            return self.projection_head(self.backbone(x))

        def forward_momentum(self, x):
            return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    model = LightlyMoCo()
    criterion = NTXentLoss(temperature=0.2, memory_bank_size=(8192, 128))
    lightly_opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=1e-4)
    transform = MoCoV2Transform(
        input_size=prepared.images.shape[1], cj_hue=0.0, cj_sat=0.0, random_gray_scale=0.0, normalize=None
    )
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
        for b, ((x_query, x_key), _) in enumerate(dataloader):
            update_momentum(model.backbone, model.backbone_momentum, m=0.999)
            update_momentum(model.projection_head, model.projection_head_momentum, m=0.999)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                query = model(x_query)
                key = model.forward_momentum(x_key)
                loss = criterion(query.float(), key.float())
            lightly_opt.zero_grad()
            loss.backward()
            lightly_opt.step()
            images += len(x_query)
            if b + 1 == steps:
                break
        return images / (time.perf_counter() - tic)

    run_suite(2), run_lightly(2)  # warm-up
    suite_rates, lightly_rates = [], []
    for _ in range(args.repeats):
        time.sleep(1.0)  # let the DataLoader's workers finish prefetching, so they do not slow the suite's turn
        suite_rates.append(run_suite(args.batches))
        lightly_rates.append(run_lightly(args.batches))
    s, li = statistics.median(suite_rates), statistics.median(lightly_rates)
    return {
        "benchmark": "pretrain",
        "suite_images_per_s": round(s, 1),
        "lightly_images_per_s": round(li, 1),
        "ratio": round(s / li, 2),
        "suite_all": [round(r, 1) for r in suite_rates],
        "lightly_all": [round(r, 1) for r in lightly_rates],
        "lightly_version": lightly.__version__,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "amp": str(dtype),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["prepare", "loader", "neighbours", "pretrain"])
    parser.add_argument("--data", default="data/fer2013", help="FER2013 CSV or folder")
    parser.add_argument("--images", default="data/exports/fer2013", help="notebook 01's image-folder export")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the compared pipeline")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--sizes", type=int, nargs="+", default=[7000, 14000, 28709, 57418])
    args = parser.parse_args(argv)
    result = {
        "prepare": bench_prepare,
        "loader": bench_loader,
        "neighbours": bench_neighbours,
        "pretrain": bench_pretrain,
    }[args.what](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
