"""A rate-limited work queue of job keys, as client-go's: a bounded pool of workers, a key queued at
most once however often it is added, never worked on by two workers at once (added while in work, it
runs again after), a timer per key for when it is due, and exponential backoff per key after failures.

Runs on one asyncio loop (kopf's): ``add`` and ``add_at`` are called from the loop (kopf's handlers);
the work itself runs in a thread pool of ``workers`` threads, so a slow API call holds one worker only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

Key = Hashable
#: The work: key -> the monotonic time it is next due (None: only when added again). Raising retries it
#: (the work reports its own failures: it runs in a worker thread, where a report may block).
Work = Callable[[Key], float | None]


class WorkQueue:
    def __init__(self, work: Work, *, workers: int, retry_min: float, retry_max: float,
                 gate: asyncio.Event | None = None) -> None:
        self._work = work
        #: workers take keys only while it is set (a follower of leader election queues, and waits)
        self._gate = gate
        self._workers, self._retry_min, self._retry_max = workers, retry_min, retry_max
        self._ready: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()  # in _ready, or to go there once its work ends
        self._working: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._worker()) for _ in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self._timers.values():
            handle.cancel()
        # a reconcile in progress finishes (a next leader must not overlap it); queued ones are dropped
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)

    def add(self, key: Key) -> None:
        """Work on ``key`` soon (once, however often it is added before a worker takes it)."""
        if key in self._queued:
            return
        self._queued.add(key)
        if key not in self._working:
            self._ready.put_nowait(key)

    def add_at(self, key: Key, when: float) -> None:
        """Work on ``key`` at the monotonic time ``when``; an earlier timer of the key stays."""
        loop = asyncio.get_running_loop()
        handle = self._timers.get(key)
        if handle is not None:
            if handle.when() <= when:
                return
            handle.cancel()
        self._timers[key] = loop.call_at(loop.time() + max(0.0, when - time.monotonic()), self._due, key)

    def forget(self, key: Key) -> None:
        """The key is gone: drop its timer and its failure count (a queued run finds it gone)."""
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()
        self._failures.pop(key, None)

    def pending(self) -> dict[str, int]:
        return {"queued": len(self._queued), "working": len(self._working), "timers": len(self._timers)}

    def _due(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._gate is not None:
                await self._gate.wait()
            key = await self._ready.get()
            self._queued.discard(key)
            self._working.add(key)
            try:
                due = await loop.run_in_executor(self._pool, self._work, key)
            except Exception:  # noqa: BLE001 - any failure is retried with backoff
                failures = self._failures.get(key, 0)
                self._failures[key] = failures + 1
                self.add_at(key, time.monotonic() + min(self._retry_max, self._retry_min * 2 ** failures))
            else:
                self._failures.pop(key, None)
                if due is not None:
                    self.add_at(key, due)
            finally:
                self._working.discard(key)
                if key in self._queued:  # added while in work: run again with what changed
                    self._ready.put_nowait(key)
