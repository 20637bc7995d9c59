"""Runs: train any method, record it, find it again. The one place where run handling lives.

A run lives in ``checkpoints/<name>-<hash>/`` where the hash is that of its full configuration (the method's
config, the training config, the data and, for fine-tuning, the starting weights by content): changing a
hyperparameter starts a new run instead of overwriting or wrongly reusing an old one, and rerunning a
notebook with the same parameters finds the finished run and loads it. :func:`run` does, for every method::

    hash -> load if finished -> resume if interrupted -> fit -> evaluate by kind -> write metrics.json

and :func:`load_run` rebuilds a finished run's method, with its weights, from the folder alone.

Files of a finished run: ``metrics.json`` (the record; written last, atomically: it marks the run finished),
``model.pt`` (the method's state: every network, queue and bank), ``backbone.pt`` (the encoder alone, what
fine-tuning starts from), ``log.csv`` (the engine's log). The engine's ``last.pt`` (resume state) and
``best.pt`` live only while a run trains: once ``metrics.json`` is written they are deleted, as ``model.pt``
holds the selected weights (they were 60 % of a finished run's disk).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils import methods
from utils.core import distributed as dist_utils
from utils.core.cache import settings_key
from utils.core.engine import FitResult, TrainConfig, amp_dtype, config_dict, fit, load_checkpoint
from utils.core.loader import channel_count, face_tensors
from utils.core.runtime import CHECKPOINT_DIR, machine, pick_device, provenance, seed_everything, versions
from utils.evaluation.metrics import evaluate_splits, predict
from utils.evaluation.probes import extract_features, knn_scores, representation_metrics
from utils.methods import InputSpec, Method, config_from_dict
from utils.methods.models import count_parameters

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"
BACKBONE_FILE = "backbone.pt"


@dataclass
class Run:
    """A trained (or loaded) run: its folder, the method with its best weights, and its record."""

    run_dir: Path
    method: Method
    record: dict
    loaded: bool
    fit: FitResult | None = None

    @property
    def history(self) -> list[dict]:
        return self.record.get("history", [])

    @property
    def backbone_path(self) -> Path:
        return self.run_dir / BACKBONE_FILE

    def summary(self) -> str:
        """One line on how the run trained: epochs (of the schedule fitted to a time budget), minutes,
        images/s, the epoch kept, and whether it was loaded rather than trained."""
        r = self.record
        if not r.get("epochs_run"):
            return f"{self.run_dir.name}: not trained (evaluated as built)"
        fitted = r.get("schedule", {}).get("epochs")
        return (
            f"{self.run_dir.name}: {r['epochs_run']} epochs"
            + (f" ({fitted} fitted)" if fitted else "")
            + f", {r.get('train_seconds', 0) / 60:.1f} min, {r.get('images_per_second', 0):.0f} images/s, "
            f"best epoch {r.get('best_epoch')}" + (" (loaded: trained before)" if self.loaded else "")
        )

    @property
    def model(self) -> torch.nn.Module:
        """The classifier of a classifier run (images to logits)."""
        return self.method.classifier()

    def evaluate(self, prepared, device=None) -> dict:
        """The run's evaluations recomputed on ``prepared`` (what :func:`run` recorded, for the same data)."""
        device = _device(device)
        self.method.to(device)
        amp = amp_dtype(device, self.record.get("config", {}).get("train", {}).get("amp", True))
        return evaluate(self.method, prepared, device, amp, self.record.get("protocol", "supervised"))


# ------------------------------------------------------------------------------------------------ run


