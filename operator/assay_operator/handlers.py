"""One level-triggered reconcile step per call: look at the cluster and the store, act, write status.

Every step is idempotent: child Jobs have deterministic names and are created only when absent, so a
reconcile that is interrupted (operator killed) and repeated never duplicates or loses a Job. The
operator never writes spec; the outcome it records in status (a terminal phase with the retryToken of
that attempt) is what keeps a finished job from being rerun after its Jobs are cleaned up.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

import kopf
from pydantic import ValidationError

from assay import layout, storage
from assay.spec import EvaluationJob, JobSpec

from assay_operator import kube, manifests, progress, status
from assay_operator import metrics as op_metrics
from assay_operator.settings import Settings

#: status fields this operator owns (others, such as kopf's bookkeeping, are left alone).
MANAGED = ("phase", "reason", "message", "observedGeneration", "retryToken", "conditions", "startTime",
           "completionTime", "shards", "progress", "results", "resultsUri", "modelDigest", "datasetDigest")
#: Fields that belong to one attempt and are dropped when a failed job is retried.
PER_ATTEMPT = ("startTime", "completionTime", "shards", "progress", "results", "resultsUri")


def reconcile(body: Mapping[str, Any], patch: Any, logger: logging.Logger, settings: Settings,
              memo: MutableMapping[str, Any] | None = None, now: dt.datetime | None = None) -> str:
    """Bring the child Jobs in line with the EvaluationJob and write its status into ``patch.status``.

    ``memo`` is kopf's per-object memory: it serialises the create/update handler and the timer of one
    object (they run in threads) and remembers the last announced phase, so a reconcile that still saw
    the status from before the other's write does not announce the same transition twice.
    Returns the phase written (for logs and tests).
    """
    memo = {} if memo is None else memo
    with memo.setdefault("assay_lock", threading.Lock()):
        phase = _reconcile(body, patch, logger, settings, memo, now or status.now_utc())
    return phase


def _reconcile(body: Mapping[str, Any], patch: Any, logger: logging.Logger, settings: Settings,
               memo: MutableMapping[str, Any], now: dt.datetime) -> str:
    meta = body.get("metadata") or {}
    name, namespace, generation = meta["name"], meta.get("namespace") or "default", meta.get("generation")
    previous = dict(body.get("status") or {})
    remembered = memo.get("assay_status")
    if remembered is not None and any(previous.get(k) != remembered.get(k) for k in MANAGED):
        # kopf hands each handler the body it was triggered with: when the timer and the create/resume
        # handler race, one of them sees the status from before the other's write. This process wrote
        # `remembered` last (memo lives as long as the process), so it is the newer one.
        previous = {k: v for k, v in previous.items() if k not in MANAGED} | remembered
    try:
        job = EvaluationJob(name=name, namespace=namespace, spec=JobSpec(**dict(body.get("spec") or {})))
    except (ValidationError, TypeError) as exc:
        new = status.failed_status(previous, (body.get("spec") or {}).get("retryToken"), "InvalidSpec",
                                   f"spec does not match the EvaluationJob schema: {exc}", generation, now)
        op_metrics.observe(namespace, name, new["phase"], new)
        return _write(body, patch, previous, new, logger, now, memo)

    token = job.spec.retry_token or ""
    rerun = previous.get("phase") == status.FAILED and previous.get("retryToken", "") != token
    if previous.get("phase") in status.TERMINAL and not rerun:
        _expire_children(job, previous, now, logger)
        if generation is not None and previous.get("observedGeneration") != generation:
            patch.status["observedGeneration"] = generation
        op_metrics.observe(namespace, name, previous["phase"], {})
        return previous["phase"]
    if rerun:
        logger.info("spec.retryToken changed to %r: rerunning; finished shards are reused", token)
        previous = {k: v for k, v in previous.items() if k not in PER_ATTEMPT}

    ppl, cmp, waiting = _current_children(job, token, logger)
    access = progress.access_for(job.spec, _secret(job))
    with storage.s3_access(access):
        shards_total, samples_total, dataset_digest, model_digest = _inputs(job, previous, logger)
        if not waiting:
            ppl, cmp = _ensure_children(job, body, settings, ppl, cmp, previous, now, logger)
        ppl = _sync_suspend(job, ppl, logger)
        cmp = _sync_suspend(job, cmp, logger)
        pods = _pods(job, ppl, cmp)
        reports = progress.worker_progress(job.spec.output.uri, job.spec.ppl.workers, logger) if ppl else []
        metrics = progress.metrics(job.spec.output.uri, logger) if status.job_state(cmp) == "Complete" else None

    observed = status.Observed(
        name=name, spec=job.spec, now=now, generation=generation, previous=previous, ppl=ppl, cmp=cmp,
        pods=pods, progress=reports, metrics=metrics,
        metrics_error=None if metrics is not None else f"no readable {layout.metrics_uri(job.spec.output.uri)} yet",
        shards_total=shards_total, samples_total=samples_total, model_digest=model_digest,
        dataset_digest=dataset_digest, results_uri=layout.metrics_uri(job.spec.output.uri),
        fail_fast_seconds=settings.fail_fast_seconds, max_result_keys=settings.max_result_keys)
    new, reason = status.derive(observed)
    op_metrics.observe(namespace, name, new["phase"], new, ppl)
    if new["phase"] == status.FAILED and reason in status.OPERATOR_FAILURES:
        _stop_children(job, ppl, cmp, reason, logger)
    return _write(body, patch, previous, new, logger, now, memo)


# ------------------------------------------------------------------------------------------- children


def _token_of(child: Mapping[str, Any]) -> str:
    return ((child.get("metadata") or {}).get("annotations") or {}).get(manifests.RETRY_TOKEN_ANNOTATION, "")


def _current_children(job: EvaluationJob, token: str, logger: logging.Logger):
    """(ppl, cmp, waiting): the child Jobs of this attempt; a failed Job of an earlier attempt is deleted."""
    out: list[dict[str, Any] | None] = []
    waiting = False
    for child_name in (manifests.ppl_job_name(job.name), manifests.cmp_job_name(job.name)):
        child = kube.get_job(job.namespace, child_name)
        if child is not None and (child.get("metadata") or {}).get("deletionTimestamp"):
            child, waiting = None, True
        elif child is not None and _token_of(child) != token and status.job_state(child) == "Failed":
            logger.info("deleting Job %s of the earlier attempt %r", child_name, _token_of(child))
            kube.delete_job(job.namespace, child_name)
            child, waiting = None, True
        out.append(child)
    return out[0], out[1], waiting


def _ensure_children(job: EvaluationJob, body: Mapping[str, Any], settings: Settings,
                     ppl: dict[str, Any] | None, cmp: dict[str, Any] | None, previous: dict[str, Any],
                     now: dt.datetime, logger: logging.Logger):
    """Create the ppl Job when absent, and the cmp Job once the ppl Job has completed."""
    if ppl is None and cmp is None:
        ppl = _create(body, manifests.build_ppl_job(job, settings), logger)
    if cmp is None and status.job_state(ppl) == "Complete":
        remaining = None
        start = status.parse_time(previous.get("startTime"))
        if job.spec.active_deadline_seconds:
            used = (now - start).total_seconds() if start else 0.0
            remaining = int(job.spec.active_deadline_seconds - used)
        cmp = _create(body, manifests.build_cmp_job(job, settings, remaining), logger)
    return ppl, cmp


def _create(owner: Mapping[str, Any], child: dict[str, Any], logger: logging.Logger) -> dict[str, Any]:
    kopf.adopt(child, owner=owner)  # ownerReference: deleting the EvaluationJob deletes its Jobs
    created, new = kube.create_job(child["metadata"]["namespace"], child)
    if new:
        logger.info("created Job %s", child["metadata"]["name"])
    return created


def _sync_suspend(job: EvaluationJob, child: dict[str, Any] | None, logger: logging.Logger):
    """Propagate spec.suspend to an unfinished child; with a queue, Kueue alone unsuspends."""
    if child is None or status.job_state(child) in ("Complete", "Failed"):
        return child
    current = bool((child.get("spec") or {}).get("suspend"))
    desired = True if job.spec.suspend else (current if job.spec.queue_name else False)
    if current == desired:
        return child
    child_name = child["metadata"]["name"]
    logger.info("%s Job %s", "suspending" if desired else "resuming", child_name)
    return kube.patch_job(job.namespace, child_name, {"spec": {"suspend": desired}})


def _stop_children(job: EvaluationJob, ppl, cmp, reason: str, logger: logging.Logger) -> None:
    """The operator failed the job while pods still run or wait: delete the unfinished Jobs."""
    for child in (ppl, cmp):
        if child is not None and status.job_state(child) not in ("Complete", "Failed"):
            logger.warning("deleting Job %s: %s", child["metadata"]["name"], reason)
            kube.delete_job(job.namespace, child["metadata"]["name"])


def _expire_children(job: EvaluationJob, previous: dict[str, Any], now: dt.datetime,
                     logger: logging.Logger) -> None:
    """spec.ttlSecondsAfterFinished: delete the child Jobs (their pods and logs), keep the EvaluationJob.

    The operator does this itself rather than via the Jobs' own TTL, so the ppl Job never disappears
    before the cmp Job has been created.
    """
    ttl, done = job.spec.ttl_seconds_after_finished, status.parse_time(previous.get("completionTime"))
    if ttl is None or done is None or (now - done).total_seconds() < ttl:
        return
    for child_name in (manifests.ppl_job_name(job.name), manifests.cmp_job_name(job.name)):
        if kube.delete_job(job.namespace, child_name):
            logger.info("deleted Job %s: ttlSecondsAfterFinished=%d passed", child_name, ttl)


def _pods(job: EvaluationJob, ppl, cmp) -> list[dict[str, Any]]:
    """Pods of this attempt's Jobs (pods of an earlier, deleted Job may linger while they terminate)."""
    if ppl is None and cmp is None:
        return []
    uids = {(c.get("metadata") or {}).get("uid") for c in (ppl, cmp) if c is not None} - {None}
    pods = kube.list_pods(job.namespace, manifests.pod_selector(job.name))
    if not uids:
        return pods
    keep = []
    for pod in pods:
        lbl = (pod.get("metadata") or {}).get("labels") or {}
        uid = lbl.get("batch.kubernetes.io/controller-uid") or lbl.get("controller-uid")
        if uid is None or uid in uids:
            keep.append(pod)
    return keep


