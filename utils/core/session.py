"""What every notebook does after its parameters cell, in one call: set up, read the data, pick the recipe.

>>> nb = begin(globals(), methods=["byol", "fra"])                 # doctest: +SKIP
>>> run = runs.run(nb.configs["byol"], nb.prepared, nb.train["byol"])  # doctest: +SKIP

:func:`begin` makes the repository the working folder (and on Colab installs what Colab lacks), seeds
everything, picks the device and prints the versions; reads ``DATASET`` from ``DATA_PATH`` (or, in quick
mode or when nothing is there, the bundled synthetic sample, under a banner); picks each method's recipe
(``RECIPE``, see :mod:`utils.core.recipes`), lays the cell's ``MODEL`` and ``TRAIN`` over it and prints every
value that differs from the recipe; and prepares the faces (detection, alignment, landmarks, heatmaps: cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from utils.core.recipes import Recipe, auto_name, describe, load_recipe, method_settings
from utils.core.runtime import Session, banner, enter_repository, setup


@dataclass
class Notebook:
    """What :func:`begin` found and chose.

    Attributes:
        session: paths, device, seed (:class:`~utils.core.runtime.Session`).
        quick: True on the bundled sample (quick mode, or no dataset in ``DATA_PATH``).
        recipes: ``{method: Recipe}``.
        configs: ``{method: its config}``, the recipe's with the cell's ``MODEL`` on top.
        train: ``{method: TrainConfig}``, the recipe's with the cell's ``TRAIN`` and ``SEED`` on top.
        dataset: the dataset as read (:class:`~utils.data.FaceDataset`), with a val split.
        prepared: its faces, prepared (:class:`~utils.data.faces.PreparedFaces`); None with ``prepare=False``.
    """

    session: Session
    quick: bool
    recipes: dict[str, Recipe] = field(default_factory=dict)
    configs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    dataset: object = None
    prepared: object = None
    namespace: dict = field(default_factory=dict, repr=False)

    @property
    def device(self):
        return self.session.device

    def read(self, **options):
        """The same dataset read again with other reader options (FERPlus: another label ``mode``), split and
        prepared as :func:`begin` did (the faces come from the same cache)."""
        from utils.data import ensure_val_split, load_dataset_or_sample
        from utils.data.faces import prepare as prepare_faces
        from utils.data.faces import remembered_config

        dataset, _ = load_dataset_or_sample(self.namespace["DATASET"], self.namespace["DATA_PATH"], **options)
        dataset = ensure_val_split(dataset, seed=self.session.seed)
        name = "fer2013" if dataset.name == "ferplus" else dataset.name
        return prepare_faces(dataset, remembered_config(name), progress=False)


def begin(
    namespace: dict,
    methods=(),
    *,
    recipe_of: dict[str, str] | None = None,
    notebook_recipe: str | None = None,
    read: bool = True,
    prepare: bool = True,
    **options,
) -> Notebook:
    """Set up a notebook from its parameters (``namespace`` is its ``globals()``).

    Reads ``SEED``, ``DATASET``, ``DATA_PATH``, ``RECIPE``, ``MODEL``, ``TRAIN`` and ``UNLABELLED`` (folders of faces
    without labels that pretraining also reads, :func:`utils.data.folder.read_faces`) from ``namespace``; a
    recipe's other values (``BACKBONES``, ``FINETUNE_TRAIN``, ...) fill the notebook's parameters left at None.

    Args:
        methods: the methods whose recipes to read (``["byol", "fra"]``).
        recipe_of: a method whose settings come from another method's recipe (notebook 06: the plain
            classifier takes RAN's recipe, ``{"supervised": "ran"}``).
        notebook_recipe: a recipe folder of notebook-level values only (``"label_efficiency"``, notebook 08),
            for a notebook that trains no method of its own.
        read: read the dataset (False: notebooks that only read run records).
        prepare: prepare the faces (detection, alignment, landmarks, heatmaps; cached).
        options: passed to the dataset reader (FERPlus: ``mode="majority"``).
    """
    from utils.data import ensure_val_split, load_dataset_or_sample
    from utils.data.faces import prepare as prepare_faces
    from utils.data.faces import remembered_config

    enter_repository()
    seed = int(namespace.get("SEED", 0))
    session = setup(seed=seed)
    nb = Notebook(session, session.quick, namespace=namespace)
    if read:
        dataset, on_sample = load_dataset_or_sample(namespace["DATASET"], namespace["DATA_PATH"], **options)
        nb.quick = session.quick or on_sample
        nb.dataset = ensure_val_split(dataset, seed=seed)
    asked = str(namespace.get("RECIPE") or "auto")
    name = auto_name(session.device, nb.quick) if asked == "auto" or nb.quick else asked
    if nb.quick and asked not in ("auto", "quick"):
        banner(f"quick mode: recipe 'quick' instead of {asked!r} (tiny settings on the synthetic sample)")
    model, train = dict(namespace.get("MODEL") or {}), {**(namespace.get("TRAIN") or {}), "seed": seed}
    for method in [methods] if isinstance(methods, str) else list(methods):
        source = (recipe_of or {}).get(method, method)
        recipe = load_recipe(source, name)
        nb.recipes[method] = recipe
        nb.configs[method], nb.train[method], overrides = method_settings(
            method, recipe, model, train, strict=source == method
        )
        print(describe(recipe, overrides) + ("" if source == method else f"  (used for {method})"))
    if notebook_recipe is not None:
        nb.recipes[notebook_recipe] = recipe = load_recipe(notebook_recipe, name)
        print(describe(recipe))
    if nb.recipes:
        fill_from_recipe(namespace, next(iter(nb.recipes.values())))
    if read and prepare:
        name = "fer2013" if nb.dataset.name == "ferplus" else nb.dataset.name  # FERPlus: FER2013's faces
        nb.prepared = prepare_faces(nb.dataset, remembered_config(name))
        unlabelled = list(namespace.get("UNLABELLED") or [])
        if unlabelled:  # faces without labels: the pretraining reads them too, evaluation does not
            from utils.data import load_dataset
            from utils.data.faces import merge

            extra = [prepare_faces(load_dataset("faces", path), remembered_config(name)) for path in unlabelled]
            nb.prepared = merge(nb.prepared, *extra)
        print(nb.prepared)
    return nb


def fill_from_recipe(namespace: dict, recipe: Recipe) -> dict:
    """Set each of the recipe's notebook-level values (not ``MODEL`` / ``TRAIN``) in ``namespace`` where the
    notebook's parameter is None; print the ones the notebook set itself and that differ. Returns what was set."""
    filled = {}
    for key, value in recipe.values.items():
        if key in ("MODEL", "TRAIN"):
            continue
        mine = namespace.get(key)
        if mine is None:
            namespace[key] = filled[key] = value
        elif mine != value:
            print(f"  your {key}: {value!r} -> {mine!r}")
    return filled
