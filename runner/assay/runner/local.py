"""Run a whole EvaluationJob on this machine: N ppl worker processes, then cmp, with a progress bar.

The same ``ppl.run`` and ``cmp.run`` the pods call, with the same RunContext; the job folder gets
``status.json`` (phase, conditions-like fields, progress, results) and ``logs/``. Run it again after a
crash or Ctrl-C and finished shards are skipped.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assay import layout, shards, storage
from assay.errors import EXIT_PERMANENT, EXIT_RETRYABLE, AssayError, EvaluationError
from assay.spec import EvaluationJob, RunContext


@dataclass
class LocalRun:
    job_dir: Path
    status: dict[str, Any]
    report: Any = None


def job_dir_for(job: EvaluationJob) -> Path:
    """The output folder itself when it is local, else ./.assay/jobs/<name>."""
    if storage.is_local(job.spec.output.uri):
        return Path(storage.parse(job.spec.output.uri).path)
    return Path(".assay") / "jobs" / job.name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _worker(ctx_json: str, log_path: str, threads: int, upload_log: bool) -> None:
    """Child process: one ppl worker, its log in ``log_path``."""
    import logging

    import torch

    from assay.logs import setup_logging
    from assay.runner import ppl

    torch.set_num_threads(threads)
    ctx = RunContext.model_validate_json(ctx_json)
    with open(log_path, "a") as stream, setup_logging(ctx, "ppl", ctx.worker_index, stream=stream,
                                                       upload=upload_log):
        try:
            ppl.run(ctx)
        except AssayError as exc:
            logging.getLogger("assay.ppl").error("%s: %s", type(exc).__name__, exc)
            sys.exit(EXIT_RETRYABLE if exc.retryable else EXIT_PERMANENT)
        except BaseException:
            logging.getLogger("assay.ppl").exception("unexpected error")
            sys.exit(EXIT_RETRYABLE)


class _Status:
    def __init__(self, job: EvaluationJob, job_dir: Path):
        self.path = job_dir / "status.json"
        self.doc: dict[str, Any] = {"job": job.name, "phase": "Pending", "startTime": _now(),
                                    "spec": job.to_manifest()["spec"]}

    def update(self, **fields) -> None:
        self.doc.update(fields)
        storage.write_text(str(self.path), json.dumps(self.doc, indent=1))


def _read_progress(output_uri: str, workers: int) -> tuple[int, float]:
    done, rate = 0, 0.0
    for i in range(workers):
        try:
            doc = json.loads(storage.read_bytes(layout.progress_uri(output_uri, i)))
        except (AssayError, ValueError):
            continue
        done += int(doc.get("samplesDone", 0))
        rate += float(doc.get("samplesPerSecond", 0.0))
    return done, rate


def _bar(done: int, total: int, rate: float, width: int = 30) -> str:
    frac = done / total if total else 1.0
    eta = f"{(total - done) / rate:5.0f}s" if rate > 0 and done < total else "    -"
    return f"ppl [{'#' * int(frac * width):<{width}}] {done}/{total} {rate:6.2f} samples/s eta {eta}"


def run_job(job: EvaluationJob, workers: int | None = None, progress: bool = True, err=sys.stderr) -> LocalRun:
    workers = workers or job.spec.ppl.workers
    if workers != job.spec.ppl.workers:
        job = job.model_copy(update={"spec": job.spec.model_copy(
            update={"ppl": job.spec.ppl.model_copy(update={"workers": workers})})})
    job_dir = job_dir_for(job)
    (job_dir / "logs").mkdir(parents=True, exist_ok=True)
    status = _Status(job, job_dir)
    dataset = shards.load_manifest(job.spec.dataset.uri)
    total = dataset.samples
    status.update(phase="Running", shards={"total": len(dataset.shards)}, datasetDigest=dataset.version)
    upload = not storage.is_local(job.spec.output.uri)  # a local output already holds job_dir/logs
    threads = max(1, (os.cpu_count() or 1) // workers)
    spawn = mp.get_context("spawn")
    procs = []
    for i in range(workers):
        ctx = RunContext.for_worker(job, i)
        log_path = job_dir / "logs" / f"ppl-{i:04d}.log"
        p = spawn.Process(target=_worker, args=(ctx.model_dump_json(), str(log_path), threads, upload),
                          name=f"assay-ppl-{i}")
        p.start()
        procs.append(p)
    try:
        _wait(procs, job, total, status, progress, err)
    except BaseException:
        for p in procs:
            p.terminate()
        status.update(phase="Failed", message="interrupted; run the same command again to resume",
                      completionTime=_now())
        raise
    failed = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        i, code = failed[0]
        msg = (f"ppl worker {i} failed with exit code {code}; see {job_dir / 'logs' / f'ppl-{i:04d}.log'} "
               f"(rerun to resume: finished shards are kept)")
        status.update(phase="Failed", reason="ShardFailed", message=msg, completionTime=_now())
        raise EvaluationError(msg)
    status.update(phase="Evaluating", progress=_progress_doc(total, total, 0.0))
    report = _run_cmp(job, job_dir, upload)
    status.update(phase="Succeeded", completionTime=_now(), results=report.summary,
                  resultsUri=layout.metrics_uri(job.spec.output.uri))
    return LocalRun(job_dir=job_dir, status=status.doc, report=report)


def _progress_doc(done: int, total: int, rate: float) -> dict[str, Any]:
    return {"samplesDone": done, "samplesTotal": total, "percent": round(100 * done / total, 1) if total else 100.0,
            "samplesPerSecond": round(rate, 3)}


def _wait(procs, job: EvaluationJob, total: int, status: _Status, progress: bool, err) -> None:
    last = 0.0
    tty = progress and err.isatty()
    while any(p.is_alive() for p in procs):
        time.sleep(0.5)
        now = time.monotonic()
        if now - last < (1 if tty else 10):
            continue
        last = now
        done, rate = _read_progress(job.spec.output.uri, len(procs))
        status.update(progress=_progress_doc(done, total, rate))
        if progress:
            print(("\r" if tty else "") + _bar(done, total, rate), end="" if tty else "\n", file=err, flush=True)
    for p in procs:
        p.join()
    done, rate = _read_progress(job.spec.output.uri, len(procs))
    if progress:
        print(("\r" if tty else "") + _bar(done, total, rate), file=err, flush=True)


def _run_cmp(job: EvaluationJob, job_dir: Path, upload: bool):
    from assay.logs import setup_logging
    from assay.runner import cmp

    ctx = RunContext.for_worker(job, 0)
    with open(job_dir / "logs" / "cmp.log", "a") as stream, setup_logging(ctx, "cmp", None, stream=stream,
                                                                        upload=upload):
        return cmp.run(ctx)
