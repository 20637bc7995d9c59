"""Evaluate a finished classifier run on any dataset the suite reads:
``python -m utils.evaluate RUN_DIR --dataset NAME PATH [--split test] [--tta tencrop] [--occlusion]``.

The dataset is prepared with the run's own face settings (detector, alignment, size: as it was trained),
predictions are restricted to the classes the run and the dataset share (FER2013 has no contempt, CK+ no
neutral: the output says which), images of the other classes are left out and counted, and the result is
added to the run's ``metrics.json`` under ``cross_dataset`` (written atomically; the record stays valid).

Without ``--split`` the dataset's ``test`` split is evaluated, or its only split when it has just one (JAFFE's
``all``: the output says so); a dataset with several splits and no ``test`` needs ``--split``.

``--occlusion`` measures robustness instead (:mod:`utils.evaluation.robustness`): the split clean and under
every synthetic occlusion (eyes, mouth, a random square, either half of the face) and in the frontal and
strong-yaw subsets, and for a RAN run how its attention moves off the hidden crop; added to the record under
``robustness`` (see :func:`evaluate_robustness`).

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

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "n")  # what robustness records of each condition


def choose_split(dataset: str, path, splits, split: str | None = None) -> tuple[str, str | None]:
    """The split to evaluate, and a note to show when it was not asked for and is not ``test``.

    Args:
        dataset: the dataset's name (for messages).
        path: where it was read from (for messages).
        splits: the splits it has.
        split: the split asked for; None: ``test`` when the dataset has one, else its only split.

    Returns:
        ``(split, note)``; ``note`` is None unless the dataset's only split was chosen for lack of ``test``.

    Raises:
        ValueError: naming the dataset, its path and its splits when ``split`` is not one of them, or when it is
            None and the dataset has several splits and none called ``test``.
    """
    splits = list(dict.fromkeys(splits))
    if split is not None:
        if split not in splits:
            raise ValueError(f"{dataset} at {path} has no {split!r} split; it has {sorted(splits)}")
        return split, None
    if "test" in splits:
        return "test", None
    if len(splits) == 1:
        return splits[0], f"{dataset} has one split, {splits[0]!r}: evaluating on it"
    raise ValueError(
        f"{dataset} at {path} has no 'test' split and several others, {sorted(splits)}: choose one (--split)"
    )


def _load(folder, dataset: str, path, split: str | None, device, cache_dir):
    """The finished classifier run in ``folder``, ``dataset`` prepared with its face settings, and the split
    to evaluate (its note printed)."""
    from utils.core.runs import load_run
    from utils.data.faces import FaceConfig, prepare

    from .data import load_dataset
    from .methods import config_from_dict

    run = load_run(folder, device=device)
    if run.method.kind != "classifier":
        raise ValueError(
            f"{folder}: a {run.method.name} run learns a representation; its linear probe is not kept. Fine-tune it "
            "(runs.finetune, notebooks 03-05) and evaluate the fine-tuning run"
        )
    faces = config_from_dict(FaceConfig, run.record["dataset"]["faces"])
    data_set = load_dataset(dataset, path)
    split, note = choose_split(data_set.name, path, data_set.splits, split)
    if note:
        print(note)
    prepared = prepare(data_set, faces, cache_dir=cache_dir, progress=False)
    return run, prepared, split


def _add_to_record(folder, section: str, key: str, entry: dict) -> None:
    """``entry`` into the finished run's ``metrics.json`` under ``record[section][key]``, written atomically."""
    from utils.core.runs import finished, write_record

    # versions, machine and provenance stay those of the training: they say where the run was made
    record = {k: v for k, v in finished(folder).items() if k not in ("status", "written")}
    record.setdefault(section, {})[key] = entry
    write_record(Path(folder), record)


