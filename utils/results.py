"""One home for the numbers: the records of the real-data runs the README and the notebooks cite, in
``results/``, and the results page generated from them.

    python -m utils.results add checkpoints/<run> [...]   # copy runs' records (metrics.json, log.csv; no weights)
    python -m utils.results add checkpoints/<run> --command "papermill ..."  # a run made in a notebook
    python -m utils.results page                          # write results/README.md from every record there
    python -m utils.results page --check                  # exit 1 if results/README.md is out of date (CI)

A record holds everything a figure needs to be traced: the settings, every evaluation, the epochs, images/s and
minutes, the machine (CPU model, bfloat16 support), the versions, the commit and the command that made it
(:func:`utils.core.runs.write_record`). The results notebook shows these recorded runs, labelled as recorded
elsewhere, beside the user's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from utils.core.runtime import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "results"
PAGE = "README.md"
KEPT_FILES = ("metrics.json", "log.csv")  # a run's record and its per-epoch log; never weights


def add(folders, results_dir=None, command: str | None = None) -> list[Path]:
    """Copy each finished run's record (and log) into ``results_dir/<run>/``; a folder that holds no finished
    run is an error, named, and nothing is copied. ``command``: how the runs were made, for runs made in a
    notebook kernel, which cannot know it (the record says the command was given when it was recorded)."""
    from utils.core.runs import finished

    results_dir = Path(results_dir or RESULTS_DIR)
    folders = [Path(f) for f in folders]
    missing = [str(f) for f in folders if finished(f) is None]
    if missing:
        raise FileNotFoundError(f"no finished run (metrics.json with status 'finished') in: {', '.join(missing)}")
    out = []
    for folder in folders:
        target = results_dir / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, target / name)
        if command:
            record = json.loads((target / "metrics.json").read_text())
            given = record.setdefault("provenance", {})
            given.update(command=command, command_given_to="results add")  # the kernel's names only itself
            (target / "metrics.json").write_text(json.dumps(record, indent=1))
        out.append(target)
    return out


def load_recorded(results_dir=None) -> list[dict]:
    """Every record in ``results/``, each marked ``recorded: True`` (made elsewhere, by the command it names)."""
    from utils.core.runs import load_records

    return [{**r, "recorded": True} for r in load_records(results_dir or RESULTS_DIR)]


# ---------------------------------------------------------------------------------------------- the page


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _eval(record: dict, protocol: str, split: str = "val", key: str = "accuracy"):
    return record.get("evaluations", {}).get(protocol, {}).get(split, {}).get(key)


def _model(record: dict) -> dict:
    return record.get("config", {}).get("model", {})


def _network(record: dict) -> str:
    m = _model(record)
    if "backbone" not in m:  # the raw-pixels floor: no network
        return f"none ({m.get('channels', 'gray')} pixels)"
    width = m.get("width", 64)
    name = m["backbone"] + (" (ImageNet)" if m.get("pretrained") else "")
    return name + (f", width {width}" if width != 64 else "") + (", last stride 1" if m.get("last_stride") == 1 else "")


def _minutes(record: dict) -> str:
    own = record.get("train_seconds", 0.0) / 60
    start = (record.get("init_run") or {}).get("train_seconds", 0.0) / 60
    return f"{own:.1f}" + (f" + {start:.1f} start" if start else "")


def _epochs(record: dict) -> str:
    """The epochs fitted to the time budget, or those run when the run stopped early."""
    if str(record.get("stop_reason", "")).startswith("early stop"):
        return f"{record.get('epochs_run')} (early stop)"
    return f"{record.get('schedule', {}).get('epochs', record.get('epochs_run'))}"


def _link(record: dict) -> str:
    return f"[{record['run_dir']}]({record['run_dir']}/metrics.json)"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _seeds_summary(records: list[dict], value) -> str:
    """``mean (seed a, seed b)`` of ``value(record)`` over runs that differ only in their seed."""
    values = [value(r) for r in records]
    if len(records) == 1:
        return _pct(values[0])
    return f"{_pct(_mean(values))} ({', '.join(_pct(v) for v in values)})"


def _by_setting(records: list[dict]) -> list[list[dict]]:
    from utils.evaluation.tables import describe

    groups: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: (r.get("seed") or 0, r["run_dir"])):
        groups.setdefault(describe(r)["setting"], []).append(r)
    return list(groups.values())


def _run_cells(group: list[dict]) -> list[str]:
    """The columns every table ends with: epochs, images/s, minutes, seeds and the runs' records."""
    return [
        ", ".join(_epochs(x) for x in group),
        ", ".join(f"{x.get('images_per_second', 0):.0f}" for x in group),
        ", ".join(_minutes(x) for x in group),
        ", ".join(_seed(x) for x in group),
        "<br>".join(_link(x) for x in group),
    ]


