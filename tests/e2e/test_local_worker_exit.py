"""A worker of assay run ends with os._exit: the progress reports it made last still reach the parent.
(It starts a process: the one test of the run's watch that is not pure.)"""

from __future__ import annotations

import multiprocessing as mp
import queue
from multiprocessing.queues import Queue

from assay.runner import supervise

REPORTS = 50


def _report_and_exit(reports: Queue, exit_path: str) -> None:
    for item in range(REPORTS):
        reports.put({"worker": item, "samplesDone": 1, "samplesTotal": 1, "samplesPerSecond": 0.0})
    supervise._exit(exit_path, None, reports)


def test_the_reports_a_worker_makes_just_before_it_exits_arrive(tmp_path):
    """The bar's last line said "12/17 in 15s" for a run that predicted all 17 samples: the worker ended
    with os._exit, which does not wait for the queue's feeder thread to write its last reports."""
    spawn = mp.get_context("spawn")
    reports = spawn.Queue()
    worker = spawn.Process(target=_report_and_exit, args=(reports, str(tmp_path / "exit.json")))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0 and (tmp_path / "exit.json").is_file()
    arrived = []
    while True:  # as the parent reads them: what is in the pipe now, without waiting
        try:
            arrived.append(reports.get_nowait()["worker"])
        except queue.Empty:
            break
    assert arrived == list(range(REPORTS))