def run(
    config,
    prepared,
    train: TrainConfig | None = None,
    *,
    name: str | None = None,
    init: str | Path | None = None,
    label: str | None = None,
    protocol: str | None = None,
    checkpoint_dir=None,
    device=None,
    force: bool = False,
    progress: bool = True,
    steps_per_epoch: int | None = None,
    knn_monitor_size: int = 5000,
) -> Run:
    """Train the method that takes ``config`` on ``prepared``'s train split, evaluate it, record it.

    The validation split selects the epoch kept (classifiers by accuracy, representations by a kNN monitor
    on ``knn_monitor_size`` training images), never test. Classifiers are then evaluated by their
    predictions on val and test (with and without the config's test-time augmentation); representations
    by kNN and a linear probe on frozen features. Labels are used by nothing else in self-supervised runs.

    Args:
        config: a method's config dataclass (``MoCoConfig(...)``, ``SupervisedConfig(...)``, ...).
        train: optimisation settings; default: the method's ``train_defaults``.
        name: the run folder's prefix (default ``<method>-<dataset>``).
        init: a ``backbone.pt`` to start the encoder from (fine-tuning); part of the configuration by content.
        label, protocol: how the record names the method and the evaluation (a fine-tuned MoCo v2 backbone
            is ``label="moco_v2", protocol="finetune"``).
        force: train again even if a finished run exists.
        steps_per_epoch: cap on steps per epoch: a smoke test that the method runs, not a result. It is part
            of the run's identity and its record (``steps_per_epoch_cap``); tables mark such runs.

    Under ``torchrun`` every process trains its share of each batch; the first one evaluates and writes
    the run, the others wait for it.
    """
    cls = methods.for_config(config)
    tc = train or TrainConfig(**cls.train_defaults)
    device = _device(device)
    if not (prepared.splits == "val").any():
        raise ValueError(
            f"{prepared.name} has no val split to select the epoch on; carve one from train with "
            "utils.data.ensure_val_split before preparing (never select on test)"
        )
    label = label or cls.name
    protocol = protocol or ("supervised" if cls.kind == "classifier" else "pretrain" if cls.trains else "floor")
    setup = _identity(cls, config, tc, prepared, label, protocol, steps_per_epoch, init)
    folder = run_dir(name or f"{label}-{prepared.name}", setup, checkpoint_dir)
    if not force and finished(folder) is None:  # recorded under another name by an older version of the suite?
        folder = find_finished(setup, folder.parent) or folder
    dist_utils.init_from_env(device.type)
    main = dist_utils.is_main()

    seed_everything(tc.seed, tc.deterministic)  # before the method: initial weights depend on the seed only
    # pretraining also reads the faces without labels (utils.data.folder); classifiers only the labelled ones
    splits = ("train",) if cls.kind == "classifier" or not cls.trains else ("train", "unlabelled")
    train_data = face_tensors(prepared, splits, config.channels, device)
    spec = InputSpec(
        in_channels=channel_count(config.channels),
        image_channels=train_data.image_channels,
        classes=tuple(prepared.classes),
        input_size=int(prepared.images.shape[1]),
        train_size=len(train_data),
    )
    method = cls(config, spec).to(device)
    record = None if force else finished(folder)
    if record is not None:
        method.load_state_dict(load_checkpoint(folder / MODEL_FILE, map_location=device))
        method.eval()
        if progress and main:
            print(f"loaded finished run {folder.name} (force=True retrains)")
        return Run(folder, method, record, loaded=True)
    if force and main:
        for stale in ("last.pt", "best.pt", METRICS_FILE):
            (folder / stale).unlink(missing_ok=True)
    if init is not None:
        method.load_encoder(load_checkpoint(Path(init), map_location=device), source=str(init))

    facts = method.prepare(train_data, prepared, tc)
    amp = amp_dtype(device, tc.amp)
    tic = time.perf_counter()
    result = None
    if cls.trains:
        method.check_sizes(len(train_data), tc.batch_size * dist_utils.world_size())
        validate = _validator(method, prepared, train_data, config.channels, device, amp, tc.seed, knn_monitor_size)
        result = fit(method, train_data, tc, folder, validate, progress=progress, steps_per_epoch=steps_per_epoch)
        method.to(memory_format=torch.contiguous_format)  # evaluate as load_run will: the same kernels
    method.eval()
    record = {
        "run": folder.name,
        "method": label,
        "protocol": protocol,
        "variant": method.variant(),
        "init": None if init is None else str(init),
        **({"init_run": init_summary(init)} if init is not None else {}),
        "config": setup,
        "spec": dataclasses.asdict(spec),
        "dataset": setup["data"],
        "seed": tc.seed if cls.seeded else None,
        **_fit_summary(result, tc.batch_size * dist_utils.world_size()),
        "parameters": count_parameters(method.encoder) if hasattr(method, "encoder") else 0,
        "device": str(device),
        "amp": str(amp),
        **({"steps_per_epoch_cap": int(steps_per_epoch)} if steps_per_epoch else {}),
        **facts,
    }
    if main:
        record["evaluations"] = evaluate(method, prepared, device, amp, protocol)
        record["wall_seconds"] = round(time.perf_counter() - tic, 1)
        _save_run(folder, method, record)
    dist_utils.barrier()
    return Run(folder, method, finished(folder) or record, loaded=False, fit=result)