def evaluate_run(
    folder,
    dataset: str,
    path,
    split: str | None = None,
    tta: str | None = None,
    device=None,
    write=True,
    cache_dir=None,
):
    """Evaluate the finished run in ``folder`` on ``split`` of ``dataset`` read from ``path``.

    Args:
        folder: a finished classifier run's folder.
        dataset: a dataset name :func:`utils.data.load_dataset` knows (``ckplus``, ``jaffe``, ...).
        path: where the dataset is.
        split: the split to evaluate; None: ``test``, or the dataset's only split (:func:`choose_split`).
        tta: test-time augmentation (one of ``TTA_MODES``).
        device: where to run the model (default: the best available).
        write: add the result to the run's record.
        cache_dir: where prepared faces are cached (default: ``data/cache``).

    Returns:
        ``{"dataset", "split", "tta", "classes" (shared, in the run's order), "left_out" ({class: images}),
        "metrics"}``; also written into the run's record under ``cross_dataset["<dataset>/<split>"]`` (with
        ``+<tta>``) when ``write``.
    """
    from utils.core.loader import face_tensors
    from utils.core.runs import _device

    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, not {tta!r}")
    run, prepared, split = _load(folder, dataset, path, split, device, cache_dir)
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
        key = f"{prepared.name}/{split}" + (f"+{tta}" if tta else "")
        _add_to_record(folder, "cross_dataset", key, result)  # one entry per dataset, split and TTA
    return result


def _plain(value):
    """A DataFrame cell as JSON: numbers as float (int for counts), NaN (no image to measure) as None."""
    if isinstance(value, str) or value is None:
        return value
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def evaluate_robustness(
    folder, dataset: str, path, split: str | None = None, device=None, write=True, cache_dir=None, tta=None
) -> dict:
    """The finished classifier run in ``folder`` on ``split`` of ``dataset``, clean and under every synthetic
    occlusion and pose subset of :mod:`utils.evaluation.robustness`; for a RAN run also how its attention
    shifts away from what an occlusion hides (:func:`~utils.evaluation.robustness.attention_shift`).

    Args:
        folder: a finished classifier run's folder.
        dataset: a dataset name :func:`utils.data.load_dataset` knows.
        path: where the dataset is.
        split: the split to evaluate; None: ``test``, or the dataset's only split (:func:`choose_split`).
        device: where to run the model (default: the best available).
        write: add the result to the run's record.
        cache_dir: where prepared faces are cached (default: ``data/cache``).
        tta: test-time augmentation of every condition (one of ``TTA_MODES``).

    Returns:
        ``{"dataset", "split", "tta", "classes" (scored: the ones the run and the dataset share, in the run's
        order), "left_out" ({class: images of the split}), "conditions": {condition: {"accuracy",
        "balanced_accuracy", "macro_f1", "n"}}}`` with, for a RAN run, ``"attention_shift": {occlusion:
        {column: value}}``. The conditions are keyed by the names :func:`~utils.evaluation.robustness.evaluate`
        gives its rows: ``clean``, the occlusions (``eyes``, ``mouth``, ``random square``, ``left half``,
        ``right half``) and the pose subsets (``frontal``, ``strong yaw``); a condition without images has
        ``n`` 0 and None for its metrics. Written into the run's record under
        ``robustness["<dataset>/<split>"]`` (with ``+<tta>``) when ``write``.
    """
    from utils.core.runs import _device
    from utils.evaluation import robustness

    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, not {tta!r}")
    run, prepared, split = _load(folder, dataset, path, split, device, cache_dir)
    device = _device(device)
    ours = list(run.method.spec.classes)
    labels = [prepared.classes[k] for k in prepared.labels[prepared.split_indices(split)]]
    table = robustness.evaluate(run, prepared, split, device=device, tta=tta)
    # robustness.evaluate names its rows as robustness.conditions does: "clean" for the unoccluded faces, then
    # OCCLUSIONS, then "frontal" and "strong yaw"; the record keeps those names.
    conditions = {
        str(name): {k: _plain(row.get(k)) if k != "n" else int(row["n"]) for k in METRICS}
        for name, row in table.iterrows()
    }
    result = {
        "dataset": prepared.name,
        "split": split,
        "tta": tta,
        "classes": [c for c in ours if c in prepared.classes],
        "left_out": {c: labels.count(c) for c in dict.fromkeys(labels) if c not in ours},
        "conditions": conditions,
    }
    if run.method.name == "ran":
        shift = robustness.attention_shift(run, prepared, split, device=device)
        result["attention_shift"] = {
            str(occlusion): {str(column): _plain(value) for column, value in row.items()}
            for occlusion, row in shift.iterrows()
        }
    if write:
        key = f"{prepared.name}/{split}" + (f"+{tta}" if tta else "")
        _add_to_record(folder, "robustness", key, result)  # one entry per dataset, split and TTA
    return result


