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
        row = {"run": r.get("run_dir", r.get("run")), "method": r.get("method"), "seed": r.get("seed")}
        for protocol in protocols:
            m = evaluations.get(protocol, {}).get(split)
            if m is not None:
                row[f"{protocol}_accuracy"] = m["accuracy"]
                row[f"{protocol}_macro_f1"] = m["macro_f1"]
        row["pretrain_minutes"] = round(r.get("train_seconds", 0) / 60, 1)
        rows.append(row)
    return pd.DataFrame(rows)
