"""``python -m utils.data check DATASET PATH [--json] [--strict] [--verify-images]``

Prints per-split, per-class counts under the canonical class names, the layout found, and every bad row
or file with its reason. Exits 2, naming the path and the accepted layouts, when nothing readable is
there; exits 1 in ``--strict`` mode when a row or file is bad.
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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
