"""Tables of finished runs, read from their ``metrics.json`` records (:func:`utils.core.runs.load_records`):
what notebooks show beside their own runs and what the results notebook pools over seeds.
"""

from __future__ import annotations

from utils.core.cache import settings_key
from utils.core.runtime import banner

SAMPLE = "sample"  # the bundled synthetic sample's dataset name in run records (utils.data.load_dataset_or_sample)


def records_to_show(records: list[dict], dataset: str, quick: bool = False) -> tuple[list[dict], str]:
    """The finished runs on ``dataset``, and that name; in quick mode, or when none is on ``dataset`` but some
    are on the bundled sample (the notebooks fell back to it because the dataset is missing), the runs on the
    sample instead, announced loudly: they say nothing about real faces."""
    on_sample = [r for r in records if r.get("dataset", {}).get("name") == SAMPLE]
    chosen = [r for r in records if r.get("dataset", {}).get("name") == dataset]
    if dataset == SAMPLE or not (quick or (not chosen and on_sample)):
        return chosen, dataset
    reason = (
        "QUICK MODE (FER_QUICK=1)"
        if quick
        else f"NO FINISHED RUNS ON {dataset} YET (notebooks fall back to the sample when the dataset is missing)"
    )
    banner(
        f"{reason}: showing the runs on the bundled SYNTHETIC sample, trained with tiny settings.\n"
        "They show that the notebooks run; they say nothing about how the methods do on real faces."
    )
    return on_sample, SAMPLE


def is_smoke_test(record: dict) -> bool:
    """Whether a run was capped at a few steps per epoch (``runs.run(steps_per_epoch=...)``): it shows that a
    model runs, and its scores are not results."""
    return bool(record.get("steps_per_epoch_cap"))


def describe(record: dict) -> dict:
    """What tells two runs of one method apart in a table: ``variant`` (what the method says distinguishes
    its runs, e.g. HNCL's neighbour space and k), ``seed``, ``epochs`` (epochs trained) and ``setting``, a
    digest of the whole configuration except its seeds (runs with the same setting differ only in their seed)."""
    config = record.get("config", {})
    variant = record.get("variant") or ""
    labelled = record.get("dataset", {}).get("labelled")
    if labelled:  # trained with a share of the labels (utils.evaluation.label_efficiency)
        variant = f"{variant} ({100 * labelled['fraction']:g} % of the labels)".strip()
    if is_smoke_test(record):
        cap = record["steps_per_epoch_cap"]
        variant = f"{variant} (smoke test: {cap} step{'s' if cap != 1 else ''} per epoch)".strip()
    return {
        "variant": variant,
        "seed": record.get("seed", config.get("seed")),
        "epochs": record.get("epochs_run"),
        "setting": settings_key({"method": record.get("method"), "config": _without_seeds(config)})[:8],
    }


def _without_seeds(settings):
    if isinstance(settings, dict):
        return {k: _without_seeds(v) for k, v in settings.items() if k != "seed"}
    return settings


def summary_table(records: list[dict], split: str = "val"):
    """One row per run and evaluation protocol: accuracy, balanced accuracy, macro-F1 on ``split``."""
    import pandas as pd

    rows = []
    for r in records:
        for protocol, by_split in r.get("evaluations", {}).items():
            m = by_split.get(split)
            if m is None:
                continue
            rows.append(
                {
                    "method": r.get("method"),
                    **describe(r),
                    "protocol": protocol,
                    "dataset": r.get("dataset", {}).get("name"),
                    "backbone": r.get("config", {}).get("model", {}).get("backbone"),
                    "channels": r.get("config", {}).get("model", {}).get("channels"),
                    "accuracy": m["accuracy"],
                    "balanced_accuracy": m["balanced_accuracy"],
                    "macro_f1": m["macro_f1"],
                    "n": m["n"],
                    "smoke_test": is_smoke_test(r),
                    "train_minutes": round(r.get("train_seconds", 0) / 60, 1),
                    "run": r.get("run_dir", r.get("run")),  # last: the longest, and the least read
                }
            )
    return pd.DataFrame(rows)


def probe_table(records: list[dict], split: str = "val", protocols=("linear", "knn")):
    """Representation evaluations side by side: one row per run, accuracy and macro-F1 per protocol."""
    import pandas as pd

    rows = []
    for r in records:
        evaluations = r.get("evaluations", {})
        row = {"method": r.get("method"), **describe(r)}
        for protocol in protocols:
            m = evaluations.get(protocol, {}).get(split)
            if m is not None:
                row[f"{protocol}_accuracy"] = m["accuracy"]
                row[f"{protocol}_macro_f1"] = m["macro_f1"]
        row["pretrain_minutes"] = round(r.get("train_seconds", 0) / 60, 1)
        row["run"] = r.get("run_dir", r.get("run"))
        rows.append(row)
    columns = ["method", "variant", "seed", "epochs", "setting"]
    columns += [f"{p}_{m}" for p in protocols for m in ("accuracy", "macro_f1")] + ["pretrain_minutes", "run"]
    return pd.DataFrame(rows, columns=columns)  # the same columns whichever protocols the runs have


def over_seeds(table, by=("method", "variant", "epochs", "setting")):
    """Runs that differ only in their seed (same ``setting``), pooled: per group of ``by``, the mean of every
    numeric column, its standard deviation across seeds (``<column>_std``, NaN for a single seed) and
    ``seeds``, the count."""
    import pandas as pd

    by = [c for c in by if c in table.columns]
    numeric = [c for c in table.select_dtypes("number").columns if c not in (*by, "seed")]
    grouped = table.groupby(by, dropna=False, sort=False)[numeric]
    out = grouped.mean().join(grouped.std().add_suffix("_std"))
    out["seeds"] = table.groupby(by, dropna=False, sort=False).size()
    ordered = [c for pair in zip(numeric, [f"{c}_std" for c in numeric]) for c in pair]
    return pd.DataFrame(out[[*ordered, "seeds"]]).reset_index()


