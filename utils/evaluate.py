"""Evaluate a finished classifier run on any dataset the suite reads:
``python -m utils.evaluate RUN_DIR --dataset NAME PATH [--split test] [--tta tencrop]``.

The dataset is prepared with the run's own face settings (detector, alignment, size: as it was trained),
predictions are restricted to the classes the run and the dataset share (FER2013 has no contempt, CK+ no
neutral: the output says which), images of the other classes are left out and counted, and the result is
added to the run's ``metrics.json`` under ``cross_dataset`` (written atomically; the record stays valid).

Classifier runs only: supervised, RAN, and the fine-tuning runs of the self-supervised methods. A
pretraining run's linear probe is refitted for every evaluation and not kept, so it has nothing to carry to
another dataset; fine-tune it (``runs.finetune``) and evaluate that run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from utils.evaluation.metrics import TTA_MODES, classification_metrics, predict


def evaluate_run(
    folder, dataset: str, path, split: str = "test", tta: str | None = None, device=None, write=True, cache_dir=None
):
    """Evaluate the finished run in ``folder`` on ``split`` of ``dataset`` read from ``path``.

    Returns:
        ``{"dataset", "split", "tta", "classes" (shared, in the run's order), "left_out" ({class: images}),
        "metrics"}``; also written into the run's record under ``cross_dataset["<dataset>/<split>"]`` (with
        ``+<tta>``) when ``write``.
    """
    from utils.core.loader import face_tensors
    from utils.core.runs import _device, finished, load_run, write_record
    from utils.data.faces import FaceConfig, prepare

    from .data import load_dataset
    from .methods import config_from_dict

    run = load_run(folder, device=device)
    if run.method.kind != "classifier":
        raise ValueError(
            f"{folder}: a {run.method.name} run learns a representation; its linear probe is not kept. Fine-tune it "
            "(runs.finetune, notebooks 03-05) and evaluate the fine-tuning run"
        )
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, not {tta!r}")
    faces = config_from_dict(FaceConfig, run.record["dataset"]["faces"])
    data_set = load_dataset(dataset, path)
    if split not in set(data_set.table["split"]):
        raise ValueError(f"{dataset} at {path} has no {split!r} split; it has {sorted(set(data_set.table['split']))}")
    prepared = prepare(data_set, faces, cache_dir=cache_dir, progress=False)
    device = _device(device)
    data = face_tensors(prepared, split, run.method.config.channels, device)
    ours = list(run.method.spec.classes)
    theirs = list(prepared.classes)
    shared = [c for c in ours if c in theirs]
    if not shared:
        raise ValueError(f"the run's classes {ours} and {dataset}'s {theirs} have none in common")
    labels = np.array([theirs[k] for k in data.y.cpu().numpy()])
    keep = np.isin(labels, shared)
    left_out = {c: int((labels == c).sum()) for c in theirs if c not in shared and (labels == c).any()}
    data = data.subset(np.flatnonzero(keep))
    from utils.core.engine import amp_dtype

    amp = amp_dtype(device, run.record.get("config", {}).get("train", {}).get("amp", True))
    probs = predict(run.method.classifier(), data, tta=tta, amp_dtype=amp)  # (n, len(ours))
    columns = [ours.index(c) for c in shared]
    probs = probs[:, columns]
    probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)  # renormalised over the shared classes
    y = np.array([shared.index(c) for c in labels[keep]])
    result = {
        "dataset": prepared.name,
        "split": split,
        "tta": tta,
        "classes": shared,
        "not_in_run": [c for c in theirs if c not in ours],
        "not_in_dataset": [c for c in ours if c not in theirs],
        "left_out": left_out,
        "metrics": classification_metrics(y, probs, shared),
    }
    if write:
        record = {k: v for k, v in finished(folder).items() if k not in ("status", "versions", "machine", "written")}
        key = f"{prepared.name}/{split}" + (f"+{tta}" if tta else "")
        record.setdefault("cross_dataset", {})[key] = result  # one entry per dataset, split and TTA
        write_record(Path(folder), record)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished classifier run's folder (checkpoints/<run>)")
    parser.add_argument("--dataset", nargs=2, metavar=("NAME", "PATH"), required=True, help="e.g. ckplus data/ckplus")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--tta", default=None, choices=[m for m in TTA_MODES if m], help="test-time augmentation")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the run's record as it is")
    parser.add_argument("--cache-dir", default=None, help="where prepared faces are cached (default: data/cache)")
    args = parser.parse_args(argv)
    try:
        r = evaluate_run(
            args.run_dir,
            *args.dataset,
            split=args.split,
            tta=args.tta,
            write=not args.no_write,
            cache_dir=args.cache_dir,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = r["metrics"]
    print(f"{r['dataset']} {r['split']}: {m['n']} images, classes shared with the run: {', '.join(r['classes'])}")
    if r["not_in_run"]:
        print(
            f"  the dataset's classes the run does not know: {', '.join(r['not_in_run'])} (left out: {r['left_out']})"
        )
    if r["not_in_dataset"]:
        print(f"  the run's classes the dataset does not have: {', '.join(r['not_in_dataset'])} (not predicted)")
    print(
        f"  accuracy {m['accuracy']:.4f}  balanced accuracy {m['balanced_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}"
    )
    if not args.no_write:
        print(f"  written to {Path(args.run_dir) / 'metrics.json'} under cross_dataset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
