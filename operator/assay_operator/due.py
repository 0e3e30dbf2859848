"""When a job must be reconciled again although no watch event may come: the moments at which time
alone changes what ``status.derive`` or ``plan`` decide. Pure; ``reconcile`` returns the earliest and
``workqueue`` holds one timer per job for it (the operator has no resync loop).

- a pod waiting in an image-pull or config error fails the job fail_fast_seconds after it was created;
- a Pending pod fails it spec.pendingDeadlineSeconds after it was created;
- a hold (quota, a forbidden create, FailedCreate) fails it pendingDeadlineSeconds after blockedSince,
  and a refused create is retried every hold_retry_seconds (a quota frees without any watched change);
- a Running job's ShardsProgressing turns False stall_seconds after its lastProgressTime;
- a progress-only status change held back by progress_write_seconds is written when that has passed;
- a child Kueue suspended is looked at a few times more while its Workload has not said why;
- a finished job's children are deleted spec.ttlSecondsAfterFinished after completionTime.

A finished job whose TTL acted (or that has none) has nothing due: it costs nothing until it changes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from assay.spec import EvaluationJob
from assay_operator import status


def running(o: status.Observed, new: dict[str, Any], hold_retry_seconds: float) -> dt.datetime | None:
    """The earliest moment after ``o.now`` at which an unfinished job's decision may change by time."""
    if new.get("phase") in status.TERMINAL:
        return None
    spec, moments = o.spec, []
    for pod in o.pods:
        meta, st = pod.get("metadata") or {}, pod.get("status") or {}
        created = status.parse_time(meta.get("creationTimestamp"))
        if created is None or meta.get("deletionTimestamp"):
            continue
        waiting = [((cs.get("state") or {}).get("waiting") or {}).get("reason")
                   for cs in st.get("containerStatuses") or []]
        if any(reason in status.FAIL_FAST_REASONS for reason in waiting):
            moments.append(created + dt.timedelta(seconds=o.fail_fast_seconds))
        if st.get("phase", "Pending") == "Pending":
            moments.append(created + dt.timedelta(seconds=spec.pending_deadline_seconds))
    blocked = status.parse_time(new.get("blockedSince"))
    if blocked is not None:
        moments.append(blocked + dt.timedelta(seconds=spec.pending_deadline_seconds))
    if o.hold is not None:
        moments.append(o.now + dt.timedelta(seconds=hold_retry_seconds))
    if new.get("reason") == "Resuming" or (new.get("reason") == "WaitingForAdmission" and not o.admission):
        moments.extend(_held_by_another(o))
    last = status.parse_time((new.get("progress") or {}).get("lastProgressTime"))
    if new.get("phase") == status.RUNNING and last is not None and _progressing(new):
        # derive compares with '>': one second past the bound
        moments.append(last + dt.timedelta(seconds=o.stall_seconds + 1))
    return _earliest(moments, o.now)


def _held_by_another(o: status.Observed) -> list[dt.datetime]:
    """Kueue's word on a suspended child that no watch of ours shows: under manageJobsWithoutQueueName
    Kueue suspends a Job at creation and adds its Workload a moment later (status said Resuming for ever),
    and a Workload's message (what the queue lacks) comes with Kueue's next scheduling attempt. Look again
    a few times after the child was suspended, then no more: a job that waits in a queue costs nothing."""
    moments = []
    for child in (o.resolve, o.ppl, o.cmp):
        if child is None or status.job_state(child) != "Suspended":
            continue
        conds = {c.get("type"): c for c in (child.get("status") or {}).get("conditions") or []}
        since = status.parse_time((conds.get("Suspended") or {}).get("lastTransitionTime")
                                  or (child.get("metadata") or {}).get("creationTimestamp"))
        if since is not None:
            moments.extend(since + dt.timedelta(seconds=s) for s in LOOKS_AT_A_SUSPENDED_CHILD)
    return moments


#: Seconds after a child was suspended at which Kueue's Workload is read again (Kueue creates one within
#: about a second of the Job, and retries scheduling with a backoff of its own).
LOOKS_AT_A_SUSPENDED_CHILD = (3, 10, 30, 90, 300)


def finished(job: EvaluationJob, previous: dict[str, Any], children: Iterable[Any],
             now: dt.datetime) -> dt.datetime | None:
    """A finished job: when its TTL deletes its children, if it has a TTL and children are left."""
    ttl, done = job.spec.ttl_seconds_after_finished, status.parse_time(previous.get("completionTime"))
    if ttl is None or done is None or not any(c is not None for c in children):
        return None
    return _earliest([done + dt.timedelta(seconds=ttl)], now)


def earlier(moment: dt.datetime | None, other: dt.datetime | None) -> dt.datetime | None:
    """The earlier of two optional moments (None: nothing due)."""
    return min((m for m in (moment, other) if m is not None), default=None)


def _progressing(new: dict[str, Any]) -> bool:
    return any(c.get("type") == "ShardsProgressing" and c.get("status") == "True"
               for c in new.get("conditions") or [])


def _earliest(moments: list[dt.datetime], now: dt.datetime) -> dt.datetime | None:
    """The earliest moment still ahead: one already past was decided on by this reconcile (a pod past
    its pending deadline while others run does not fail the job, and must not wake it again and again)."""
    return min((m for m in moments if m > now), default=None)
