"""Tables of finished runs, read from their ``metrics.json`` records (:func:`utils.runs.load_records`):
what notebooks show beside their own runs and what the results notebook pools over seeds.
"""

from __future__ import annotations

from .cache import settings_key


def describe(record: dict) -> dict:
    """What tells two runs of one method apart in a table: ``variant`` (what the method says distinguishes
    its runs, e.g. HNCL's neighbour space and k), ``seed``, ``epochs`` (epochs trained) and ``setting``, a
    digest of the whole configuration except its seeds (runs with the same setting differ only in their seed)."""
    config = record.get("config", {})
    return {
        "variant": record.get("variant") or "",
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
                    "run": r["run_dir"],
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
                    "train_minutes": round(r.get("train_seconds", 0) / 60, 1),
                }
            )
    return pd.DataFrame(rows)


def probe_table(records: list[dict], split: str = "val", protocols=("linear", "knn")):
    """Representation evaluations side by side: one row per run, accuracy and macro-F1 per protocol."""
    import pandas as pd

    rows = []
    for r in records:
        evaluations = r.get("evaluations", {})
        row = {"run": r.get("run_dir", r.get("run")), "method": r.get("method"), **describe(r)}
        for protocol in protocols:
            m = evaluations.get(protocol, {}).get(split)
            if m is not None:
                row[f"{protocol}_accuracy"] = m["accuracy"]
                row[f"{protocol}_macro_f1"] = m["macro_f1"]
        row["pretrain_minutes"] = round(r.get("train_seconds", 0) / 60, 1)
        rows.append(row)
    columns = ["run", "method", "variant", "seed", "epochs", "setting"]
    columns += [f"{p}_{m}" for p in protocols for m in ("accuracy", "macro_f1")] + ["pretrain_minutes"]
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
