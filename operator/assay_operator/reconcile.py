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
import logging
import threading
import time
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from assay import layout, protocol
from assay.spec import EvaluationJob, JobSpec
from assay_operator import kube, manifests, policy, status
from assay_operator import metrics as op_metrics
from assay_operator.settings import Settings

#: status fields this operator owns.
MANAGED = ("phase", "reason", "message", "observedGeneration", "retryToken", "conditions", "startTime",
           "completionTime", "shards", "progress", "results", "resultsUri", "modelDigest", "datasetDigest",
           "inputs", "stages", "stageReruns", "blockedSince")
#: Fields that belong to one attempt and are dropped when a failed job is retried (the pinned inputs and
#: a finished inference stay: a retry resumes the same run).
PER_ATTEMPT = ("startTime", "completionTime", "results", "resultsUri", "stageReruns", "blockedSince")

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
#: uid -> monotonic time of the last status write (progress-only writes are rate-limited).
_last_write: dict[str, float] = {}


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def forget(namespace: str, name: str, uid: str | None) -> None:
    """Drop what the operator keeps per job once the job is deleted (its lock, its last write time)."""
    with _locks_guard:
        _locks.pop(f"{namespace}/{name}", None)
    if uid:
        _last_write.pop(uid, None)


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
        # fields of a newer CRD than this operator are ignored: upgrade the CRD first, then the operator
        spec = JobSpec(**known_fields(JobSpec, dict(body.get("spec") or {})))
        job = EvaluationJob(name=name, namespace=namespace, spec=spec)
    except (ValidationError, TypeError) as exc:
        if previous.get("phase") in status.TERMINAL:
            return previous["phase"]
        new = status.failed_status(previous, (body.get("spec") or {}).get("retryToken"), "InvalidSpec",
                                   f"spec does not match the EvaluationJob schema: {exc}", generation, now)
        return _write(body, previous, new, logger, now, settings)

    token = job.spec.retry_token or ""
    rerun = previous.get("phase") == status.FAILED and previous.get("retryToken", "") != token
    if previous.get("phase") in status.TERMINAL and not rerun:
        # A terminal phase never moves back; only the TTL still acts. A Succeeded job has observed a new
        # generation (only control fields without effect on a finished job may change); a Failed one has
        # not: its edited spec runs only when spec.retryToken starts a rerun, so kstatus keeps saying so.
        _expire_children(job, body, previous, now, logger)
        if (previous["phase"] == status.SUCCEEDED and generation is not None
                and previous.get("observedGeneration") != generation):
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
                        max_result_keys=settings.max_result_keys,
                        stage_reruns=dict(previous.get("stageReruns") or {}),
                        max_stage_reruns=settings.max_stage_reruns)
    children, waiting = _children(job, body, o, logger)
    o.attempt = _attempt_token(job, previous, children.values())
    if o.blocker or o.hold:
        return o
    o.resolve, o.ppl, o.cmp = children[protocol.RESOLVE], children[protocol.PPL], children[protocol.CMP]
    # Before any create: a job may not borrow more than the operator's policy allows (confused deputy).
    # Children of a job admitted under an older policy are stopped (PolicyViolation is an operator failure).
    o.blocker = policy.refusal(job, settings)
    if o.blocker:
        return o
    o.pods = kube.list_pods(job.namespace, manifests.pod_selector(job.name)) if any(children.values()) else []
    o.pods = [p for p in o.pods if _pod_of(p, children)]
    stages = previous.get("stages") or {}
    # One decision for every create: nothing is created while the job is suspended (a queued job's
    # unfinished children are deleted on suspend, and creating them again would loop) or waiting for an
    # earlier child to go.
    may_create = not waiting and not job.spec.suspend
    try:
        if not o.inputs:
            if o.resolve is None and may_create:
                o.resolve = _create(job, manifests.build_resolve_job(body, job, settings), logger)
            elif status.job_state(o.resolve) == "Complete":
                o.inputs = _report(o.pods, protocol.RESOLVE, protocol.PinnedInputs)
                if o.inputs is None:
                    o.resolve = _rerun_lost_report(job, o, protocol.RESOLVE, logger)
        if o.inputs and stages.get("ppl") != "Complete" and o.ppl is None and may_create:
            o.ppl = _create(job, manifests.build_ppl_job(body, job, settings, o.inputs), logger)
        ppl_done = stages.get("ppl") == "Complete" or status.job_state(o.ppl) == "Complete"
        if ppl_done and o.cmp is None and stages.get("cmp") != "Complete" and may_create:
            o.cmp = _create(job, manifests.build_cmp_job(body, job, settings, o.inputs,
                                                         _deadline_left(job, o.ppl),
                                                         manifests.run_settings_of(o.ppl)), logger)
    except kube.Refused as exc:
        if exc.status in (400, 422):
            o.blocker = ("InvalidSpec", f"the API server refused a child Job ({exc.status}): {exc}")
        else:
            o.hold = _refusal_hold(exc)
        return o
    if status.job_state(o.cmp) == "Complete":
        o.report = _report(o.pods, protocol.CMP, protocol.MetricsSummary)
        if o.report is None:
            o.cmp = _rerun_lost_report(job, o, protocol.CMP, logger)
    for role in protocol.ROLES:
        if status.job_state(getattr(o, role)) == "Failed":
            o.errors[role] = _error_message(o.pods, role)
    for role in protocol.ROLES:
        setattr(o, role, _sync_suspend(job, getattr(o, role), logger))
    o.ppl = _sync_ppl(job, o.ppl, o.inputs, logger)
    o.failed_create = _failed_create(job, (o.resolve, o.ppl, o.cmp), o.pods)
    o.queued, o.admission = _admission(job, (o.resolve, o.ppl, o.cmp))
    o.attempt = _attempt_token(job, previous, (o.resolve, o.ppl, o.cmp))
    return o


