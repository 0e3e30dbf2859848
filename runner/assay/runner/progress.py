"""ppl's progress as ``assay run`` shows it: the workers' reports from their queue, summed into the bar on
the terminal and the ``progress`` of status.json."""

from __future__ import annotations

import contextlib
import queue
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from assay.runner.status_file import StatusFile


def bar(done: int, total: int, rate: float, width: int = 30, elapsed: float | None = None) -> str:
    """The progress line; given ``elapsed`` (ppl has ended), the time it took instead of rate and eta."""
    frac = done / total if total else 1.0
    head = f"ppl [{'#' * int(frac * width):<{width}}] {done}/{total}"
    if elapsed is not None:
        return f"{head} in {elapsed:.0f}s"
    eta = f"{(total - done) / rate:5.0f}s" if rate > 0 and done < total else "    -"
    return f"{head} {rate:6.2f} samples/s eta {eta}"


def progress_doc(done: int, total: int, rate: float) -> dict[str, Any]:
    return {"samplesDone": done, "samplesTotal": total,
            "percent": round(100 * done / total, 1) if total else 100.0, "samplesPerSecond": round(rate, 3)}


class Progress:
    """The run's ``total`` samples against the workers' reports (one document per work item, the latest
    of each counts), shown on ``err`` and in ``status``."""

    def __init__(self, reports: Queue, total: int, status: StatusFile, err: TextIO):
        self.reports, self.total, self.status, self.err = reports, total, status, err
        self.tty = err.isatty()
        self._latest: dict[int, dict[str, Any]] = {}
        self._last = 0.0

    def read(self) -> None:
        """Take the reports waiting in the queue."""
        with contextlib.suppress(queue.Empty):
            while True:
                doc = self.reports.get_nowait()
                self._latest[int(doc["worker"])] = doc

    def counts(self) -> tuple[int, float]:
        """Samples done and the current rate, summed over the work items' latest reports."""
        self.read()
        done = sum(int(d["samplesDone"]) for d in self._latest.values())
        rate = sum(float(d["samplesPerSecond"]) for d in self._latest.values()
                   if int(d["samplesDone"]) < int(d["samplesTotal"]))  # items still running
        return done, rate

    def tick(self) -> None:
        """Update the bar and status.json: every second on a terminal, every 10 s into a log."""
        now = time.monotonic()
        if now - self._last < (1 if self.tty else 10):
            return
        self._last = now
        done, rate = self.counts()
        self.status.update(progress=progress_doc(done, self.total, rate))
        line = bar(done, self.total, rate)
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", file=self.err, flush=True)

    def finish(self, elapsed: float) -> None:
        """The last line: finished items no longer report a rate, so it says how long ppl took instead."""
        done, _ = self.counts()
        line = bar(done, self.total, 0.0, elapsed=elapsed)
        # \x1b[K: clear what is left of the longer bar line
        print(("\r\x1b[K" if self.tty else "") + line, file=self.err, flush=True)