# ------------------------------------------------------------------------------------------- inputs


def _secret(job: EvaluationJob) -> dict[str, str] | None:
    ref = job.spec.storage.secret_ref
    return kube.read_secret(job.namespace, ref.name) if ref else None


def _inputs(job: EvaluationJob, previous: dict[str, Any], logger: logging.Logger):
    """(shards_total, samples_total, dataset_digest, model_digest); read once, then kept in status."""
    shards_total = (previous.get("shards") or {}).get("total")
    samples_total = (previous.get("progress") or {}).get("samplesTotal") if shards_total is not None else None
    dataset_digest, model_digest = previous.get("datasetDigest"), previous.get("modelDigest")
    if shards_total is None or dataset_digest is None:
        info = progress.dataset_info(job.spec.dataset.uri, logger)
        if info is not None:
            shards_total, samples_total, dataset_digest = info.shards, info.samples, info.version or None
    if model_digest is None:
        model_digest = progress.model_digest(job.spec.model.uri, logger)
    return shards_total, samples_total, dataset_digest, model_digest


# -------------------------------------------------------------------------------------------- status


def _replacing(old: Any, new: Any) -> Any:
    """A merge-patch value that replaces ``old`` by ``new``: keys only in ``old`` become null."""
    if not isinstance(new, Mapping) or not isinstance(old, Mapping):
        return new
    out = {k: _replacing(old.get(k), v) for k, v in new.items()}
    out.update({k: None for k in old if k not in new})
    return out