def known_fields(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the keys ``model`` (a pydantic model of assay.spec) does not know, recursively.
    The CRD may be a release ahead of the operator: a new optional field must not fail every job."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in data:
            out[key] = _known(info.annotation, data[key])
    return out


def _known(kind: Any, value: Any) -> Any:
    """``value`` pruned by the model inside the annotation ``kind`` (X, X | None, list[X]), if any."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return known_fields(kind, value) if isinstance(value, dict) else value
    args = typing.get_args(kind)
    if typing.get_origin(kind) is list and args and isinstance(value, list):
        return [_known(args[0], v) for v in value]
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return _known(models[0], value) if models and isinstance(value, dict) else value


def _attempt_token(job: EvaluationJob, previous: dict[str, Any], children) -> str:
    """The retryToken of the attempt the status describes: the spec's once a child of it exists (a rerun
    that could not create its Jobs yet has not started), else the previous attempt's."""
    token = job.spec.retry_token or ""
    if any(c is not None and _token_of(c) == token for c in children) or "retryToken" not in previous:
        return token
    return previous["retryToken"]


def _refusal_hold(exc: kube.Refused) -> tuple[str, str]:
    """A create the API server refused for now: quota and rate limits clear by themselves or by an admin,
    so the job waits (bounded by spec.pendingDeadlineSeconds) instead of failing after a whole inference."""
    text = str(exc)
    if exc.status == 429 or "exceeded quota" in text:
        return "QuotaExceeded", f"the API server refused a child Job for now ({exc.status}): {text}; retrying"
    return "OperatorForbidden", (f"the API server forbids the operator to create a child Job ({exc.status}): "
                                 f"{text}; check the operator's RBAC (the chart's watch.namespaces); retrying")


def _rerun_lost_report(job: EvaluationJob, o: status.Observed, role: str,
                       logger: logging.Logger) -> dict[str, Any] | None:
    """A stage Job completed but no pod of it shows its report (pods are garbage-collected after a node
    goes, deleted by hand or by cleanup jobs): delete it so that the stage runs again (resolve re-pins or
    is refused by run.json; cmp is idempotent), at most max_stage_reruns times."""
    child = getattr(o, role)
    done = o.stage_reruns.get(role, 0)
    if done >= o.max_stage_reruns:
        return child  # derive fails the job, naming the stage
    logger.warning("Job %s completed but its report is gone with its pod: running the stage again (%d of %d)",
                   child["metadata"]["name"], done + 1, o.max_stage_reruns)
    kube.delete_job(job.namespace, child["metadata"]["name"], child["metadata"]["uid"])
    o.stage_reruns[role] = done + 1
    return None