def _seed(record: dict) -> str:
    return "none" if record.get("seed") is None else str(record["seed"])  # raw pixels: nothing random


def supervised_section(records: list[dict]) -> list[str]:
    rows = []
    for group in _by_setting(records):
        r = group[0]
        tta = _model(r).get("tta")
        rows.append(
            [
                _network(r),
                f"{r['config']['train'].get('optimizer')} {r['config']['train'].get('lr')}",
                _seeds_summary(group, lambda x: _eval(x, "supervised")),
                _seeds_summary(group, lambda x, t=tta: _eval(x, f"supervised+{t}")) + (f" ({tta})" if tta else ""),
                f"{_mean(_eval(x, 'supervised', key='macro_f1') for x in group):.3f}",
                *_run_cells(group),
            ]
        )
    header = ["network", "optimiser, lr", "accuracy", "with TTA", "macro-F1", "epochs", "images/s", "minutes"]
    return _table(header + ["seeds", "runs"], rows)


def representation_section(records: list[dict]) -> list[str]:
    rows = []
    for group in _by_setting(records):
        r = group[0]
        rows.append(
            [
                r.get("method"),
                _network(r),
                _seeds_summary(group, lambda x: _eval(x, "linear")),
                _seeds_summary(group, lambda x: _eval(x, "knn")),
                ", ".join(_epochs(x) for x in group) if r.get("epochs_run") else "not trained",
                ", ".join(f"{x.get('images_per_second', 0):.0f}" for x in group) if r.get("epochs_run") else "",
                ", ".join(_minutes(x) for x in group),
                ", ".join(_seed(x) for x in group),
                "<br>".join(_link(x) for x in group),
            ]
        )
    header = ["method", "network", "linear probe", "kNN (k = 20)", "epochs", "images/s", "minutes", "seeds", "runs"]
    return _table(header, rows) + share_probes_section(records) + regions_section(records)


def share_probes_section(records: list[dict]) -> list[str]:
    """The probes fitted on a share of the training labels only (notebook 08, ``label_efficiency`` in a record)."""
    rows = []
    for r in records:
        for probe in (r.get("label_efficiency") or {}).values():
            cells = [_pct(probe.get(p, {}).get("val", {}).get("accuracy")) for p in ("linear", "knn")]
            rows.append([r.get("method"), _network(r), f"{100 * probe['fraction']:g} %", *cells, _seed(r), _link(r)])
    if not rows:
        return []
    lines = ["The same probes fitted on a share of Training's labels only (PublicTest):", ""]
    return lines + _table(["method", "network", "labels", "linear probe", "kNN (k = 20)", "seed", "run"], rows)


def regions_section(records: list[dict]) -> list[str]:
    """FRA's regions against the landmarks (``region_awareness`` in a record): each query's favoured landmark
    group and its lift over a uniform map, for the soft heatmaps and the hard partition."""
    rows = []
    for r in records:
        for where, tables in (r.get("region_awareness") or {}).items():
            for kind in ("soft", "hard"):
                queries = [(q, row) for q, row in tables[kind].items() if not q.startswith("uniform")]
                cells = ", ".join(
                    "unused" if row["lift"] is None else f"{row['top group']} ×{row['lift']:.2f}" for _, row in queries
                )
                rows.append([r.get("method"), r.get("seed"), where, kind, cells, _link(r)])
    if not rows:
        return []
    lines = ["Where FRA's regions sit (each query's landmark group with the most of its mass, and how many times a "
             "uniform map's share that is; `soft`: the heatmaps that pool the regions, `hard`: the positions each "
             "query wins):", ""]  # fmt: skip
    return lines + _table(["method", "seed", "split", "maps", "queries: top group ×lift", "run"], rows)


def label_section(records: list[dict]) -> list[str]:
    rows = []
    for r in sorted(records, key=lambda r: (r.get("method"), r["dataset"]["labelled"]["fraction"], r.get("seed"))):
        fraction = r["dataset"]["labelled"]["fraction"]
        rows.append(
            [
                r.get("method"),
                _network(r),
                f"{100 * fraction:g} %",
                _pct(_eval(r, "finetune")),
                f"{_eval(r, 'finetune', key='macro_f1'):.3f}",
                _epochs(r),
                _minutes(r),
                _seed(r),
                _link(r),
            ]
        )
    header = ["start point", "network", "labels", "fine-tuned accuracy", "macro-F1", "epochs", "minutes", "seed"]
    return _table(header + ["run"], rows)


