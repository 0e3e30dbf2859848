"""The pure step of a reconcile: what the API server showed (``observe.Snapshot``) and the spec -> the
actions on the child Jobs, in order, and what ``status.derive`` looks at once ``act`` performed them.
No API calls here.

Stages: resolve (pin the inputs) -> ppl (Indexed Job over shard groups) -> cmp (metrics). A stage's
completion is recorded in status (``stages``, ``inputs``), so a child deleted after it finished is never
recreated. Children have deterministic names, are created only when absent, and are ours only if their
controller ownerReference carries this EvaluationJob's uid; anything else with that name is left alone.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from assay import layout, protocol
from assay.spec import EvaluationJob
from assay_operator import manifests, policy, status, terminations
from assay_operator.settings import Settings

if TYPE_CHECKING:  # observe imports this module (what it reads is decided here)
    from assay_operator.observe import Snapshot

Child = dict[str, Any] | None


@dataclass(frozen=True)
class Create:
    role: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Patch:
    role: str
    name: str
    patch: dict[str, Any]
    #: logged before the patch: "<verb> Job <name>[: <detail>]"
    verb: str
    detail: str = ""


@dataclass(frozen=True)
class Delete:
    role: str
    name: str
    #: the uid it means: a namesake created since is never deleted
    uid: str
    #: why, logged before the delete
    note: str
    warning: bool = False
    #: a stage Job deleted to run the stage again (its report was lost): counts toward max_stage_reruns
    rerun: bool = False


Action = Create | Patch | Delete


@dataclass
class Plan:
    #: what ``derive`` looks at, with the children as observed (``settle`` applies what ``act`` did)
    observed: status.Observed
    actions: list[Action]


def plan(job: EvaluationJob, body: dict[str, Any], previous: dict[str, Any], seen: Snapshot, settings: Settings,
         now: dt.datetime) -> Plan:
    """Decide this reconcile's actions from what ``observe`` saw, and gather what ``derive`` needs."""
    o = status.Observed(name=job.name, spec=job.spec, now=now, generation=body["metadata"].get("generation"),
                        previous=previous, inputs=previous.get("inputs"),
                        results_uri=layout.metrics_uri(job.spec.output.uri),
                        fail_fast_seconds=settings.fail_fast_seconds, stall_seconds=settings.stall_seconds,
                        stage_reruns=dict(previous.get("stageReruns") or {}),
                        max_stage_reruns=settings.max_stage_reruns)
    actions: list[Action] = []
    children, waiting = _children(job, body["metadata"]["uid"], o, seen.jobs, actions)
    if o.hold:
        return Plan(o, actions)
    o.resolve, o.ppl, o.cmp = children[protocol.RESOLVE], children[protocol.PPL], children[protocol.CMP]
    # Before any create: a job may not borrow more than the operator's policy allows (confused deputy).
    # Children of a job admitted under an older policy are stopped (PolicyViolation is an operator failure).
    o.blocker = policy.refusal(job, settings)
    if o.blocker:
        return Plan(o, actions)
    o.pods = [p for p in seen.pods if _pod_of(p, children)]
    kids = dict(children)  # the children as the actions planned so far leave them
    stages = previous.get("stages") or {}
    # One decision for every create: nothing is created while the job is suspended (a queued job's
    # unfinished children are deleted on suspend, and creating them again would loop) or waiting for an
    # earlier child to go.
    may_create = not waiting and not job.spec.suspend

    def create(role: str, child: dict[str, Any]) -> dict[str, Any]:
        actions.append(Create(role, child))
        return child

    if not o.inputs:
        if kids[protocol.RESOLVE] is None and may_create:
            kids[protocol.RESOLVE] = create(protocol.RESOLVE, manifests.build_resolve_job(body, job, settings))
        elif status.job_state(kids[protocol.RESOLVE]) == "Complete":
            o.inputs = terminations.report(o.pods, protocol.RESOLVE, protocol.PinnedInputs)
            if o.inputs is None:
                kids[protocol.RESOLVE] = _rerun_lost_report(o, protocol.RESOLVE, kids[protocol.RESOLVE], actions)
    if o.inputs and stages.get("ppl") != "Complete" and kids[protocol.PPL] is None and may_create:
        kids[protocol.PPL] = create(protocol.PPL, manifests.build_ppl_job(body, job, settings, o.inputs))
    ppl = kids[protocol.PPL]
    ppl_done = stages.get("ppl") == "Complete" or status.job_state(ppl) == "Complete"
    if ppl_done and kids[protocol.CMP] is None and stages.get("cmp") != "Complete" and may_create:
        kids[protocol.CMP] = create(protocol.CMP, manifests.build_cmp_job(
            body, job, settings, o.inputs, _deadline_left(job, ppl), manifests.run_settings_of(ppl)))
    if status.job_state(kids[protocol.CMP]) == "Complete":
        o.report = terminations.report(o.pods, protocol.CMP, protocol.MetricsSummary)
        if o.report is None:
            kids[protocol.CMP] = _rerun_lost_report(o, protocol.CMP, kids[protocol.CMP], actions)
    for role in protocol.ROLES:
        if status.job_state(kids[role]) == "Failed":
            o.errors[role] = terminations.error_message(o.pods, role)
    for role in protocol.ROLES:
        kids[role] = _sync_suspend(job, role, kids[role], seen.workloads, actions)
    kids[protocol.PPL] = _sync_ppl(job, kids[protocol.PPL], o.inputs, actions)
    o.failed_create = _failed_create(kids.values(), o.pods, seen.events)
    o.queued, o.admission = _admission(job, kids.values(), seen.workloads)
    return Plan(o, actions)


