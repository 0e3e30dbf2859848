"""Single-label classification metrics: the ``classification`` evaluator.

This module owns accuracy, per-class precision, recall, F1 and support, their macro and micro
averages, the confusion matrix, and one-vs-rest ROC AUC, all in numpy (scikit-learn is only the
reference in the tests). It follows scikit-learn's conventions so the numbers can be checked
against it:

- a 0/0 precision, recall or F1 is 0 (``zero_division=0``);
- macro and micro averages run over the classes that occur in the ground truth or in the
  predictions (scikit-learn's default ``labels``); a class seen nowhere is still listed, with
  support 0, but does not pull the averages down;
- ROC AUC of a class is undefined (``None``) when the ground truth has no positive or no negative
  for it; the macro AUC averages the defined ones; with two classes the headline AUC is the positive
  class's (index 1), as ``roc_auc_score(y, scores[:, 1])``.

Label of one sample: ``{"label": int}``. Prediction: ``{"label": int or 0-d integer array,
"scores": optional float array (C,)}``; the class index is the position in the schema's ``classes``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from assay.errors import EvaluationError, SpecError
from assay.metrics.registry import Evaluator, MetricsReport, register


@register
class ClassificationEvaluator(Evaluator):
    """Accuracy, precision/recall/F1 (per class, macro, micro), confusion matrix, ROC AUC."""

    name = "classification"
    per_sample_score = "1.0 when the predicted class is the true class, else 0.0"

    def __init__(self, label_schema: dict[str, Any]):
        super().__init__(label_schema)
        self.classes = _parse_classes(label_schema)
        self._seen: set[str] = set()
        self._ids: list[str] = []
        self._true: list[int] = []
        self._pred: list[int] = []
        self._scores: list[np.ndarray | None] = []

    def update(self, sample_id: str, label: dict[str, Any], prediction: dict[str, Any]) -> None:
        if sample_id in self._seen:
            raise EvaluationError(f"duplicate sample id '{sample_id}'",
                                  hint="each sample must be scored once; look for overlapping shards")
        n = len(self.classes)
        try:
            true = _class_index(label["label"], n)
            pred = _class_index(prediction["label"], n)
            scores = prediction.get("scores")
            if scores is not None:
                scores = _check_scores(scores, n)
        except (KeyError, TypeError, ValueError) as exc:
            hint = f"labels are class indices 0..{n - 1}; scores have shape ({n},)"
            raise EvaluationError(f"sample '{sample_id}': bad label or prediction: {exc}", hint=hint) from exc
        self._seen.add(sample_id)
        self._ids.append(sample_id)
        self._true.append(true)
        self._pred.append(pred)
        self._scores.append(scores)

    def compute(self) -> MetricsReport:
        if not self._true:
            raise EvaluationError("the classification evaluator got no samples",
                                  hint="check that the shards are not empty")
        y_true, y_pred = np.array(self._true), np.array(self._pred)
        cm = confusion_matrix(y_true, y_pred, len(self.classes))
        per_class = per_class_prf(cm)
        present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
        accuracy = float(np.trace(cm) / cm.sum())
        macro = {k: float(per_class[k][present].mean()) for k in ("precision", "recall", "f1")}
        micro = _micro(cm, present)
        summary = {"accuracy": accuracy, **{f"macro/{k}": v for k, v in macro.items()},
                   **{f"micro/{k}": v for k, v in micro.items()}}
        full: dict[str, Any] = {
            "num_samples": int(cm.sum()), "classes": list(self.classes), "accuracy": accuracy,
            "per_class": {name: {k: (int(v[i]) if k == "support" else float(v[i]))
                                 for k, v in per_class.items()} for i, name in enumerate(self.classes)},
            "macro": macro, "micro": micro,
            "averaged_over": [c for c, p in zip(self.classes, present, strict=True) if p],
            "confusion_matrix": cm.tolist(),  # rows: true class, columns: predicted class
            "roc_auc": None,
        }
        missing = sum(s is None for s in self._scores)
        if missing:
            full["roc_auc_skipped"] = f"no scores for {missing} of {len(self._scores)} samples"
        else:
            full["roc_auc"] = self._roc_auc(y_true)
            if full["roc_auc"]["macro"] is not None:
                summary["roc_auc/macro"] = full["roc_auc"]["macro"]
        return MetricsReport(evaluator=self.name, summary=summary, headline=("accuracy", accuracy), full=full)

    def per_sample(self) -> dict[str, float]:
        return {i: float(t == p) for i, t, p in zip(self._ids, self._true, self._pred, strict=True)}

    def _roc_auc(self, y_true: np.ndarray) -> dict[str, Any]:
        scores = np.stack(self._scores)  # type: ignore[arg-type]  # none are None here
        per_class = {name: binary_auc(y_true == k, scores[:, k]) for k, name in enumerate(self.classes)}
        if len(self.classes) == 2:
            macro = per_class[self.classes[1]]
        else:
            defined = [v for v in per_class.values() if v is not None]
            macro = float(np.mean(defined)) if defined else None
        return {"per_class": per_class, "macro": macro}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows indexed by the true class and columns by the predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_prf(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class from a confusion matrix (0/0 gives 0)."""
    tp = np.diag(cm).astype(np.float64)
    pred_sum, true_sum = cm.sum(axis=0), cm.sum(axis=1)
    return {"precision": _divide(tp, pred_sum), "recall": _divide(tp, true_sum),
            # 2tp / (true + pred) rather than 2PR / (P + R): the same value, and sklearn's exact arithmetic.
            "f1": _divide(2 * tp, true_sum + pred_sum), "support": true_sum}


