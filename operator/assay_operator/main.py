"""kopf registrations and startup settings only; the work is in ``handlers``.

Run: ``kopf run -m assay_operator.main --all-namespaces`` (or ``python -m assay_operator``, which
watches ASSAY_OPERATOR_NAMESPACES).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from assay_operator import handlers, metrics
from assay_operator import settings as operator_settings

GROUP, VERSION, PLURAL = "assay.dev", "v1alpha1", "evaluationjobs"
#: Read once when kopf loads this module; a bad variable stops the operator here, naming it.
SETTINGS = operator_settings.load()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's own settings: bookkeeping in annotations, Events only from our phase transitions."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="assay.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="assay.dev")
    settings.persistence.finalizer = "assay.dev/operator"
    settings.posting.enabled = False  # kube.post_event records one Event per phase transition
    settings.posting.level = logging.WARNING
    # Sync handlers run in threads: reconciles of different jobs (each may read the store) overlap.
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    settings.scanning.disabled = not SETTINGS.api_scanning


@kopf.on.startup()
def serve_metrics(logger: kopf.Logger, **_: Any) -> None:
    """Prometheus /metrics on ASSAY_OPERATOR_METRICS_PORT (names in ``assay_operator.metrics``)."""
    port = metrics.serve(SETTINGS.metrics_port, logger)
    if port:
        logger.info("serving Prometheus metrics on :%d/metrics", port)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile at once when a job appears, when the operator starts, and on every spec change."""
    with metrics.timed_reconcile():
        handlers.reconcile(body, patch, logger, SETTINGS, memo)


# The child Jobs' and pods' states and the runners' progress objects change without touching the
# EvaluationJob, so a timer re-reads them: level-triggered, and no watch on every pod in the cluster.
@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)
def resync(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, memo: kopf.Memo, **_: Any) -> None:
    """Refresh phase, progress and results from the child Jobs, their pods and the store."""
    with metrics.timed_reconcile():
        handlers.reconcile(body, patch, logger, SETTINGS, memo)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def forget_deleted(event: kopf.RawEvent, **_: Any) -> None:
    """A deleted EvaluationJob's metric series go with it (no finalizer needed for that)."""
    if event.get("type") == "DELETED":
        meta = (event.get("object") or {}).get("metadata") or {}
        metrics.forget(meta.get("namespace") or "default", meta.get("name") or "")
