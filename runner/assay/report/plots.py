"""The report's figures, rendered with matplotlib's Agg renderer to PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` directly, not pyplot: no global figure state, no GUI
backend, nothing left open between reports. Class and category names come from the dataset and are
untrusted: ``_text`` keeps matplotlib from reading a ``$`` in them as math.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})  # no URL, nothing but the picture
    return out.getvalue()


def _text(name: Any) -> str:
    return str(name).replace("$", r"\$")


def pr_curves(curves: dict[str, dict[str, list[float]]], recall: list[float], title: str) -> bytes:
    """One panel per IoU threshold (``{"0.50": {category: precision at each recall}}``), a line per
    category; categories without ground truth (COCOeval's -1) are left out."""
    fig = _figure(3.8 * len(curves), 3.1)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (iou, by_category) in zip(axes, curves.items(), strict=True):
        for name, precision in by_category.items():
            p = np.asarray(precision, dtype=np.float64)
            if (p < 0).all():
                continue
            ap = float(p.mean())
            ax.plot(recall, p, label=f"{_text(name)} (AP {ap:.3f})")
        ax.set(title=f"{_text(title)} IoU {iou}", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="lower left", fontsize="small")
    return _png(fig)


def confusion_matrix(cm: list[list[int]], classes: list[str]) -> bytes:
    """Counts with rows = true class and columns = predicted class, darker for more."""
    m = np.asarray(cm)
    side = min(12.0, 2.5 + 0.45 * len(classes))
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(m, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    labels = [_text(c) for c in classes]
    ax.set_xticks(range(len(classes)), labels, rotation=90 if len(classes) > 6 else 0)
    ax.set_yticks(range(len(classes)), labels)
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix")
    if len(classes) <= 30:  # beyond that the numbers would not fit their cells
        threshold = m.max() / 2 if m.size else 0
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize="small",
                    color="white" if v > threshold else "black")
    return _png(fig)


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]]) -> bytes:
    """One-vs-rest ROC curves: ``{class: (false positive rates, true positive rates, AUC)}``."""
    fig = _figure(6.0, 5.0)
    ax = fig.subplots()
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{_text(name)} (AUC {auc:.3f})" if auc is not None else _text(name))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one vs rest",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", ncols=2 if len(curves) > 8 else 1)
    return _png(fig)
