"""The cmp step: merge every shard's results with the dataset's labels and compute the metrics.

cmp refuses to score an incomplete run: every sample id of every shard's labels must appear exactly
once in that shard's results, and nothing else may. It reads one shard at a time, so memory holds the
evaluator's state, not all results files at once. For the coco evaluator it reads no predictions: the
ppl workers matched each shard's images already (match tables, assay.metrics.coco_match), and cmp merges
their tables and accumulates, from sorted runs on scratch disk (assay.metrics.coco_merge), so its memory
does not grow with the detections.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from assay import layout, packages, runrecord, shards, storage, verified
from assay.errors import AssayError, EvaluationError, HandlerError, SpecError
from assay.metrics import MetricsReport, get_evaluator
from assay.metrics.coco import MatchesMerge
from assay.runner.inputs import load_pinned
from assay.spec import RunContext

log = logging.getLogger("assay.cmp")


def run(ctx: RunContext) -> MetricsReport:
    dataset, model = load_pinned(ctx)
    ident = runrecord.identity(ctx, model, dataset)
    runrecord.claim(ctx.output_uri, ident)
    name = ctx.evaluator or model.evaluator
    if not name:
        raise SpecError("no evaluator: model.yaml has no run.evaluator and the job sets no spec.evaluator",
                        "set run.evaluator: coco (or classification, or handler) in model.yaml")
    conditions: list = []
    if name == "coco":
        report = _coco_evaluate(ctx, dataset, model, ident, conditions)
        write_report(ctx, dataset, model, report, ident, conditions)
        return report
    records = verified.iter_records(dataset, model, ctx.output_uri, ident.settings_hash, conditions)
    if name == "handler":
        report = _handler_evaluate(model, records)
    else:
        evaluator = get_evaluator(name, dataset.label_schema)
        for sample_id, label, prediction in records:
            evaluator.update(sample_id, label, prediction)
        report = evaluator.compute()
    write_report(ctx, dataset, model, report, ident, conditions)
    return report


def _coco_evaluate(ctx: RunContext, dataset: shards.DatasetManifest, model: packages.ModelManifest,
                   ident: runrecord.RunIdentity, conditions: list[Any]) -> MetricsReport:
    """Merge and accumulate the match tables the ppl workers wrote; the predictions are not read. One
    shard's tables at a time are in memory: they are spilled, sorted, to scratch disk and merged from there."""
    with storage.scratch_dir("cmp") as spill:
        merge = MatchesMerge(dataset.label_schema, Path(spill))
        for index, path in verified.iter_matches(dataset, model, ctx.output_uri, ident.settings_hash, conditions):
            merge.add(verified.read_matches(ctx.output_uri, index, path))
        return merge.report()


def _handler_evaluate(model: packages.ModelManifest,
                      records: Iterable[tuple[str, dict[str, Any], dict[str, Any]]]) -> MetricsReport:
    package_dir = packages.unpack(model)
    handler = packages.load_handler_class(model, package_dir)()
    try:
        summary = {k: float(v) for k, v in handler.evaluate(records).items()}
    except AssayError:
        raise
    except Exception as exc:
        raise HandlerError(f"handler {model.handler}.evaluate() failed: {exc!r}",
                           "evaluate() must return a mapping of metric names to numbers") from exc
    if not summary:
        raise EvaluationError(f"{model.handler}.evaluate returned no metrics")
    first = next(iter(summary.items()))
    return MetricsReport(evaluator="handler", summary=summary, headline=first, full={"summary": summary})


def write_report(ctx: RunContext, dataset: shards.DatasetManifest, model: packages.ModelManifest,
                 report: MetricsReport, ident: runrecord.RunIdentity, conditions: list) -> dict[str, Any]:
    doc = {
        "evaluator": report.evaluator,
        "summary": report.summary,
        "headline": {"name": report.headline[0], "value": report.headline[1]},
        "full": report.full,
        "model": {"uri": model.uri, "name": model.name, "version": model.version},
        "dataset": {"uri": dataset.uri, "name": dataset.name, "version": dataset.version,
                    "samples": dataset.samples},
        "settings": {**ident.settings, "hash": ident.settings_hash, "workers": ctx.worker_count},
        # one entry per distinct set of conditions the shards were predicted under (ideally one)
        "runConditions": conditions,
    }
    text = json.dumps(doc, indent=1)
    storage.write_text(layout.metrics_uri(ctx.output_uri), text)
    storage.write_text(layout.metrics_digest_uri(ctx.output_uri),
                       f"{hashlib.sha256(text.encode()).hexdigest()}  {layout.METRICS}\n")
    header = (f"{ctx.job_name}: model {model.name}@{model.version} on dataset {dataset.name}@{dataset.version} "
              f"({dataset.samples} samples)\n")
    storage.write_text(layout.summary_uri(ctx.output_uri), header + report.table() + "\n")
    log.info("metrics written to %s", layout.metrics_uri(ctx.output_uri))
    return doc
