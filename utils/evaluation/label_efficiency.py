"""Where pretraining pays off: fine-tuning and linear probes with a fraction of the training labels.

The standard semi-supervised evaluation of self-supervised learning (SimCLR, Chen et al. 2020, and BYOL,
Grill et al. 2020, fine-tune and probe on 1 % and 10 % of ImageNet's labels): a pretrained backbone is worth
its pretraining where labels are scarce, even when it ties a randomly initialised network with all of them.

- :func:`labelled_subset`: the training split keeps a stratified ``fraction`` of its rows (at least one per
  class), fixed by a seed; validation and test stay whole, so every fraction is selected and scored on the
  same images. For one seed the subsets are nested: the 1 % rows are among the 10 % rows.
- :func:`finetune_with_labels`: :func:`utils.core.runs.finetune` on that subset. The run's identity and record
  carry the fraction and seed (``dataset.labelled``), so each fraction is its own run, loaded when finished.
- :func:`probe_with_labels`: kNN and the linear probe of a finished representation run, fitted on the subset
  only; written into the run's ``metrics.json`` under ``label_efficiency`` (a finished entry is reused).
- :func:`label_efficiency_table`: one row per method, initialisation, protocol, fraction and seed, for the
  results notebook's accuracy-against-labels figure (:func:`utils.evaluation.plots.label_efficiency`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np


def labelled_subset(prepared, fraction: float, seed: int = 0):
    """``prepared`` with only a stratified ``fraction`` of its training rows (the other training rows are
    dropped; every other split is kept whole).

    Each class keeps ``max(1, round(fraction * n_class))`` of its ``n_class`` training rows: the first ones of
    a permutation that depends only on ``seed`` and the class, so that for one seed a smaller fraction's rows
    are among a larger one's. ``fraction == 1`` keeps every row (the same arrays); like every subset it is
    marked (``labelled``), so a fine-tune of this protocol is never confused with another notebook's.

    Raises:
        ValueError: for a fraction outside (0, 1], or when ``prepared`` has no training rows.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the label fraction must be in (0, 1], not {fraction!r}")
    if getattr(prepared, "labelled", None) is not None:
        raise ValueError(
            f"{prepared.name} is already a labelled subset ({prepared.labelled}); start from the whole set"
        )
    train = prepared.split_indices("train")
    if len(train) == 0:
        raise ValueError(f"{prepared.name} has no training rows to take labels from")
    if fraction == 1.0:  # the same arrays, marked: this protocol's 100 % runs are its own, not notebooks 03-05's
        return replace(prepared, labelled={"fraction": 1.0, "seed": int(seed), "train_rows": len(train)})
    keep = []
    labels = prepared.labels[train]
    for c in np.unique(labels):
        rows = train[labels == c]
        order = np.random.default_rng([seed, int(c)]).permutation(len(rows))
        keep.append(rows[order[: max(1, round(fraction * len(rows)))]])
    kept = np.sort(np.concatenate(keep))
    others = np.flatnonzero(prepared.splits != "train")
    subset = prepared.subset(np.sort(np.concatenate([kept, others])))
    return replace(subset, labelled={"fraction": fraction, "seed": int(seed), "train_rows": len(kept)})


def label_fraction(record: dict) -> float:
    """The share of the training labels a run's record was trained (or a probe fitted) with."""
    return float((record.get("dataset", {}).get("labelled") or {}).get("fraction", 1.0))


def repeated(subset, min_epoch_share: float, full_train: int):
    """``subset`` with its training rows repeated (each the same number of times) until they are at least
    ``min_epoch_share`` of ``full_train`` images: the engine validates once per epoch, and an epoch of 287
    images (1 % of FER2013) is 2 steps, so early stopping would judge a model after a few steps and
    validation would cost more than training. Each repeat is augmented anew. ``labelled["repeats"]`` says how
    many times (1: not repeated, the subset itself)."""
    train = np.flatnonzero(subset.splits == "train")
    repeats = max(1, int(np.ceil(min_epoch_share * full_train / len(train))))
    if repeats == 1:
        return subset
    rows = np.concatenate([np.tile(train, repeats), np.flatnonzero(subset.splits != "train")])
    return replace(subset.subset(rows), labelled={**subset.labelled, "repeats": repeats})


