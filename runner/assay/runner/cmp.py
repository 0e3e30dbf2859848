"""The cmp step: merge every shard's results with the dataset's labels and compute the metrics.

cmp refuses to score an incomplete run: every sample id of every shard's labels must appear exactly
once in that shard's results, and nothing else may. It reads one shard at a time, so memory holds the
evaluator's state, not all results files at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from assay import layout, packages, results, runrecord, shards, storage
from assay.errors import AssayError, EvaluationError, HandlerError, IntegrityError, SpecError
from assay.metrics import MetricsReport, get_evaluator
from assay.runner.inputs import load_pinned
from assay.spec import RunContext

log = logging.getLogger("assay.cmp")


def iter_records(dataset: shards.DatasetManifest, model: packages.ModelManifest, output_uri: str,
                 settings_hash: str | None = None, conditions: list | None = None):
    """Yield (sample_id, label, prediction) for every sample of ``dataset``.

    Only results made by this model on this dataset version and shard (and, given ``settings_hash``,
    these settings) are read; each file is checked against the sha256 recorded when it was written, and
    its ids against the shard's labels. ``conditions`` collects each shard's run conditions.
    """
    records = [results.read_record(output_uri, i) for i in range(len(dataset.shards))]
    missing = [i for i, r in enumerate(records)
               if r is None or not storage.exists(layout.results_uri(output_uri, i))]
    if missing:
        raise EvaluationError(f"{len(missing)} of {len(dataset.shards)} shards have no results "
                              f"(first: {dataset.shards[missing[0]].name})",
                              "run the ppl workers again; finished shards are skipped")
    for index, record in enumerate(records):
        _check_origin(index, record, dataset, model, output_uri, settings_hash)
    with storage.scratch_dir("cmp") as tmp:
        for index, record in enumerate(records):
            labels = shards.read_labels(dataset, index)
            path = Path(tmp) / "r.parquet"
            results.fetch_verified(output_uri, index, record, path)
            ids, preds, meta = results.read_local(path)
            if (meta.get("model_version"), meta.get("dataset_version")) != (model.version, dataset.version):
                raise IntegrityError(f"{layout.results_uri(output_uri, index)} disagrees with its record",
                                     "rerun the job: the shard is recomputed")
            if conditions is not None and record.get("conditions") not in conditions:
                conditions.append(record.get("conditions"))
            _check_ids(index, [r["id"] for r in labels], ids)
            by_id = dict(zip(ids, preds, strict=True))
            for label_record in labels:
                yield label_record["id"], label_record["label"], by_id[label_record["id"]]


def _check_origin(index: int, record: dict[str, Any], dataset, model, output_uri: str,
                  settings_hash: str | None) -> None:
    """Refuse results that another model, dataset version, shard or settings produced."""
    uri = layout.results_uri(output_uri, index)
    expected = {"model_version": model.version, "dataset_version": dataset.version,
                "shard_sha256": dataset.shards[index].sha256}
    if settings_hash is not None:
        expected["settings_hash"] = settings_hash
    wrong = {k: (record.get(k), v) for k, v in expected.items() if record.get(k) != v}
    if wrong:
        what = ", ".join(f"{k.replace('_', ' ')} {got} (this run: {want})" for k, (got, want) in wrong.items())
        raise EvaluationError(f"{uri} was made by another run: {what}",
                              "score only results of this model and dataset: evaluate into another output (on a "
                              "cluster: a new EvaluationJob with its own spec.output.uri; with `assay run`: "
                              "--overwrite)")


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
    dataset, model = load_pinned(ctx)
    ident = runrecord.identity(ctx, model, dataset)
    runrecord.claim(ctx.output_uri, ident)
    name = ctx.evaluator or model.evaluator
    if not name:
        raise SpecError("no evaluator: model.yaml has no run.evaluator and the job sets no spec.evaluator",
                        "set run.evaluator: coco (or classification, or handler) in model.yaml")
    conditions: list = []
    records = iter_records(dataset, model, ctx.output_uri, ident.settings_hash, conditions)
    if name == "handler":
        report = _handler_evaluate(model, records)
    else:
        evaluator = get_evaluator(name, dataset.label_schema)
        for sample_id, label, prediction in records:
            evaluator.update(sample_id, label, prediction)
        report = evaluator.compute()
    write_report(ctx, dataset, model, report, ident, conditions)
    return report


def _handler_evaluate(model, records) -> MetricsReport:
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


def write_report(ctx: RunContext, dataset, model, report: MetricsReport, ident: runrecord.RunIdentity,
                 conditions: list) -> dict[str, Any]:
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
