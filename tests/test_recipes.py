"""Recipes: every file in recipes/ builds its method's settings; ``auto`` picks by machine; a notebook's own
values are laid over a recipe and reported; the command line and the notebooks read the same files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from utils import methods
from utils.core import recipes
from utils.core.engine import TrainConfig

METHOD_RECIPES = sorted(
    (p.parent.name, p.stem) for p in recipes.RECIPE_DIR.glob("*/*.yaml") if p.parent.name in methods.names()
)


def test_every_method_has_the_three_recipes():
    have = {(m, n) for m, n in METHOD_RECIPES}
    for method in ("supervised", "moco_v2", "hncl", "byol", "fra", "ran"):
        assert {(method, n) for n in recipes.NAMES} <= have, method


@pytest.mark.parametrize(("method", "name"), METHOD_RECIPES, ids=lambda x: str(x))
def test_a_recipe_builds_its_methods_settings(method, name):
    recipe = recipes.load_recipe(method, name)
    assert recipe.about, f"{recipe.path}: say in its first comment lines what it is for"
    config, train, overrides = recipes.method_settings(method, recipe)
    assert isinstance(config, methods.get(method).Config) and isinstance(train, TrainConfig)
    assert overrides == {"model": {}, "train": {}, "ignored": []}
    for key, value in recipes.recipe_model(recipe).items():
        assert getattr(config, key) == value or key == "augment", (key, value)
    for key, value in recipe.values["TRAIN"].items():
        assert getattr(train, key) == value


def test_auto_picks_by_machine_and_quick_mode():
    assert recipes.auto_name(torch.device("cpu")) == "cpu"
    assert recipes.auto_name(torch.device("mps")) == "cpu"
    assert recipes.auto_name(torch.device("cuda")) == "gpu"
    assert recipes.auto_name(torch.device("cuda"), quick=True) == "quick"
    assert recipes.load_recipe("byol", "auto", torch.device("cpu")).name == "cpu"


def test_a_notebooks_own_values_are_laid_over_the_recipe_and_reported():
    recipe = recipes.load_recipe("fra", "cpu")
    config, train, overrides = recipes.method_settings("fra", recipe, {"scale": 1.0}, {"max_minutes": 60})
    assert config.scale == 1.0 and train.max_minutes == 60 and config.width == 32
    assert overrides["model"] == {"scale": (0.1, 1.0)} and overrides["train"] == {"max_minutes": (30, 60)}
    text = recipes.describe(recipe, overrides)
    assert "recipes/fra/cpu.yaml" in text and "scale 0.1 -> 1.0" in text and "max_minutes 30 -> 60" in text
    # BYOL has no scale: a notebook running both passes FRA's setting to BYOL too, which leaves it out
    config, _, overrides = recipes.method_settings("byol", recipes.load_recipe("byol", "cpu"), {"scale": 1.0})
    assert overrides["ignored"] == ["scale"] and not hasattr(config, "scale")


def test_another_methods_recipe_gives_only_the_settings_a_method_has():
    recipe = recipes.load_recipe("ran", "cpu")
    with pytest.raises(ValueError, match="recipes/ran/cpu.yaml: supervised has no setting"):
        recipes.method_settings("supervised", recipe)
    plain, train, _ = recipes.method_settings("supervised", recipe, strict=False)
    ran, ran_train, _ = recipes.method_settings("ran", recipe)
    shared = {f.name for f in dataclasses.fields(plain)}
    assert all(getattr(plain, k) == getattr(ran, k) for k in shared) and train == ran_train


def test_backbones_of_a_recipe():
    cpu, gpu = recipes.load_recipe("supervised", "cpu"), recipes.load_recipe("supervised", "gpu")
    assert recipes.backbones(cpu) == {"resnet18": {"width": 32}}
    assert recipes.backbones(cpu, ["resnet18", "vgg19_bn"]) == {"resnet18": {"width": 32}, "vgg19_bn": {}}
    assert recipes.backbone_model("resnet50_imagenet") == {"backbone": "resnet50", "pretrained": True}
    assert "resnet50_imagenet" in recipes.backbones(gpu)
    config, _, _ = recipes.method_settings("supervised", cpu, {"backbone": "vgg19_bn"})
    assert config.backbone == "vgg19_bn" and config.width == 64  # another backbone keeps torchvision's width


def test_a_missing_or_malformed_recipe_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"recipes/byol/laptop.yaml: no such recipe for byol \(it has \['cpu'"):
        recipes.load_recipe("byol", "laptop")
    bad = tmp_path / "bad.yaml"
    bad.write_text("width: 32\n")
    with pytest.raises(ValueError, match="maps notebook parameters"):
        recipes.load_recipe("byol", str(bad))
    bad.write_text("MODEL: 32\n")
    with pytest.raises(ValueError, match="MODEL must map settings"):
        recipes.load_recipe("byol", str(bad))
    mine = tmp_path / "mine.yaml"
    mine.write_text("# my recipe\nMODEL: {width: 16}\n")
    config, _, _ = recipes.method_settings("byol", recipes.load_recipe("byol", str(mine)))
    assert config.width == 16


def test_the_command_line_reads_the_same_recipe(capsys):
    from utils.train import main

    assert main(["byol", "--recipe", "cpu", "--set", "width=16", "--show"]) == 0
    captured = capsys.readouterr()
    shown = json.loads(captured.out)
    assert shown["config"]["width"] == 16 and shown["config"]["symmetric"] is False
    assert shown["train"]["max_minutes"] == 30
    assert "recipe 'cpu' for byol" in captured.err and "width 32 -> 16" in captured.err


def test_begin_reads_the_sample_and_fills_the_notebooks_parameters_from_the_quick_recipe(monkeypatch, tmp_path):
    from utils.core.session import begin

    monkeypatch.setenv("FER_QUICK", "1")
    monkeypatch.chdir(tmp_path)
    namespace = {
        "RECIPE": "cpu",
        "DATASET": "fer2013",
        "DATA_PATH": "data/fer2013",
        "MODEL": {"queue_size": 512},
        "TRAIN": {},
        "FINETUNE_TRAIN": None,
        "SEED": 1,
    }
    nb = begin(namespace, "moco_v2", prepare=False)
    assert nb.quick and nb.recipes["moco_v2"].name == "quick"  # quick mode wins over the cell's recipe
    assert nb.configs["moco_v2"].stem_stride == 4 and nb.configs["moco_v2"].queue_size == 512
    assert nb.train["moco_v2"].seed == 1 and nb.train["moco_v2"].epochs == 3
    assert namespace["FINETUNE_TRAIN"] == {"epochs": 6, "batch_size": 32}  # filled from the recipe
    assert nb.dataset.name == "sample"


def test_a_users_recipe_file_naming_a_setting_the_method_lacks_is_an_error(tmp_path, capsys):
    from utils.train import main

    mine = tmp_path / "my_recipes" / "byol.yaml"
    mine.parent.mkdir()
    mine.write_text("MODEL:\n  widht: 32\n")  # a typo must not be dropped quietly
    assert main(["byol", "--recipe", str(mine), "--show"]) == 2
    assert "widht" in capsys.readouterr().err
    ran = str(recipes.RECIPE_DIR / "ran" / "cpu.yaml")
    assert main(["supervised", "--recipe", ran, "--show"]) == 0  # another method's recipe: the settings it shares


def test_begin_adds_the_unlabelled_folders_to_what_pretraining_reads(monkeypatch, tmp_path):
    import numpy as np
    from PIL import Image

    from utils.core.session import begin

    folder = tmp_path / "my_faces"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (60, 60), dtype=np.uint8)).save(folder / f"{i}.png")
    monkeypatch.setenv("FER_QUICK", "1")
    namespace = {"RECIPE": "auto", "DATASET": "fer2013", "DATA_PATH": "data/fer2013", "MODEL": {}, "TRAIN": {},
                 "UNLABELLED": [str(folder)], "SEED": 0}  # fmt: skip
    nb = begin(namespace, "hncl")
    splits = nb.prepared.splits
    assert (splits == "unlabelled").sum() == 3 and (nb.prepared.labels[splits == "unlabelled"] == -1).all()
    assert (splits == "train").sum() == (nb.dataset.table["split"] == "train").sum()  # the labelled set unchanged