def _write(body: Mapping[str, Any], patch: Any, previous: dict[str, Any], new: dict[str, Any],
           logger: logging.Logger, now: dt.datetime, memo: MutableMapping[str, Any]) -> str:
    """Put the whole status in one patch (null removes stale fields); announce a phase change."""
    target: MutableMapping[str, Any] = patch.status
    stored = dict(body.get("status") or {})
    for key in MANAGED:
        if key in new:
            target[key] = _replacing(stored.get(key), new[key])
        elif key in stored:
            target[key] = None
    memo["assay_status"] = {k: v for k, v in new.items() if k in MANAGED}
    old_phase, phase = previous.get("phase"), new["phase"]
    announced = memo.get("assay_phase"), memo.get("assay_token")
    memo["assay_phase"], memo["assay_token"] = phase, new.get("retryToken")
    if old_phase != phase and announced != (phase, new.get("retryToken")):
        event_type = "Warning" if phase == status.FAILED else "Normal"
        message = f"{old_phase or 'New'} -> {phase}: {new.get('message', '')}"
        (logger.warning if event_type == "Warning" else logger.info)("%s", message)
        try:
            kube.post_event(dict(body), event_type, new.get("reason") or phase, message, status.fmt_time(now))
        except Exception as exc:  # noqa: BLE001 - an Event is best effort; status is the record
            logger.warning("could not post an Event: %s", exc)
    return phase
