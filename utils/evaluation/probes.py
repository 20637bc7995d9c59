"""Evaluation protocols for representations: kNN, linear probe on frozen features, and their floors.

Shared by every self-supervised method (and usable on any backbone):

- :func:`knn_scores`: weighted kNN vote on cosine similarity (Wu et al. 2018, as in MoCo's and solo-learn's
  monitors), cheap enough to run after every epoch;
- :func:`linear_probe`: multinomial logistic regression on standardised frozen features, its inverse
  regularisation ``C`` chosen on the validation split;
- :func:`representation_metrics`: both, on every split, as a run records them.

The two floors every linear-probe table carries (the same backbone with random weights, and raw pixels) are
methods that do not train: :mod:`utils.methods.floors`.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from utils.core.loader import FaceTensors

PROBE_CS = (0.01, 0.1, 1.0)  # logistic-regression C values tried; the best on val is kept
# BLAS/OpenMP threads for the probe's fits. The fits are long chains of skinny products (N x D by D x classes)
# that threads only slow down: on a 2-core Xeon the probe on 28,709 x 512 features took 16.8 s with one thread
# and 24.8 s with two; on the 720-image sample beside PyTorch's own threads, 1.6 s and 8 s.
PROBE_THREADS = 1


@torch.no_grad()
def extract_features(embed, data: FaceTensors, batch_size: int = 512, amp_dtype=None) -> np.ndarray:
    """``embed(x)`` for every image of ``data`` (float in [0, 1], no augmentation), as float32 ``(N, D)``."""
    out = []
    device = data.x.device
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size].float().div_(255)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out.append(embed(x).float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def knn_scores(
    train_features,
    train_labels,
    query_features,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> np.ndarray:
    """Class scores ``(Nq, C)`` of a weighted kNN vote: each of the ``k`` most cosine-similar training
    images votes for its class with weight ``exp(similarity / temperature)``; scores sum to 1."""
    bank = F.normalize(torch.as_tensor(train_features, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    queries = F.normalize(torch.as_tensor(query_features, dtype=torch.float32), dim=1)
    k = min(k, len(bank))
    out = []
    for start in range(0, len(queries), chunk):
        sim = queries[start : start + chunk] @ bank.T  # (c, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (c, k)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(len(sim), num_classes).scatter_add_(1, labels[top_idx], weights)
        out.append(scores / scores.sum(dim=1, keepdim=True))
    return torch.cat(out).numpy()


def knn_accuracy(train_features, train_labels, query_features, query_labels, num_classes: int, **kwargs) -> float:
    scores = knn_scores(train_features, train_labels, query_features, num_classes, **kwargs)
    return float((scores.argmax(axis=1) == np.asarray(query_labels)).mean())


def linear_probe(
    train_x,
    train_y,
    eval_sets: dict,
    num_classes: int,
    cs=PROBE_CS,
    select_on: str = "val",
    max_iter: int = 300,
    threads: int | None = PROBE_THREADS,
) -> dict:
    """Logistic regression on frozen features; ``C`` chosen by accuracy on ``eval_sets[select_on]``.

    Args:
        train_x, train_y: training features ``(N, D)`` and labels.
        eval_sets: ``{split: (features, labels)}``; must contain ``select_on``.
        cs: the C values tried.
        threads: BLAS and OpenMP threads for the fits (``None``: the libraries' own default).

    Returns:
        ``{"C": chosen C, "probs": {split: (n, num_classes) probabilities}, "accuracy_by_C": {C: val acc},
        "seconds": fitting time}``.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _linear_probe(train_x, train_y, eval_sets, num_classes, cs, select_on, max_iter)


def _linear_probe(train_x, train_y, eval_sets, num_classes, cs, select_on, max_iter) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tic = time.perf_counter()
    scaler = StandardScaler().fit(train_x)
    xt = scaler.transform(train_x).astype(np.float32)
    sets = {name: (scaler.transform(x).astype(np.float32), np.asarray(y)) for name, (x, y) in eval_sets.items()}
    best, by_c = None, {}
    for c in cs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter caps the time; accuracy is what counts
            model = LogisticRegression(C=c, max_iter=max_iter, tol=1e-3).fit(xt, train_y)
        vx, vy = sets[select_on]
        accuracy = float((model.predict(vx) == vy).mean())
        by_c[c] = accuracy
        if best is None or accuracy > by_c[best[0]]:
            best = (c, model)
    c, model = best
    probs = {}
    for name, (x, _) in sets.items():
        p = np.zeros((len(x), num_classes))
        p[:, model.classes_] = model.predict_proba(x)
        probs[name] = p
    return {"C": c, "probs": probs, "accuracy_by_C": by_c, "seconds": time.perf_counter() - tic}


def representation_metrics(
    embed, prepared, channels: str, device, amp=None, knn_k: int = 20, probe: bool = True
) -> dict:
    """kNN and linear-probe metrics of a frozen representation ``embed`` on every split besides train.

    Returns:
        ``{"knn": {split: metrics}, "linear": {split: metrics, "C": chosen C, "accuracy_by_C": ...}}``.
    """
    from utils.core.loader import face_tensors

    sets = {}
    for split in ("train", "val", "test"):
        if (prepared.splits == split).any():
            data = face_tensors(prepared, split, channels, device)
            sets[split] = (extract_features(embed, data, amp_dtype=amp), data.y.cpu().numpy())
    return probe_metrics(sets, prepared.classes, knn_k=knn_k, probe=probe)


def probe_metrics(sets: dict, classes, knn_k: int = 20, probe: bool = True) -> dict:
    """kNN and linear-probe metrics from features per split ``{split: (features, labels)}`` (train included)."""
    from utils.evaluation.metrics import classification_metrics

    train_x, train_y = sets["train"]
    evals = {name: v for name, v in sets.items() if name != "train"}
    out = {"knn": {}}
    for name, (x, y) in evals.items():
        scores = knn_scores(train_x, train_y, x, len(classes), k=knn_k)
        out["knn"][name] = classification_metrics(y, scores, classes)
    if probe:
        result = linear_probe(train_x, train_y, evals, len(classes))
        out["linear"] = {
            name: classification_metrics(y, result["probs"][name], classes) for name, (x, y) in evals.items()
        }
        out["linear"]["C"] = result["C"]
        out["linear"]["accuracy_by_C"] = {str(c): a for c, a in result["accuracy_by_C"].items()}
    return out
