"""Metrics against scikit-learn computed directly, and predictions with test-time augmentation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

from utils.core.loader import FaceTensors
from utils.evaluation.metrics import classification_metrics, per_class_table, predict

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def random_predictions(n=300, k=7, seed=0):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), size=n)
    probs[np.arange(n), y_true] += rng.uniform(0, 0.5, n)  # better than chance, not perfect
    return y_true, probs / probs.sum(axis=1, keepdims=True)


def test_metrics_match_scikit_learn():
    y_true, probs = random_predictions()
    y_pred = probs.argmax(axis=1)
    m = classification_metrics(y_true, probs, CLASSES)

    assert m["n"] == len(y_true)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y_true, y_pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(y_true, y_pred, average="macro"))
    assert m["confusion"] == skm.confusion_matrix(y_true, y_pred).tolist()
    f1 = skm.f1_score(y_true, y_pred, average=None)
    for k, name in enumerate(CLASSES):
        row = m["per_class"][name]
        assert row["f1"] == pytest.approx(f1[k])
        assert row["support"] == int((y_true == k).sum())
        assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true == k, probs[:, k]))
    assert m["classes"] == list(CLASSES)
    json.dumps(m)  # written to metrics.json as is
    assert list(per_class_table(m).index) == list(CLASSES)


def test_a_class_absent_from_the_labels_is_left_out_of_macro_averages():
    y_true, probs = random_predictions(seed=1)
    keep = y_true != 2
    y_true, probs = y_true[keep], probs[keep]
    probs[:10, 2] = 5.0  # ten images predicted as the absent class
    y_pred = probs.argmax(axis=1)
    present = [k for k in range(7) if k != 2]
    m = classification_metrics(y_true, probs, CLASSES)

    fear = m["per_class"]["fear"]
    assert fear["roc_auc"] is None
    assert fear["support"] == 0
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=present, average="macro"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y_true, y_pred, labels=present, average="macro"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        expected_balanced = skm.balanced_accuracy_score(y_true, y_pred)
    assert m["balanced_accuracy"] == pytest.approx(expected_balanced)
    assert all(m["per_class"][CLASSES[k]]["roc_auc"] is not None for k in present)
    json.dumps(m)


def test_a_class_that_is_every_label_has_no_roc_auc():
    probs = np.random.default_rng(2).dirichlet(np.ones(7), size=5)
    m = classification_metrics(np.full(5, 3), probs, CLASSES)
    assert m["per_class"]["happy"]["roc_auc"] is None
    assert m["balanced_accuracy"] == pytest.approx(m["per_class"]["happy"]["recall"])


def test_normalised_confusion_rows_sum_to_one():
    y_true, probs = random_predictions(seed=3)
    y_true[y_true == 5] = 0  # surprise absent: its row is zeros, not NaN
    m = classification_metrics(y_true, probs, CLASSES)
    rows = np.array(m["confusion_normalised"])
    for k in range(7):
        if k == 5:
            assert rows[k].sum() == 0
        else:
            assert rows[k].sum() == pytest.approx(1.0, abs=1e-3)
    counts = np.array(m["confusion"])
    np.testing.assert_allclose(rows[0], counts[0] / counts[0].sum(), atol=1e-4)


# --------------------------------------------------------------------------------------------- predict


class TinyNet(nn.Module):
    """Logits from a 4x4 pooled view: depends on where things are, so flips and crops change it."""

    def __init__(self, channels=1, classes=4, symmetric=False):
        super().__init__()
        torch.manual_seed(0)
        self.symmetric = symmetric
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(channels * 16, classes)

    def forward(self, x):
        if self.symmetric:
            x = (x + x.flip(-1)) / 2
        return self.fc(self.dropout(self.pool(x).flatten(1)) * 5)


def toy_faces(n=5, channels=1, size=16, seed=0) -> FaceTensors:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return FaceTensors(x, torch.zeros(n, dtype=torch.int64))


@pytest.mark.parametrize("tta", [None, "flip", "tencrop"])
def test_predict_returns_probabilities_per_image(tta):
    data = toy_faces(channels=2)
    model = TinyNet(channels=2)
    model.train()
    probs = predict(model, data, batch_size=2, tta=tta)
    assert probs.shape == (5, 4)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.training  # the mode is restored
    again = predict(model, data, batch_size=5, tta=tta)  # eval mode: no dropout, batching irrelevant
    np.testing.assert_allclose(probs, again, atol=1e-6)


def test_flip_averages_the_image_and_its_mirror():
    data = toy_faces()
    model = TinyNet()
    x = data.x.float() / 255
    model.eval()
    with torch.no_grad():
        expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    np.testing.assert_allclose(predict(model, data, tta="flip"), expected.numpy(), atol=1e-6)
    assert not np.allclose(predict(model, data, tta="flip"), predict(model, data), atol=1e-4)


def test_a_mirror_symmetric_model_is_unchanged_by_flip_tta():
    data = toy_faces()
    model = TinyNet(symmetric=True)
    np.testing.assert_allclose(predict(model, data, tta="flip"), predict(model, data), atol=1e-6)


def test_constant_images_get_the_same_prediction_under_every_tta():
    x = torch.arange(4, dtype=torch.uint8).mul(60).view(4, 1, 1, 1).expand(4, 1, 16, 16).contiguous()
    data = FaceTensors(x, torch.zeros(4, dtype=torch.int64))
    model = TinyNet()
    plain = predict(model, data)
    np.testing.assert_allclose(predict(model, data, tta="flip"), plain, atol=1e-5)
    np.testing.assert_allclose(predict(model, data, tta="tencrop"), plain, atol=1e-5)


def test_invalid_tta_raises():
    with pytest.raises(ValueError, match="tta"):
        predict(TinyNet(), toy_faces(), tta="fivecrop")