def ferplus_section(records: list[dict]) -> list[str]:
    rows, robust, shifts = [], [], []

    def start_of(x: dict) -> tuple:  # the run a model started from (None: random weights)
        return x.get("seed"), (x.get("init_run") or {}).get("run")

    plain = {start_of(x): x for x in records if x.get("method") == "supervised"}  # the same start and seed
    for group in _by_setting(records):
        r = group[0]
        init = r.get("init_run") or {}
        start = f"{init.get('method')} run `{init.get('run')}`" if init else "random weights"
        paired = [(x, plain[start_of(x)]) for x in group if start_of(x) in plain and x is not plain[start_of(x)]]
        cost = [p["images_per_second"] / x["images_per_second"] for x, p in paired if x.get("images_per_second")]
        cost += [1.0 for x in group if x.get("method") == "supervised"]
        rows.append(
            [
                r.get("method"),
                _network(r),
                start,
                _seeds_summary(group, lambda x: _eval(x, "supervised")),
                _seeds_summary(group, _occluded_mean),
                _difference(paired, lambda x: _eval(x, "supervised")),
                _difference(paired, _occluded_mean),
                f"{_mean(_eval(x, 'supervised', key='macro_f1') for x in group):.3f}",
                f"{_mean(cost):.2f}×" if cost else "",
                *_run_cells(group),
            ]
        )
        for x in group:
            for where, table in (x.get("robustness") or {}).items():
                conditions = table.get("conditions", {})
                cells = [_pct(conditions.get(c, {}).get("accuracy")) for c in OCCLUSION_COLUMNS + POSE_COLUMNS]
                covered = _occluded(conditions)
                robust.append([x.get("method"), start, x.get("seed"), where, *cells, _pct(covered)])
                for condition, shift in (table.get("attention_shift") or {}).items():
                    before, after = shift["covered crop, clean"], shift["covered crop, occluded"]
                    shifts.append(
                        [x.get("method"), start, x.get("seed"), condition, shift["most covered crop"],
                         f"{before:.3f}", f"{after:.3f}", "yes" if after < before else "no",
                         f"{shift['face, clean']:.3f} → {shift['face, occluded']:.3f}"]
                    )  # fmt: skip
    header = ["model", "network", "start", "accuracy", "occluded mean", "against plain: accuracy",
              "against plain: occluded", "macro-F1", "cost per image against plain"]  # fmt: skip
    lines = [
        "`accuracy` is on the clean faces, without test-time augmentation; `occluded mean` averages the five "
        "synthetic occlusions below. `against plain`: the mean, over seeds, of the model's accuracy minus that of "
        "the plain network with the same start and seed (in points).",
        "",
        *_table([*header, "epochs", "images/s", "minutes", "seeds", "runs"], rows),
    ]
    if robust:
        lines += [
            "Under synthetic occlusion and by head pose (the same faces; each occlusion on every face with landmarks; "
            "`occluded mean` averages the five occlusions):",
            "",
        ]
        lines += _table(["model", "start", "seed", "split", *OCCLUSION_COLUMNS, *POSE_COLUMNS, "occluded mean"], robust)
    if shifts:
        lines += [
            "Where RAN looks: the share `μᵢνᵢ / Σ μⱼνⱼ` of the crop each occlusion covers most, on the same faces "
            "clean and occluded. A covered crop that loses share is RAN doing what the paper claims.",
            "",
        ]
        header = ["model", "start", "seed", "occlusion", "covered crop", "share, clean", "share, occluded",
                  "loses share", "whole face's share"]  # fmt: skip
        lines += _table(header, shifts)
    return lines


def _occluded(conditions: dict) -> float | None:
    """The mean accuracy over the five synthetic occlusions of one robustness table's conditions."""
    return _mean(conditions.get(c, {}).get("accuracy") for c in OCCLUSION_COLUMNS[1:])


def _occluded_mean(record: dict) -> float | None:
    """:func:`_occluded` on the first split the run was evaluated on."""
    tables = list((record.get("robustness") or {}).values())
    return _occluded(tables[0].get("conditions", {})) if tables else None


def _difference(pairs: list[tuple[dict, dict]], value) -> str:
    """``mean (seed a, seed b)`` of ``value(model) - value(plain)`` in points, over (model, plain) pairs."""
    gaps = [100 * (value(x) - value(p)) for x, p in pairs if value(x) is not None and value(p) is not None]
    if not gaps:
        return ""
    each = f" ({', '.join(_signed(g) for g in gaps)})" if len(gaps) > 1 else ""
    return f"{_signed(_mean(gaps))}{each}"


