"""``python -m utils.train``: a method's settings from the command line, a run on the sample, clear errors."""

from __future__ import annotations

import json

import pytest

from utils import methods
from utils.core import runs
from utils.core.engine import TrainConfig
from utils.train import main


def test_show_lists_the_settings_with_the_changes(capsys):
    assert main(["byol", "--set", "base_momentum=0.99", "projector_dim=64", "--train", "max_minutes=30", "--show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"]["base_momentum"] == 0.99 and shown["config"]["projector_dim"] == 64
    assert shown["train"]["max_minutes"] == 30 and shown["train"]["lr"] == 0.06  # BYOL's own default


def test_bad_settings_are_refused(capsys):
    assert main(["byol", "--set", "momentum=0.99", "--show"]) == 2
    assert "has no field(s) ['momentum']" in capsys.readouterr().err
    assert main(["simclr", "--show"]) == 2
    assert main(["byol", "--set", "base_momentum", "--show"]) == 2


def test_a_dataset_path_that_does_not_exist_is_an_error(tmp_path, monkeypatch, capsys):
    """The notebooks fall back to the bundled sample when no dataset is there (the README's first command); a
    path typed on the command line must exist (unless FER_QUICK asks for the sample)."""
    monkeypatch.delenv("FER_QUICK", raising=False)
    missing = tmp_path / "fer2013"
    assert main(["supervised", "--dataset", "fer2013", str(missing)]) == 2
    assert f"{missing}: no such dataset" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
    assert main(["supervised", "--init", str(tmp_path / "run")]) == 2
    assert "no backbone.pt here" in capsys.readouterr().err


def test_a_run_on_the_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setenv("FER_QUICK", "1")
    argv = ["supervised", "--set", "stem_stride=4", "tta=null", "--train", "epochs=1", "batch_size=64", "amp=false"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "supervised: val accuracy" in out
    assert len(runs.load_records(tmp_path)) == 1


def test_settings_read_json_and_python_literals():
    from utils.methods import parse_settings

    got = parse_settings(["lr=0.1", "space=centre", "scale=[0.2, 1]", "tta=None", "amp=False", "flip=true"])
    assert got == {"lr": 0.1, "space": "centre", "scale": [0.2, 1], "tta": None, "amp": False, "flip": True}
    with pytest.raises(ValueError, match="field=value"):
        parse_settings(["lr"])


@pytest.mark.parametrize("name", sorted(methods.names()))
def test_a_methods_training_defaults_are_typed_as_a_notebooks_values(name):
    """A run's folder is a digest of its settings as JSON, where 1 and 1.0 differ: a method's defaults must
    have the types of :class:`TrainConfig`'s fields, or ``python -m utils.train`` names a run differently from
    the notebook that sets the same values (and neither finds the other's run)."""
    defaults = TrainConfig()
    for key, value in methods.get(name).train_defaults.items():
        expected = type(getattr(defaults, key))
        assert type(value) is expected, f"{name}.train_defaults[{key!r}] = {value!r}: expected a {expected.__name__}"
