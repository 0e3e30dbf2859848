"""assay_operator.workqueue: the operator's replacement for its resync loop (issue 23). A key runs once
however often it is added, never twice at once, again after a change that came during its run, when its
timer is due, and after a failure with exponential backoff."""

from __future__ import annotations

import asyncio
import threading
import time

from assay_operator.workqueue import WorkQueue


class Recorder:
    def __init__(self, hold: float = 0.0, fail: int = 0, due: float | None = None) -> None:
        self.runs: list[tuple[str, float]] = []
        self.hold, self.fail, self.due = hold, fail, due
        self.active: dict[str, int] = {}
        self.overlap = False
        self.lock = threading.Lock()

    def __call__(self, key: str) -> float | None:
        with self.lock:
            self.active[key] = self.active.get(key, 0) + 1
            self.overlap |= self.active[key] > 1
            self.runs.append((key, time.monotonic()))
            failing = self.fail > 0
            self.fail -= failing
        time.sleep(self.hold)
        with self.lock:
            self.active[key] -= 1
        if failing:
            raise RuntimeError("transient")
        return None if self.due is None else time.monotonic() + self.due


def run(work: Recorder, body, *, workers: int = 4) -> None:
    async def main() -> None:
        queue = WorkQueue(work, workers=workers, retry_min=0.05, retry_max=0.2)
        queue.start()
        try:
            await body(queue)
        finally:
            await queue.stop()
    asyncio.run(main())


def test_adds_before_a_worker_takes_the_key_run_it_once():
    work = Recorder()

    async def body(queue):
        for _ in range(50):
            queue.add("a")
        queue.add("b")
        await asyncio.sleep(0.1)

    run(work, body)
    assert sorted(k for k, _ in work.runs) == ["a", "b"]


def test_one_key_never_runs_twice_at_once_but_runs_again_after_a_change_during_its_run():
    work = Recorder(hold=0.1)

    async def body(queue):
        queue.add("a")
        await asyncio.sleep(0.03)
        queue.add("a")  # changed while in work
        queue.add("a")
        await asyncio.sleep(0.6)

    run(work, body)
    assert [k for k, _ in work.runs] == ["a", "a"] and not work.overlap


def test_different_keys_run_concurrently_up_to_the_pool():
    work = Recorder(hold=1.0)

    async def body(queue):
        start = time.monotonic()
        for key in "abcd":
            queue.add(key)
        while len(work.runs) < 4:
            await asyncio.sleep(0.01)
        assert time.monotonic() - start < 0.8, "four workers: no key waited for another's second"

    run(work, body, workers=4)


def test_a_due_time_runs_the_key_again_then_nothing():
    work = Recorder(due=0.1)

    async def body(queue):
        queue.add("a")
        await asyncio.sleep(0.05)
        work.due = None
        await asyncio.sleep(0.6)
        assert queue.pending() == {"queued": 0, "working": 0, "timers": 0}

    run(work, body)
    assert [k for k, _ in work.runs] == ["a", "a"]
    assert work.runs[1][1] - work.runs[0][1] >= 0.09


def test_failures_are_retried_with_exponential_backoff():
    work = Recorder(fail=3)

    async def body(queue):
        queue.add("a")
        await asyncio.sleep(1.0)

    run(work, body)
    times = [t for _, t in work.runs]
    assert len(times) == 4, "three failures, then the run that succeeds"
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.19  # 0.05, 0.1, 0.2 (the cap)


def test_a_forgotten_key_loses_its_timer():
    work = Recorder(due=0.1)

    async def body(queue):
        queue.add("a")
        await asyncio.sleep(0.05)
        queue.forget("a")
        await asyncio.sleep(0.2)

    run(work, body)
    assert len(work.runs) == 1


def test_a_follower_queues_but_works_only_once_it_leads():
    """Leader election's follower keeps its watches: what they queue runs when it takes over."""
    work = Recorder()

    async def main() -> None:
        leading = asyncio.Event()
        queue = WorkQueue(work, workers=2, retry_min=0.05, retry_max=0.2, gate=leading)
        queue.start()
        try:
            for key in ("a", "b", "a"):
                queue.add(key)
            await asyncio.sleep(0.1)
            assert work.runs == []
            leading.set()
            await asyncio.sleep(0.5)
        finally:
            await queue.stop()

    asyncio.run(main())
    assert sorted(k for k, _ in work.runs) == ["a", "b"]
