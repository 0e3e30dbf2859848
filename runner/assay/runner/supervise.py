"""``assay run``'s processes: each ppl worker and the cmp step in a spawned process of its own, started,
watched and stopped together; the signals that stop the run; the wait loop (deadline, lease, progress).

A process reports its end in an exit file (``protocol``'s step report, as a pod's termination message);
one that ends with code 0 and no file was ended by code inside it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from assay import protocol, storage
from assay.errors import EXIT_PERMANENT, AssayError, EvaluationError
from assay.runner import groups
from assay.spec import RunContext

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue

    from assay.runner.progress import Progress
    from assay.runrecord import Lease


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
           parent: int, items: Queue | None = None, reports: Queue | None = None,
           access: storage.S3Access | None = None) -> None:
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
    _exit(exit_path, failure, reports)


def _exit(exit_path: str, failure: protocol.Failure | None, reports: Queue | None) -> NoReturn:
    """End the process with its report in ``exit_path`` and its exit code, once its progress reports are
    in the pipe (os._exit does not wait for the queue's feeder thread; the parent keeps the pipe drained)."""
    # always written: a process that ends with code 0 and no file was ended by code inside it (os._exit)
    Path(exit_path).write_text(protocol.failure_message(failure) if failure else protocol.result_message(None))
    if reports is not None:
        reports.close()
        reports.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(failure.exit_code if failure else 0)


class Children:
    """The run's processes: spawned, watched, and stopped together."""

    def __init__(self, job_dir: Path, upload: bool):
        self.job_dir, self.upload = job_dir, upload
        self.procs: dict[str, tuple[BaseProcess, Path, Path]] = {}
        self._spawn = mp.get_context("spawn")
        #: ppl workers' progress reports, one document per work item (the channel the work queue uses too)
        self.reports: Queue = self._spawn.Queue()

    def queue(self, items: list[int], workers: int) -> Queue:
        """A work queue holding ``items`` and one end marker per worker."""
        q = self._spawn.Queue()
        for item in [*items, *([None] * workers)]:
            q.put(item)
        return q

    def start(self, role: str, name: str, ctx: RunContext, threads: int, items: Queue | None = None) -> None:
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


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) raise Interrupted, as Ctrl-C raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class Limits:
    """What ends a run before its processes do: ``deadline`` seconds (spec.activeDeadlineSeconds) from
    ``started`` by ``clock``, and losing the ``lease`` on its output."""

    started: float
    deadline: int | None
    lease: Lease
    output_uri: str
    clock: Callable[[], float] = time.monotonic

    def check(self, children: Children, progress: Progress) -> None:
        """Stop the processes and raise if the run is past its deadline or lost its lease."""
        if self.deadline is not None and self.clock() - self.started > self.deadline:
            children.stop()
            done, _ = progress.counts()
            exc = EvaluationError(f"the job ran past spec.activeDeadlineSeconds={self.deadline} "
                                  f"({done}/{progress.total} samples predicted); its processes were stopped",
                                  "raise spec.activeDeadlineSeconds, or see the logs for a handler that hangs; "
                                  "rerun to resume")
            exc.reason = protocol.DEADLINE_EXCEEDED
            raise exc
        if self.lease.lost:
            children.stop()
            exc = EvaluationError(f"lost the lease on {self.output_uri} to another run",
                                  "two runs were writing into one output; rerun one of them alone")
            exc.reason = protocol.LEASE_LOST
            raise exc


def wait(children: Children, limits: Limits, progress: Progress, show: bool) -> None:
    """Until every process has ended (``show``: with the progress bar), then end what their handlers started."""
    while children.alive():
        time.sleep(0.25)
        progress.read()  # shown or not: a worker's last reports must fit in the pipe for it to exit
        limits.check(children, progress)
        if show:
            progress.tick()
    for p, _, _ in children.procs.values():
        p.join()
    children.end_groups()  # the workers are done: what their handlers started goes with them
    if show:
        progress.finish(limits.clock() - limits.started)
