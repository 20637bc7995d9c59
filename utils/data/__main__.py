"""Datasets from a shell: count them, or prepare them into the face store.

``python -m utils.data check DATASET PATH [--json] [--strict] [--verify-images]`` prints per-split, per-class
counts under the canonical class names, the layout found, and every bad row or file with its reason. Exits 2,
naming the path and the accepted layouts, when nothing readable is there; exits 1 in ``--strict`` mode when a
row or file is bad.

``python -m utils.data prepare DATASET PATH [--workers N] [--detector dlib] [--size 48] [--color gray]`` finds,
aligns and crops every face (:func:`utils.data.faces.prepare`) into the face store under ``data/cache``, on all
cores, with a progress bar of faces/s and the time left; run again after an interruption, it resumes from the
last finished chunk. ``DATASET`` is any reader's name, ``faces`` for a folder of faces without labels.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from . import READERS, DatasetError, load_dataset
from .base import Problem, read_image


def verify_images(dataset) -> list[Problem]:
    """Decode every image file of a file-based dataset; a problem for each one that does not decode."""
    if dataset.pixels is not None or "path" not in dataset.table:
        return []
    problems = []
    for rel in dataset.table["path"]:
        try:
            read_image(dataset.root / rel)
        except DatasetError as e:
            problems.append(Problem(rel, str(e).split(": ", 1)[-1]))
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.data", description=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="count a dataset's images per split and class")
    check.add_argument("dataset", help=f"one of: {', '.join(READERS)}")
    check.add_argument("path", help="where the dataset is (file or folder)")
    check.add_argument("--json", action="store_true", help="print {split: {class: count}} as JSON")
    check.add_argument("--strict", action="store_true", help="a bad row or file is an error")
    check.add_argument("--verify-images", action="store_true", help="also decode every image file")
    prep = sub.add_parser("prepare", help="prepare a dataset's faces into the face store (resumable)")
    prep.add_argument("dataset", help=f"one of: {', '.join(READERS)}")
    prep.add_argument("path", help="where the dataset is (file or folder)")
    prep.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    prep.add_argument("--detector", default=None, help="dlib, haar or none (default: notebook 01's choice)")
    prep.add_argument("--size", type=int, default=None, help="face side in pixels (default 48)")
    prep.add_argument("--color", default=None, help="gray or rgb (default gray)")
    prep.add_argument("--max-images", type=int, default=None, help="faces: only the first N images (path order)")
    prep.add_argument("--chunk", type=int, default=512, help="faces per chunk: the unit of work and of resuming")
    prep.add_argument("--cache-dir", default=None, help="where the store goes (default data/cache)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare_command(args)

    with warnings.catch_warnings(record=True):  # problems are printed below, not as warnings
        warnings.simplefilter("always")
        try:
            dataset = load_dataset(args.dataset, args.path, strict=args.strict)
        except DatasetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1 if args.strict and "[strict mode]" in str(e) else 2
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    unreadable = verify_images(dataset) if args.verify_images else []
    problems = dataset.problems + unreadable
    if args.json:
        print(json.dumps(dataset.counts(), indent=1))
    else:
        print(f"{dataset.name} at {dataset.root}  (layout: {dataset.layout})")
        print(dataset.counts_frame().to_string())
        for reason, n in dataset.excluded.items():
            print(f"excluded by the dataset's rules: {n} ({reason})")
    if problems:
        print(f"{len(problems)} bad rows/files skipped:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
    return 1 if (args.strict and unreadable) else 0


def prepare_command(args) -> int:
    import time
    from dataclasses import replace

    from .faces import prepare, remembered_config, store_folder
    from .store import StoreFull

    try:
        options = {"max_images": args.max_images} if args.max_images else {}
        dataset = load_dataset(args.dataset, args.path, **options)
    except (DatasetError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base = remembered_config("fer2013" if dataset.name == "ferplus" else dataset.name, args.cache_dir)
    changes = {k: v for k, v in {"detector": args.detector, "size": args.size, "color": args.color}.items() if v}
    try:
        config = replace(base, **changes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{dataset}: {len(dataset.problems)} files skipped while reading", file=sys.stderr)
    tic = time.perf_counter()
    try:
        prepared = prepare(dataset, config, cache_dir=args.cache_dir, workers=args.workers, chunk=args.chunk)
    except StoreFull as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    seconds = time.perf_counter() - tic
    stats = prepared.detection_stats()
    how = "already prepared" if prepared.loaded_from_cache else f"{seconds:.0f} s"
    print(f"{prepared} in {store_folder(dataset, config, args.cache_dir)} ({how})")
    print(f"face detected: {stats['face_found']:.1%}   landmarks: {stats['landmarks']:.1%}")
    missed = prepared.rows[~prepared.face_found]
    if config.detector == "none":
        print("faces not sought (--detector none): every image is taken to be a face crop")
    elif len(missed):
        names = dataset.table["source"].to_numpy()[missed[:10]]
        print(
            f"{len(missed)} images with no face found (kept: landmarks sought in the fallback box, or centred)"
            + "".join(f"\n  {name}" for name in names)
        )
    problems = dataset.problems + prepared.problems
    print(f"{len(problems)} unreadable or empty files skipped" + "".join(f"\n  {p}" for p in problems[:10]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
