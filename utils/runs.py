"""Run folders and their ``metrics.json`` records, the results every notebook writes and the results notebook reads.

A run lives in ``checkpoints/<name>-<hash>/`` where the hash is that of its full configuration: changing a
hyperparameter starts a new run instead of overwriting or wrongly reusing an old one, and rerunning a
notebook with the same parameters finds the finished run and loads it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

from .cache import settings_key
from .runtime import CHECKPOINT_DIR, versions

METRICS_FILE = "metrics.json"


def run_dir(name: str, config: dict, root=None) -> Path:
    """``<root>/<name>-<first 8 hex digits of the config hash>``."""
    root = Path(root) if root is not None else CHECKPOINT_DIR
    return root / f"{name}-{settings_key(config)[:8]}"


def finished(folder) -> dict | None:
    """The ``metrics.json`` record of a finished run in ``folder``, or None."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("status") == "finished" else None


def write_record(folder, record: dict) -> Path:
    """Write ``metrics.json`` atomically, adding versions, machine and time."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "status": "finished",
        **record,
        "versions": versions(),
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "processor": platform.processor()},
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = folder / METRICS_FILE
    tmp = folder / f".{METRICS_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)
    return path


def load_records(root=None) -> list[dict]:
    """Every finished run's record under ``root`` (``checkpoints/`` by default), with its folder name."""
    root = Path(root) if root is not None else CHECKPOINT_DIR
    out = []
    for path in sorted(root.glob(f"*/{METRICS_FILE}")):
        record = finished(path.parent)
        if record is not None:
            out.append({"run_dir": path.parent.name, **record})
    return out


def describe(record: dict) -> dict:
    """What tells two runs of one method apart in a table: ``variant`` (HNCL's neighbour space and k), ``seed``,
    ``epochs`` (epochs trained) and ``setting``, a digest of the whole configuration except its seeds (runs
    with the same setting differ only in their seed)."""
    config = record.get("config", {})
    neighbours = config.get("model", {}).get("neighbours") or record.get("neighbours")
    uses_neighbours = record.get("method") == "hncl"  # MoCo v2's config carries the (ignored) defaults too
    variant = f"{neighbours['space']} k={neighbours['k']}" if neighbours and uses_neighbours else ""
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
