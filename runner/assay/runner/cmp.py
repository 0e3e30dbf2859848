"""The cmp step: merge every shard's results with the dataset's labels and compute the metrics.

cmp refuses to score an incomplete run: every sample id of every shard's labels must appear exactly
once in that shard's results, and nothing else may. It reads one shard at a time, so memory holds the
evaluator's state, not all results files at once.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from assay import layout, packages, results, shards, storage
from assay.errors import EvaluationError, SpecError
from assay.metrics import MetricsReport, get_evaluator
from assay.spec import RunContext

log = logging.getLogger("assay.cmp")


def iter_records(dataset: shards.DatasetManifest, output_uri: str):
    """Yield (sample_id, label, prediction) for every sample, checking each shard's ids against its labels."""
    missing = [i for i in range(len(dataset.shards)) if not storage.exists(layout.results_uri(output_uri, i))]
    if missing:
        raise EvaluationError(f"{len(missing)} of {len(dataset.shards)} shards have no results "
                              f"(first: {dataset.shards[missing[0]].name})",
                              "run the ppl workers again; finished shards are skipped")
    with tempfile.TemporaryDirectory(prefix="assay-cmp-") as tmp:
        for index in range(len(dataset.shards)):
            labels = shards.read_labels(dataset, index)
            path = Path(tmp) / "r.parquet"
            storage.download(layout.results_uri(output_uri, index), path)
            ids, preds, meta = results.read_local(path)
            if meta.get("dataset_version") != dataset.version:
                raise EvaluationError(f"results of shard {index} were made for dataset version "
                                      f"{meta.get('dataset_version')}, not {dataset.version}",
                                      "use a fresh output.uri for a new dataset version")
            _check_ids(index, [r["id"] for r in labels], ids)
            by_id = dict(zip(ids, preds, strict=True))
            for record in labels:
                yield record["id"], record["label"], by_id[record["id"]]


def _check_ids(index: int, expected: list[str], got: list[str]) -> None:
    dupes = [i for i, n in Counter(got).items() if n > 1]
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if dupes or missing or extra:
        raise EvaluationError(
            f"shard {index}: results do not match the dataset: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(dupes)} duplicated (e.g. {dupes[:3]}), {len(extra)} unknown (e.g. {extra[:3]})",
            "delete that shard's results file and rerun its ppl worker")


def run(ctx: RunContext) -> MetricsReport:
    dataset = shards.load_manifest(ctx.dataset_uri)
    model = packages.load_manifest(ctx.model_uri)
    name = ctx.evaluator or model.evaluator
    if not name:
        raise SpecError("no evaluator: model.yaml has no run.evaluator and the job sets no spec.evaluator",
                        "set run.evaluator: coco (or classification, or handler) in model.yaml")
    if name == "handler":
        report = _handler_evaluate(model, dataset, ctx)
    else:
        evaluator = get_evaluator(name, dataset.label_schema)
        for sample_id, label, prediction in iter_records(dataset, ctx.output_uri):
            evaluator.update(sample_id, label, prediction)
        report = evaluator.compute()
    write_report(ctx, dataset, model, report)
    return report


def _handler_evaluate(model, dataset, ctx) -> MetricsReport:
    package_dir = packages.unpack(model)
    handler = packages.load_handler_class(model, package_dir)()
    summary = {k: float(v) for k, v in handler.evaluate(iter_records(dataset, ctx.output_uri)).items()}
    if not summary:
        raise EvaluationError(f"{model.handler}.evaluate returned no metrics")
    first = next(iter(summary.items()))
    return MetricsReport(evaluator="handler", summary=summary, headline=first, full={"summary": summary})


def write_report(ctx: RunContext, dataset, model, report: MetricsReport) -> dict[str, Any]:
    doc = {
        "evaluator": report.evaluator,
        "summary": report.summary,
        "headline": {"name": report.headline[0], "value": report.headline[1]},
        "full": report.full,
        "model": {"uri": model.uri, "name": model.name, "version": model.version},
        "dataset": {"uri": dataset.uri, "name": dataset.name, "version": dataset.version,
                    "samples": dataset.samples},
    }
    storage.write_text(layout.metrics_uri(ctx.output_uri), json.dumps(doc, indent=1))
    header = (f"{ctx.job_name}: model {model.name}@{model.version} on dataset {dataset.name}@{dataset.version} "
              f"({dataset.samples} samples)\n")
    storage.write_text(layout.summary_uri(ctx.output_uri), header + report.table() + "\n")
    log.info("metrics written to %s", layout.metrics_uri(ctx.output_uri))
    return doc
