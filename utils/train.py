"""Train any method from a shell, or under ``torchrun`` on several processes, GPUs or machines:

    python -m utils.train byol                                    # the recipe for this machine (recipes/byol/)
    python -m utils.train byol --recipe gpu --set base_momentum=0.99 --train max_minutes=30
    python -m utils.train ran --dataset ferplus data/fer2013 --mode majority --init checkpoints/<run>
    python -m utils.train hncl --unlabelled data/my_faces                # pretrain on FER2013 Training + a folder
    torchrun --nproc_per_node 4 -m utils.train supervised --dataset fer2013 data/fer2013 --train epochs=30

``--recipe`` picks the settings (``auto``: ``cpu`` without CUDA, ``gpu`` with it, ``quick`` with FER_QUICK=1;
or a recipe file), ``--set`` changes the method's config fields over it (``python -m utils.train METHOD --show``
lists them), ``--train`` the :class:`~utils.core.engine.TrainConfig` fields; ``--init`` starts the network
from a finished run's. A dataset path that does not exist is an error (the notebooks fall back to the sample).
The run is the one the notebooks would make with the same settings: it is found again, resumes when
interrupted, and lands in ``checkpoints/`` with its ``metrics.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    from . import methods

    parser = argparse.ArgumentParser(prog="python -m utils.train", description=__doc__.splitlines()[0])
    parser.add_argument("method", help=f"one of {', '.join(sorted(methods.names()))}")
    parser.add_argument("--dataset", nargs=2, metavar=("NAME", "PATH"), default=["fer2013", "data/fer2013"])
    parser.add_argument("--mode", default=None, help="FERPlus label mode (majority, probability, ...)")
    parser.add_argument("--recipe", default="auto", help="cpu, gpu, quick, a recipe file, or auto (see recipes/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="the method's settings")
    parser.add_argument("--train", nargs="*", default=[], metavar="FIELD=VALUE", help="TrainConfig settings")
    parser.add_argument("--name", default=None, help="run folder prefix (default: <method>-<dataset>)")
    parser.add_argument(
        "--unlabelled",
        nargs="*",
        default=[],
        metavar="PATH",
        help="folders of faces without labels that self-supervised methods also pretrain on (utils.data.folder)",
    )
    parser.add_argument("--init", default=None, metavar="RUN", help="start the backbone from a finished run's folder")
    parser.add_argument("--show", action="store_true", help="print the method's settings and their defaults")
    args = parser.parse_args(argv)

    from utils.core.recipes import RECIPE_DIR, describe, load_recipe, method_settings
    from utils.core.runtime import pick_device, quick_mode

    try:
        if args.init:
            from utils.core.runs import init_path

            init_path(args.init)  # before any data is read: a wrong path fails at once
        methods.get(args.method)
        recipe = load_recipe(args.method, args.recipe, pick_device(), quick_mode())
        model, train_values = methods.parse_settings(args.set), methods.parse_settings(args.train)
        unknown = set(model) - {f.name for f in dataclasses.fields(methods.get(args.method).Config)}
        if unknown:
            raise ValueError(f"{args.method} has no field(s) {sorted(unknown)}")
        # another method's recipe (the plain classifier with RAN's) gives only the settings this method has;
        # the method's own recipes and the user's files must name only its settings
        folder = recipe.path.resolve().parent
        strict = folder.parent != RECIPE_DIR.resolve() or folder.name == args.method
        config, train, overrides = method_settings(args.method, recipe, model, train_values, strict=strict)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.show:
        print(describe(recipe, overrides), file=sys.stderr)
        print(
            json.dumps(
                {"config": dataclasses.asdict(config), "train": dataclasses.asdict(train)}, indent=1, default=str
            )
        )
        return 0
    if not quick_mode() and not Path(args.dataset[1]).exists():  # notebooks fall back to the sample; not here
        print(f"error: {args.dataset[1]}: no such dataset folder or file (for {args.dataset[0]})", file=sys.stderr)
        return 2
    if args.unlabelled and methods.get(args.method).kind == "classifier":
        print(f"error: {args.method} learns from labels; --unlabelled is for self-supervised methods", file=sys.stderr)
        return 2

    from utils.core import distributed as dist_utils
    from utils.core import runs
    from utils.data.faces import prepare, remembered_config

    from .data import DatasetError, ensure_val_split, load_dataset_or_sample

    name, path = args.dataset
    options = {"mode": args.mode} if args.mode else {}
    dataset, _ = load_dataset_or_sample(name, path, **options)
    dataset = ensure_val_split(dataset, seed=train.seed)
    faces = remembered_config("fer2013" if name == "ferplus" else dataset.name)
    prepared = prepare(dataset, faces, progress=False)
    if args.unlabelled:  # prepared like the labelled set (one size and colour), joined as its unlabelled split
        from utils.data import load_dataset
        from utils.data.faces import merge

        try:
            extra = [prepare(load_dataset("faces", p), faces) for p in args.unlabelled]
        except DatasetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        prepared = merge(prepared, *extra)
    if dist_utils.is_main():
        print(describe(recipe, overrides))
    init = runs.init_path(args.init) if args.init else None
    run = runs.run(config, prepared, train, name=args.name, init=init)
    if dist_utils.is_main():
        r = run.record
        print(f"{run.run_dir.name}: {r.get('epochs_run')} epochs, {r.get('train_seconds', 0) / 60:.1f} min")
        for protocol, by_split in r.get("evaluations", {}).items():
            val = by_split.get("val")
            if val:
                print(f"  {protocol}: val accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
