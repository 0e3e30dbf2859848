"""Evaluators: turn per-sample ground truth and predictions into a ``MetricsReport``.

This package owns the metric families and their names. ``registry`` holds the contract
(``Evaluator``, ``MetricsReport``) and the name lookup; each family lives in its own module
(``coco``, ``classification``) and registers itself on import. Importing this package registers
the built-in families cheaply: they import numpy at most, and pycocotools only when scoring, so
``import assay.metrics`` never pulls in torch.

Example::

    from assay.metrics import get_evaluator
    ev = get_evaluator("classification", {"task": "classification", "classes": ["cat", "dog"]})
    ev.update("img-1", {"label": 0}, {"label": 0})
    print(ev.compute().table())
"""

from assay.metrics import classification as classification
from assay.metrics import coco as coco
from assay.metrics.registry import Evaluator, MetricsReport, available, get_evaluator, register, run_settings

__all__ = ["Evaluator", "MetricsReport", "available", "get_evaluator", "register", "run_settings"]