def _identity(cls, config, tc: TrainConfig, prepared, label: str, protocol: str, steps_per_epoch, init) -> dict:
    """What names a run (its folder's hash and the record's ``config``): the method, its settings, the training
    settings that change the result, the data, and what differs from a plain run of the method."""
    setup = {
        "method": cls.name,
        **config_dict(model=config, train=_train_identity(cls, tc), data=data_record(prepared)),
    }
    if label != cls.name or protocol not in ("supervised", "pretrain", "floor"):
        setup.update(label=label, protocol=protocol)
    if steps_per_epoch:  # a capped run (a smoke test) is not the run the same settings would give uncapped
        setup["steps_per_epoch"] = int(steps_per_epoch)
    if init is not None:  # the starting weights are part of the configuration, by content
        setup["init_sha1"] = hashlib.sha1(Path(init).read_bytes()).hexdigest()
    return setup


def _save_run(folder: Path, method: Method, record: dict) -> None:
    """Write a finished run: its weights, its backbone's, its record (last: a run with a record is finished),
    and drop the resume state."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(method.state_dict(), folder / MODEL_FILE)
    if hasattr(method, "encoder"):
        torch.save(method.encoder_state(), folder / BACKBONE_FILE)
    write_record(folder, record)
    for transient in ("last.pt", "best.pt"):  # resume state and a copy of model.pt: not needed any more
        (folder / transient).unlink(missing_ok=True)


def init_summary(init) -> dict | None:
    """What a run started from, for its record: the starting run's folder, method and training time (tables count
    that time in the run's budget), read from the ``metrics.json`` beside the ``backbone.pt``; None if there is
    none (weights from elsewhere)."""
    record = finished(Path(init).parent)
    if record is None:
        return None
    return {
        "run": Path(init).parent.name,
        "method": record.get("method"),
        "train_seconds": record.get("train_seconds", 0.0) + ((record.get("init_run") or {}).get("train_seconds", 0.0)),
    }


def init_path(init) -> Path:
    """A run folder or a ``backbone.pt`` as the ``backbone.pt`` to start from; a clear error if there is none."""
    path = Path(init)
    if path.is_dir():
        path = path / BACKBONE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{init}: no {BACKBONE_FILE} here (give a finished run's folder or its {BACKBONE_FILE})"
        )
    return path


def finetune_settings(overrides: dict | None = None, seed: int = 0) -> TrainConfig:
    """The fine-tuning protocol's training settings: 30 epochs at lr 0.02 with one warm-up epoch,
    class-weighted cross-entropy, early stopping after 5 epochs without a better val score; ``overrides``
    (a recipe's ``FINETUNE_TRAIN``, e.g. ``{"max_minutes": 10}``) on top."""
    values = {"epochs": 30, "lr": 0.02, "balance": "weights", "patience": 5, "warmup_epochs": 1, "seed": seed}
    return TrainConfig(**{**values, **(overrides or {})})


def finetune(pretrained: Run, prepared, train: TrainConfig | None = None, tta: str | None = "flip", **kwargs) -> Run:
    """Fine-tune a run's backbone with a new linear head: every weight trains (class-weighted cross-entropy
    and early stopping on val by default). The record keeps the pretraining method's name, protocol
    ``finetune``."""
    from utils.methods.supervised import SupervisedConfig

    encoder = pretrained.record["config"]["model"]
    shared = {f.name: encoder[f.name] for f in dataclasses.fields(methods.EncoderConfig) if f.name in encoder}
    train = train or finetune_settings()
    return run(
        SupervisedConfig(**shared, tta=tta),
        prepared,
        train,
        name=f"finetune-{pretrained.run_dir.name}",
        init=pretrained.backbone_path,
        label=pretrained.record["method"],
        protocol="finetune",
        **kwargs,
    )


def load_run(folder, device=None) -> Run:
    """A finished run rebuilt from its folder alone: the method (from the registry, its recorded config and
    input description) with the weights of ``model.pt``, in eval mode, and its record."""
    folder = Path(folder)
    record = finished(folder)
    if record is None:
        raise FileNotFoundError(f"{folder}: no finished run here (no {METRICS_FILE} with status 'finished')")
    if "spec" not in record or "method" not in record.get("config", {}):
        raise ValueError(f"{folder / METRICS_FILE}: written by an older version of the suite; rerun it to load it")
    cls = methods.get(record["config"]["method"])
    config = config_from_dict(cls.Config, record["config"]["model"])
    spec = config_from_dict(InputSpec, record["spec"])
    device = _device(device)
    method = cls(config, spec).to(device)
    method.load_state_dict(load_checkpoint(folder / MODEL_FILE, map_location=device))
    method.eval()
    return Run(folder, method, record, loaded=True)


# ----------------------------------------------------------------------------------------- evaluation


def evaluate(method: Method, prepared, device, amp, protocol: str) -> dict:
    """A method's evaluations on every split besides train, by kind: a classifier's predictions under
    ``protocol`` (and ``protocol+<tta>``), a representation's kNN and linear probe."""
    channels = method.config.channels
    if method.kind == "classifier":
        model = method.classifier()
        out = {protocol: evaluate_splits(model, prepared, channels, ("val", "test"), device, None, amp)}
        tta = getattr(method.config, "tta", None)
        if tta:
            out[f"{protocol}+{tta}"] = evaluate_splits(model, prepared, channels, ("val", "test"), device, tta, amp)
        return out
    return representation_metrics(method.embed, prepared, channels, device, amp)


def _validator(method, prepared, train, channels, device, amp, seed: int, monitor_size: int):
    """The engine's per-epoch validation: accuracy for classifiers, a kNN monitor for representations."""
    val = face_tensors(prepared, "val", channels, device)
    if method.kind == "classifier":

        def validate(m):
            probs = torch.from_numpy(predict(m.classifier(), val, amp_dtype=amp))
            y = val.y.cpu()
            accuracy = float((probs.argmax(1) == y).float().mean())
            return {"score": accuracy, "accuracy": accuracy, "loss": float(F.nll_loss(probs.clamp_min(1e-8).log(), y))}

        return validate
    labelled = np.flatnonzero(train.y.cpu().numpy() >= 0)  # pretraining faces without labels are not voters
    rows = np.sort(np.random.default_rng(seed).permutation(labelled)[:monitor_size])
    monitor = train.subset(rows)

    def validate(m):
        bank = extract_features(m.embed, monitor, amp_dtype=amp)
        scores = knn_scores(
            bank, monitor.y.cpu().numpy(), extract_features(m.embed, val, amp_dtype=amp), len(m.spec.classes)
        )
        accuracy = float((scores.argmax(1) == val.y.cpu().numpy()).mean())
        return {"score": accuracy, "knn_accuracy": accuracy}

    return validate


def _fit_summary(result: FitResult | None, batch: int) -> dict:
    if result is None:
        return {"epochs_run": 0, "best_epoch": None, "stop_reason": "not trained", "train_seconds": 0.0, "history": []}
    return {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch + 1,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.train_seconds, 1),
        "images_per_second": round(
            sum(h.get("steps", 0) for h in result.history) * batch / max(result.train_seconds, 1e-9), 1
        ),
        "schedule": {
            "total_steps": result.total_steps,
            "epochs": round(result.total_steps / max(result.steps_per_epoch, 1), 2),
            "seconds_per_step": result.seconds_per_step,
            "warmup_steps": result.warmup_steps,
        },
        "history": result.history,
    }


