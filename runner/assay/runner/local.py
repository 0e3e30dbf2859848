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
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assay import layout, packages, protocol, runrecord, shards, storage
from assay.errors import EXIT_PERMANENT, AssayError, EvaluationError, SpecError
from assay.metrics import MetricsReport
from assay.runner import groups
from assay.runner.inputs import resolve
from assay.spec import EvaluationJob, RunContext, UriRef

#: status.json above this size drops its copy of the spec (the spec itself is bounded, this is a backstop).
MAX_STATUS_BYTES = 256 << 10


class Interrupted(BaseException):
    """``assay run`` got SIGINT, SIGTERM or SIGHUP (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunFailed(AssayError):
    """A worker or cmp process failed; ``retryable`` follows the process's exit code."""

    def __init__(self, message: str, hint: str | None, retryable: bool):
        super().__init__(message, hint)
        self.retryable = retryable


@dataclass
class LocalRun:
    job_dir: Path
    status: dict[str, Any]
    report: Any = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------- child processes


def _child_setup(log_path: str, parent: int) -> None:
    """In a worker: lead its own process group (so the run can end whatever the handler starts), die with
    the parent, and send everything printed (Python or C) to the log file."""
    # The worker dies with the parent (below) but a subprocess its handler starts would not; in one
    # process group per worker the parent ends them all with killpg. Not a new session: the terminal's
    # job control still covers the run (and SIGINT is ignored below anyway).
    groups.lead_group_and_die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a terminal's Ctrl-C reaches all
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _child(role: str, ctx_json: str, log_path: str, exit_path: str, threads: int, upload_log: bool,
           parent: int, items=None, reports=None, access: storage.S3Access | None = None) -> None:
    """One ppl worker or the cmp step in its own process; its final error goes to ``exit_path``.

    A ppl worker takes work items (shard groups) from ``items`` until it is empty, loading the model once.
    ``access``: the S3 settings the run's storage calls use (the job's spec.storage), for this process's.
    """
    _child_setup(log_path, parent)
    import logging

    from assay import logs
    from assay.logs import setup_logging

    ctx = RunContext.model_validate_json(ctx_json)
    failure = None
    with storage.using(access), setup_logging(ctx, role, ctx.worker_index if role == "ppl" else None,
                                              stream=sys.stderr, upload=upload_log):
        log = logging.getLogger(f"assay.{role}")
        try:
            import torch

            torch.set_num_threads(threads)
            if role == "ppl":
                from assay.runner import ppl

                loaded: dict = {}
                while (item := items.get()) is not None:
                    ppl.run(ctx.model_copy(update={"worker_index": item}), loaded, report=reports.put)
            else:
                from assay.runner import cmp

                cmp.run(ctx)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the report, SystemExit too
            failure = logs.failure_of(log, exc)
    # always written: a process that ends with code 0 and no file was ended by code inside it (os._exit)
    Path(exit_path).write_text(protocol.failure_message(failure) if failure else protocol.result_message(None))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(failure.exit_code if failure else 0)


class _Children:
    """The run's processes: spawned, watched, and stopped together."""

    def __init__(self, job_dir: Path, upload: bool):
        self.job_dir, self.upload = job_dir, upload
        self.procs: dict[str, tuple[Any, Path, Path]] = {}
        self._spawn = mp.get_context("spawn")
        #: ppl workers' progress reports, one document per work item (the channel the work queue uses too)
        self.reports = self._spawn.Queue()
        self._latest: dict[int, dict[str, Any]] = {}

    def progress(self) -> tuple[int, float]:
        """Samples done and the current rate, summed over the work items' latest reports."""
        with contextlib.suppress(queue.Empty):
            while True:
                doc = self.reports.get_nowait()
                self._latest[int(doc["worker"])] = doc
        done = sum(int(d["samplesDone"]) for d in self._latest.values())
        rate = sum(float(d["samplesPerSecond"]) for d in self._latest.values()
                   if int(d["samplesDone"]) < int(d["samplesTotal"]))  # items still running
        return done, rate

    def queue(self, items: list[int], workers: int):
        """A work queue holding ``items`` and one end marker per worker."""
        q = self._spawn.Queue()
        for item in [*items, *([None] * workers)]:
            q.put(item)
        return q

    def start(self, role: str, name: str, ctx: RunContext, threads: int, items=None) -> None:
        log_path = self.job_dir / "logs" / f"{name}.log"
        exit_path = self.job_dir / "logs" / f".{name}.exit.json"
        with contextlib.suppress(FileNotFoundError):
            exit_path.unlink()
        p = self._spawn.Process(target=_child, name=f"assay-{name}",
                                args=(role, ctx.model_dump_json(), str(log_path), str(exit_path), threads,
                                      self.upload, os.getpid(), items, self.reports, storage.current_access()))
        p.start()
        self.procs[name] = (p, log_path, exit_path)

    def alive(self) -> bool:
        return any(p.is_alive() for p, _, _ in self.procs.values())

    def stop(self, grace: float = 5.0) -> None:
        for p, _, _ in self.procs.values():
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + grace
        for p, _, _ in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        self.end_groups(grace)

    def end_groups(self, grace: float = 5.0) -> None:
        """End what is left of each worker's process group (the processes its handler started)."""
        groups.end_groups([p.pid for p, _, _ in self.procs.values() if p.pid is not None], grace)

    def failure(self) -> RunFailed | None:
        """The first failed process's error, as the process reported it."""
        for name, (p, log_path, exit_path) in self.procs.items():
            if p.exitcode == 0:
                if exit_path.is_file():
                    continue
                return RunFailed(f"{name} {groups.EARLY_EXIT}", f"{groups.EARLY_EXIT_HINT}; see {log_path}",
                                 retryable=False)
            report = exit_path.read_text() if exit_path.is_file() else None
            failure = protocol.parse_failure(report) or protocol.Failure(
                error=f"exit code {p.exitcode}", retryable=p.exitcode != EXIT_PERMANENT)  # killed, no report
            hint = f"{failure.hint}; log: {log_path}" if failure.hint else f"see {log_path}"
            return RunFailed(f"{name} failed: {failure.error}", hint, retryable=failure.retryable)
        return None


