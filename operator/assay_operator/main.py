"""kopf registrations and startup settings only; the work is in ``reconcile``.

Run: ``kopf run -m assay_operator.main --all-namespaces`` (or ``python -m assay_operator``, which
watches ASSAY_OPERATOR_NAMESPACES).

No handler here needs a finalizer (no timers, daemons or deletion handlers): deleting an EvaluationJob,
or its namespace, completes with the operator gone, and the garbage collector removes the child Jobs
through their ownerReferences.

kopf watches the EvaluationJobs, their child Jobs and those Jobs' pods (server-side label selector on
assay.dev/job: nothing else of the cluster is listed), and the Job controller's FailedCreate Events (a
server-side field selector). Every watch event goes into ``cache`` and queues the job it concerns on
``workqueue``: reconciles read only from the cache, run on a bounded pool, never two of one job at once,
and failures are retried with backoff. What no watch shows (a pending deadline, a stall, a TTL) is a
timer per job at the moment ``due`` names. Nothing polls: an idle operator sends no requests beyond its
open watches.

With ASSAY_OPERATOR_LEASE_NAMESPACE set (the chart's two replicas), only the holder of the Lease
(``leader``) reconciles; a follower watches and queues too, so on taking over its workers start from a
warm cache with every job queued. A leader that cannot renew stops the process (SIGTERM: kopf shuts
down, the pod restarts as a follower), as controller-runtime's managers exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

import kopf

from assay import protocol
from assay.protocol import GROUP, PLURAL, VERSION
from assay_operator import cache, kube, leader, manifests, metrics, reconcile, status, workqueue
from assay_operator import settings as operator_settings

#: Read once when kopf loads this module; a bad variable stops the operator here, naming it.
SETTINGS = operator_settings.load()
LOG = logging.getLogger("assay_operator")
#: The Job controller's Events the operator reads (plan's FailedCreate), filtered by the API server.
EVENT_FIELDS = "involvedObject.kind=Job,reason=FailedCreate"
#: Started with the operator (it needs kopf's event loop); None until then.
QUEUE: workqueue.WorkQueue | None = None
#: This replica's name in the Lease: the pod's, and a suffix that a restarted container does not share.
IDENTITY = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"

Key = tuple[str, str]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's own settings: Events only from our phase transitions, server-side selectors. (Every
    resource handler is an event handler: kopf keeps no progress or diff-base records for them, so there
    is no storage of them to configure; tests/unit/test_reconcile.py asks kopf's registry.)"""
    settings.posting.enabled = False  # kube.post_event records one Event per phase transition
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.scanning.disabled = not SETTINGS.api_scanning
    # without these kopf lists and watches every Job and pod of the cluster and filters them itself
    settings.watching.label_selectors["batch", "v1", "jobs"] = protocol.JOB_LABEL
    settings.watching.label_selectors["", "v1", "pods"] = protocol.JOB_LABEL
    settings.watching.field_selectors["", "v1", "events"] = EVENT_FIELDS


@kopf.on.startup()
def serve_metrics(logger: kopf.Logger, **_: Any) -> None:
    """Prometheus /metrics on ASSAY_OPERATOR_METRICS_PORT (names in ``assay_operator.metrics``)."""
    port = metrics.serve(SETTINGS.metrics_port, logger)
    if port:
        logger.info("serving Prometheus metrics on :%d/metrics", port)


@kopf.on.startup()
async def start_workers(memo: kopf.Memo, **_: Any) -> None:
    """ASSAY_OPERATOR_WORKERS reconcile workers, before the watches deliver anything; they take work
    once this replica leads (at once without leader election)."""
    global QUEUE
    leading = asyncio.Event()
    QUEUE = workqueue.WorkQueue(_work, workers=SETTINGS.workers, retry_min=SETTINGS.retry_min_seconds,
                                retry_max=SETTINGS.retry_max_seconds, gate=leading)
    QUEUE.start()
    metrics.LEADER.labels(IDENTITY).set(0)
    if not SETTINGS.lease_namespace:
        _lead(leading)
        return
    loop, stop = asyncio.get_running_loop(), threading.Event()
    elector = leader.Elector(SETTINGS.lease_namespace, SETTINGS.lease_name, IDENTITY, LOG)
    memo["election"] = stop, threading.Thread(
        target=elector.run, name="leader-election", daemon=True,
        args=(lambda: loop.call_soon_threadsafe(_lead, leading), _abdicate, stop))
    memo["election"][1].start()


def _lead(leading: asyncio.Event) -> None:
    metrics.LEADER.labels(IDENTITY).set(1)
    leading.set()


def _abdicate() -> None:
    """The Lease could not be renewed: another replica may lead now, so this one stops acting at once."""
    metrics.LEADER.labels(IDENTITY).set(0)
    os.kill(os.getpid(), signal.SIGTERM)