def settle(p: Plan, done: Iterable[tuple[Action, Child]], refused: tuple[int, str] | None,
           job: EvaluationJob) -> status.Observed:
    """``p.observed`` with what ``act`` did: the objects it created or patched, the Jobs it deleted, the
    stage reruns it started, and the create the API server refused (which stopped it)."""
    o = p.observed
    for action, result in done:
        setattr(o, action.role, result)
        if isinstance(action, Delete) and action.rerun:
            o.stage_reruns[action.role] = o.stage_reruns.get(action.role, 0) + 1
    if refused is not None:
        code, text = refused
        if code in (400, 422):
            o.blocker = ("InvalidSpec", f"the API server refused a child Job ({code}): {text}")
        elif code == 409:  # act found a Job of the child's name with another owner (the cache never shows it)
            o.hold = ("ChildNameConflict", text)
        else:
            o.hold = _refusal_hold(code, text)
    o.attempt = _attempt_token(job, o.previous, (o.resolve, o.ppl, o.cmp))
    return o


def stop(o: status.Observed, reason: str) -> list[Action]:
    """The job failed (``reason``) while pods of ours may still run or wait: delete our unfinished Jobs."""
    if reason not in status.OPERATOR_FAILURES or reason == "ChildNameConflict":
        return []
    return [Delete(role, child["metadata"]["name"], child["metadata"]["uid"], reason, warning=True)
            for role, child in ((r, getattr(o, r)) for r in protocol.ROLES)
            if child is not None and status.job_state(child) not in ("Complete", "Failed")]


def expired(job: EvaluationJob, previous: dict[str, Any], now: dt.datetime) -> bool:
    """spec.ttlSecondsAfterFinished has passed since the job finished."""
    ttl, done = job.spec.ttl_seconds_after_finished, status.parse_time(previous.get("completionTime"))
    return ttl is not None and done is not None and (now - done).total_seconds() >= ttl


def expire(job: EvaluationJob, uid: str, jobs: Mapping[str, Child]) -> list[Action]:
    """Delete our child Jobs (their pods and logs) once expired; the EvaluationJob stays."""
    note = f"ttlSecondsAfterFinished={job.spec.ttl_seconds_after_finished} passed"
    return [Delete(role, child["metadata"]["name"], child["metadata"]["uid"], note)
            for role, child in jobs.items() if child is not None and manifests.controller_uid(child) == uid]


# ------------------------------------------------------------------------------- what observe reads


def uid_of(child: Mapping[str, Any]) -> str:
    return (child.get("metadata") or {}).get("uid") or ""


def applied_suspend(child: Mapping[str, Any]) -> str:
    """The spec.suspend the operator last wrote on a child ("true" or "false"); a child of an operator
    before the annotation: what it has now is what that operator applied."""
    meta = child.get("metadata") or {}
    return (meta.get("annotations") or {}).get(protocol.SUSPEND_ANNOTATION) or \
        ("true" if (child.get("spec") or {}).get("suspend") else "false")


