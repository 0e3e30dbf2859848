"""One level-triggered reconcile per call: read the EvaluationJob, its child Jobs, their pods and Events,
act, and write the status. The operator reads Kubernetes objects only: what the pods learn from the
store (pinned inputs, metrics) reaches it through their termination messages.

Stages: resolve (pin the inputs) -> ppl (Indexed Job over shard groups) -> cmp (metrics). A stage's
completion is recorded in status (``stages``, ``inputs``), so a child deleted after it finished is never
recreated, and a finished job is never rerun unless its retryToken changes. Every step is idempotent:
children have deterministic names, are created only when absent, and are ours only if their controller
ownerReference carries this EvaluationJob's uid; anything else with that name is left alone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from assay import layout
from assay.spec import EvaluationJob, JobSpec

from assay_operator import kube, manifests, status
from assay_operator import metrics as op_metrics
from assay_operator.settings import Settings

#: status fields this operator owns.
MANAGED = ("phase", "reason", "message", "observedGeneration", "retryToken", "conditions", "startTime",
           "completionTime", "shards", "progress", "results", "resultsUri", "modelDigest", "datasetDigest",
           "inputs", "stages")
#: Fields that belong to one attempt and are dropped when a failed job is retried (the pinned inputs and
#: a finished inference stay: a retry resumes the same run).
PER_ATTEMPT = ("startTime", "completionTime", "results", "resultsUri")

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
#: uid -> monotonic time of the last status write (progress-only writes are rate-limited).
_last_write: dict[str, float] = {}


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def reconcile(namespace: str, name: str, logger: logging.Logger, settings: Settings,
              now: dt.datetime | None = None) -> str | None:
    """Bring one EvaluationJob's children in line and write its status; returns the phase (None if gone)."""
    with _lock(f"{namespace}/{name}"):  # read inside the lock: what the last holder wrote
        body = kube.get_evaluationjob(namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None  # the garbage collector removes the children with their owner
        return _reconcile(body, logger, settings, now or status.now_utc())


def _reconcile(body: dict[str, Any], logger: logging.Logger, settings: Settings, now: dt.datetime) -> str:
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta.get("namespace") or "default", meta.get("generation")
    previous = dict(body.get("status") or {})
    try:
        job = EvaluationJob(name=name, namespace=namespace, spec=JobSpec(**dict(body.get("spec") or {})))
    except (ValidationError, TypeError) as exc:
        if previous.get("phase") in status.TERMINAL:
            return previous["phase"]
        new = status.failed_status(previous, (body.get("spec") or {}).get("retryToken"), "InvalidSpec",
                                   f"spec does not match the EvaluationJob schema: {exc}", generation, now)
        return _write(body, previous, new, logger, now, settings)

    token = job.spec.retry_token or ""
    rerun = previous.get("phase") == status.FAILED and previous.get("retryToken", "") != token
    if previous.get("phase") in status.TERMINAL and not rerun:
        # a terminal phase never moves back; only the TTL and observedGeneration still change
        _expire_children(job, body, previous, now, logger)
        if generation is not None and previous.get("observedGeneration") != generation:
            kube.patch_evaluationjob_status(namespace, name, {"observedGeneration": generation})
        op_metrics.observe(namespace, name, previous["phase"], {})
        return previous["phase"]
    if rerun:
        logger.info("spec.retryToken changed to %r: rerunning; finished shards are reused", token)
        previous = {k: v for k, v in previous.items() if k not in PER_ATTEMPT}
        previous["stages"] = {k: v for k, v in (previous.get("stages") or {}).items() if k != "cmp"}

    observed = _observe(job, body, previous, settings, now, logger)
    new, reason = status.derive(observed)
    op_metrics.observe(namespace, name, new["phase"], new, observed.ppl)
    if new["phase"] == status.FAILED:
        _stop_children(job, body, observed, reason, logger)
    return _write(body, previous, new, logger, now, settings)


# ------------------------------------------------------------------------------------------- children


def _observe(job: EvaluationJob, body: dict[str, Any], previous: dict[str, Any], settings: Settings,
             now: dt.datetime, logger: logging.Logger) -> status.Observed:
    """Gather the children, act on what is missing, and return what ``status.derive`` needs."""
    o = status.Observed(name=job.name, spec=job.spec, now=now, generation=body["metadata"].get("generation"),
                        previous=previous, inputs=previous.get("inputs"),
                        results_uri=layout.metrics_uri(job.spec.output.uri),
                        fail_fast_seconds=settings.fail_fast_seconds, stall_seconds=settings.stall_seconds,
                        max_result_keys=settings.max_result_keys)
    children, waiting = _children(job, body, o, logger)
    if o.blocker:
        return o
    o.resolve, o.ppl, o.cmp = children[manifests.RESOLVE], children[manifests.PPL], children[manifests.CMP]
    o.pods = kube.list_pods(job.namespace, manifests.pod_selector(job.name)) if any(children.values()) else []
    o.pods = [p for p in o.pods if _pod_of(p, children)]
    stages = previous.get("stages") or {}
    try:
        if not o.inputs:
            if o.resolve is None and not waiting:
                o.resolve = _create(job, manifests.build_resolve_job(body, job, settings), logger)
            elif status.job_state(o.resolve) == "Complete":
                o.inputs = _report(o.pods, manifests.RESOLVE, ("model", "dataset", "shards", "indexes"))
                if o.inputs is None:
                    o.blocker = ("InputsUnavailable", "the resolve pod completed without a readable report")
        queued_stop = job.spec.suspend and job.spec.queue_name
        if o.inputs and stages.get("ppl") != "Complete" and o.ppl is None and not waiting and not queued_stop:
            o.ppl = _create(job, manifests.build_ppl_job(body, job, settings, o.inputs), logger)
        ppl_done = stages.get("ppl") == "Complete" or status.job_state(o.ppl) == "Complete"
        if ppl_done and o.cmp is None and stages.get("cmp") != "Complete" and not waiting and not queued_stop:
            o.cmp = _create(job, manifests.build_cmp_job(body, job, settings, o.inputs,
                                                         _deadline_left(job, o.ppl)), logger)
    except kube.Refused as exc:
        o.blocker = ("InvalidSpec", f"the API server refused a child Job ({exc.status}): {exc}")
        return o
    if status.job_state(o.cmp) == "Complete":
        o.report = _report(o.pods, manifests.CMP, ("evaluator", "summary"))
    for role in manifests.ROLES:
        if status.job_state(getattr(o, role)) == "Failed":
            o.errors[role] = _error_message(o.pods, role)
    for role, child in ((manifests.RESOLVE, o.resolve), (manifests.PPL, o.ppl), (manifests.CMP, o.cmp)):
        setattr(o, role, _sync_suspend(job, body, child, logger))
    o.ppl = _sync_parallelism(job, o.ppl, o.inputs, logger)
    o.failed_create = _failed_create(job, (o.resolve, o.ppl, o.cmp), o.pods)
    return o


def _children(job: EvaluationJob, body: dict[str, Any], o: status.Observed,
              logger: logging.Logger) -> tuple[dict[str, dict[str, Any] | None], bool]:
    """This attempt's child Jobs by role, and whether one is still being deleted. A Job of that name whose
    controller is not this EvaluationJob (by uid) is a conflict: reported, never adopted or touched."""
    uid, token = body["metadata"]["uid"], job.spec.retry_token or ""
    out: dict[str, dict[str, Any] | None] = {}
    waiting = False
    for role in manifests.ROLES:
        child_name = manifests.child_name(job.name, role)
        child = kube.get_job(job.namespace, child_name)
        if child is not None and manifests.controller_uid(child) != uid:
            owner = manifests.controller_uid(child) or "no controller"
            o.blocker = ("ChildNameConflict", f"Job {child_name} exists and is not this EvaluationJob's "
                                              f"(its controller: {owner}); delete or rename that Job, or give "
                                              "the EvaluationJob another name")
            return {r: None for r in manifests.ROLES}, True
        if child is not None and (child.get("metadata") or {}).get("deletionTimestamp"):
            child, waiting = None, True
        elif child is not None and _token_of(child) != token and status.job_state(child) == "Failed":
            logger.info("deleting Job %s of the earlier attempt %r", child_name, _token_of(child))
            kube.delete_job(job.namespace, child_name, child["metadata"]["uid"])
            child, waiting = None, True
        out[role] = child
    return out, waiting


def _token_of(child: Mapping[str, Any]) -> str:
    return ((child.get("metadata") or {}).get("annotations") or {}).get(manifests.RETRY_TOKEN_ANNOTATION, "")


def _pod_of(pod: dict[str, Any], children: dict[str, dict[str, Any] | None]) -> bool:
    """Pods of this attempt's Jobs (an earlier, deleted Job's pods may linger while they terminate)."""
    uids = {(c.get("metadata") or {}).get("uid") for c in children.values() if c is not None}
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return (labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid")) in uids


def _create(job: EvaluationJob, child: dict[str, Any], logger: logging.Logger) -> dict[str, Any]:
    created, new = kube.create_job(job.namespace, child)
    if new:
        logger.info("created Job %s", child["metadata"]["name"])
    elif manifests.controller_uid(created) != manifests.controller_uid(child):
        raise kube.Refused(409, f"Job {child['metadata']['name']} appeared with another owner")
    return created


def _deadline_left(job: EvaluationJob, ppl: dict[str, Any] | None) -> int | None:
    """What the ppl Job left of spec.activeDeadlineSeconds, by the Job's own clock (which pauses while
    it is suspended or queued), for the cmp Job."""
    deadline = job.spec.active_deadline_seconds
    if not deadline:
        return None
    st = (ppl or {}).get("status") or {}
    start, end = status.parse_time(st.get("startTime")), status.parse_time(st.get("completionTime"))
    used = (end - start).total_seconds() if start and end else 0.0
    return int(deadline - used)


def _sync_suspend(job: EvaluationJob, body: dict[str, Any], child: dict[str, Any] | None,
                  logger: logging.Logger) -> dict[str, Any] | None:
    """spec.suspend on an unfinished child. Without a queue: the Job's own suspend (its pods stop, its
    deadline pauses). With a queue, Kueue alone toggles suspend: the operator deletes the unfinished
    children instead (finished shards stay in the store) and creates them again on resume, and Kueue
    queues them anew."""
    if child is None or status.job_state(child) in ("Complete", "Failed"):
        return child
    if job.spec.queue_name:
        if job.spec.suspend:
            logger.info("spec.suspend on a queued job: deleting Job %s", child["metadata"]["name"])
            kube.delete_job(job.namespace, child["metadata"]["name"], child["metadata"]["uid"])
            return None
        return child
    current = bool((child.get("spec") or {}).get("suspend"))
    if current == job.spec.suspend:
        return child
    logger.info("%s Job %s", "suspending" if job.spec.suspend else "resuming", child["metadata"]["name"])
    return kube.patch_job(job.namespace, child["metadata"]["name"], {"spec": {"suspend": job.spec.suspend}})


def _sync_parallelism(job: EvaluationJob, ppl: dict[str, Any] | None, inputs: dict[str, Any] | None,
                      logger: logging.Logger) -> dict[str, Any] | None:
    """spec.ppl.workers may change while the job runs: it is the ppl Job's parallelism."""
    if ppl is None or not inputs or status.job_state(ppl) in ("Complete", "Failed"):
        return ppl
    want = min(job.spec.ppl.workers, int(inputs["indexes"]))
    if (ppl.get("spec") or {}).get("parallelism") == want:
        return ppl
    logger.info("setting the parallelism of Job %s to %d", ppl["metadata"]["name"], want)
    return kube.patch_job(job.namespace, ppl["metadata"]["name"], {"spec": {"parallelism": want}})


def _failed_create(job: EvaluationJob, children, pods: list[dict[str, Any]]) -> str | None:
    """The Job controller's latest FailedCreate message for an active child that has no pods."""
    for child in children:
        if child is None or status.job_state(child) != "Active":
            continue
        uid = child["metadata"].get("uid")
        if any(((p.get("metadata") or {}).get("labels") or {}).get("batch.kubernetes.io/controller-uid") == uid
               for p in pods):
            continue
        events = [e for e in kube.list_job_events(job.namespace, child["metadata"]["name"])
                  if e.get("reason") == "FailedCreate" and (e.get("involvedObject") or {}).get("uid") in (uid, None)]
        if events:
            latest = max(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
            return f"Job {child['metadata']['name']}: {latest.get('message', '')}"
    return None


def _stop_children(job: EvaluationJob, body: dict[str, Any], o: status.Observed, reason: str,
                   logger: logging.Logger) -> None:
    """The job failed while pods of ours still run or wait: delete our unfinished Jobs."""
    if reason not in status.OPERATOR_FAILURES or reason == "ChildNameConflict":
        return
    for child in (o.resolve, o.ppl, o.cmp):
        if child is not None and status.job_state(child) not in ("Complete", "Failed"):
            logger.warning("deleting Job %s: %s", child["metadata"]["name"], reason)
            kube.delete_job(job.namespace, child["metadata"]["name"], child["metadata"]["uid"])


def _expire_children(job: EvaluationJob, body: dict[str, Any], previous: dict[str, Any], now: dt.datetime,
                     logger: logging.Logger) -> None:
    """spec.ttlSecondsAfterFinished: delete our child Jobs (their pods and logs), keep the EvaluationJob."""
    ttl, done = job.spec.ttl_seconds_after_finished, status.parse_time(previous.get("completionTime"))
    if ttl is None or done is None or (now - done).total_seconds() < ttl:
        return
    for role in manifests.ROLES:
        child = kube.get_job(job.namespace, manifests.child_name(job.name, role))
        if child is not None and manifests.controller_uid(child) == body["metadata"]["uid"]:
            if kube.delete_job(job.namespace, child["metadata"]["name"], child["metadata"]["uid"]):
                logger.info("deleted Job %s: ttlSecondsAfterFinished=%d passed", child["metadata"]["name"], ttl)


# --------------------------------------------------------------------------------- termination messages


def _terminations(pods: list[dict[str, Any]], role: str) -> list[tuple[str, dict[str, Any]]]:
    """(finishedAt, terminated state) of the runner containers of ``role``'s pods, newest first."""
    out = []
    for pod in pods:
        if status._role(pod) != role:
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if cs.get("name") == manifests.CONTAINER and term:
                out.append((term.get("finishedAt") or "", term))
    return sorted(out, key=lambda t: t[0], reverse=True)


def _report(pods: list[dict[str, Any]], role: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The JSON report in the termination message of ``role``'s pod that succeeded."""
    for _, term in _terminations(pods, role):
        if term.get("exitCode") != 0:
            continue
        try:
            doc = json.loads(term.get("message") or "")
        except ValueError:
            continue
        if isinstance(doc, dict) and all(k in doc for k in keys):
            return doc
    return None


def _error_message(pods: list[dict[str, Any]], role: str) -> str | None:
    """The error line (and hint) a failed pod of ``role`` left in its termination message."""
    for _, term in _terminations(pods, role):
        text = (term.get("message") or "").strip()
        if term.get("exitCode") and text:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            error = next((line for line in lines if line.startswith("error:")), lines[-1])
            hint = next((line for line in lines if line.startswith("hint:")), "")
            return f"{error.removeprefix('error:').strip()}" + (f" ({hint})" if hint else "")
    return None


# -------------------------------------------------------------------------------------------- status


def _replacing(old: Any, new: Any) -> Any:
    """A merge-patch value that replaces ``old`` by ``new``: keys only in ``old`` become null."""
    if not isinstance(new, Mapping) or not isinstance(old, Mapping):
        return new
    out = {k: _replacing(old.get(k), v) for k, v in new.items()}
    out.update({k: None for k in old if k not in new})
    return out


#: Fields whose change alone (a moving progress figure) is written at most every progress_write_seconds.
_PROGRESS_ONLY = {"progress", "shards", "conditions"}


def _write(body: dict[str, Any], previous: dict[str, Any], new: dict[str, Any], logger: logging.Logger,
           now: dt.datetime, settings: Settings) -> str:
    """Write the whole status in one merge patch (null removes stale fields); announce a phase change."""
    meta = body["metadata"]
    stored = dict(body.get("status") or {})
    patch = {}
    for key in MANAGED:
        if key in new and new[key] != stored.get(key):
            patch[key] = _replacing(stored.get(key), new[key])
        elif key not in new and key in stored:
            patch[key] = None
    phase = new["phase"]
    if not patch:
        return phase
    changed = set(patch) - _PROGRESS_ONLY
    if not changed and _conditions_same(stored, new):
        last = _last_write.get(meta["uid"], 0.0)
        if time.monotonic() - last < settings.progress_write_seconds:
            return phase
    kube.patch_evaluationjob_status(meta.get("namespace") or "default", meta["name"], patch)
    _last_write[meta["uid"]] = time.monotonic()
    old_phase = previous.get("phase")
    if old_phase != phase:
        event_type = "Warning" if phase == status.FAILED else "Normal"
        message = f"{old_phase or 'New'} -> {phase}: {new.get('message', '')}"
        (logger.warning if event_type == "Warning" else logger.info)("%s", message)
        try:
            kube.post_event(body, event_type, new.get("reason") or phase, message, status.fmt_time(now))
        except Exception as exc:  # noqa: BLE001 - an Event is best effort; status is the record
            logger.warning("could not post an Event: %s", exc)
    return phase


def _conditions_same(stored: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether every condition keeps its status and reason (a flip is always written at once)."""
    def key(conds):
        return {c.get("type"): (c.get("status"), c.get("reason")) for c in conds or []}
    return key(stored.get("conditions")) == key(new.get("conditions"))
