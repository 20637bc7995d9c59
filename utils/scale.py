"""Measurements of the face store at scale: ``python -m utils.scale WHAT ...``. Each prints one JSON line.

``face-folder``   writes a test set of unlabelled faces as a user would have them: FER2013 Training faces, each
                  jittered (rotation within +-8 degrees, scale within +-10 %, shift within +-2 px, brightness
                  within +-15) and resized to a random side of 48-96 px, saved as JPEG (quality 85-95) in folders
                  of 1,000. Face ``i`` is face ``i mod 28,709``, seeded by ``i``: the set is the same on every run,
                  and a rerun skips the folders already written.
``peak-memory``   runs a command (after ``--``) and samples the memory of its process tree every 0.2 s: the peak
                  of the tree's anonymous memory (what the processes allocated; a forked worker's pages shared
                  with its parent count in both, so also its proportional share, PSS) and of its resident file
                  pages (mapped store pages, which the OS may drop), and the wall time.
``speed``         pretraining images/s of a method (its CPU recipe) on FER2013 Training, the batches streamed from
                  the store against held in memory, alternating in one process (medians of repeats).
``epoch``         one pretraining epoch of a method on a prepared folder of faces (``--faces``), streamed from the
                  store: images/s. Run it under ``peak-memory``.
``neighbours``    HNCL's neighbour index (its default settings) over a prepared folder of faces, built from the
                  store: seconds. Run it under ``peak-memory``.

For example (the figures of the face store's issue)::

    python -m utils.scale face-folder --out /tmp/faces --count 1000000
    python -m utils.scale peak-memory -- python -m utils.data prepare faces /tmp/faces --detector none
    python -m utils.scale peak-memory -- python -m utils.scale epoch --faces /tmp/faces --max-images 290000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PER_FOLDER = 1000


# --------------------------------------------------------------------------------------------- face folder


_PIXELS: dict = {}


def _keep_pixels(pixels) -> None:  # each worker receives the source faces once
    _PIXELS["train"] = pixels


def _write_block(args) -> int:
    import cv2

    out, block, count = args
    pixels = _PIXELS["train"]
    folder = Path(out) / f"{block:04d}"
    done = folder / ".done"
    if done.is_file():
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for i in range(block * PER_FOLDER, min(count, (block + 1) * PER_FOLDER)):
        rng = np.random.default_rng(i)
        face = pixels[i % len(pixels)]
        angle, scale = rng.uniform(-8, 8), rng.uniform(0.9, 1.1)
        matrix = cv2.getRotationMatrix2D((23.5, 23.5), angle, scale)
        matrix[:, 2] += rng.uniform(-2, 2, 2)
        face = cv2.warpAffine(face, matrix, (48, 48), borderMode=cv2.BORDER_REPLICATE)
        face = np.clip(face.astype(np.int16) + int(rng.integers(-15, 16)), 0, 255).astype(np.uint8)
        side = int(rng.integers(48, 97))
        face = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
        ok, data = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(85, 96))])
        (folder / f"{i:07d}.jpg").write_bytes(data.tobytes())
        written += 1
    done.touch()
    return written


def face_folder(args) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    from utils.data import load_dataset

    ds = load_dataset("fer2013", args.data)
    pixels = ds.pixels[ds.split_indices("train")]
    blocks = range(-(-args.count // PER_FOLDER))
    tic = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=_keep_pixels, initargs=(pixels,)) as pool:
        written = sum(pool.map(_write_block, [(args.out, b, args.count) for b in blocks], chunksize=4))
    seconds = time.perf_counter() - tic
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*.jpg")) if args.count <= 100_000 else None
    return {
        "what": "face-folder",
        "faces": args.count,
        "written_now": written,
        "seconds": round(seconds, 1),
        "faces_per_s": round(written / seconds, 1) if written else None,
        "source_faces": len(pixels),
        **({"bytes": size} if size is not None else {}),
    }


# -------------------------------------------------------------------------------------------- peak memory


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def _memory(pids) -> tuple[int, int, int]:
    """The tree's resident anonymous and file-backed bytes (each process counted whole), and its anonymous bytes
    counted proportionally (PSS: a page a forked worker still shares with its parent is counted once)."""
    anon = file = pss_anon = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) << 10
                    elif line.startswith(("RssFile:", "RssShmem:")):
                        file += int(line.split()[1]) << 10
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss_Anon:"):
                        pss_anon += int(line.split()[1]) << 10
        except OSError:
            pass
    return anon, file, pss_anon


def peak_memory(args) -> dict:
    command = args.command
    if not command:
        raise SystemExit("peak-memory: give the command after --")
    tic = time.perf_counter()
    child = subprocess.Popen(command)
    peak_anon = peak_file = peak_total = peak_pss = 0
    while child.poll() is None:
        anon, file, pss = _memory(_tree(child.pid))
        peak_anon, peak_file, peak_total = max(peak_anon, anon), max(peak_file, file), max(peak_total, anon + file)
        peak_pss = max(peak_pss, pss)
        time.sleep(0.2)
    return {
        "what": "peak-memory",
        "command": " ".join(command),
        "returncode": child.returncode,
        "seconds": round(time.perf_counter() - tic, 1),
        "peak_anon_mb": round(peak_anon / 2**20, 1),
        "peak_file_mb": round(peak_file / 2**20, 1),
        "peak_rss_mb": round(peak_total / 2**20, 1),
        "peak_anon_pss_mb": round(peak_pss / 2**20, 1),
    }


# ------------------------------------------------------------------------------------------ pretraining


def _method(text: str, prepared, rows_train):
    """A method built from its CPU recipe (``name`` or ``name:field=value,...`` on top), prepared on ``rows_train``."""
    import torch

    from utils import methods
    from utils.core.recipes import load_recipe, method_settings
    from utils.methods import InputSpec

    name, _, settings = text.partition(":")
    recipe = load_recipe(name, "cpu")
    config, train, _ = method_settings(name, recipe, methods.parse_settings(filter(None, settings.split(","))))
    cls = methods.get(name)
    torch.manual_seed(0)
    spec = InputSpec(
        1 + ("+" in config.channels), 1, tuple(prepared.classes), prepared.images.shape[1], len(rows_train)
    )
    return cls(config, spec), config, train


def speed(args) -> dict:
    import torch

    from utils.benchmarks import _interleaved, _suite_stepper
    from utils.core.engine import amp_dtype
    from utils.core.loader import face_tensors
    from utils.data import load_dataset
    from utils.data.faces import prepare, remembered_config

    ds = load_dataset("fer2013", args.data)
    prepared = prepare(ds, remembered_config(ds.name), progress=False)
    device = torch.device("cpu")
    runners = {}
    for stream in (False, True):
        train = face_tensors(prepared, "train", "gray", device, stream=stream)
        method, config, tc = _method(args.method, prepared, train)
        train = face_tensors(prepared, "train", config.channels, device, stream=stream)
        method.prepare(train, prepared, tc)
        dtype = amp_dtype(device, tc.amp)
        runners["store" if stream else "memory"] = _suite_stepper(
            method, train, tc.batch_size, tc.lr, tc.weight_decay, device, dtype
        )
    rates = _interleaved(runners, args.batches, args.repeats)
    return {
        "what": "speed",
        "method": args.method,
        "images": len(train),
        "images_per_s": {k: round(v[0], 1) for k, v in rates.items()},
        "all": {k: v[1] for k, v in rates.items()},
        "store_over_memory": round(rates["store"][0] / rates["memory"][0], 3),
    }


def _faces(args):
    from utils.data import load_dataset
    from utils.data.faces import FaceConfig, prepare

    ds = load_dataset("faces", args.faces, **({"max_images": args.max_images} if args.max_images else {}))
    return prepare(ds, FaceConfig(detector=args.detector), cache_dir=args.cache_dir, progress=False)


def epoch(args) -> dict:
    import torch

    from utils.benchmarks import _suite_stepper
    from utils.core.engine import amp_dtype
    from utils.core.loader import face_tensors

    prepared = _faces(args)
    device = torch.device("cpu")
    method, config, tc = _method(args.method, prepared, np.arange(len(prepared)))
    train = face_tensors(prepared, None, config.channels, device, stream=True)
    method.prepare(train, prepared, tc)
    run = _suite_stepper(method, train, tc.batch_size, tc.lr, tc.weight_decay, device, amp_dtype(device, tc.amp))
    steps = len(train) // tc.batch_size  # one epoch, the last short batch dropped
    tic = time.perf_counter()
    rate = run(steps)
    return {"what": "epoch", "method": args.method, "faces": len(prepared), "images_seen": steps * tc.batch_size,
            "seconds": round(time.perf_counter() - tic, 1), "images_per_s": round(rate, 1)}  # fmt: skip


def neighbours(args) -> dict:
    from utils.methods.neighbours import NeighbourConfig, build_index

    prepared = _faces(args)
    index = build_index(prepared, np.arange(len(prepared)), NeighbourConfig(), cache_dir=False)
    return {"what": "neighbours", "faces": len(prepared), "seconds": round(index["seconds"], 1),
            "search": index["search"], "k": int(index["neighbours"].shape[1])}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["face-folder", "peak-memory", "speed", "epoch", "neighbours"])
    parser.add_argument("--data", default="data/fer2013", help="FER2013 CSV or folder")
    parser.add_argument("--out", default="data/scale-faces", help="face-folder: where the faces go")
    parser.add_argument("--count", type=int, default=1_000_000, help="face-folder: how many faces")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--faces", default="data/scale-faces", help="epoch, neighbours: the folder of faces")
    parser.add_argument("--max-images", type=int, default=None, help="epoch, neighbours: the first N faces")
    parser.add_argument("--cache-dir", default=None, help="epoch, neighbours: where the store is (data/cache)")
    parser.add_argument("--detector", default="none", help="epoch, neighbours: how the folder was prepared")
    parser.add_argument("--method", default="hncl", help="speed, epoch: name[:field=value,...] on its CPU recipe")
    parser.add_argument("--batches", type=int, default=20, help="speed: batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="speed: repeats")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # peak-memory: the command measured comes after --
    args = parser.parse_args(argv[:cut])
    args.command = argv[cut + 1 :]
    what = {"face-folder": face_folder, "peak-memory": peak_memory, "speed": speed, "epoch": epoch,
            "neighbours": neighbours}[args.what]  # fmt: skip
    print(json.dumps(what(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
