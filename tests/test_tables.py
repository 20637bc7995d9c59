"""Tables over run records, as notebook 09 shows them: your runs (checkpoints/) beside the recorded ones
(results/), each labelled with where it comes from, with none, one or many of either; and the run notebook
07 picks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils import results
from utils.core import runs
from utils.evaluation import plots, tables
from utils.evaluation.tables import RECORDED, SOURCES, YOURS

VERSIONS = {"python": "3.x", "torch": "2.x"}


@pytest.fixture(autouse=True)
def fixed_versions(monkeypatch):
    """Records carry library versions; collecting the real ones imports cv2 and dlib, slow for these tests."""
    monkeypatch.setattr(runs, "versions", lambda: dict(VERSIONS))


def metrics(acc, classes=7):
    share = [0.3] + [0.7 / (classes - 1)] * (classes - 1)
    per_class = {f"c{i}": {"support": int(100 * s)} for i, s in enumerate(share)}
    return {"accuracy": acc, "balanced_accuracy": acc - 0.05, "macro_f1": acc - 0.1, "n": 100, "per_class": per_class}


def record(method, dataset="fer2013", seed=0, acc=0.6, protocol=None, minutes=30.0, **extra):
    """A finished run's record as :func:`utils.core.runs.run` writes it, in brief."""
    protocol = protocol or ("supervised" if method in ("supervised", "ran") else "pretrain")
    if protocol == "pretrain":
        evaluations = {"linear": {"val": metrics(acc)}, "knn": {"val": metrics(acc - 0.05)}}
    else:
        key = "finetune" if protocol == "finetune" else "supervised"
        evaluations = {key: {"val": metrics(acc)}, f"{key}+flip": {"val": metrics(acc + 0.01)}}
    return {
        "method": method,
        "protocol": protocol,
        "seed": seed,
        "epochs_run": 10,
        "train_seconds": 60 * minutes,
        "dataset": {"name": dataset, "split_sizes": {"train": 100, "val": 100}},
        "config": {"model": {"backbone": "resnet18", "channels": "gray"}, "train": {"seed": seed}},
        "evaluations": evaluations,
        **extra,
    }


