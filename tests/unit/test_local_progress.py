"""assay run's watch over its workers, without processes: the progress summed from the workers' reports,
the bar and status.json's progress, and the limits (deadline, lease) that stop the run."""

from __future__ import annotations

import io
import queue
import time
from types import SimpleNamespace

import pytest

from assay import protocol
from assay.errors import EvaluationError
from assay.runner.progress import Progress
from assay.runner.supervise import Limits


class _Status:
    def __init__(self) -> None:
        self.updates: list[dict] = []

    def update(self, **fields: object) -> None:
        self.updates.append(fields)


class _Children:
    stopped = 0

    def stop(self) -> None:
        self.stopped += 1


def _report(item: int, done: int, total: int, rate: float) -> dict:
    return {"worker": item, "samplesDone": done, "samplesTotal": total, "samplesPerSecond": rate}


def _progress(*reports: dict, total: int = 20) -> tuple[Progress, _Status, io.StringIO]:
    q: queue.Queue = queue.Queue()
    for r in reports:
        q.put(r)
    status, err = _Status(), io.StringIO()
    return Progress(q, total, status, err), status, err


def test_each_items_latest_report_counts_and_finished_items_add_no_rate():
    progress, _, _ = _progress(_report(0, 2, 10, 1.0), _report(1, 10, 10, 3.0), _report(0, 7, 10, 2.5))
    assert progress.counts() == (17, 2.5)
    assert progress.counts() == (17, 2.5), "reports read before stay counted"
    progress.reports.put(_report(0, 10, 10, 2.0))
    assert progress.counts() == (20, 0.0)


def test_a_log_gets_a_line_every_ten_seconds_and_status_json_the_same_numbers():
    progress, status, err = _progress(_report(0, 5, 10, 2.0))
    progress.tick()
    progress.tick()  # at once: too soon for another line
    assert err.getvalue() == "ppl [#######                       ] 5/20   2.00 samples/s eta     8s\n"
    assert status.updates == [{"progress": {"samplesDone": 5, "samplesTotal": 20, "percent": 25.0,
                                            "samplesPerSecond": 2.0}}]
    progress.finish(12.4)
    assert err.getvalue().splitlines()[-1] == f"ppl [{'#' * 7:<30}] 5/20 in 12s"


def test_the_deadline_stops_the_processes_and_says_how_far_ppl_got():
    progress, _, _ = _progress(_report(0, 5, 10, 2.0))
    children = _Children()
    lease = SimpleNamespace(lost=False)
    now = [100.0]
    limits = Limits(now[0], 60, lease, "file:///out", clock=lambda: now[0])
    now[0] += 60
    limits.check(children, progress)
    assert children.stopped == 0, "at the deadline, not past it"
    now[0] += 0.5
    with pytest.raises(EvaluationError, match=r"activeDeadlineSeconds=60 \(5/20 samples predicted\)") as caught:
        limits.check(children, progress)
    assert caught.value.reason == protocol.DEADLINE_EXCEEDED and children.stopped == 1


def test_a_lost_lease_stops_the_processes():
    progress, _, _ = _progress()
    children = _Children()
    with pytest.raises(EvaluationError, match="lost the lease on s3://b/out to another run") as caught:
        Limits(time.monotonic(), None, SimpleNamespace(lost=True), "s3://b/out").check(children, progress)
    assert caught.value.reason == protocol.LEASE_LOST and children.stopped == 1