def may_wait_for_kueue(job: EvaluationJob, child: Mapping[str, Any]) -> bool:
    """Whether ``plan`` reads the child's Workloads: to say why a suspended child waits, or before
    resuming one (a Job with a Workload is resumed by Kueue alone)."""
    state = status.job_state(dict(child))
    return (state not in ("Complete", "Failed") and not job.spec.suspend
            and (state == "Suspended" or applied_suspend(child) == "true"))


def active_without_pods(child: Mapping[str, Any], pods: list[dict[str, Any]]) -> bool:
    """An active child with no pod: ``plan`` reads its Events for the Job controller's FailedCreate."""
    uid = uid_of(child)
    return status.job_state(dict(child)) == "Active" and not any(
        ((p.get("metadata") or {}).get("labels") or {}).get("batch.kubernetes.io/controller-uid") == uid
        for p in pods)


# ------------------------------------------------------------------------------------------- children


def _children(job: EvaluationJob, uid: str, o: status.Observed, jobs: Mapping[str, Child],
              actions: list[Action]) -> tuple[dict[str, Child], bool]:
    """This attempt's child Jobs by role, and whether one is still going away. A Job that is being deleted,
    or whose controller is an earlier EvaluationJob of this name (the garbage collector is deleting it),
    is waited for. A Job of that name with any other controller is a conflict: reported and re-checked at
    every reconcile, never adopted or touched. A child of an earlier retryToken is replaced unless its
    stage's result is recorded in status."""
    token = job.spec.retry_token or ""
    stages = o.previous.get("stages") or {}
    recorded = {protocol.RESOLVE: bool(o.inputs), protocol.PPL: stages.get("ppl") == "Complete",
                protocol.CMP: False}
    out: dict[str, Child] = {}
    waiting = False
    for role in protocol.ROLES:
        child_name, child = manifests.child_name(job.name, role), jobs.get(role)
        if child is not None and (child.get("metadata") or {}).get("deletionTimestamp"):
            child, waiting = None, True
        elif child is not None and manifests.controller_uid(child) != uid:
            if manifests.is_predecessor(child, job.name):
                o.hold = ("WaitingForPredecessor", f"Job {child_name} of an earlier EvaluationJob named "
                                                   f"{job.name} is being garbage-collected; waiting for it to go")
            else:
                o.hold = ("ChildNameConflict", name_conflict(child_name, child))
            return {r: None for r in protocol.ROLES}, True
        elif child is not None and _token_of(child) != token and not recorded[role]:
            actions.append(Delete(role, child_name, child["metadata"]["uid"],
                                  f"it belongs to the earlier attempt {_token_of(child)!r}"))
            child, waiting = None, True
        out[role] = child
    return out, waiting


def name_conflict(child_name: str, child: Mapping[str, Any]) -> str:
    """Why a Job of the child's name that this EvaluationJob does not control stops it."""
    owner = manifests.controller_uid(dict(child)) or "no controller"
    return (f"Job {child_name} exists and is not this EvaluationJob's (its controller: {owner}); delete or "
            "rename that Job, or give the EvaluationJob another name")


def _attempt_token(job: EvaluationJob, previous: dict[str, Any], children: Iterable[Child]) -> str:
    """The retryToken of the attempt the status describes: the spec's once a child of it exists (a rerun
    that could not create its Jobs yet has not started), else the previous attempt's."""
    token = job.spec.retry_token or ""
    if any(c is not None and _token_of(c) == token for c in children) or "retryToken" not in previous:
        return token
    return previous["retryToken"]


def _refusal_hold(code: int, text: str) -> tuple[str, str]:
    """A create the API server refused for now: quota and rate limits clear by themselves or by an admin,
    so the job waits (bounded by spec.pendingDeadlineSeconds) instead of failing after a whole inference."""
    if code == 429 or "exceeded quota" in text:
        return "QuotaExceeded", f"the API server refused a child Job for now ({code}): {text}; retrying"
    return "OperatorForbidden", (f"the API server forbids the operator to create a child Job ({code}): "
                                 f"{text}; check the operator's RBAC (the chart's watch.namespaces); retrying")