def finetune_with_labels(pretrained, prepared, fraction: float, train=None, min_epoch_share: float = 0.1, **kwargs):
    """Fine-tune ``pretrained``'s backbone (a :class:`~utils.core.runs.Run`) with ``fraction`` of the training labels
    (drawn with ``train.seed``; without ``train``, :func:`utils.core.runs.finetune_settings`); every initialisation
    given the same ``train`` has the same budget. A subset smaller than ``min_epoch_share`` of the training
    split is repeated up to it (:func:`repeated`), so an epoch, the unit of validation and early stopping, is
    about the same length at every small fraction.
    ``kwargs`` go to :func:`utils.core.runs.finetune`."""
    from utils.core.runs import finetune, finetune_settings

    train = train or finetune_settings()
    subset = labelled_subset(prepared, fraction, train.seed)
    subset = repeated(subset, min_epoch_share, int((prepared.splits == "train").sum()))
    return finetune(pretrained, subset, train, **kwargs)


def probe_with_labels(run, prepared, fraction: float, seed: int = 0, device=None, knn_k: int = 20) -> dict:
    """kNN and linear probe of a finished representation run, fitted on ``fraction`` of the training labels
    (drawn with ``seed``; C chosen on val from the suite's grid, as with every label), scored on val and test;
    recorded in the run's ``metrics.json`` under ``label_efficiency["<fraction>/seed<seed>"]`` and returned.
    An entry already recorded is returned as is; with every label (``fraction == 1``) the entry is the run's
    own probes.

    Raises:
        ValueError: for a classifier run (fine-tune it instead) or data other than the run's.
    """
    from utils.core.engine import amp_dtype
    from utils.core.runs import _device, finished, write_record
    from utils.evaluation.probes import representation_metrics

    record = finished(run.run_dir) or run.record
    if run.method.kind == "classifier":
        raise ValueError(f"{run.run_dir.name} is a classifier; probes need a representation (fine-tune instead)")
    trained_on = record.get("dataset", {}).get("name")
    if trained_on != prepared.name:
        raise ValueError(
            f"{run.run_dir.name} was trained on {trained_on}, not {prepared.name}; probe it on its own data"
        )
    subset = labelled_subset(prepared, fraction, seed)
    if subset.labelled["fraction"] == 1.0:  # every label: the run's own probes are this entry
        evaluations = record.get("evaluations", {})
        train_rows = int((prepared.splits == "train").sum())
        return {
            "fraction": 1.0,
            "seed": int(seed),
            "train_rows": train_rows,
            **{k: evaluations[k] for k in ("knn", "linear")},
        }
    key = f"{float(fraction):g}/seed{int(seed)}"
    done = record.get("label_efficiency", {}).get(key)
    if done is not None:
        return done
    device = _device(device)
    run.method.to(device).eval()
    amp = amp_dtype(device, record.get("config", {}).get("train", {}).get("amp", True))
    metrics = representation_metrics(run.method.embed, subset, run.method.config.channels, device, amp, knn_k=knn_k)
    entry = {
        "fraction": float(fraction),
        "seed": int(seed),
        "train_rows": int((subset.splits == "train").sum()),
        **metrics,
    }
    record.setdefault("label_efficiency", {})[key] = entry
    write_record(Path(run.run_dir), {k: v for k, v in record.items() if k != "run_dir"})
    run.record = record
    return entry