@kopf.on.cleanup()
async def stop_workers(memo: kopf.Memo, **_: Any) -> None:
    if QUEUE is not None:
        await QUEUE.stop()  # before the Lease goes: no reconcile of this replica overlaps the next leader's
    election = memo.get("election")
    if election is not None:
        stop, thread = election
        stop.set()  # the elector gives the Lease up
        await asyncio.to_thread(thread.join, leader.RETRY_SECONDS + 10)


def _work(key: Key) -> float | None:
    """One reconcile of the job ``key`` (a worker thread); the monotonic time it is next due, if any."""
    return reconcile_logged(key[0], key[1], LOG)


#: (namespace, name) -> the reconcile error last reported on that job as an Event (one Event per new error).
_REPORTED: dict[Key, str] = {}


def reconcile_logged(namespace: str, name: str, logger: logging.Logger) -> float | None:
    """Reconcile, and report a failure on the job before it propagates (the queue retries it)."""
    try:
        with metrics.timed_reconcile():
            outcome = reconcile.reconcile(namespace, name, logger, SETTINGS)
    except Exception as exc:
        logger.exception("reconcile of %s/%s failed; retrying with backoff", namespace, name)
        _report_error(namespace, name, exc, logger)
        raise
    _REPORTED.pop((namespace, name), None)
    if outcome is None or outcome.due is None:
        return None
    return time.monotonic() + (outcome.due - status.now_utc()).total_seconds()


def _report_error(namespace: str, name: str, exc: Exception, logger: logging.Logger) -> None:
    """A Warning Event on the job, so `kubectl describe` shows why it does not move (the phase stays:
    the error may be transient, e.g. the API server restarting); repeats of one error post nothing."""
    message = f"reconcile failed: {type(exc).__name__}: {exc}"[:900] + "; retrying with backoff"
    if _REPORTED.get((namespace, name)) == message:
        return
    _REPORTED[(namespace, name)] = message
    owner = cache.get(cache.EVALUATIONJOBS, namespace, name)  # its uid goes into the Event
    if owner is None:
        return
    try:
        kube.post_event(owner, "Warning", "ReconcileError", message, status.fmt_time(status.now_utc()))
    except Exception as post_exc:  # noqa: BLE001 - the log has the error already
        logger.warning("could not post an Event: %s", post_exc)


def _enqueue(key: Key) -> None:
    if QUEUE is not None:
        QUEUE.add(key)


def _stored(kind: str, event: kopf.RawEvent) -> dict[str, Any]:
    """Keep the watch event's object in the cache (or drop it when deleted); the object."""
    obj = event.get("object") or {}
    (cache.remove if event.get("type") == "DELETED" else cache.put)(kind, obj)
    return obj


@kopf.on.event(GROUP, VERSION, PLURAL)
async def evaluationjob_changed(event: kopf.RawEvent, **_: Any) -> None:
    """A job appeared (or was listed at start), changed, or was deleted."""
    obj = _stored(cache.EVALUATIONJOBS, event)
    key = cache.key_of(obj)
    if event.get("type") == "DELETED":
        _REPORTED.pop(key, None)
        metrics.forget(*key)
        reconcile.forget(*key, (obj.get("metadata") or {}).get("uid"))
        if QUEUE is not None:
            QUEUE.forget(key)
        return
    _enqueue(key)


@kopf.on.event("batch", "v1", "jobs")
async def child_job_changed(event: kopf.RawEvent, **_: Any) -> None:
    """A child Job's status moved (a shard group finished, the Job failed or completed), or it went."""
    obj = _stored(cache.JOBS, event)
    owner = manifests.controlling_evaluationjob(obj)
    if owner:
        _enqueue((cache.key_of(obj)[0], owner))


@kopf.on.event("", "v1", "pods")
async def pod_changed(event: kopf.RawEvent, **_: Any) -> None:
    """A job pod's state moved (scheduled, pulling, running, terminated with its report)."""
    obj = _stored(cache.PODS, event)
    owner = ((obj.get("metadata") or {}).get("labels") or {}).get(protocol.JOB_LABEL)
    if owner:
        _enqueue((cache.key_of(obj)[0], owner))


@kopf.on.event("", "v1", "events")
async def job_event(event: kopf.RawEvent, **_: Any) -> None:
    """The Job controller could not create a child's pods (quota, a LimitRange, admission). Events of
    other Jobs (the field selector cannot tell ours) are not kept."""
    obj = event.get("object") or {}
    if event.get("type") == "DELETED":  # whether or not its Job is still known
        cache.remove(cache.EVENTS, obj)
        return
    namespace = (obj.get("metadata") or {}).get("namespace") or "default"
    child = cache.get(cache.JOBS, namespace, (obj.get("involvedObject") or {}).get("name") or "")
    owner = manifests.controlling_evaluationjob(child) if child is not None else None
    if owner is None:
        return
    cache.put(cache.EVENTS, obj)
    _enqueue((namespace, owner))