def _train_identity(cls, tc: TrainConfig):
    """The training settings that identify a run: all of them, the seed alone for untrained methods, nothing
    for methods with no randomness."""
    if cls.trains:
        return tc
    return {"seed": tc.seed} if cls.seeded else {}


def _device(device):
    return device if isinstance(device, torch.device) else pick_device(device)


def data_record(prepared) -> dict:
    """What identifies the training data in a run's configuration and record."""
    sizes = {s: int((prepared.splits == s).sum()) for s in dict.fromkeys(prepared.splits)}
    record = {
        "name": prepared.name,
        "classes": list(prepared.classes),
        "split_sizes": sizes,
        "faces": dataclasses.asdict(prepared.config),
    }
    if getattr(prepared, "labelled", None) is not None:  # a share of the training labels (label efficiency)
        record["labelled"] = dict(prepared.labelled)
    return record


# -------------------------------------------------------------------------------------------- records


def run_dir(name: str, config: dict, root=None) -> Path:
    """``<root>/<name>-<first 8 hex digits of the config hash>``."""
    root = Path(root) if root is not None else CHECKPOINT_DIR
    return root / f"{name}-{settings_key(config)[:8]}"


def normalised(setup: dict) -> dict | None:
    """A run's settings as today's code reads them: every config rebuilt from its stored fields, the missing
    ones taking today's defaults (the one rule of run identity: a field added to a config keeps its default's
    old behaviour, so a run recorded before it existed is the run at that default). None when a stored field no
    longer exists or a value is refused: then no run of today's settings can be that one."""
    from utils.data.faces import FaceConfig

    try:
        cls = methods.get(setup["method"])
        out = {**setup, "model": dataclasses.asdict(config_from_dict(cls.Config, setup["model"]))}
        if cls.trains:
            out["train"] = dataclasses.asdict(config_from_dict(TrainConfig, setup["train"]))
        faces = config_from_dict(FaceConfig, setup["data"]["faces"])
        out["data"] = {**setup["data"], "faces": dataclasses.asdict(faces)}
    except (ValueError, TypeError, KeyError):
        return None
    return json.loads(json.dumps(out, default=str))


def find_finished(setup: dict, root) -> Path | None:
    """The folder of a finished run under ``root`` whose settings are ``setup`` once both are
    :func:`normalised` (a run recorded before a field existed, under the name its settings had then)."""
    wanted = normalised(setup)
    if wanted is None:
        return None
    for path in sorted(Path(root).glob(f"*/{METRICS_FILE}")):
        record = finished(path.parent)
        stored = (record or {}).get("config", {})
        if stored.get("method") == setup["method"] and normalised(stored) == wanted:
            return path.parent
    return None


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
    """Write ``metrics.json`` atomically, adding versions, machine and time. A record that has them already
    (an evaluation added to a finished run) keeps them: they say where the run was trained."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "status": "finished",
        **record,
        "versions": record.get("versions") or versions(),
        "machine": record.get("machine") or machine(),
        "provenance": record.get("provenance") or provenance(),
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
