"""The classification evaluator against scikit-learn (the reference, a test-only dependency)."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

from assay.errors import EvaluationError, SpecError
from assay.metrics import MetricsReport, available, get_evaluator

TOL = 1e-12


def _data(seed: int, n: int, num_classes: int, *, hit_rate: float = 0.6,
          never_predicted: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded labels, predictions and softmax scores that lean towards the true class."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(num_classes, size=n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y_true] += 1.0
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = np.where(rng.random(n) < hit_rate, y_true, rng.integers(num_classes, size=n))
    if never_predicted is not None:
        y_pred = np.where(y_pred == never_predicted, (never_predicted + 1) % num_classes, y_pred)
    return y_true, y_pred, scores


def _evaluate(classes: list[str], y_true: np.ndarray, y_pred: np.ndarray,
              scores: np.ndarray | None = None) -> MetricsReport:
    ev = get_evaluator("classification", {"task": "classification", "classes": classes})
    for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        # Mix the accepted forms: Python int, numpy scalar, 0-d array; float32 scores.
        pred: dict[str, Any] = {"label": [int(p), p, np.asarray(p)][i % 3]}
        if scores is not None:
            pred["scores"] = scores[i].astype(np.float32) if i % 2 else scores[i]
        ev.update(f"s{i:05d}", {"label": int(t)}, pred)
    return ev.compute()


def _assert_matches_sklearn(report: MetricsReport, classes: list[str], y_true: np.ndarray,
                            y_pred: np.ndarray) -> None:
    s = report.summary
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=TOL)
    p, r, f, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(len(classes)), average=None, zero_division=0)
    for i, name in enumerate(classes):
        got = report.full["per_class"][name]
        got_prf = (got["precision"], got["recall"], got["f1"])
        assert got_prf == pytest.approx((p[i], r[i], f[i]), abs=TOL), name
        assert got["support"] == support[i]
    for average in ("macro", "micro"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        got = (s[f"{average}/precision"], s[f"{average}/recall"], s[f"{average}/f1"])
        assert got == pytest.approx((p, r, f), abs=TOL), average
    expected_cm = skm.confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    assert report.full["confusion_matrix"] == expected_cm.tolist()
    json.dumps(report.full, allow_nan=False)


def test_multiclass_matches_sklearn():
    classes = ["cat", "dog", "bird", "fish"]
    y_true, y_pred, scores = _data(seed=1, n=300, num_classes=4)
    report = _evaluate(classes, y_true, y_pred, scores)
    _assert_matches_sklearn(report, classes, y_true, y_pred)
    auc = skm.roc_auc_score(y_true, scores, multi_class="ovr", average="macro")
    assert report.summary["roc_auc/macro"] == pytest.approx(auc, abs=TOL)
    for k, name in enumerate(classes):
        expected = skm.roc_auc_score(y_true == k, scores[:, k])
        assert report.full["roc_auc"]["per_class"][name] == pytest.approx(expected, abs=TOL), name
    assert report.headline == ("accuracy", report.summary["accuracy"])
    assert 0.5 < report.summary["accuracy"] < 0.95


def test_binary_matches_sklearn():
    classes = ["negative", "positive"]
    y_true, y_pred, scores = _data(seed=2, n=250, num_classes=2, hit_rate=0.7)
    report = _evaluate(classes, y_true, y_pred, scores)
    _assert_matches_sklearn(report, classes, y_true, y_pred)
    assert report.summary["roc_auc/macro"] == pytest.approx(skm.roc_auc_score(y_true, scores[:, 1]), abs=TOL)


def test_tied_scores_auc_matches_sklearn():
    classes = ["a", "b", "c"]
    y_true, y_pred, scores = _data(seed=3, n=300, num_classes=3)
    # Many ties (ROC curves with diagonal steps); eighths stay exact in the float32 half of the inputs.
    coarse = (scores * 8).round() / 8
    report = _evaluate(classes, y_true, y_pred, coarse)
    for k, name in enumerate(classes):
        expected = skm.roc_auc_score(y_true == k, coarse[:, k])
        assert report.full["roc_auc"]["per_class"][name] == pytest.approx(expected, abs=TOL), name


def test_class_never_predicted_gives_zero_precision():
    classes = ["a", "b", "c", "d"]
    y_true, y_pred, scores = _data(seed=4, n=300, num_classes=4, never_predicted=2)
    assert 2 in y_true and 2 not in y_pred
    report = _evaluate(classes, y_true, y_pred, scores)
    _assert_matches_sklearn(report, classes, y_true, y_pred)
    assert report.full["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                             "support": int((y_true == 2).sum())}


def test_class_seen_nowhere_is_listed_but_not_averaged():
    classes = ["a", "b", "c", "unused"]
    y_true, y_pred, scores = _data(seed=5, n=300, num_classes=3)
    scores = np.concatenate([scores * 0.9, np.full((len(scores), 1), 0.1)], axis=1)
    report = _evaluate(classes, y_true, y_pred, scores)
    _assert_matches_sklearn(report, classes, y_true, y_pred)  # sklearn averages over seen labels too
    assert report.full["per_class"]["unused"]["support"] == 0
    assert report.full["averaged_over"] == ["a", "b", "c"]
    assert report.full["roc_auc"]["per_class"]["unused"] is None
    per_class = [skm.roc_auc_score(y_true == k, scores[:, k]) for k in range(3)]
    assert report.summary["roc_auc/macro"] == pytest.approx(np.mean(per_class), abs=TOL)


def test_missing_scores_skip_roc_auc():
    classes = ["a", "b"]
    ev = get_evaluator("classification", {"classes": classes})
    ev.update("x", {"label": 0}, {"label": 0, "scores": np.array([0.8, 0.2])})
    ev.update("y", {"label": 1}, {"label": 0})
    report = ev.compute()
    assert "roc_auc/macro" not in report.summary
    assert report.full["roc_auc"] is None and "1 of 2" in report.full["roc_auc_skipped"]


def test_summary_keys_and_table():
    y_true, y_pred, scores = _data(seed=6, n=40, num_classes=3)
    report = _evaluate(["a", "b", "c"], y_true, y_pred, scores)
    keys = ["accuracy", "macro/precision", "macro/recall", "macro/f1",
            "micro/precision", "micro/recall", "micro/f1", "roc_auc/macro"]
    assert list(report.summary) == keys
    assert all(k in report.table() for k in keys)


def test_duplicate_sample_id_raises():
    ev = get_evaluator("classification", {"classes": ["a", "b"]})
    ev.update("same", {"label": 0}, {"label": 1})
    with pytest.raises(EvaluationError, match="'same'"):
        ev.update("same", {"label": 0}, {"label": 1})


@pytest.mark.parametrize("label, prediction", [
    ({"label": 2}, {"label": 0}),                       # ground truth outside the classes
    ({"label": 0}, {"label": -1}),                      # prediction outside the classes
    ({"label": 0}, {"label": 0.0}),                     # not an integer
    ({"label": 0}, {"label": 0, "scores": [0.5]}),      # wrong number of scores
    ({"label": 0}, {"scores": [0.5, 0.5]}),             # no label
])
def test_bad_samples_raise_naming_the_sample(label, prediction):
    ev = get_evaluator("classification", {"classes": ["a", "b"]})
    with pytest.raises(EvaluationError, match="'bad'"):
        ev.update("bad", label, prediction)


def test_unknown_evaluator_lists_available_ones():
    with pytest.raises(SpecError, match="unknown evaluator 'nope'") as info:
        get_evaluator("nope", {})
    assert info.value.hint == "available: classification, coco"
    assert available() == ["classification", "coco"]


def test_bad_schema_is_a_spec_error():
    with pytest.raises(SpecError, match="classes"):
        get_evaluator("classification", {"task": "detection", "categories": []})
    with pytest.raises(SpecError, match="categories"):
        get_evaluator("coco", {"task": "classification", "classes": ["a"]})


def test_importing_metrics_does_not_import_torch():
    # A fresh interpreter: this test process may already have torch loaded by other tests.
    import subprocess

    code = "import sys, assay.metrics; assert 'torch' not in sys.modules and 'sklearn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_matches_sklearn_and_per_sample_is_correctness(seed):
    """The ROC points `assay report` draws are scikit-learn's, ties included; per_sample is 1/0 per sample."""
    from assay.metrics.classification import roc_curve

    rng = np.random.default_rng(seed)
    positive = rng.random(200) < 0.3
    score = np.round(rng.random(200) + positive * 0.4, 1)  # rounded: many tied scores
    fpr, tpr = roc_curve(positive, score)
    ref_fpr, ref_tpr, _ = skm.roc_curve(positive, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert roc_curve(np.zeros(5, bool), score[:5]) is None
    ev = get_evaluator("classification", {"classes": ["a", "b"]})
    for i, (t, p) in enumerate([(0, 0), (1, 0), (1, 1)]):
        ev.update(f"s{i}", {"label": t}, {"label": p})
    assert ev.per_sample() == {"s0": 1.0, "s1": 0.0, "s2": 1.0}
