"""Two finished runs side by side: summary metric deltas and the samples that got worse.

Runs are comparable when one evaluator scored both and they ran on one dataset version (the version is
the dataset's content digest, so equal versions mean the same samples and labels). Runs on different
versions are refused unless asked; then the per-sample comparison covers the sample ids both have.
``change`` of a metric follows the evaluator's ``higher_is_better``, which holds for every summary metric
of the built-in families (AP, AR, accuracy, precision, recall, F1, AUC). The result is a JSON-ready
dict; its shape is documented in docs/report.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from assay.errors import SpecError
from assay.metrics import available, get_evaluator
from assay.report.finished import FinishedRun, open_run

#: Regressions listed unless told otherwise.
TOP = 10
#: Score differences at or below this are float noise, not a change.
EPSILON = 1e-9


@dataclass
class Side:
    identity: dict[str, Any]
    summary: dict[str, float]
    per_sample: dict[str, float] | None = None
    per_sample_score: str = ""
    higher_is_better: bool | None = None  # None: an evaluator assay does not know (a handler's own)

    @classmethod
    def of(cls, run: FinishedRun) -> Side:
        side = cls(identity=run.identity(), summary=dict(run.metrics["summary"]))
        if run.evaluator_name in available():
            evaluator = get_evaluator(run.evaluator_name, run.dataset.label_schema)
            side.higher_is_better = evaluator.higher_is_better
            side.per_sample_score = evaluator.per_sample_score
        return side


def compare_runs(ref_a: str, ref_b: str, allow_different_datasets: bool = False, top: int = TOP) -> dict[str, Any]:
    """Open both runs, refuse incomparable ones before scoring anything, then compare them."""
    with open_run(ref_a) as run:
        a = Side.of(run)
    with open_run(ref_b) as run:
        b = Side.of(run)
        check_comparable(a, b, allow_different_datasets)
        b.per_sample = _per_sample(run, b)
    with open_run(ref_a) as run:  # again: each run is read under its own job's storage settings
        a.per_sample = _per_sample(run, a)
    return compare(a, b, top)


def _per_sample(run: FinishedRun, side: Side) -> dict[str, float] | None:
    if not side.per_sample_score:
        run.verify()  # no score to compare, but the results must still be sound
        return None
    return run.per_sample()


def check_comparable(a: Side, b: Side, allow_different_datasets: bool) -> None:
    ea, eb = a.identity["evaluator"], b.identity["evaluator"]
    if ea != eb:
        raise SpecError(f"{a.identity['ref']} was scored by the {ea} evaluator, {b.identity['ref']} by {eb}: "
                        "their metrics do not compare",
                        "compare runs of one evaluator (spec.evaluator or the model's run.evaluator)")
    da, db = a.identity["dataset"], b.identity["dataset"]
    if da["version"] != db["version"] and not allow_different_datasets:
        raise SpecError(f"the runs are on different dataset versions: {a.identity['ref']} on "
                        f"{da['name']}@{da['version']}, {b.identity['ref']} on {db['name']}@{db['version']}",
                        "compare runs on one dataset version, or pass --allow-different-datasets to compare "
                        "anyway (per-sample regressions then cover the sample ids both datasets have)")


def compare(a: Side, b: Side, top: int = TOP) -> dict[str, Any]:
    """The comparison document (see docs/report.md); ``top`` regressions are listed, all are counted."""
    metrics = [_metric(name, a.summary.get(name), b.summary.get(name), a.higher_is_better)
               for name in [*a.summary, *(n for n in b.summary if n not in a.summary)]]
    doc: dict[str, Any] = {
        "a": a.identity, "b": b.identity, "evaluator": a.identity["evaluator"],
        "sameDataset": a.identity["dataset"]["version"] == b.identity["dataset"]["version"],
        "metrics": metrics, "perSampleScore": a.per_sample_score or None, "samples": None, "regressions": None,
    }
    if a.per_sample is None or b.per_sample is None:
        return doc
    common = sorted(set(a.per_sample) & set(b.per_sample))
    drops = {i: a.per_sample[i] - b.per_sample[i] for i in common}
    regressed = sorted((i for i in common if drops[i] > EPSILON), key=lambda i: (-drops[i], i))
    improved = sum(1 for i in common if drops[i] < -EPSILON)
    doc["samples"] = {"compared": len(common), "regressed": len(regressed), "improved": improved,
                      "unchanged": len(common) - len(regressed) - improved,
                      "onlyInA": len(set(a.per_sample) - set(b.per_sample)),
                      "onlyInB": len(set(b.per_sample) - set(a.per_sample))}
    doc["regressions"] = [{"id": i, "a": a.per_sample[i], "b": b.per_sample[i], "drop": drops[i]}
                          for i in regressed[:top]]
    return doc


def _metric(name: str, va: float | None, vb: float | None, higher_is_better: bool | None) -> dict[str, Any]:
    if va is None or vb is None:
        return {"name": name, "a": va, "b": vb, "delta": None, "change": "only in a" if vb is None else "only in b"}
    delta = vb - va
    if abs(delta) <= EPSILON:
        change = "same"
    elif higher_is_better is None:
        change = "changed"
    else:
        change = "better" if (delta > 0) == higher_is_better else "worse"
    return {"name": name, "a": va, "b": vb, "delta": delta, "change": change}
