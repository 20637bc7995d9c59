"""Train any method from a shell, or under ``torchrun`` on several processes, GPUs or machines:

    python -m utils.train byol --dataset fer2013 data/fer2013 --set base_momentum=0.99 --train max_minutes=30
    torchrun --nproc_per_node 4 -m utils.train supervised --dataset fer2013 data/fer2013 --train epochs=30

``--set`` gives the method's config fields (``python -m utils.train METHOD --show`` lists them with their
defaults), ``--train`` the :class:`~utils.engine.TrainConfig` fields (the method's own defaults otherwise).
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
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="the method's settings")
    parser.add_argument("--train", nargs="*", default=[], metavar="FIELD=VALUE", help="TrainConfig settings")
    parser.add_argument("--name", default=None, help="run folder prefix (default: <method>-<dataset>)")
    parser.add_argument("--init", default=None, metavar="RUN", help="start the backbone from a finished run's folder")
    parser.add_argument("--show", action="store_true", help="print the method's settings and their defaults")
    args = parser.parse_args(argv)

    from .engine import TrainConfig
    from .runtime import quick_mode

    try:
        if args.init:
            from .runs import init_path

            init_path(args.init)  # before any data is read: a wrong path fails at once
        cls = methods.get(args.method)
        config = methods.config_from_dict(cls.Config, methods.parse_settings(args.set))
        train = TrainConfig(**{**cls.train_defaults, **methods.parse_settings(args.train)})
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.show:
        print(
            json.dumps(
                {"config": dataclasses.asdict(config), "train": dataclasses.asdict(train)}, indent=1, default=str
            )
        )
        return 0
    if not quick_mode() and not Path(args.dataset[1]).exists():  # notebooks fall back to the sample; not here
        print(f"error: {args.dataset[1]}: no such dataset folder or file (for {args.dataset[0]})", file=sys.stderr)
        return 2

    from . import distributed as dist_utils
    from . import runs
    from .data import ensure_val_split, load_dataset_or_sample
    from .faces import prepare, remembered_config

    name, path = args.dataset
    options = {"mode": args.mode} if args.mode else {}
    dataset, _ = load_dataset_or_sample(name, path, **options)
    dataset = ensure_val_split(dataset, seed=train.seed)
    prepared = prepare(dataset, remembered_config("fer2013" if name == "ferplus" else dataset.name), progress=False)
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