def _children(job: EvaluationJob, body: dict[str, Any], o: status.Observed,
              logger: logging.Logger) -> tuple[dict[str, dict[str, Any] | None], bool]:
    """This attempt's child Jobs by role, and whether one is still going away. A Job that is being deleted,
    or whose controller is an earlier EvaluationJob of this name (the garbage collector is deleting it),
    is waited for. A Job of that name with any other controller is a conflict: reported and re-checked at
    every reconcile, never adopted or touched. A child of an earlier retryToken is replaced unless its
    stage's result is recorded in status."""
    uid, token = body["metadata"]["uid"], job.spec.retry_token or ""
    stages = o.previous.get("stages") or {}
    recorded = {protocol.RESOLVE: bool(o.inputs), protocol.PPL: stages.get("ppl") == "Complete",
                protocol.CMP: False}
    out: dict[str, dict[str, Any] | None] = {}
    waiting = False
    for role in protocol.ROLES:
        child_name = manifests.child_name(job.name, role)
        child = kube.get_job(job.namespace, child_name)
        if child is not None and (child.get("metadata") or {}).get("deletionTimestamp"):
            child, waiting = None, True
        elif child is not None and manifests.controller_uid(child) != uid:
            if manifests.is_predecessor(child, job.name):
                o.hold = ("WaitingForPredecessor", f"Job {child_name} of an earlier EvaluationJob named "
                                                   f"{job.name} is being garbage-collected; waiting for it to go")
            else:
                owner = manifests.controller_uid(child) or "no controller"
                o.hold = ("ChildNameConflict", f"Job {child_name} exists and is not this EvaluationJob's (its "
                                               f"controller: {owner}); delete or rename that Job, or give the "
                                               "EvaluationJob another name")
            return {r: None for r in protocol.ROLES}, True
        elif child is not None and _token_of(child) != token and not recorded[role]:
            logger.info("deleting Job %s of the earlier attempt %r", child_name, _token_of(child))
            kube.delete_job(job.namespace, child_name, child["metadata"]["uid"])
            child, waiting = None, True
        out[role] = child
    return out, waiting


def _token_of(child: Mapping[str, Any]) -> str:
    return ((child.get("metadata") or {}).get("annotations") or {}).get(protocol.RETRY_TOKEN_ANNOTATION, "")


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


def _sync_suspend(job: EvaluationJob, child: dict[str, Any] | None,
                  logger: logging.Logger) -> dict[str, Any] | None:
    """spec.suspend on an unfinished child, on an edge of the spec only.

    A child with Kueue's queue label is Kueue's to suspend and resume: on spec.suspend the operator
    deletes it (finished shards stay in the store) and creates it again on resume, and Kueue queues it
    anew. Any other child carries the spec.suspend the operator last wrote (an annotation): the Job's
    suspend is written only when spec.suspend moved away from that, so a suspend set by someone else
    (Kueue with manageJobsWithoutQueueName) is never fought over."""
    if child is None or status.job_state(child) in ("Complete", "Failed"):
        return child
    meta = child.get("metadata") or {}
    if manifests.kueue_managed(child):
        if job.spec.suspend:
            logger.info("spec.suspend on a queued job: deleting Job %s", meta["name"])
            kube.delete_job(job.namespace, meta["name"], meta["uid"])
            return None
        return child
    want = "true" if job.spec.suspend else "false"
    # a child of an operator before the annotation: what it has now is what that operator applied
    applied = (meta.get("annotations") or {}).get(protocol.SUSPEND_ANNOTATION) or \
        ("true" if (child.get("spec") or {}).get("suspend") else "false")
    if applied == want:
        return child
    logger.info("%s Job %s", "suspending" if job.spec.suspend else "resuming", meta["name"])
    patch: dict[str, Any] = {"metadata": {"annotations": {protocol.SUSPEND_ANNOTATION: want}}}
    if job.spec.suspend or not kube.list_workloads(job.namespace, meta.get("uid", "")):
        patch["spec"] = {"suspend": job.spec.suspend}  # a Job with a Workload is resumed by Kueue alone
    return kube.patch_job(job.namespace, meta["name"], patch)