# --------------------------------------------------------------------------------------------- status


class _Status:
    def __init__(self, job: EvaluationJob, job_dir: Path):
        self.path = job_dir / "status.json"
        self.previous = _unfinished_previous(self.path)
        spec = job.to_manifest()["spec"]
        if spec.get("storage", {}).get("endpoint"):
            spec["storage"]["endpoint"] = storage.redact(spec["storage"]["endpoint"])
        runtime = spec.get("runtime") or {}
        if runtime.get("env"):  # values may be secrets: the status names the variables only
            runtime["env"] = [{"name": e.get("name")} for e in runtime["env"]]
        self.doc: dict[str, Any] = {"job": job.name, "phase": "Pending", "startTime": _now(), "pid": os.getpid(),
                                    "spec": spec}
        if self.previous:
            self.doc["previousRun"] = self.previous

    def update(self, **fields) -> None:
        self.doc.update(fields)
        text = json.dumps(self.doc, indent=1)
        if len(text) > MAX_STATUS_BYTES:
            text = json.dumps({**self.doc, "spec": "(omitted: too large)"}, indent=1)
        storage.write_text(str(self.path), text)


def _unfinished_previous(path: Path) -> dict[str, Any] | None:
    """A status.json left non-terminal means that run was killed before it could say so."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or old.get("phase") in (*protocol.TERMINAL, None):
        return None
    return {"phase": "Failed", "reason": protocol.INTERRUPTED, "startTime": old.get("startTime"),
            "message": f"the run started at {old.get('startTime')} (pid {old.get('pid')}) ended in phase "
                       f"{old.get('phase')} without a final status (killed); this run resumes it"}


def _bar(done: int, total: int, rate: float, width: int = 30, elapsed: float | None = None) -> str:
    """The progress line; given ``elapsed`` (ppl has ended), the time it took instead of rate and eta."""
    frac = done / total if total else 1.0
    head = f"ppl [{'#' * int(frac * width):<{width}}] {done}/{total}"
    if elapsed is not None:
        return f"{head} in {elapsed:.0f}s"
    eta = f"{(total - done) / rate:5.0f}s" if rate > 0 and done < total else "    -"
    return f"{head} {rate:6.2f} samples/s eta {eta}"


def _progress_doc(done: int, total: int, rate: float) -> dict[str, Any]:
    return {"samplesDone": done, "samplesTotal": total, "percent": round(100 * done / total, 1) if total else 100.0,
            "samplesPerSecond": round(rate, 3)}


# ------------------------------------------------------------------------------------------------ run


@contextlib.contextmanager
def _signals_raise() -> Any:
    """SIGTERM and SIGHUP (a closed terminal) raise Interrupted, as Ctrl-C raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def evaluate(job: EvaluationJob) -> MetricsReport:
    """Run ``job`` on this machine, quietly, into an output it may overwrite; its metrics (the pipeline
    check's way of running its oracle, `assay.check.check`)."""
    return run_job(job, progress=False, overwrite=True).report


def storage_settings(job: EvaluationJob) -> contextlib.AbstractContextManager:
    """spec.storage.endpoint and region for the storage calls of this run, over AWS_ENDPOINT_URL and
    AWS_REGION, as pods get them. Its workers are handed the same (``_Children.start``)."""
    return storage.using_spec(job.spec.storage)


def _pinned(job: EvaluationJob, dataset: shards.DatasetManifest, model: packages.ModelManifest) -> EvaluationJob:
    """The job with its model and dataset at the exact version folders the run was pinned to."""
    spec = job.spec.model_copy(update={"dataset": UriRef(uri=dataset.uri), "model": UriRef(uri=model.uri)})
    return job.model_copy(update={"spec": spec})


