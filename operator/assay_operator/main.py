"""kopf registrations and startup settings only; the work is in ``reconcile``.

Run: ``kopf run -m assay_operator.main --all-namespaces`` (or ``python -m assay_operator``, which
watches ASSAY_OPERATOR_NAMESPACES).

No handler here needs a finalizer (no timers, daemons or deletion handlers): deleting an EvaluationJob,
or its namespace, completes with the operator gone, and the garbage collector removes the child Jobs
through their ownerReferences. Reconciles are triggered by changes of the EvaluationJob and of its child
Jobs, and, for unfinished jobs and finished ones whose spec.ttlSecondsAfterFinished has yet to act, by a
periodic resync (pods' states, such as an image that cannot be pulled, change without touching either).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from assay import protocol
from assay.protocol import GROUP, PLURAL, VERSION
from assay_operator import kube, metrics, reconcile, status
from assay_operator import settings as operator_settings

#: Read once when kopf loads this module; a bad variable stops the operator here, naming it.
SETTINGS = operator_settings.load()
#: (namespace, name) of the jobs the resync loop visits: unfinished ones, and finished ones whose child
#: Jobs still wait for spec.ttlSecondsAfterFinished.
WATCHED: set[tuple[str, str]] = set()
LOG = logging.getLogger("assay_operator")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's own settings: Events only from our phase transitions. (Both resource handlers are event
    handlers: kopf keeps no progress or diff-base records for them, so there is no storage of them to
    configure; tests/unit/test_reconcile.py asks kopf's registry.)"""
    settings.posting.enabled = False  # kube.post_event records one Event per phase transition
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16  # sync handlers run in threads; reconciles of jobs overlap
    settings.watching.server_timeout = 300
    settings.scanning.disabled = not SETTINGS.api_scanning


@kopf.on.startup()
def serve_metrics(logger: kopf.Logger, **_: Any) -> None:
    """Prometheus /metrics on ASSAY_OPERATOR_METRICS_PORT (names in ``assay_operator.metrics``)."""
    port = metrics.serve(SETTINGS.metrics_port, logger)
    if port:
        logger.info("serving Prometheus metrics on :%d/metrics", port)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    """Visit the watched jobs every ASSAY_OPERATOR_RESYNC_SECONDS."""
    memo["resync"] = asyncio.get_running_loop().create_task(_resync_forever())


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()


async def _resync_forever() -> None:
    while True:
        await asyncio.sleep(SETTINGS.resync_seconds)
        for namespace, name in sorted(WATCHED):
            await asyncio.to_thread(_reconcile_logged, namespace, name, LOG)


#: (namespace, name) -> the reconcile error last reported on that job as an Event (one Event per new error).
_REPORTED: dict[tuple[str, str], str] = {}


def _reconcile_logged(namespace: str, name: str, logger: logging.Logger) -> None:
    try:
        with metrics.timed_reconcile():
            phase = reconcile.reconcile(namespace, name, logger, SETTINGS)
    except Exception as exc:
        logger.exception("reconcile of %s/%s failed; retrying at the next change or resync", namespace, name)
        _report_error(namespace, name, exc, logger)
        return
    _REPORTED.pop((namespace, name), None)
    if phase is None:
        WATCHED.discard((namespace, name))


def _report_error(namespace: str, name: str, exc: Exception, logger: logging.Logger) -> None:
    """A Warning Event on the job, so `kubectl describe` shows why it does not move (the phase stays:
    the error may be transient, e.g. the API server restarting); repeats of one error post nothing."""
    message = f"reconcile failed: {type(exc).__name__}: {exc}"[:900] + "; retrying at the next change or resync"
    if _REPORTED.get((namespace, name)) == message:
        return
    _REPORTED[(namespace, name)] = message
    try:
        # the job as it is now: its uid goes into the Event, and kubectl describe lists events by uid
        owner = kube.get_evaluationjob(namespace, name)
        if owner is None:
            return
        kube.post_event(owner, "Warning", "ReconcileError", message, status.fmt_time(status.now_utc()))
    except Exception as post_exc:  # noqa: BLE001 - the log has the error already
        logger.warning("could not post an Event: %s", post_exc)


def _track(obj: dict[str, Any]) -> None:
    meta, st = obj.get("metadata") or {}, obj.get("status") or {}
    key = (meta.get("namespace") or "default", meta.get("name") or "")
    ttl = (obj.get("spec") or {}).get("ttlSecondsAfterFinished")
    if st.get("phase") in status.TERMINAL and ttl is None:
        WATCHED.discard(key)
    else:
        WATCHED.add(key)


@kopf.on.event(GROUP, VERSION, PLURAL)
def evaluationjob_changed(event: kopf.RawEvent, logger: kopf.Logger, **_: Any) -> None:
    """A job appeared (or was listed at start), changed, or was deleted."""
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
    if event.get("type") == "DELETED":
        WATCHED.discard((namespace, name))
        _REPORTED.pop((namespace, name), None)
        metrics.forget(namespace, name)
        reconcile.forget(namespace, name, meta.get("uid"))
        return
    _track(obj)
    _reconcile_logged(namespace, name, logger)


@kopf.on.event("batch", "v1", "jobs", labels={protocol.JOB_LABEL: kopf.PRESENT})
def child_job_changed(event: kopf.RawEvent, logger: kopf.Logger, **_: Any) -> None:
    """A child Job's status moved (a shard group finished, the Job failed or completed)."""
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == protocol.KIND and ref.get("apiVersion") == protocol.API_VERSION:
            _reconcile_logged(meta.get("namespace") or "default", ref["name"], logger)