def _sync_ppl(job: EvaluationJob, ppl: dict[str, Any] | None, inputs: dict[str, Any] | None,
              logger: logging.Logger) -> dict[str, Any] | None:
    """spec.ppl.workers and spec.activeDeadlineSeconds may change while the job runs: the ppl Job's
    parallelism and deadline. Not the parallelism of a queued Job: Kueue admitted it for its size and
    would evict its pods (the CRD refuses that change; this covers jobs created before the rule)."""
    if ppl is None or not inputs or status.job_state(ppl) in ("Complete", "Failed"):
        return ppl
    spec = ppl.get("spec") or {}
    patch: dict[str, Any] = {}
    want = min(job.spec.ppl.workers, int(inputs["indexes"]))
    if spec.get("parallelism") != want and not manifests.kueue_managed(ppl):
        patch["parallelism"] = want
    deadline = job.spec.active_deadline_seconds
    if deadline and spec.get("activeDeadlineSeconds") != deadline:
        patch["activeDeadlineSeconds"] = deadline
    if not patch:
        return ppl
    logger.info("updating Job %s: %s", ppl["metadata"]["name"], patch)
    return kube.patch_job(job.namespace, ppl["metadata"]["name"], {"spec": patch})


def _admission(job: EvaluationJob, children) -> tuple[bool, str | None]:
    """Whether a suspended child waits for Kueue (it carries the queue label or has a Workload), and what
    Kueue says of it: its Workload's QuotaReserved or Admitted message (e.g. a resource the ClusterQueue
    does not cover), so that status says why, not only that, it waits."""
    queued, message = False, None
    for child in children:
        if child is None or status.job_state(child) != "Suspended" or job.spec.suspend:
            continue
        workloads = kube.list_workloads(job.namespace, child["metadata"].get("uid", ""))
        queued = queued or bool(workloads) or manifests.kueue_managed(child)
        for workload in workloads:
            conds = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
            for ctype in ("QuotaReserved", "Admitted"):
                c = conds.get(ctype)
                if message is None and c and c.get("status") == "False" and c.get("message"):
                    message = f"Workload {workload['metadata']['name']}: {c['message']}"
    return queued, message


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
    for role in protocol.ROLES:
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


def _report(pods: list[dict[str, Any]], role: str, model: type[BaseModel]) -> dict[str, Any] | None:
    """The result that ``role``'s pod which succeeded reported in its termination message."""
    for _, term in _terminations(pods, role):
        if term.get("exitCode") == 0:
            result = protocol.parse_result(term.get("message"), model)
            if result is not None:
                return result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return None


def _error_message(pods: list[dict[str, Any]], role: str) -> str | None:
    """The error (and hint) a failed pod of ``role`` reported in its termination message; for a pod that died
    before it could report (a crash of the interpreter), the last line of the log tail the kubelet put
    there instead (terminationMessagePolicy FallbackToLogsOnError)."""
    for _, term in _terminations(pods, role):
        text = (term.get("message") or "").strip()
        if not term.get("exitCode") or not text:
            continue
        failure = protocol.parse_failure(text)
        if failure is not None:
            return failure.error + (f" (hint: {failure.hint})" if failure.hint else "")
        return text.splitlines()[-1].strip()
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
    old_phase, reason = previous.get("phase"), new.get("reason")
    warning = phase == status.FAILED or reason in status.WARNING_REASONS
    # an Event per phase change, and per change into a reason someone has to act on (quota, a conflict)
    if old_phase != phase or (warning and previous.get("reason") != reason):
        event_type = "Warning" if warning else "Normal"
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
