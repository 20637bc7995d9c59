"""Recipes: named, readable settings of a method for a kind of machine, one YAML file each in ``recipes/``.

``recipes/<method>/<name>.yaml`` holds the notebook parameters it sets: ``MODEL`` (the method's config fields,
``python -m utils.train METHOD --show`` lists them) and ``TRAIN`` (:class:`~utils.core.engine.TrainConfig`
fields), and for some notebooks more (``BACKBONES``). Every recipe's first comment lines say what it is for and
where it was measured. The names:

- ``cpu``: the measured 30-minute recipe for a CPU (and Apple's MPS), what ``auto`` picks without CUDA;
- ``gpu``: the papers' settings (the seed reports'), what ``auto`` picks with CUDA; not measured here;
- ``quick``: tiny settings for the bundled synthetic sample (``FER_QUICK=1``, or no dataset in ``data/``).

A notebook starts its parameters cell with ``RECIPE = "auto"`` (a name, or a recipe file's path) and lets
``MODEL = {}`` and ``TRAIN = {}`` override single values; :func:`settings` merges them and prints what it used.
The same files work with papermill (``papermill NB OUT -f recipes/byol/cpu.yaml``) and from a shell
(``python -m utils.train byol --recipe cpu``).

>>> r = load_recipe("byol", "cpu")                              # doctest: +SKIP
>>> r.values["TRAIN"]["max_minutes"]                            # doctest: +SKIP
30
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from utils.core.runtime import REPO_ROOT

RECIPE_DIR = REPO_ROOT / "recipes"
NAMES = ("cpu", "gpu", "quick")


@dataclass
class Recipe:
    """A recipe read from its file.

    Attributes:
        method: the method it is for.
        name: ``cpu``, ``gpu``, ``quick``, or the file's stem for a recipe given by path.
        path: its file.
        values: the notebook parameters it sets (``MODEL``, ``TRAIN``, ...).
        about: its first comment lines (what it is for, where it was measured).
    """

    method: str
    name: str
    path: Path
    values: dict = field(default_factory=dict)
    about: str = ""


def auto_name(device=None, quick: bool = False) -> str:
    """``quick`` on the sample, ``gpu`` with CUDA, ``cpu`` otherwise (a CPU, or Apple's MPS)."""
    if quick:
        return "quick"
    return "gpu" if device is not None and getattr(device, "type", str(device)) == "cuda" else "cpu"


def recipe_path(method: str, name: str) -> Path:
    """The file of recipe ``name`` of ``method`` (or ``name`` itself when it is a path to a YAML file)."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return Path(name)
    return RECIPE_DIR / method / f"{name}.yaml"


def load_recipe(method: str, name: str = "auto", device=None, quick: bool = False) -> Recipe:
    """Read recipe ``name`` (``auto``: :func:`auto_name`) of ``method``; a clear error if it is not there or
    is not a recipe."""
    import yaml

    if name == "auto" and not (RECIPE_DIR / method).is_dir():  # a method with no settings to choose (the floors)
        return Recipe(method, "none", RECIPE_DIR / method, {"MODEL": {}, "TRAIN": {}}, "no recipe: its defaults")
    if name == "auto":
        name = auto_name(device, quick)
    path = recipe_path(method, name)
    if not path.is_file():
        have = sorted(p.stem for p in (RECIPE_DIR / method).glob("*.yaml"))
        raise FileNotFoundError(f"{_shown(path)}: no such recipe for {method} (it has {have}, or give a file's path)")
    text = path.read_text()
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict) or not all(isinstance(k, str) and k.isupper() for k in values):
        raise ValueError(f"{path}: a recipe maps notebook parameters (MODEL, TRAIN, ...) to values")
    for key in ("MODEL", "TRAIN"):
        if not isinstance(values.setdefault(key, {}) or {}, dict):
            raise ValueError(f"{path}: {key} must map settings to values, not {values[key]!r}")
        values[key] = values[key] or {}
    about = "\n".join(line.lstrip("# ").rstrip() for line in text.splitlines() if line.startswith("#"))
    return Recipe(method, path.stem, path, values, about)


def split_fields(cls, values: dict) -> tuple[dict, dict]:
    """``values`` split into those that are fields of the dataclass ``cls`` and the others."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}, {k: v for k, v in values.items() if k not in names}


IMAGENET_SUFFIX = "_imagenet"  # a backbone name with it: torchvision's ImageNet weights (pretrained=True)


def backbones(recipe: Recipe, names=None) -> dict[str, dict]:
    """``{name: its settings}`` of the backbones to train: ``names`` (a list, or a dict of names to their own
    settings) or the recipe's ``BACKBONES``; a listed name the recipe has keeps the recipe's settings for it."""
    listed = recipe.values.get("BACKBONES") or {}
    if isinstance(listed, list):
        listed = dict.fromkeys(listed, {})
    if names is None:
        return {name: dict(settings or {}) for name, settings in listed.items()}
    if isinstance(names, str):
        names = [names]
    chosen = names if isinstance(names, dict) else {name: listed.get(name) or {} for name in names}
    return {name: dict(settings or {}) for name, settings in chosen.items()}


def backbone_model(name: str, settings: dict | None = None) -> dict:
    """The ``MODEL`` values a backbone entry stands for: ``resnet50_imagenet`` is ResNet-50 from ImageNet."""
    base = name[: -len(IMAGENET_SUFFIX)] if name.endswith(IMAGENET_SUFFIX) else name
    return {"backbone": base, **({"pretrained": True} if base != name else {}), **(settings or {})}


def recipe_model(recipe: Recipe, backbone: str | None = None) -> dict:
    """The recipe's ``MODEL`` with its backbone's own settings (``BACKBONES``): those of ``backbone``, or of the
    recipe's first backbone when none is asked for."""
    entries = backbones(recipe)
    if backbone is None and entries:
        backbone = next(iter(entries))
    if backbone is None:
        return dict(recipe.values["MODEL"])
    return {**recipe.values["MODEL"], **backbone_model(backbone, entries.get(backbone))}


def method_settings(
    method: str, recipe: Recipe, model: dict | None = None, train: dict | None = None, strict: bool = True
):
    """``(config, train_config, overrides)`` of ``method`` from ``recipe`` with ``model`` / ``train`` on top.

    With ``strict`` a recipe setting the method does not have is an error; without, it is left out (another
    method's recipe: notebook 06's plain classifier takes RAN's, less RAN's own settings).

    Settings of ``model`` that are not fields of the method's config are left out (a notebook that runs BYOL
    and FRA passes FRA's ``scale`` to both; BYOL has none), and reported in ``overrides["ignored"]``.
    ``overrides`` holds each value taken from ``model`` / ``train`` that differs from the recipe's:
    ``{"model": {field: (recipe's, yours)}, "train": {...}, "ignored": [...]}``.
    """
    from utils import methods
    from utils.core.engine import TrainConfig

    cls = methods.get(method)
    mine, ignored = split_fields(cls.Config, dict(model or {}))
    base_model, unknown = split_fields(cls.Config, recipe_model(recipe, mine.get("backbone")))
    if unknown and strict:
        raise ValueError(f"{_shown(recipe.path)}: {method} has no setting(s) {sorted(unknown)}")
    model_values = {**base_model, **mine}
    train_values = {**cls.train_defaults, **recipe.values["TRAIN"], **(train or {})}
    config = methods.config_from_dict(cls.Config, model_values)
    train_config = methods.config_from_dict(TrainConfig, train_values)
    base_train = {**cls.train_defaults, **recipe.values["TRAIN"]}
    overrides = {
        "model": {k: (base_model.get(k, _default(cls.Config, k)), v) for k, v in mine.items()},
        "train": {k: (base_train.get(k, _default(TrainConfig, k)), v) for k, v in (train or {}).items()},
        "ignored": sorted({*ignored, *unknown}),
    }
    for part in ("model", "train"):
        overrides[part] = {k: pair for k, pair in overrides[part].items() if pair[0] != pair[1]}
    return config, train_config, overrides


def _default(cls, name: str):
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None:
        return None
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def describe(recipe: Recipe, overrides: dict | None = None) -> str:
    """What a notebook prints about the settings it runs with: the recipe, its file, what it is for, and each
    value the notebook's own cell (or papermill) changed."""
    lines = [f"recipe {recipe.name!r} for {recipe.method} ({_shown(recipe.path)})"]
    if recipe.about:
        lines += [f"  {line}" for line in recipe.about.splitlines()[:2]]
    for part in ("model", "train"):
        for key, (was, now) in (overrides or {}).get(part, {}).items():
            lines.append(f"  your {part.upper()}: {key} {was!r} -> {now!r}")
    ignored = (overrides or {}).get("ignored")
    if ignored:
        lines.append(f"  not settings of {recipe.method}, left out: {', '.join(ignored)}")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