def write(root, records):
    for i, r in enumerate(records):
        runs.write_record(root / f"{r['method']}-{r['dataset']['name']}-{i:02d}", r)
    return runs.load_records(root)


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """Real-data runs recorded in a results/ folder (python -m utils.results add), read back with their marks."""
    monkeypatch.setattr(
        runs,
        "provenance",
        lambda: {"commit": "0123456789abcdef", "uncommitted_changes": True, "command": "python -m utils.train x"},
    )
    machine = {"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "cpus": 8, "cpu_bf16": None, "gpu": None}
    monkeypatch.setattr(runs, "machine", lambda: machine)
    made = tmp_path / "made"
    write(
        made,
        [
            record("supervised", seed=0, acc=0.64),
            record("supervised", seed=1, acc=0.66),
            record("byol", seed=0, acc=0.40),
            record("byol", seed=1, acc=0.42),
            record("ran", dataset="ferplus", acc=0.80),
        ],
    )
    results.add(sorted(made.iterdir()), tmp_path / "results")
    return results.load_recorded(tmp_path / "results")


def sample_runs(root):
    return write(root, [record("supervised", "sample", acc=0.9, minutes=0.1), record("byol", "sample", acc=0.5)])


def test_recorded_runs_are_marked_and_shown_beside_yours_on_the_sample_in_quick_mode(recorded, tmp_path, capsys):
    """A fresh clone without data (FER_QUICK=1): your runs are the sample's, under the synthetic banner, and
    the recorded real runs are shown as well, each labelled with its source."""
    assert len(recorded) == 5 and all(r["recorded"] for r in recorded)
    mine = sample_runs(tmp_path / "checkpoints")
    shown = tables.runs_to_show(mine, recorded, "fer2013", quick=True)
    out = capsys.readouterr().out
    assert "QUICK MODE" in out and "your runs (checkpoints/) on the bundled SYNTHETIC sample" in out
    assert shown.datasets == {YOURS: "sample", RECORDED: "fer2013"}
    assert [r["method"] for r in shown.of(YOURS)] == ["byol", "supervised"]
    assert sorted(r["method"] for r in shown.of(RECORDED)) == ["byol", "byol", "supervised", "supervised"]
    assert {r["source"] for r in shown.records} == {YOURS, RECORDED}
    assert shown.title(YOURS) == "yours (checkpoints/): sample (synthetic)"
    assert shown.title(RECORDED) == "recorded elsewhere (results/): fer2013"

    sources = tables.sources_table(shown).set_index("source")
    assert list(sources.index) == [SOURCES[YOURS], SOURCES[RECORDED]]
    assert sources.loc[SOURCES[YOURS], "dataset"] == "sample (synthetic)"
    assert sources.loc[SOURCES[RECORDED], "runs"] == 4
    assert sources.loc[SOURCES[RECORDED], "runs on other datasets"] == "ferplus (1)"  # DATASET="ferplus" shows it
    assert sources.loc[SOURCES[RECORDED], "methods"] == "byol, supervised"

    pooled = tables.by_protocol(shown.records, "val")
    assert list(pooled.columns[:2]) == ["source", "method"]
    assert list(pooled["source"]) == [YOURS] * 4 + [RECORDED] * 4  # yours first
    row = pooled[(pooled["source"] == RECORDED) & (pooled["protocol"] == "supervised")].iloc[0]
    assert (row["seeds"], row["accuracy"]) == (2, pytest.approx(0.65))  # seeds pooled within a source

    probes = tables.probe_table(shown.records, "val")
    assert probes.columns[0] == "source"
    over = tables.over_seeds(probes.dropna(subset=["linear_accuracy"]))
    assert sorted(zip(over["source"], over["seeds"])) == [(RECORDED, 2), (YOURS, 1)]


def test_a_run_copied_into_results_is_shown_once_as_recorded(recorded, tmp_path):
    copy = [{k: v for k, v in r.items() if k != "recorded"} for r in recorded]  # its folder, as checkpoints/ has it
    again = {**copy[0], "written": "2099-01-01T00:00:00+00:00"}  # the same settings, trained again here
    shown = tables.runs_to_show([*copy, again], recorded, "fer2013")
    assert [r["written"] for r in shown.of(YOURS)] == ["2099-01-01T00:00:00+00:00"]
    assert len(shown.of(RECORDED)) == 4


def test_zero_records_anywhere_give_empty_tables_and_figures_say_so(tmp_path, capsys):
    recorded = results.load_recorded(tmp_path / "results")  # results/ not even there
    assert recorded == []
    shown = tables.runs_to_show([], recorded, "fer2013")
    assert shown.records == [] and capsys.readouterr().out == ""  # nothing to announce
    sources = tables.sources_table(shown)
    assert list(sources["runs"]) == [0, 0] and list(sources["methods"]) == ["none yet", "none yet"]
    assert tables.recorded_table(shown.recorded).empty
    assert list(tables.recorded_table([]).columns)[-5:] == ["commit", "command", "machine", "written", "run"]
    assert tables.by_protocol(shown.records).empty
    assert tables.best_runs(shown.records).empty
    assert tables.probe_table(shown.records).empty
    assert tables.label_efficiency_by_source(shown).empty
    assert tables.label_efficiency_summary(tables.label_efficiency_by_source(shown)).empty
    assert tables.cross_dataset_matrix(shown.yours + shown.recorded).empty
    assert "nothing to check" in tables.check_sample_runs_learned(shown.yours)


def test_many_records_one_line_each_with_where_it_came_from(recorded, tmp_path):
    many = [{**r, "run_dir": f"{r['run_dir']}-{k}"} for k in range(20) for r in recorded]
    table = tables.recorded_table(many, "val")
    assert len(table) == 100
    assert list(table["dataset"].unique()) == ["fer2013", "ferplus"]  # sorted, every dataset
    row = table[table["method"] == "byol"].iloc[0]
    assert (row["evaluation"], row["accuracy"]) == ("linear", pytest.approx(0.40))  # a pretraining's probe
    row = table[table["method"] == "supervised"].iloc[0]
    assert (row["evaluation"], row["accuracy"]) == ("supervised", pytest.approx(0.64))
    assert row["commit"] == "0123456 + changes"
    assert row["machine"] == "Intel Xeon Platinum 8481C @ 2.70GHz, 8 cores"
    assert row["command"] == "python -m utils.train x"
    assert row["written"][:2] == "20" and len(row["written"]) == 10
    old = tables.recorded_table([{k: v for k, v in recorded[0].items() if k not in ("provenance", "machine")}])
    assert (old["commit"][0], old["machine"][0], old["command"][0]) == ("not recorded",) * 3
    assert set(table["start"]) == {""}  # every run here started from random weights
    started = {
        **recorded[-1],
        "init_run": {"run": "supervised-fer2013-1", "method": "supervised", "train_seconds": 1799},
    }
    assert tables.recorded_table([started])["start"][0] == "supervised-fer2013-1 (30.0 min)"


def test_best_runs_per_source_method_and_protocol_leave_smoke_tests_out(recorded, tmp_path):
    mine = sample_runs(tmp_path / "checkpoints")
    mine.append({**record("moco_v2", "sample", acc=0.99), "steps_per_epoch_cap": 2, "run_dir": "smoke"})
    shown = tables.runs_to_show(mine, recorded, "fer2013", quick=True)
    best = tables.best_runs(shown.records, "val")
    assert best.attrs["smoke_tests"] == 2  # the smoke test's linear and kNN
    assert "moco_v2" not in set(best["method"])
    assert list(best.columns[:3]) == ["source", "method", "protocol"]
    recorded_best = best[best["source"] == RECORDED].set_index(["method", "protocol"])["accuracy"]
    assert recorded_best[("supervised", "supervised+flip")] == pytest.approx(0.67)  # seed 1's, not the mean
    assert list(best["source"]) == sorted(best["source"], key=[YOURS, RECORDED].index)
    fig = plots.best_runs(best, "val", {s: shown.title(s) for s in (YOURS, RECORDED)})
    assert [ax.get_title(loc="left") for ax in fig.axes] == [shown.title(YOURS), shown.title(RECORDED)]
    assert "left out: 2 evaluations of smoke tests" in fig.texts[0].get_text()


def test_budget_curves_have_a_row_per_source(recorded, tmp_path):
    mine = sample_runs(tmp_path / "checkpoints")
    shown = tables.runs_to_show(mine, recorded, "fer2013", quick=True)
    probes = tables.probe_table(shown.records, "val").dropna(subset=["linear_accuracy"])
    fig = plots.budget_curves(probes, {s: shown.title(s) for s in (YOURS, RECORDED)})
    assert len(fig.axes) == 4
    assert fig.axes[2].get_title(loc="left").startswith("recorded elsewhere")


def test_label_efficiency_of_each_source_on_its_own_dataset(tmp_path):
    def finetune(dataset, fraction, acc, seed=0, recorded=False):
        """A fine-tune of ``pre-<dataset>-<seed>`` with a share of the labels (notebook 08)."""
        labelled = {"fraction": fraction, "seed": seed, "train_rows": int(100 * fraction)}
        r = record(
            "byol", dataset, seed, acc, protocol="finetune", init=f"checkpoints/pre-{dataset}-{seed}/backbone.pt"
        )
        r["dataset"]["labelled"] = labelled
        return {**r, "run_dir": f"ft-{dataset}-{fraction}-{seed}", **({"recorded": True} if recorded else {})}

    def pretrained(dataset, seed, recorded=False):
        r = {**record("byol", dataset, seed, 0.4), "run_dir": f"pre-{dataset}-{seed}"}
        return {**r, "recorded": True} if recorded else r

    mine = [pretrained("sample", 0), finetune("sample", 0.1, 0.5), finetune("sample", 1.0, 0.8)]
    real = [pretrained("fer2013", s, True) for s in (0, 1)]
    real += [finetune("fer2013", 0.1, 0.3, s, True) for s in (0, 1)] + [finetune("fer2013", 1.0, 0.6, 0, True)]
    shown = tables.runs_to_show(mine, real, "fer2013", quick=True)
    table = tables.label_efficiency_by_source(shown, "val")
    assert table.columns[0] == "source"
    assert sorted(set(zip(table["source"], table["fraction"]))) == [
        (RECORDED, 0.1),
        (RECORDED, 1.0),
        (YOURS, 0.1),
        (YOURS, 1.0),
    ]
    summary = tables.label_efficiency_summary(table)
    assert len(summary) == 2  # a row per source and start point
    assert summary.loc[(RECORDED, "byol"), ("fine-tune", 0.1)].iloc[0] == pytest.approx(0.3)  # the seeds' mean
    assert summary.loc[(YOURS, "byol"), ("fine-tune", 1.0)].iloc[0] == pytest.approx(0.8)
    assert summary.loc[(YOURS, "byol"), ("linear", 1.0)].iloc[0] == pytest.approx(0.4)  # the pretraining's probe
    figs = plots.label_efficiency_by_source(table, {YOURS: "mine", RECORDED: "theirs"})
    assert [f._suptitle.get_text() for f in figs] == ["mine", "theirs"]


def test_the_sample_check_fails_on_a_run_at_chance_and_ignores_recorded_runs():
    learned = record("supervised", "sample", acc=0.9)
    at_chance = {**record("supervised", "sample", acc=0.2), "run_dir": "weak"}  # below the largest class's share
    assert "clearly above chance" in tables.check_sample_runs_learned([learned])
    assert "nothing to check" in tables.check_sample_runs_learned([{**at_chance, "recorded": True}])
    with pytest.raises(AssertionError, match="2 quick-mode evaluations are not clearly above chance"):
        tables.check_sample_runs_learned([learned, at_chance])


def test_the_cross_dataset_matrix_keeps_sources_apart():
    cross = {"cross_dataset": {"ferplus/test": {"metrics": {"accuracy": 0.5}}}}
    both = [
        {**record("supervised"), **cross, "source": YOURS},
        {**record("supervised"), **cross, "source": RECORDED},
    ]
    matrix = tables.cross_dataset_matrix(both)
    assert list(matrix.index) == ["supervised (fer2013), recorded", "supervised (fer2013), yours"]
    assert list(tables.cross_dataset_matrix([{**record("supervised"), **cross}]).index) == ["supervised (fer2013)"]


def test_tables_of_records_without_a_source_keep_their_columns():
    """Notebooks 02-07 show their own runs: no source column there."""
    mine = [{**record("byol"), "run_dir": "b"}, {**record("supervised"), "run_dir": "s"}]
    assert "source" not in tables.summary_table(mine).columns
    assert tables.probe_table(mine).columns[0] == "method"
    assert "source" not in tables.by_protocol(mine).columns
    assert "source" not in tables.best_runs(mine).columns


def test_notebook_07_picks_the_best_classifier_on_the_dataset_or_the_sample(capsys):
    mine = [
        {**record("supervised", acc=0.60), "run_dir": "sup"},
        {**record("ran", acc=0.65), "run_dir": "ran"},
        {**record("byol", acc=0.99), "run_dir": "byol"},  # not a classifier
        {**record("supervised", "sample", acc=0.9), "run_dir": "on-sample"},
        {**record("supervised", "sample", acc=0.95), "run_dir": "smoke", "steps_per_epoch_cap": 2},
    ]
    assert tables.best_classifier(mine, "fer2013") == "ran"
    assert capsys.readouterr().out == ""
    assert tables.best_classifier(mine, "fer2013", quick=True) == "on-sample"  # smoke tests only as a last resort
    assert "QUICK MODE" in capsys.readouterr().out
    assert tables.best_classifier(mine[-1:], "sample") == "smoke"
    assert tables.best_classifier(mine[2:3], "fer2013") is None
    assert tables.best_classifier([], "fer2013") is None


def test_summary_frames_are_pandas():
    assert isinstance(tables.sources_table(tables.runs_to_show([], [], "fer2013")), pd.DataFrame)
    assert np.isnan(tables.recorded_table([record("byol", evaluations={})])["accuracy"][0])


def test_notebook_07_tries_the_run_it_is_given_or_the_best(tmp_path):
    (tmp_path / "given").mkdir()
    mine = [{**record("supervised", acc=0.60), "run_dir": "sup"}]
    assert tables.run_to_try(str(tmp_path / "given"), mine, "fer2013") == tmp_path / "given"  # a folder
    assert tables.run_to_try("given", mine, "fer2013", root=tmp_path) == tmp_path / "given"  # a name in root
    assert tables.run_to_try(None, mine, "fer2013", root=tmp_path) == tmp_path / "sup"
    assert tables.run_to_try(None, [], "fer2013", root=tmp_path) is None


def test_a_styled_table_has_its_caption_and_every_command_in_full(recorded):
    table = tables.recorded_table(
        [{**r, "provenance": {"command": "python -m utils.train " + "x" * 200}} for r in recorded]
    )
    html = tables.styled(table, SOURCES[RECORDED]).to_html()
    assert SOURCES[RECORDED] in html and "x" * 200 in html
    assert "0.640" in html and "30.0<" in html  # accuracy at 3 decimals, minutes at one
    assert f"{SOURCES[RECORDED]}: none yet" in tables.styled(table.iloc[:0], SOURCES[RECORDED]).to_html()


def test_a_styled_pivot_keeps_its_index_and_counts_read_as_whole_numbers():
    table = pd.DataFrame({"method": ["a", "b"], "epochs": [6.0, np.nan], "accuracy": [0.5, 0.25]})
    html = tables.styled(table).to_html()
    assert ">6<" in html and "6.000" not in html and "0.250" in html
    assert "none yet" in tables.styled(table.iloc[:0]).to_html()
    table = table.assign(protocol=["linear", "kNN"], fraction=[0.25, 1.0])
    pivot = table.pivot_table(index="method", columns=["protocol", "fraction"], values="accuracy")
    html = tables.styled(pivot).to_html()  # as label_efficiency_summary's, with two levels of columns
    assert ">a<" in html and ">0.500<" in html  # the index is what a pivot's rows are


def test_a_run_recorded_before_a_field_existed_pools_with_todays_runs_of_its_setting(finished_runs):
    import copy

    today = runs.finished(finished_runs["byol"].run_dir)
    older = copy.deepcopy(today)
    del older["config"]["model"][
        "predictor_lr_scale"
    ]  # a field added later, at the default that kept the old behaviour
    assert tables.describe(older)["setting"] == tables.describe(today)["setting"]
    changed = copy.deepcopy(today)
    changed["config"]["model"]["predictor_lr_scale"] = 10.0
    assert tables.describe(changed)["setting"] != tables.describe(today)["setting"]
