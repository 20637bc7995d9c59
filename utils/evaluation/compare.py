"""Classifier runs side by side, as notebooks 02 and 06 show them: accuracy with the time each took (its start
run's included), under occlusion and pose, and where RAN's attention goes when a part of the face is hidden."""

from __future__ import annotations


def classifier_table(trained: dict, split: str = "val"):
    """One row per run of ``trained`` (``{label: Run}``): accuracy, balanced accuracy and macro-F1 on ``split``,
    epochs, images/s, minutes of training and of the run it started from (tables count both), and whether it
    is a smoke test (capped at a few steps: it shows the model runs, not a result)."""
    import pandas as pd

    rows = []
    for label, run in trained.items():
        r = run.record
        m = r["evaluations"]["supervised"][split]
        start = r.get("init_run") or {}
        rows.append(
            {
                "run": label,
                "accuracy": m["accuracy"],
                "balanced_accuracy": m["balanced_accuracy"],
                "macro_f1": m["macro_f1"],
                "epochs": r.get("schedule", {}).get("epochs", r.get("epochs_run")),
                "images/s": r.get("images_per_second"),
                "minutes": r.get("train_seconds", 0.0) / 60,
                "start": start.get("method") or "random weights",
                "start minutes": start.get("train_seconds", 0.0) / 60,
                "smoke test": bool(r.get("steps_per_epoch_cap")),
            }
        )
    return pd.DataFrame(rows).set_index("run")


def robustness_table(trained: dict, prepared: dict, split: str = "val", column: str = "accuracy"):
    """``column`` of every run under every condition of :func:`utils.evaluation.robustness.evaluate` (clean,
    each occlusion, frontal and turned heads), one column per run, and ``n``, the faces in each condition.
    ``prepared`` maps each run's label to the data it is evaluated on."""
    import pandas as pd

    from utils.evaluation import robustness

    tables = {label: robustness.evaluate(run, prepared[label], split) for label, run in trained.items()}
    out = pd.concat({label: t[column] for label, t in tables.items()}, axis=1)
    out["n"] = next(iter(tables.values()))["n"]
    return out
