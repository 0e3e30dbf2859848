"""The evaluator contract and the name registry.

This module owns what every metric family must provide: the ``Evaluator`` lifecycle (construct from
the dataset's label schema, ``update`` once per sample in any order, ``compute`` once at the end),
the ``MetricsReport`` it returns, and the lookup of evaluators by name. It imports nothing heavy, so
the CLI and the operator can list evaluator names without pulling in pycocotools or torch.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from assay.errors import SpecError

__all__ = ["Evaluator", "MetricsReport", "available", "get_evaluator", "register", "run_settings"]


@dataclass(frozen=True)
class MetricsReport:
    """What an evaluator returns.

    ``summary`` is flat and small because it is copied into the EvaluationJob's Kubernetes status;
    ``headline`` is the one number for a printer column; ``full`` is everything, JSON-serialisable
    (arrays as lists), and goes to ``metrics.json``.
    """

    evaluator: str
    summary: dict[str, float]
    headline: tuple[str, float]
    full: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The summary as a fixed-width two-column text table, in insertion order."""
        width = max([len("metric")] + [len(k) for k in self.summary])
        lines = [f"{'metric':<{width}}  {'value':>8}", f"{'-' * width}  {'-' * 8}"]
        lines += [f"{name:<{width}}  {value:>8.4f}" for name, value in self.summary.items()]
        return "\n".join(lines)


class Evaluator(abc.ABC):
    """One metric family. Subclasses set ``name`` and are registered with ``@register``.

    Lifecycle: ``__init__(label_schema)`` with the dataset manifest's label schema, then
    ``update(sample_id, label, prediction)`` once per sample in any order (the ground truth travels
    with the shard, so no image is decoded here), then ``compute()`` for the report. ``compute`` does
    not consume the state, so calling it twice gives the same report.
    """

    name: ClassVar[str]
    #: Whether a larger headline is better (for comparing runs).
    higher_is_better: ClassVar[bool] = True
    #: What ``per_sample`` scores, in words; empty when the family has no per-sample score.
    per_sample_score: ClassVar[str] = ""

    def __init__(self, label_schema: dict[str, Any]):
        self.label_schema = label_schema

    @abc.abstractmethod
    def update(self, sample_id: str, label: dict[str, Any], prediction: dict[str, Any]) -> None:
        """Add one sample's ground truth and prediction."""

    @abc.abstractmethod
    def compute(self) -> MetricsReport:
        """Score everything added so far."""

    @classmethod
    def run_settings(cls) -> dict[str, Any]:
        """Settings of the family's own that change its numbers (the coco evaluator's matching parameters):
        part of the run's settings hash, so results made under other ones are never scored together."""
        return {}

    def per_sample(self) -> dict[str, float]:
        """A score of each sample added so far, higher is better (``assay report``'s worst samples and
        ``assay compare``'s regressions); families without one raise."""
        from assay.errors import EvaluationError

        raise EvaluationError(f"the {self.name} evaluator has no per-sample score",
                              "compare the summary metrics only")


_REGISTRY: dict[str, type[Evaluator]] = {}

EvaluatorT = TypeVar("EvaluatorT", bound=type[Evaluator])


def register(cls: EvaluatorT) -> EvaluatorT:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
        raise TypeError(f"@register expects an Evaluator subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} must set a non-empty class attribute 'name'")
    old = _REGISTRY.get(name)
    # Re-registering the same class (a reloaded module) is fine; two classes sharing a name is a bug.
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"evaluator name '{name}' is already taken by {old.__module__}.{old.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def available() -> list[str]:
    """Registered evaluator names, sorted."""
    return sorted(_REGISTRY)


def get_evaluator(name: str, label_schema: dict[str, Any]) -> Evaluator:
    """A fresh evaluator of that name, built for the dataset's label schema."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise SpecError(f"unknown evaluator '{name}'", hint=f"available: {', '.join(available())}")
    return cls(label_schema)


def run_settings(name: str | None) -> dict[str, Any]:
    """The ``run_settings`` of the evaluator of that name; {} for a name assay does not know (a handler's)."""
    cls = _REGISTRY.get(name or "")
    return cls.run_settings() if cls is not None else {}