def _rerun_lost_report(o: status.Observed, role: str, child: dict[str, Any], actions: list[Action]) -> Child:
    """A stage Job completed but no pod of it shows its report (pods are garbage-collected after a node
    goes, deleted by hand or by cleanup jobs): delete it so that the stage runs again (resolve re-pins or
    is refused by run.json; cmp is idempotent), at most max_stage_reruns times."""
    done = o.stage_reruns.get(role, 0)
    if done >= o.max_stage_reruns:
        return child  # derive fails the job, naming the stage
    actions.append(Delete(role, child["metadata"]["name"], child["metadata"]["uid"],
                          f"it completed but its report is gone with its pod; running the stage again "
                          f"({done + 1} of {o.max_stage_reruns})", warning=True, rerun=True))
    return None


def _token_of(child: Mapping[str, Any]) -> str:
    return ((child.get("metadata") or {}).get("annotations") or {}).get(protocol.RETRY_TOKEN_ANNOTATION, "")


def _pod_of(pod: dict[str, Any], children: Mapping[str, Child]) -> bool:
    """Pods of this attempt's Jobs (an earlier, deleted Job's pods may linger while they terminate)."""
    uids = {(c.get("metadata") or {}).get("uid") for c in children.values() if c is not None}
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return (labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid")) in uids


def _deadline_left(job: EvaluationJob, ppl: Child) -> int | None:
    """What the ppl Job left of spec.activeDeadlineSeconds, by the Job's own clock (which pauses while
    it is suspended or queued), for the cmp Job."""
    deadline = job.spec.active_deadline_seconds
    if not deadline:
        return None
    st = (ppl or {}).get("status") or {}
    start, end = status.parse_time(st.get("startTime")), status.parse_time(st.get("completionTime"))
    used = (end - start).total_seconds() if start and end else 0.0
    return int(deadline - used)


def _patched(child: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``child`` as a merge patch leaves it (what the API server will return)."""
    out = copy.deepcopy(child)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _patched(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _sync_suspend(job: EvaluationJob, role: str, child: Child, workloads: Mapping[str, list[dict[str, Any]]],
                  actions: list[Action]) -> Child:
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
            actions.append(Delete(role, meta["name"], meta["uid"], "spec.suspend on a queued job"))
            return None
        return child
    want = "true" if job.spec.suspend else "false"
    if applied_suspend(child) == want:
        return child
    patch: dict[str, Any] = {"metadata": {"annotations": {protocol.SUSPEND_ANNOTATION: want}}}
    if job.spec.suspend or not workloads.get(uid_of(child)):
        patch["spec"] = {"suspend": job.spec.suspend}  # a Job with a Workload is resumed by Kueue alone
    actions.append(Patch(role, meta["name"], patch, "suspending" if job.spec.suspend else "resuming"))
    return _patched(child, patch)


def _sync_ppl(job: EvaluationJob, ppl: Child, inputs: dict[str, Any] | None, actions: list[Action]) -> Child:
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
    actions.append(Patch(protocol.PPL, ppl["metadata"]["name"], {"spec": patch}, "updating", str(patch)))
    return _patched(ppl, {"spec": patch})


def _admission(job: EvaluationJob, children: Iterable[Child],
               workloads: Mapping[str, list[dict[str, Any]]]) -> tuple[bool, str | None]:
    """Whether a suspended child waits for Kueue (it carries the queue label or has a Workload), and what
    Kueue says of it: its Workload's QuotaReserved or Admitted message (e.g. a resource the ClusterQueue
    does not cover), so that status says why, not only that, it waits."""
    queued, message = False, None
    for child in children:
        if child is None or status.job_state(child) != "Suspended" or job.spec.suspend:
            continue
        theirs = workloads.get(uid_of(child)) or []
        queued = queued or bool(theirs) or manifests.kueue_managed(child)
        for workload in theirs:
            conds = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
            for ctype in ("QuotaReserved", "Admitted"):
                c = conds.get(ctype)
                if message is None and c and c.get("status") == "False" and c.get("message"):
                    message = f"Workload {workload['metadata']['name']}: {c['message']}"
    return queued, message


def _failed_create(children: Iterable[Child], pods: list[dict[str, Any]],
                   events: Mapping[str, list[dict[str, Any]]]) -> str | None:
    """The Job controller's latest FailedCreate message for an active child that has no pods."""
    for child in children:
        if child is None or not active_without_pods(child, pods):
            continue
        uid, name = uid_of(child), child["metadata"]["name"]
        failed = [e for e in events.get(name) or []
                  if e.get("reason") == "FailedCreate" and (e.get("involvedObject") or {}).get("uid") in (uid, None)]
        if failed:
            latest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
            return f"Job {name}: {latest.get('message', '')}"
    return None