def label_efficiency_table(records: list[dict], dataset: str, split: str = "val"):
    """Accuracy against the share of training labels: one row per run (or probe entry), protocol, fraction
    and seed. Fine-tuning rows come from the fine-tunes of this protocol (:func:`finetune_with_labels`;
    ``init`` is the pretraining method); probe rows from every representation run's ``label_efficiency``
    entries and, at 100 %, its own evaluations. Smoke tests (capped runs) are left out."""
    import pandas as pd

    from utils.evaluation.tables import describe, is_smoke_test

    by_folder = {r.get("run_dir", r.get("run")): r for r in records}
    rows = []

    def add(record, protocol, fraction, seed, train_rows, metrics, pretrained=None, origin=None):
        if metrics is None:
            return
        described = describe(pretrained or record)
        rows.append(
            {
                "init": record.get("method"),
                "variant": described["variant"],
                "setting": described["setting"],  # the pretraining's settings but its seed
                "protocol": protocol,
                "fraction": fraction,
                "seed": seed,
                "train_rows": train_rows,
                "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
                "run": record.get("run_dir", record.get("run")),
                "pretrained_run": origin or record.get("run_dir", record.get("run")),  # the start point's folder
            }
        )

    for r in records:
        if r.get("dataset", {}).get("name") != dataset or is_smoke_test(r):
            continue
        seed, train_rows = r.get("seed"), r.get("dataset", {}).get("split_sizes", {}).get("train")
        if r.get("protocol") == "finetune" and r.get("dataset", {}).get("labelled"):
            train_rows = r["dataset"]["labelled"]["train_rows"]  # distinct images, before any repeat
            origin = Path(r["init"]).parent.name if r.get("init") else None
            metrics = r.get("evaluations", {}).get("finetune", {}).get(split)
            add(r, "fine-tune", label_fraction(r), seed, train_rows, metrics, by_folder.get(origin), origin)
        elif r.get("protocol") in ("pretrain", "floor"):
            evaluations = r.get("evaluations", {})
            for protocol in ("linear", "knn"):
                add(r, protocol, 1.0, seed, train_rows, evaluations.get(protocol, {}).get(split))
            for e in r.get("label_efficiency", {}).values():
                for protocol in ("linear", "knn"):
                    add(r, protocol, e["fraction"], e["seed"], e["train_rows"], e.get(protocol, {}).get(split))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(["protocol", "init", "variant", "setting", "fraction", "seed"]).reset_index(drop=True)


def pooled(table):
    """:func:`label_efficiency_table` pooled over seeds (runs whose pretraining differs only in its seed):
    mean and standard deviation of the accuracy, and the number of seeds."""
    if table.empty:
        return table
    keys = ["protocol", "init", "variant", "setting", "fraction"]
    out = table.groupby(keys, dropna=False)["accuracy"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": "accuracy", "std": "accuracy_std", "count": "seeds"})


def newest_pretrained(
    records: list[dict],
    dataset: str,
    inits,
    backbone: str,
    channels: str,
    seed: int,
    stem_stride: int | None = None,
    width: int | None = None,
) -> dict:
    """``{method: record}``: for each of ``inits`` (``"moco_v2"``, ``"hncl"``, ``"random-init"``,
    ``"raw-pixels"``, ...) its most recently written finished representation run on ``dataset`` with this
    backbone, input, stem, ResNet width (None: any; a record from before widths counts as the default, 64) and
    seed (raw pixels have none), smoke tests left out. Methods without such a run are missing from the
    result."""
    from utils.evaluation.tables import is_smoke_test, representation_records
    from utils.methods.models import DEFAULT_WIDTH

    def matches(r):
        model = r.get("config", {}).get("model", {})
        stem = model.get("stem_stride", stem_stride)
        run_width = model.get("width", DEFAULT_WIDTH) if "backbone" in model else width  # raw pixels: any
        return (
            r.get("method") in inits
            and r.get("seed") in (seed, None)
            and (stem_stride is None or stem == stem_stride)
            and (width is None or run_width == width)
            and not is_smoke_test(r)
        )

    chosen = {}
    for r in representation_records(records, dataset, backbone, channels):
        newer = r.get("method") not in chosen or r.get("written", "") > chosen[r["method"]].get("written", "")
        if matches(r) and newer:
            chosen[r["method"]] = r
    return {m: chosen[m] for m in inits if m in chosen}


# ------------------------------------------------------------------------------- notebook 08, step by step

FLOORS = ("random-init", "raw-pixels")  # start points made here when missing (they take seconds)


def subset_counts(prepared, fractions, seed: int = 0):
    """Training images per class that each fraction keeps (:func:`labelled_subset`): a row per fraction
    (``"10 %"``), a column per class and ``total``."""
    import pandas as pd

    rows = {}
    for fraction in fractions:
        subset = labelled_subset(prepared, fraction, seed)
        labels = np.asarray(subset.labels[subset.splits == "train"], dtype=np.int64)
        rows[f"{100 * float(fraction):g} %"] = np.bincount(labels, minlength=len(prepared.classes))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(prepared.classes))
    return table.assign(total=table.sum(axis=1))


