"""Run a whole EvaluationJob on this machine: N ppl worker processes, then cmp, with a progress bar.

The same ``ppl.run`` and ``cmp.run`` the pods call, with the same RunContext. What the run guarantees:
- its inputs are pinned: model and dataset are resolved to exact versions once, at the start, and every
  worker and cmp refuses any other version;
- it owns its output: it holds the output's lease while it runs and the run record names its model,
  dataset and settings, so a job of another identity is refused (``overwrite`` clears the old run first);
- its processes end with it: workers die with ``assay run`` however it dies (a signal, a closed
  terminal, SIGKILL), ``spec.activeDeadlineSeconds`` stops the run, and ``status.json`` ends Succeeded or
  Failed with a reason (a run killed without one is recorded as interrupted by the next start);
- user code prints into the worker logs, never into the CLI's output.
Run it again after a crash or Ctrl-C and finished shards are skipped.

This module is the order of things; the processes are ``supervise``'s, the bar ``progress``'s and
status.json ``status_file``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from assay import layout, packages, protocol, runrecord, shards, storage
from assay.errors import AssayError, SpecError
from assay.metrics import MetricsReport
from assay.runner.inputs import resolve
from assay.runner.progress import Progress, progress_doc
from assay.runner.status_file import StatusFile, now
from assay.runner.supervise import Children, Interrupted, Limits, signals_raise, wait
from assay.spec import EvaluationJob, RunContext, UriRef


@dataclass
class LocalRun:
    """What ``run_job`` gives: the job folder, its final status.json and the metrics."""

    job_dir: Path
    status: dict[str, Any]
    report: MetricsReport


def evaluate(job: EvaluationJob) -> MetricsReport:
    """Run ``job`` on this machine, quietly, into an output it may overwrite; its metrics (the pipeline
    check's way of running its oracle, `assay.check.check`)."""
    return run_job(job, progress=False, overwrite=True).report


def storage_settings(job: EvaluationJob) -> contextlib.AbstractContextManager:
    """spec.storage.endpoint and region for the storage calls of this run, over AWS_ENDPOINT_URL and
    AWS_REGION, as pods get them. Its workers are handed the same (``Children.start``)."""
    return storage.using_spec(job.spec.storage)


def _pinned(job: EvaluationJob, dataset: shards.DatasetManifest, model: packages.ModelManifest) -> EvaluationJob:
    """The job with its model and dataset at the exact version folders the run was pinned to."""
    spec = job.spec.model_copy(update={"dataset": UriRef(uri=dataset.uri), "model": UriRef(uri=model.uri)})
    return job.model_copy(update={"spec": spec})


def run_job(job: EvaluationJob, workers: int | None = None, progress: bool = True, err: TextIO | None = None,
            overwrite: bool = False, manifest: str | os.PathLike | None = None,
            clock: Callable[[], float] = time.monotonic) -> LocalRun:
    """``clock`` measures spec.activeDeadlineSeconds (a test's clock can be past it at once)."""
    err = sys.stderr if err is None else err  # looked up per call: a default bound at import goes stale
    workers = workers or job.spec.ppl.workers
    if workers != job.spec.ppl.workers:
        job = job.model_copy(update={"spec": job.spec.model_copy(
            update={"ppl": job.spec.ppl.model_copy(update={"workers": workers})})})
    output = job.spec.output.uri
    with storage_settings(job):
        # pinned as a cluster's resolve step pins it: exact versions, objects present, fit checked, groups chosen
        ctx, dataset, model = resolve(RunContext.for_worker(job, 0))
        job = _pinned(job, dataset, model)
        runrecord.check_output(output, manifest)  # before anything is written into it
        job_dir = layout.local_job_dir(job.name, job.spec.output.uri)
        try:
            (job_dir / "logs").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpecError(f"cannot create the job folder {job_dir}: {exc.strerror}",
                            "choose a spec.output.uri in a writable folder") from exc
        with runrecord.Lease(output) as lease:
            storage.clean_stale(output, ("", "results", "logs"))  # where a run's atomic writes go
            storage.clean_stale_scratch()
            if overwrite:
                ours, kept = runrecord.old_run_files(output)
                print(runrecord.describe_clear(ours, kept), file=err, flush=True)
                runrecord.clear(output, ours)
            runrecord.claim(output, runrecord.identity(ctx, model, dataset))
            status = StatusFile(job, job_dir)
            status.update(phase="Running", shards={"total": len(dataset.shards)},
                          model={"uri": model.uri, "name": model.name, "version": model.version},
                          dataset={"uri": dataset.uri, "name": dataset.name, "version": dataset.version},
                          datasetDigest=dataset.version)
            children = Children(job_dir, upload=not storage.is_local(output))
            limits = Limits(clock(), job.spec.active_deadline_seconds, lease, output, clock)
            try:
                with signals_raise():
                    report = _run(job, ctx, dataset, children, status, limits, progress, err)
            except (Interrupted, KeyboardInterrupt, AssayError) as exc:
                children.stop()
                status.update(phase="Failed", completionTime=now(), **_ended_by(exc))
                raise
            status.update(phase="Succeeded", completionTime=now(), results=report.summary,
                          resultsUri=layout.metrics_uri(output))
    return LocalRun(job_dir=job_dir, status=status.doc, report=report)


def _ended_by(exc: BaseException) -> dict[str, str]:
    """status.json's reason and message for what ended the run early."""
    if isinstance(exc, Interrupted | KeyboardInterrupt):
        by = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else exc
        return {"reason": protocol.INTERRUPTED, "message": f"interrupted by {by}; run the same command again to resume"}
    return {"reason": getattr(exc, "reason", type(exc).__name__), "message": str(exc)}


def _run(job: EvaluationJob, ctx: RunContext, dataset: shards.DatasetManifest, children: Children,
         status: StatusFile, limits: Limits, show: bool, err: TextIO) -> MetricsReport:
    """ppl in the run's worker processes (``show``: with the progress bar on ``err``), then cmp; the metrics."""
    total = dataset.samples
    progress = Progress(children.reports, total, status, err)
    items = layout.index_count(len(dataset.shards), ctx.shards_per_index)
    workers = min(job.spec.ppl.workers, items)  # a worker without an item would only load the model
    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = children.queue(list(range(items)), workers)
    for i in range(workers):
        children.start("ppl", f"ppl-{i:04d}", ctx.model_copy(update={"worker_count": workers}), threads, queue)
    status.update(shards={"total": len(dataset.shards), "perIndex": ctx.shards_per_index, "indexes": items})
    wait(children, limits, progress, show)
    failed = children.failure()
    if failed:
        failed.reason = protocol.SHARD_RETRIES_EXHAUSTED if failed.retryable else protocol.PERMANENT_ERROR
        raise failed
    status.update(phase="Evaluating", progress=progress_doc(total, total, 0.0))
    children.procs.clear()
    children.start("cmp", "cmp", ctx, max(1, os.cpu_count() or 1))
    wait(children, limits, progress, show=False)
    failed = children.failure()
    if failed:
        failed.reason = protocol.METRICS_FAILED
        raise failed
    return read_report(job.spec.output.uri)


def read_report(output_uri: str) -> MetricsReport:
    doc = json.loads(storage.read_bytes(layout.metrics_uri(output_uri)))
    return MetricsReport(evaluator=doc["evaluator"], summary=doc["summary"],
                         headline=(doc["headline"]["name"], doc["headline"]["value"]), full=doc.get("full", {}))

