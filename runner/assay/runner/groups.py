"""Process groups: each worker leads one, so that the run can end whatever the model's handler started.

Used by ``assay run`` (one group per worker process) and by the ppl pod entrypoint (one group for the step).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from assay.errors import EXIT_RETRYABLE

#: What a worker that ended with code 0 before its step returned is told (os._exit() in user code).
EARLY_EXIT = ("ended with exit code 0 before it finished its work: code running in it ended the process "
              "(os._exit(), or exit() in a thread it started)")
EARLY_EXIT_HINT = "remove that call from the model's handler (predict() and load() must return)"


def lead_group_and_die_with(parent: int) -> None:
    """In a worker: lead a process group of its own (so that what its handler starts can be ended with it)
    and get SIGKILL when ``parent`` dies, however it dies (SIGKILL included). Linux only; elsewhere the
    parent's signal handlers still end the workers."""
    os.setpgid(0, 0)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(EXIT_RETRYABLE)


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to process group ``pgid``; whether the group still had a member. (A group id is
    its leader's pid, which Linux does not reuse while a member lives, so this never hits a stranger.)"""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member that is not ours any more (setuid): nothing we may end
        return False
    return True


def end_groups(groups: list[int], grace: float = 5.0) -> None:
    """End what is left of each group: SIGTERM, then SIGKILL after ``grace`` seconds. A process that left
    its group (setsid) is out of reach."""
    live = [g for g in groups if signal_group(g, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        _reap_orphans()
        live = [g for g in live if signal_group(g, 0)]
    for g in live:
        signal_group(g, signal.SIGKILL)
    _reap_orphans()


def _reap_orphans() -> None:
    """Collect exited orphans handed to this process (a container's PID 1 inherits them): a zombie still
    counts as a group member, so the wait above would last the whole grace period."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