def run_job(job: EvaluationJob, workers: int | None = None, progress: bool = True, err=None,
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
            status = _Status(job, job_dir)
            status.update(phase="Running", shards={"total": len(dataset.shards)},
                          model={"uri": model.uri, "name": model.name, "version": model.version},
                          dataset={"uri": dataset.uri, "name": dataset.name, "version": dataset.version},
                          datasetDigest=dataset.version)
            children = _Children(job_dir, upload=not storage.is_local(output))
            try:
                with _signals_raise():
                    report = _run(job, ctx, dataset, model, children, status, lease, progress, err, clock)
            except Interrupted as exc:
                children.stop()
                status.update(phase="Failed", reason=protocol.INTERRUPTED, completionTime=_now(),
                              message=f"interrupted by {exc}; run the same command again to resume")
                raise
            except KeyboardInterrupt:
                children.stop()
                status.update(phase="Failed", reason=protocol.INTERRUPTED, completionTime=_now(),
                              message="interrupted by Ctrl-C; run the same command again to resume")
                raise
            except AssayError as exc:
                children.stop()
                status.update(phase="Failed", reason=getattr(exc, "reason", type(exc).__name__),
                              message=str(exc), completionTime=_now())
                raise
            status.update(phase="Succeeded", completionTime=_now(), results=report.summary,
                          resultsUri=layout.metrics_uri(output))
    return LocalRun(job_dir=job_dir, status=status.doc, report=report)


def _run(job: EvaluationJob, ctx: RunContext, dataset, model, children: _Children, status: _Status, lease,
         progress: bool, err, clock: Callable[[], float]) -> MetricsReport:
    total, deadline = dataset.samples, job.spec.active_deadline_seconds
    started = clock()
    items = layout.index_count(len(dataset.shards), ctx.shards_per_index)
    workers = min(job.spec.ppl.workers, items)  # a worker without an item would only load the model
    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = children.queue(list(range(items)), workers)
    for i in range(workers):
        children.start("ppl", f"ppl-{i:04d}", ctx.model_copy(update={"worker_count": workers}), threads, queue)
    status.update(shards={"total": len(dataset.shards), "perIndex": ctx.shards_per_index, "indexes": items})
    _wait(children, job, total, status, progress, err, started, deadline, lease, clock)
    failed = children.failure()
    if failed:
        failed.reason = protocol.SHARD_RETRIES_EXHAUSTED if failed.retryable else protocol.PERMANENT_ERROR
        raise failed
    status.update(phase="Evaluating", progress=_progress_doc(total, total, 0.0))
    children.procs.clear()
    children.start("cmp", "cmp", ctx, max(1, os.cpu_count() or 1))
    _wait(children, job, total, status, False, err, started, deadline, lease, clock)
    failed = children.failure()
    if failed:
        failed.reason = protocol.METRICS_FAILED
        raise failed
    return read_report(job.spec.output.uri)


def read_report(output_uri: str) -> MetricsReport:
    doc = json.loads(storage.read_bytes(layout.metrics_uri(output_uri)))
    return MetricsReport(evaluator=doc["evaluator"], summary=doc["summary"],
                         headline=(doc["headline"]["name"], doc["headline"]["value"]), full=doc.get("full", {}))


def _wait(children: _Children, job: EvaluationJob, total: int, status: _Status, progress: bool, err,
          started: float, deadline: int | None, lease, clock: Callable[[], float]) -> None:
    last = 0.0
    tty = progress and err.isatty()
    while children.alive():
        time.sleep(0.25)
        if deadline is not None and clock() - started > deadline:
            children.stop()
            done, _ = children.progress()
            exc = EvaluationError(f"the job ran past spec.activeDeadlineSeconds={deadline} "
                                  f"({done}/{total} samples predicted); its processes were stopped",
                                  "raise spec.activeDeadlineSeconds, or see the logs for a handler that hangs; "
                                  "rerun to resume")
            exc.reason = protocol.DEADLINE_EXCEEDED
            raise exc
        if lease.lost:
            children.stop()
            exc = EvaluationError(f"lost the lease on {job.spec.output.uri} to another run",
                                  "two runs were writing into one output; rerun one of them alone")
            exc.reason = protocol.LEASE_LOST
            raise exc
        now = time.monotonic()
        if not progress or now - last < (1 if tty else 10):
            continue
        last = now
        done, rate = children.progress()
        status.update(progress=_progress_doc(done, total, rate))
        print(("\r" if tty else "") + _bar(done, total, rate), end="" if tty else "\n", file=err, flush=True)
    for p, _, _ in children.procs.values():
        p.join()
    children.end_groups()  # the workers are done: what their handlers started goes with them
    if progress:
        # the last line: finished items no longer report a rate, so say how long ppl took instead
        done, _ = children.progress()
        line = _bar(done, total, 0.0, elapsed=clock() - started)
        print(("\r\x1b[K" if tty else "") + line, file=err, flush=True)  # \x1b[K: clear the longer line before