def _signed(points: float) -> str:
    text = f"{points:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


OCCLUSION_COLUMNS = ("clean", "eyes", "mouth", "random square", "left half", "right half")
POSE_COLUMNS = ("frontal", "strong yaw")


def runs_section(records: list[dict]) -> list[str]:
    rows = []
    for r in sorted(records, key=lambda r: r.get("written", "")):
        p, m = r.get("provenance") or {}, r.get("machine") or {}
        commit = (p.get("commit") or "no record")[:7] + (
            " (with uncommitted changes)" if p.get("uncommitted_changes") else ""
        )
        machine = f"{m.get('cpu', '?')}, {m.get('cpus', '?')} cores" + (
            f", {m['cpu_bf16']}" if m.get("cpu_bf16") else ""
        )
        command = f"`{p.get('command') or 'no record'}`" + (
            " (given when recorded)" if p.get("command_given_to") else ""
        )
        rows.append([f"`{r['run_dir']}`", command, commit, machine, r.get("written", "")[:10]])
    return _table(["run", "command", "commit", "machine", "written"], rows)


SECTIONS = (
    ("Supervised on FER2013", lambda r: r.get("protocol") == "supervised" and r["dataset"]["name"] == "fer2013",
     supervised_section,
     "FER2013 Training, selected and reported on PublicTest (the split the epochs and probe settings were chosen on, "
     "so the figures are slightly optimistic). Accuracy without and with test-time augmentation."),
    ("Self-supervised pretraining on FER2013",
     lambda r: r.get("protocol") in ("pretrain", "floor") and r["dataset"]["name"] == "fer2013", representation_section,
     "Pretrained on FER2013 Training without labels; a logistic regression (linear probe) and a 20-nearest-neighbour "
     "vote (kNN) on the frozen features, fitted on Training's labels, scored on PublicTest. Random weights and raw "
     "pixels are the floors a method must beat to have learned anything."),
    ("Fine-tuning with a share of the labels",
     lambda r: r.get("protocol") == "finetune" and r["dataset"].get("labelled"), label_section,
     "A pretrained backbone (or random weights) with a new linear head, every weight trained on a stratified share "
     "of FER2013 Training's labels; PublicTest."),
    ("RAN on FERPlus", lambda r: r["dataset"]["name"] == "ferplus" and r.get("protocol") == "supervised",
     ferplus_section,
     "FERPlus majority labels (8 classes) on the FER2013 images, Training to PublicTest. Minutes count the start "
     "run's training when a run starts from one."),
)  # fmt: skip


def page(records: list[dict]) -> str:
    """The results page (Markdown) for ``records``."""
    lines = [
        "# Results",
        "",
        "Every figure the README and the notebooks cite, generated from the run records in this folder by",
        "`python -m utils.results page` (CI fails when this page is out of date). Each record (`<run>/metrics.json`)",
        "holds the run's settings, evaluations, per-epoch log, machine, versions, commit and command. Runs were made",
        "one at a time on the machine each names; with a time budget, a busier machine fits fewer epochs.",
        "",
    ]
    used = set()
    for title, wanted, section, about in SECTIONS:
        chosen = [r for r in records if r["run_dir"] not in used and wanted(r)]
        if not chosen:
            continue
        used |= {r["run_dir"] for r in chosen}
        lines += [f"## {title}", "", about, "", *section(chosen)]
    rest = [r for r in records if r["run_dir"] not in used]
    if rest:
        lines += ["## Other runs", "", *representation_section(rest)]
    lines += ["## How each run was made", "", *runs_section(records)]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.results", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    adding = sub.add_parser("add", help="copy finished runs' records into results/")
    adding.add_argument("runs", nargs="+")
    adding.add_argument("--command", default=None, help="how runs made in a notebook were made (papermill ...)")
    writing = sub.add_parser("page", help="write results/README.md from the records")
    writing.add_argument("--check", action="store_true", help="exit 1 if the page is out of date; write nothing")
    parser.add_argument("--results-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir or RESULTS_DIR)
    if args.action == "add":
        try:
            for target in add(args.runs, results_dir, command=args.command):
                print(f"recorded {target.name}")
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        args.check = False
    text = page(load_recorded(results_dir))
    path = results_dir / PAGE
    if args.check:
        if not path.is_file() or path.read_text() != text:
            print(f"{path} is out of date: run python -m utils.results page", file=sys.stderr)
            return 1
        print(f"{path} is up to date ({text.count(chr(10))} lines)")
        return 0
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path} from {len(load_recorded(results_dir))} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