def robustness_table(result: dict) -> str:
    """:func:`evaluate_robustness`'s result as aligned text: a line per condition (images, accuracy, its change
    from clean, balanced accuracy, macro-F1; ``-`` where a condition has no image), then for a RAN run the
    attention shift."""

    def number(v, signed: bool = False) -> str:
        return "-" if v is None else f"{v:+.4f}" if signed else f"{v:.4f}"

    conditions = result["conditions"]
    clean = conditions.get("clean", {}).get("accuracy")
    width = max(len("condition"), *map(len, conditions))
    header = ("images", "accuracy", "vs clean", "balanced acc.", "macro-F1")
    lines = [f"{'condition':<{width}}  " + "  ".join(f"{h:>{max(8, len(h))}}" for h in header)]
    for name, m in conditions.items():
        change = None if m["accuracy"] is None or clean is None or name == "clean" else m["accuracy"] - clean
        cells = (str(m["n"]), number(m["accuracy"]), number(change, True), number(m["balanced_accuracy"]))
        cells += (number(m["macro_f1"]),)
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>{max(8, len(h))}}" for c, h in zip(cells, header)))
    if "attention_shift" in result:
        import pandas as pd

        shift = pd.DataFrame.from_dict(result["attention_shift"], orient="index")
        lines += ["", "RAN's attention: the share of the pooled face of the crop each occlusion covers most"]
        lines += shift.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-").splitlines()
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished classifier run's folder (checkpoints/<run>)")
    parser.add_argument("--dataset", nargs=2, metavar=("NAME", "PATH"), required=True, help="e.g. ckplus data/ckplus")
    parser.add_argument("--split", default=None, help="split to evaluate (default: test, or the dataset's only split)")
    parser.add_argument("--tta", default=None, choices=[m for m in TTA_MODES if m], help="test-time augmentation")
    parser.add_argument(
        "--occlusion",
        action="store_true",
        help="robustness instead: the split clean, under every synthetic occlusion and by head pose "
        "(and a RAN run's attention shift); written under robustness",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave the run's record as it is")
    parser.add_argument("--cache-dir", default=None, help="where prepared faces are cached (default: data/cache)")
    args = parser.parse_args(argv)
    if args.occlusion:
        return _main_robustness(args)
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


def _main_robustness(args) -> int:
    try:
        r = evaluate_robustness(
            args.run_dir,
            *args.dataset,
            split=args.split,
            write=not args.no_write,
            cache_dir=args.cache_dir,
            tta=args.tta,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tta = f", test-time augmentation {r['tta']}" if r["tta"] else ""
    print(
        f"{r['dataset']} {r['split']}: robustness on the classes shared with the run ({', '.join(r['classes'])}){tta}"
    )
    if r["left_out"]:
        print(f"  left out, classes the run does not know: {r['left_out']}")
    print(robustness_table(r))
    if not args.no_write:
        key = f"{r['dataset']}/{r['split']}" + (f"+{r['tta']}" if r["tta"] else "")
        print(f"written to {Path(args.run_dir) / 'metrics.json'} under robustness[{key!r}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