def start_points(
    prepared, inits, encoder, seed: int = 0, pretrained: dict | None = None, checkpoint_dir=None, device=None, **kwargs
) -> dict:
    """``{method: Run}``, loaded: what each of ``inits`` starts from.

    The floors (``random-init``, ``raw-pixels``) are made for ``encoder`` when ``inits`` has them and they are
    missing; every other method's start point is its newest finished run on ``prepared`` with ``encoder``'s
    backbone, input, stem and width and ``seed`` (:func:`newest_pretrained`), or the run folder ``pretrained``
    names for it (``{method: folder in checkpoint_dir}``). Methods without a run are missing from the result
    (in the order of ``inits``, then of ``pretrained``). ``kwargs`` go to :func:`utils.core.runs.run` for the
    floors (``progress=False``).
    """
    from utils.core import runs
    from utils.core.runtime import CHECKPOINT_DIR
    from utils.methods.floors import floors

    root = Path(checkpoint_dir) if checkpoint_dir is not None else CHECKPOINT_DIR
    if any(m in FLOORS for m in inits):
        floors(prepared, encoder, seed=seed, checkpoint_dir=root, **kwargs)
    e = encoder
    records = runs.load_records(root)
    chosen = newest_pretrained(records, prepared.name, inits, e.backbone, e.channels, seed, e.stem_stride, e.width)
    folders = {m: r["run_dir"] for m, r in chosen.items()} | dict(pretrained or {})
    order = [*inits, *(m for m in (pretrained or {}) if m not in inits)]
    return {m: runs.load_run(root / folders[m], device) for m in order if m in folders}


def start_point_table(start: dict):
    """One row per start point (:func:`start_points`): its pretraining minutes, its linear probe's accuracy on
    val with every training label, and its run folder."""
    import pandas as pd

    rows = []
    for method, run in start.items():
        linear = run.record.get("evaluations", {}).get("linear", {}).get("val", {})
        minutes = round(run.record.get("train_seconds", 0) / 60, 1)
        rows.append([method, minutes, linear.get("accuracy"), run.run_dir.name])
    return pd.DataFrame(rows, columns=["init", "pretraining minutes", "linear, all labels", "run"])


def probe_and_finetune(
    start: dict,
    prepared,
    fractions,
    seed: int = 0,
    train=None,
    min_epoch_share: float = 0.1,
    smoke: bool = False,
    device=None,
    **kwargs,
) -> set[str]:
    """Notebook 08's protocol over its start points (:func:`start_points`): at every fraction the probes of
    each (:func:`probe_with_labels`) and, with ``train`` (a :class:`~utils.core.engine.TrainConfig`; None:
    probes only), a fine-tune of each that has a backbone to fine-tune (raw pixels have none), all with the
    same settings (:func:`finetune_with_labels`). Finished probes and fine-tunes are loaded.

    ``smoke`` (quick mode): the probes are real, but each start point is fine-tuned at the first fraction
    only, for 2 steps, to show that it runs (a smoke test: tables leave it out). ``kwargs`` go to
    :func:`utils.core.runs.finetune` (``checkpoint_dir``, ``progress``).

    Returns:
        the folder names of the runs used (start points and fine-tunes): the rows a notebook shows.
    """
    used = {run.run_dir.name for run in start.values()}
    for i, fraction in enumerate(fractions):
        for run in start.values():
            probe_with_labels(run, prepared, fraction, seed=seed, device=device)
        if train is None or (smoke and i > 0):
            continue
        for run in start.values():
            if run.backbone_path.is_file():
                steps = {"steps_per_epoch": 2} if smoke else {}
                tuned = finetune_with_labels(run, prepared, fraction, train, min_epoch_share, **steps, **kwargs)
                used.add(tuned.run_dir.name)
    return used


def shown(records: list[dict], dataset: str, folders, fractions, seed: int):
    """:func:`label_efficiency_table` restricted to the runs ``folders`` (what :func:`probe_and_finetune`
    used), the ``fractions`` asked for and ``seed`` (raw pixels' probes, which have no seed, hold every seed)."""
    table = label_efficiency_table(records, dataset)
    if table.empty:
        return table
    keep = table["run"].isin(set(folders)) & table["fraction"].isin(list(fractions))
    keep &= table["seed"].isna() | (table["seed"] == seed)
    return table[keep].reset_index(drop=True)


def accuracy_grid(table):
    """Mean accuracy (over seeds) per start point (rows: init, variant, setting) and protocol and fraction
    (columns), from :func:`label_efficiency_table` or :func:`shown`."""
    return pooled(table).pivot_table(
        index=["init", "variant", "setting"], columns=["protocol", "fraction"], values="accuracy"
    )
