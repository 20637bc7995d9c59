"""Tables of finished runs, read from their ``metrics.json`` records (:func:`utils.core.runs.load_records`):
what notebooks show beside their own runs and what the results notebook pools over seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from utils.core.cache import settings_key
from utils.core.runtime import banner

SAMPLE = "sample"  # the bundled synthetic sample's dataset name in run records (utils.data.load_dataset_or_sample)


def records_to_show(
    records: list[dict], dataset: str, quick: bool = False, whose: str = "the runs"
) -> tuple[list[dict], str]:
    """The finished runs on ``dataset``, and that name; in quick mode, or when none is on ``dataset`` but some
    are on the bundled sample (the notebooks fell back to it because the dataset is missing), the runs on the
    sample instead, announced loudly (``whose``: what the banner says is shown): they say nothing about real
    faces."""
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
        f"{reason}: showing {whose} on the bundled SYNTHETIC sample, trained with tiny settings.\n"
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
    digest of the whole configuration except its seeds (runs with the same setting differ only in their seed),
    read as today's code reads it: fields a run predates take today's defaults (run identity's one rule)."""
    from utils.core.runs import normalised

    config = record.get("config", {})
    config = (normalised(config) if "method" in config else None) or config
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
    """One row per run and evaluation protocol: accuracy, balanced accuracy, macro-F1 on ``split``; first a
    ``source`` column when the records carry one (:func:`runs_to_show`)."""
    import pandas as pd

    rows = []
    sourced = _has_source(records)
    for r in records:
        for protocol, by_split in r.get("evaluations", {}).items():
            m = by_split.get(split)
            if m is None:
                continue
            rows.append(
                {
                    **_source_column(r, sourced),
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
    """Representation evaluations side by side: one row per run, accuracy and macro-F1 per protocol; first a
    ``source`` column when the records carry one (:func:`runs_to_show`)."""
    import pandas as pd

    rows = []
    sourced = _has_source(records)
    for r in records:
        evaluations = r.get("evaluations", {})
        row = {**_source_column(r, sourced), "method": r.get("method"), **describe(r)}
        for protocol in protocols:
            m = evaluations.get(protocol, {}).get(split)
            if m is not None:
                row[f"{protocol}_accuracy"] = m["accuracy"]
                row[f"{protocol}_macro_f1"] = m["macro_f1"]
        row["pretrain_minutes"] = round(r.get("train_seconds", 0) / 60, 1)
        row["run"] = r.get("run_dir", r.get("run"))
        rows.append(row)
    columns = ["source"] * sourced + ["method", "variant", "seed", "epochs", "setting"]
    columns += [f"{p}_{m}" for p in protocols for m in ("accuracy", "macro_f1")] + ["pretrain_minutes", "run"]
    return pd.DataFrame(rows, columns=columns)  # the same columns whichever protocols the runs have


def over_seeds(table, by=("source", "method", "variant", "epochs", "setting")):
    """Runs that differ only in their seed (same ``setting``), pooled: per group of ``by`` (the columns of it
    the table has: ``source`` only in notebook 09's tables, whose own runs and recorded runs are never pooled
    together), the mean of every numeric column, its standard deviation across seeds (``<column>_std``, NaN
    for a single seed) and ``seeds``, the count."""
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
    """Every run's every evaluation, pooled over seeds per method, variant, protocol and setting (and source,
    when the records carry one): mean, standard deviation across seeds and the number of seeds, best first
    within each protocol (your runs before the recorded ones)."""
    table = summary_table(records, split)
    if table.empty:
        return table
    table = table.assign(protocol=table["protocol"].map(lambda p: PROTOCOLS.get(p, p)))
    sourced = ["source"] * ("source" in table.columns)
    keep = ["method", "variant", "protocol", "epochs", "setting", "seed", "accuracy", "macro_f1", "train_minutes"]
    pooled = over_seeds(table[sourced + keep], by=(*sourced, "method", "variant", "protocol", "epochs", "setting"))
    order = [_source_order(pooled["source"])] if sourced else []
    order += [pooled["protocol"], -pooled["accuracy"]]
    return pooled.iloc[_lexsort(order)].reset_index(drop=True)


def cross_dataset_matrix(records: list[dict], metric: str = "accuracy"):
    """Train set x test set: each run's own test (else val) split and every ``cross_dataset`` evaluation of it
    (``python -m utils.evaluate``), the mean over runs of one method and training set per cell (rows named
    ``method (set), source`` when the records carry a source: yours and recorded runs are not averaged)."""
    import pandas as pd

    rows = []
    for r in records:
        if not r.get("cross_dataset"):
            continue
        trained_on = r.get("dataset", {}).get("name")
        label = f"{r.get('method')} ({trained_on})" + (f", {r['source']}" if r.get("source") else "")
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


# ------------------------------------------------------------------ your runs and the recorded ones (09)

YOURS, RECORDED = "yours", "recorded"
SOURCES = {
    YOURS: "yours (checkpoints/)",
    RECORDED: "recorded elsewhere (results/, with the command, commit and machine in each record)",
}
"""Where a run shown by notebook 09 comes from, as its tables say it (``source`` column) and as its headings
and captions spell it out."""
SHORT = {YOURS: "yours (checkpoints/)", RECORDED: "recorded elsewhere (results/)"}
"""The same, short enough for a figure's title."""

HEADLINE = {"supervised": "supervised", "finetune": "finetune", "pretrain": "linear", "floor": "linear"}
"""The evaluation that stands for a run in one line (:func:`recorded_table`), by the run's protocol."""


def _dataset(record: dict) -> str:
    return record.get("dataset", {}).get("name") or ""


def _has_source(records) -> bool:
    return any("source" in r for r in records)


def _source_column(record: dict, sourced: bool) -> dict:
    return {"source": record.get("source", YOURS)} if sourced else {}


def _source_order(column):
    """Yours before recorded, in a sort."""
    return column.map({YOURS: 0, RECORDED: 1}).fillna(2)


def _lexsort(keys) -> list[int]:
    """Row positions ordered by ``keys`` (Series, first key first)."""
    import numpy as np

    return list(np.lexsort([k.to_numpy() for k in reversed(keys)]))


@dataclass
class Shown:
    """The runs notebook 09 shows (:func:`runs_to_show`), each record with its ``source``.

    Attributes:
        records: the runs in the tables: yours on ``datasets["yours"]``, the recorded ones on
            ``datasets["recorded"]``.
        datasets: ``{source: the dataset whose runs are shown}``; yours may be the bundled sample.
        yours: every finished run of yours, on any dataset.
        recorded: every recorded run (``results/``), on any dataset.
    """

    records: list[dict]
    datasets: dict
    yours: list[dict]
    recorded: list[dict]

    def of(self, source: str) -> list[dict]:
        return [r for r in self.records if r["source"] == source]

    def title(self, source: str) -> str:
        """``<where the runs are>: <dataset>``, short, for a figure."""
        dataset = self.datasets[source]
        return f"{SHORT[source]}: {dataset}" + (" (synthetic)" if dataset.startswith(SAMPLE) else "")


def runs_to_show(yours: list[dict], recorded: list[dict], dataset: str, quick: bool = False) -> Shown:
    """Notebook 09's runs: yours (``checkpoints/``, :func:`utils.core.runs.load_records`) on ``dataset`` (the
    bundled sample's instead, under a banner, in quick mode or when none is on ``dataset``:
    :func:`records_to_show`), and the recorded ones (``results/``, :func:`utils.results.load_recorded`) on
    ``dataset``, which are real runs whichever mode this is. Each record gets ``source``: ``"yours"`` or
    ``"recorded"``. A run of yours that is also recorded (the same folder, written at the same time: copied
    there by ``python -m utils.results add``) is shown once, as recorded."""
    recorded = [{**r, "source": RECORDED} for r in recorded]
    copies = {(r.get("run_dir"), r.get("written")) for r in recorded}
    yours = [{**r, "source": YOURS} for r in yours if (r.get("run_dir"), r.get("written")) not in copies]
    mine, on = records_to_show(yours, dataset, quick, whose="your runs (checkpoints/)")
    real = [r for r in recorded if _dataset(r) == dataset]
    return Shown(mine + real, {YOURS: on, RECORDED: dataset}, yours, recorded)


def sources_table(shown: Shown):
    """One row per source: the dataset shown, the runs shown and their methods, and the runs on other datasets
    (set ``DATASET`` to one of them to see those)."""
    import pandas as pd

    rows = []
    for source, every in ((YOURS, shown.yours), (RECORDED, shown.recorded)):
        runs, dataset = shown.of(source), shown.datasets[source]
        others: dict[str, int] = {}
        for r in every:
            if not any(r is s for s in runs):
                others[_dataset(r) or "?"] = others.get(_dataset(r) or "?", 0) + 1
        rows.append(
            {
                "source": SOURCES[source],
                "dataset": dataset + (" (synthetic)" if dataset.startswith(SAMPLE) else ""),
                "runs": len(runs),
                "methods": ", ".join(sorted({str(r.get("method")) for r in runs})) or "none yet",
                "runs on other datasets": ", ".join(f"{k} ({v})" for k, v in sorted(others.items())) or "none",
            }
        )
    return pd.DataFrame(rows)


def recorded_table(records: list[dict], split: str = "val"):
    """The recorded runs, one line each: what was trained on which dataset, the evaluation that stands for it
    (:data:`HEADLINE`) on ``split``, its minutes, the run it started from with that run's minutes (empty for
    random weights), and where it came from (the commit, marked when files differed from it, the machine, the
    command). Sorted by dataset, method, protocol and seed."""
    import pandas as pd

    rows = []
    for r in records:
        protocol = r.get("protocol", "supervised")
        headline = HEADLINE.get(protocol, protocol)
        m = r.get("evaluations", {}).get(headline, {}).get(split) or {}
        p, machine = r.get("provenance") or {}, r.get("machine") or {}
        commit = p["commit"][:7] if p.get("commit") else "not recorded"
        commit += " + changes" if p.get("uncommitted_changes") else ""
        model = re.sub(r"\((R|TM)\)| CPU(?= @)", "", machine.get("cpu") or "?")  # Intel(R) Xeon(R) ... CPU @
        cpu = f"{model}, {machine.get('cpus') or '?'} cores" if machine else "not recorded"
        start = r.get("init_run") or {}
        rows.append(
            {
                "dataset": _dataset(r),
                "method": r.get("method"),
                "protocol": protocol,
                "variant": describe(r)["variant"],
                "seed": r.get("seed"),
                "evaluation": PROTOCOLS.get(headline, headline),
                "accuracy": m.get("accuracy", float("nan")),
                "macro_f1": m.get("macro_f1", float("nan")),
                "minutes": round(r.get("train_seconds", 0) / 60, 1),
                "start": f"{start['run']} ({start.get('train_seconds', 0) / 60:.1f} min)" if start.get("run") else "",
                "commit": commit,
                "command": p.get("command") or "not recorded",
                "machine": cpu + (f", {machine['gpu']}" if machine.get("gpu") else ""),
                "written": (r.get("written") or "")[:10],
                "run": r.get("run_dir", r.get("run")),
            }
        )
    columns = ["dataset", "method", "protocol", "variant", "seed", "evaluation", "accuracy", "macro_f1", "minutes"]
    table = pd.DataFrame(rows, columns=[*columns, "start", "commit", "command", "machine", "written", "run"])
    table["seed"] = table["seed"].astype("Int64")  # whole numbers, empty where a record has none
    return table.sort_values(["dataset", "method", "protocol", "seed"], na_position="last").reset_index(drop=True)


def best_runs(records: list[dict], split: str = "val"):
    """The best run of each method and protocol (and source, when the records carry one) by accuracy on
    ``split``, the weakest first. Smoke tests (capped at a few steps) are left out: their count is in
    ``table.attrs["smoke_tests"]``."""
    table = summary_table(records, split)
    if table.empty:
        table.attrs["smoke_tests"] = 0
        return table
    smoke = int(table["smoke_test"].sum())
    table = table[~table["smoke_test"]]
    keys = ["source"] * ("source" in table.columns) + ["method", "protocol"]
    best = table.sort_values("accuracy").groupby(keys).tail(1)
    order = [_source_order(best["source"])] if "source" in best.columns else []
    order += [best["accuracy"]]
    best = best.iloc[_lexsort(order)].reset_index(drop=True)
    best = best[[*keys, "variant", "seed", "accuracy", "macro_f1", "run"]]
    best.attrs["smoke_tests"] = smoke
    return best


def label_efficiency_by_source(shown: Shown, split: str = "val"):
    """:func:`utils.evaluation.label_efficiency.label_efficiency_table` of each source on its own dataset,
    one after the other, with a first column ``source``."""
    import pandas as pd

    from utils.evaluation.label_efficiency import label_efficiency_table

    parts = []
    for source in (YOURS, RECORDED):
        part = label_efficiency_table(shown.of(source), shown.datasets[source], split)
        if len(part):
            parts.append(part.assign(source=source)[["source", *part.columns]])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def label_efficiency_summary(table):
    """The table of :func:`label_efficiency_by_source` pooled over seeds, one row per source and start point,
    one column per protocol and share of the labels: the mean accuracy."""
    import pandas as pd

    from utils.evaluation.label_efficiency import pooled

    if table.empty:
        return table
    parts = [pooled(part.drop(columns="source")).assign(source=s) for s, part in table.groupby("source", sort=False)]
    means = pd.concat(parts, ignore_index=True)
    return means.pivot_table(
        index=["source", "init", "variant", "setting"], columns=["protocol", "fraction"], values="accuracy"
    )


def check_sample_runs_learned(records: list[dict], split: str = "val") -> str:
    """Quick mode's check on your runs on the bundled sample (notebooks 02-08, and 06's FERPlus runs on it):
    every evaluation must end clearly above chance (:func:`not_above_chance`), or it is a bug, not a result.

    Returns:
        what was checked, to print.

    Raises:
        AssertionError: naming the evaluations that are not above chance, and what to do.
    """
    runs = [r for r in records if _dataset(r).startswith(SAMPLE) and not r.get("recorded")]
    if not runs:
        return "no runs of yours on the sample yet: nothing to check (run notebooks 02-08 first)"
    weak = not_above_chance(runs, split)
    if len(weak):
        raise AssertionError(
            f"{len(weak)} quick-mode evaluations are not clearly above chance. A run left by an older version of"
            " the suite can do this: delete its folder (the run column) from checkpoints/ and rerun the notebook"
            " that made it.\n" + weak.round(3).to_string(index=False)
        )
    return (
        f"every quick-mode evaluation of your {len(runs)} runs on the sample is clearly above chance: balanced\n"
        "accuracy >= 1.5 / classes, and accuracy above always guessing the largest class (smoke tests, which take\n"
        "2 steps, are left out, and so is kNN, near chance on this synthetic sample even on raw pixels)"
    )


def best_classifier(records: list[dict], dataset: str, quick: bool = False, split: str = "val") -> str | None:
    """The folder name of the classifier run (supervised, RAN or fine-tuned: whatever ``protocol`` makes a
    classifier) on ``dataset`` with the best accuracy on ``split``; on the bundled sample in quick mode or
    when no run is on ``dataset`` (:func:`records_to_show`). Smoke tests only when nothing else is there.
    None when there is no classifier run."""
    shown, _ = records_to_show(records, dataset, quick, whose="the classifier runs")
    classifiers = [r for r in shown if r.get("protocol", "supervised") in ("supervised", "finetune")]
    table = summary_table(classifiers, split)
    if table.empty:
        return None
    table = table[table["protocol"].isin(["supervised", "finetune"])]
    if (~table["smoke_test"]).any():
        table = table[~table["smoke_test"]]
    return str(table.sort_values("accuracy").iloc[-1]["run"]) if len(table) else None


def run_to_try(run, records: list[dict], dataset: str, quick: bool = False, root=None):
    """The folder of the classifier run notebook 07 tries: ``run`` when given (a folder, or the name of one in
    ``root``, ``checkpoints/`` by default), else :func:`best_classifier`'s; None when there is none."""
    from pathlib import Path

    from utils.core.runtime import CHECKPOINT_DIR

    run = run or best_classifier(records, dataset, quick)
    if run is None:
        return None
    return Path(run) if Path(run).is_dir() else Path(root or CHECKPOINT_DIR) / run


def styled(table, caption: str = "", precision: int = 3, wrap_over: int = 32):
    """``table`` to display: its caption above it (with "none yet" when it is empty), every row (pandas
    shortens long tables), the index only when it says something (a pivot's), numbers at ``precision``
    decimals (minutes at one), every text in full: columns with a value longer than ``wrap_over`` characters
    (commands, machines) wrapped, the others on one line."""
    import pandas as pd

    minutes = [c for c in table.columns if "minutes" in str(c)]
    counts = [  # epochs and seeds stored as floats (a missing one is NaN) read as counts
        c
        for c in table.select_dtypes("float").columns
        if c not in minutes and table[c].notna().any() and (table[c].dropna() % 1 == 0).all()
    ]
    style = table.style.format(precision=precision, na_rep="")
    if isinstance(table.index, pd.RangeIndex):
        style = style.hide(axis="index")
    if minutes:
        style = style.format("{:.1f}", subset=minutes, na_rep="")
    if counts:
        style = style.format("{:.0f}", subset=counts, na_rep="")
    long = [c for c in table.columns if len(table) and table[c].astype(str).str.len().max() > wrap_over]
    short = [c for c in table.columns if c not in long]
    style = style.set_table_styles(
        [
            {"selector": "caption", "props": "caption-side: top; text-align: left; font-weight: bold; padding: 4px 0"},
            {"selector": "td", "props": "text-align: left"},
        ]
    )
    if short and len(table):
        style = style.set_properties(subset=short, **{"white-space": "nowrap"})
    if long:
        style = style.set_properties(subset=long, **{"white-space": "normal", "min-width": "24em"})
    if table.empty:
        caption = f"{caption}: none yet" if caption else "none yet"
    return style.set_caption(caption) if caption else style