def representation_records(records: list[dict], dataset: str, backbone: str, channels: str) -> list[dict]:
    """Runs evaluated on frozen features (pretraining runs and the floors, not fine-tuning runs) on ``dataset``
    with ``backbone`` and input ``channels``: the rows a method's probe table is compared with."""

    def comparable(record):
        model = record.get("config", {}).get("model", {})
        return (
            record.get("protocol") in ("pretrain", "floor")
            and record.get("dataset", {}).get("name") == dataset
            and model.get("backbone", backbone) == backbone  # raw pixels have no backbone
            and model.get("channels") == channels
        )

    return [r for r in records if comparable(r)]


PROTOCOLS = {"supervised": "supervised", "finetune": "fine-tune", "linear": "linear", "knn": "kNN"}
"""How each evaluation key reads in the tables (keys with ``+<tta>`` keep their test-time augmentation)."""

REFERENCE = [  # what the seed reports publish, never mixed with measured rows
    {"method": "hncl / moco_v2", "protocol": "linear", "dataset": "FER2013", "accuracy": "39-44 %", "source": "HNCL seed report"},
    {"method": "supervised", "protocol": "supervised", "dataset": "FER2013 (val)", "accuracy": "61-67 %", "source": "supervised seed report"},
    {"method": "fra", "protocol": "linear", "dataset": "AffectNet", "accuracy": "66.16 %", "source": "FRA seed report"},
    {"method": "byol", "protocol": "linear", "dataset": "AffectNet", "accuracy": "65.65 %", "source": "FRA seed report"},
    {"method": "ran", "protocol": "supervised", "dataset": "FERPlus", "accuracy": "86 %", "source": "RAN seed report"},
]  # fmt: skip


def not_above_chance(records: list[dict], split: str = "val", factor: float = 1.5, skip: tuple = ("knn",)):
    """The evaluations that do not end clearly above chance: balanced accuracy below ``factor`` / C (a
    constant or random guess scores 1 / C over C classes) or accuracy not above the largest class's share
    (what always guessing it scores). Smoke tests (runs capped at a few steps) are left out: they only show
    that a model runs. Quick mode asks this of every run on the bundled sample (notebook 09).

    ``skip`` leaves protocols out: by default kNN, which stays near chance on the bundled sample whatever the
    features (raw pixels: 0.24-0.26 accuracy, 0.18-0.22 balanced, for k from 5 to 50; its synthetic
    expressions are small shape changes beside large differences of identity and lighting).

    Returns:
        a table with a row per failing evaluation (empty when every protocol learned something).
    """
    import pandas as pd

    rows = []
    for r in records:
        if is_smoke_test(r):
            continue
        for protocol, by_split in r.get("evaluations", {}).items():
            m = by_split.get(split)
            if m is None or not m.get("per_class") or protocol.split("+")[0] in skip:
                continue
            support = [c["support"] for c in m["per_class"].values()]
            classes = sum(1 for s in support if s > 0)
            majority = max(support) / max(sum(support), 1)
            floor = factor / max(classes, 1)
            if m["balanced_accuracy"] < floor or m["accuracy"] <= majority:
                rows.append(
                    {
                        "method": r.get("method"),
                        "protocol": protocol,
                        "accuracy": m["accuracy"],
                        "largest_class_share": majority,
                        "balanced_accuracy": m["balanced_accuracy"],
                        "balanced_floor": floor,
                        "run": r.get("run_dir", r.get("run")),
                    }
                )
    return pd.DataFrame(
        rows,
        columns=["method", "protocol", "accuracy", "largest_class_share", "balanced_accuracy", "balanced_floor", "run"],
    )


def reference_table():
    """The seed reports' published figures, labelled as such: context for the measured rows, not results."""
    import pandas as pd

    return pd.DataFrame(REFERENCE)


def by_protocol(records: list[dict], split: str = "val"):
    """Every run's every evaluation, pooled over seeds per method, variant, protocol and setting: mean,
    standard deviation across seeds and the number of seeds, best first within each protocol."""
    table = summary_table(records, split)
    if table.empty:
        return table
    table = table.assign(protocol=table["protocol"].map(lambda p: PROTOCOLS.get(p, p)))
    keep = ["method", "variant", "protocol", "epochs", "setting", "seed", "accuracy", "macro_f1", "train_minutes"]
    pooled = over_seeds(table[keep], by=("method", "variant", "protocol", "epochs", "setting"))
    return pooled.sort_values(["protocol", "accuracy"], ascending=[True, False]).reset_index(drop=True)


def cross_dataset_matrix(records: list[dict], metric: str = "accuracy"):
    """Train set x test set: each run's own test (else val) split and every ``cross_dataset`` evaluation of it
    (``python -m utils.evaluate``), the mean over runs of one method and training set per cell."""
    import pandas as pd

    rows = []
    for r in records:
        if not r.get("cross_dataset"):
            continue
        trained_on = r.get("dataset", {}).get("name")
        label = f"{r.get('method')} ({trained_on})"
        for protocol, by_split in r.get("evaluations", {}).items():
            if "+" in protocol or protocol in ("knn", "linear"):
                continue
            split = "test" if "test" in by_split else "val"
            rows.append({"trained": label, "evaluated": f"{trained_on}/{split}", metric: by_split[split][metric]})
        for key, entry in r["cross_dataset"].items():
            rows.append({"trained": label, "evaluated": key, metric: entry["metrics"][metric]})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot_table(index="trained", columns="evaluated", values=metric, aggfunc="mean")
