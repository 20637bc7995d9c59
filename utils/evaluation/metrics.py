"""Evaluation: predictions with optional test-time augmentation, and every metric a FER paper reports.

:func:`classification_metrics` is the one place the suite computes metrics (scikit-learn underneath), so
the numbers in every ``metrics.json`` are comparable.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

TTA_MODES = (None, "flip", "tencrop")
TENCROP_FRACTION = 0.9  # ten-crop side as a share of the image: 43 of 48 px, ~80 % of the area


def _crops(x: torch.Tensor, fraction: float) -> list[torch.Tensor]:
    """Four corner crops and the centre crop of side ``fraction``, resized back to the full size."""
    h, w = x.shape[-2:]
    ch, cw = int(round(h * fraction)), int(round(w * fraction))
    tops = {"tl": (0, 0), "tr": (0, w - cw), "bl": (h - ch, 0), "br": (h - ch, w - cw)}
    tops["c"] = ((h - ch) // 2, (w - cw) // 2)
    return [
        F.interpolate(x[..., t : t + ch, s : s + cw], size=(h, w), mode="bilinear", align_corners=False)
        for t, s in tops.values()
    ]


@torch.no_grad()
def predict(model, data, batch_size: int = 512, tta: str | None = None, amp_dtype=None) -> np.ndarray:
    """Class probabilities ``(N, C)`` for a :class:`~utils.core.loader.FaceTensors` split.

    Args:
        tta: None; ``"flip"`` averages the image and its mirror; ``"tencrop"`` averages four corner crops
            and the centre crop, each with its mirror (crops of :data:`TENCROP_FRACTION` of the side).
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, not {tta!r}")
    was_training = model.training
    model.eval()
    out = []
    device = data.x.device
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size].float().div_(255)
        views = [x]
        if tta == "tencrop":
            views = _crops(x, TENCROP_FRACTION)
        if tta in ("flip", "tencrop"):
            views = views + [v.flip(-1) for v in views]
        probs = 0
        for v in views:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(v)
            probs = probs + F.softmax(logits.float(), dim=1)
        out.append((probs / len(views)).cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def classification_metrics(y_true, probs, classes) -> dict:
    """Accuracy, balanced accuracy, macro and per-class precision/recall/F1, one-vs-rest ROC-AUC, confusion.

    Args:
        y_true: ``(N,)`` canonical class ids.
        probs: ``(N, C)`` probabilities (or scores).
        classes: the C class names.

    Returns:
        A JSON-serialisable dict. ROC-AUC of a class absent from ``y_true`` is None.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.arange(len(classes))
    y_pred = probs.argmax(axis=1)
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    confusion = skm.confusion_matrix(y_true, y_pred, labels=labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = confusion / confusion.sum(axis=1, keepdims=True)
    auc = []
    for k in labels:
        positives = y_true == k
        if positives.all() or not positives.any():
            auc.append(None)
        else:
            auc.append(float(skm.roc_auc_score(positives, probs[:, k])))
    present = support > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean(r[present])) if present.any() else 0.0,
        "macro_precision": float(np.mean(p[present])) if present.any() else 0.0,
        "macro_recall": float(np.mean(r[present])) if present.any() else 0.0,
        "macro_f1": float(np.mean(f[present])) if present.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f[k]),
                "roc_auc": auc[k],
                "support": int(support[k]),
            }
            for k, name in enumerate(classes)
        },
        "confusion": confusion.tolist(),
        "confusion_normalised": np.nan_to_num(normalised).round(4).tolist(),
        "classes": list(classes),
    }


def per_class_table(metrics: dict):
    """The per-class part of :func:`classification_metrics` as a pandas table, classes as rows."""
    import pandas as pd

    return pd.DataFrame(metrics["per_class"]).T[["precision", "recall", "f1", "roc_auc", "support"]]


def evaluate_splits(model, prepared, channels: str, splits, device, tta=None, amp=None, batch_size: int = 512) -> dict:
    """:func:`classification_metrics` of ``model`` on each of ``splits`` that ``prepared`` has."""
    from utils.core.loader import face_tensors

    out = {}
    for split in splits:
        if not (prepared.splits == split).any():
            continue
        data = face_tensors(prepared, split, channels, device)
        probs = predict(model, data, batch_size=batch_size, tta=tta, amp_dtype=amp)
        out[split] = classification_metrics(data.y.cpu().numpy(), probs, prepared.classes)
    return out