def _micro(cm: np.ndarray, present: np.ndarray) -> dict[str, float]:
    tp = float(np.diag(cm)[present].sum())
    pred_sum, true_sum = int(cm.sum(axis=0)[present].sum()), int(cm.sum(axis=1)[present].sum())
    return {"precision": _divide(tp, pred_sum), "recall": _divide(tp, true_sum),
            "f1": _divide(2 * tp, true_sum + pred_sum)}


def _divide(num: Any, den: Any) -> Any:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)
    return float(out) if out.ndim == 0 else out


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count half); None if undefined.

    Equal to the trapezoidal area under scikit-learn's ``roc_curve``, without building the curve.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(false positive rates, true positive rates) at every distinct score threshold, from (0, 0) to
    (1, 1), as scikit-learn's ``roc_curve(drop_intermediate=False)``; None when undefined (see binary_auc)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    ordered, hits = np.asarray(score, dtype=np.float64)[order], positive[order]
    # one point per distinct threshold: the last position of each run of equal scores
    last = np.concatenate([np.flatnonzero(ordered[1:] != ordered[:-1]), [ordered.size - 1]])
    tps, fps = np.cumsum(hits)[last], np.cumsum(~hits)[last]
    return np.concatenate([[0.0], fps / n_neg]), np.concatenate([[0.0], tps / n_pos])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    ends = np.concatenate([starts[1:], [values.size]])
    ranks = np.empty(values.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _parse_classes(label_schema: dict[str, Any]) -> list[str]:
    classes = label_schema.get("classes") if isinstance(label_schema, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise SpecError("label_schema.classes must be a non-empty list of class names",
                        hint='e.g. classes: ["cat", "dog"]; the class index is the position')
    if len(set(classes)) != len(classes):
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        raise SpecError(f"label_schema.classes has duplicate names: {', '.join(dupes)}")
    return list(classes)


def _class_index(value: Any, num_classes: int) -> int:
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "iu":
        raise TypeError(f"a class index must be an integer, got {value!r}")
    index = int(arr)
    if not 0 <= index < num_classes:
        raise ValueError(f"class index {index} is outside 0..{num_classes - 1}")
    return index


def _check_scores(scores: Any, num_classes: int) -> np.ndarray:
    arr = np.array(scores, copy=True)  # a copy: callers may reuse their output buffers
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"scores must be numeric, got dtype {arr.dtype}")
    if arr.shape != (num_classes,):
        raise ValueError(f"scores must have shape ({num_classes},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("scores must be finite")
    return arr
