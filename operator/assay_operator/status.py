"""Pure status derivation: what the cluster and the store show -> the EvaluationJob's status.

``derive(Observed)`` maps the child Jobs' conditions, ``completedIndexes`` and ``failedIndexes``, their
pods' states and what the pods reported in their termination messages (the pinned inputs, the metrics
summary, errors) to a phase, metav1.Conditions (lastTransitionTime only moves when a condition's status
flips), shard counts, progress and results. No API calls here.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from assay import layout
from assay.protocol import (
    DEADLINE_EXCEEDED,
    EVALUATING,
    FAILED,
    METRICS_FAILED,
    PENDING,
    PERMANENT_ERROR,
    ROLE_LABEL,
    RUNNING,
    SHARD_RETRIES_EXHAUSTED,
    SUCCEEDED,
    SUSPENDED,
    TERMINAL,
)
from assay.spec import JobSpec

#: Reconciling and Stalled are kstatus' abnormal-true conditions: Flux and kstatus-based tools see a
#: job in progress while Reconciling is True and give up at once when Stalled is True (a failed job).
CONDITION_TYPES = ("Ready", "Running", "Succeeded", "Failed", "Suspended", "Reconciling", "Stalled",
                   "ShardsProgressing")

#: Container waiting reasons that rarely heal by themselves: fail after the short fail-fast grace.
FAIL_FAST_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                     "CreateContainerError"}
#: Failure reasons the operator decides itself (the Jobs are still running and must be stopped).
OPERATOR_FAILURES = FAIL_FAST_REASONS | {"Unschedulable", "PendingDeadlineExceeded", "InvalidSpec",
                                         "PolicyViolation"}
#: Pending reasons of a job held by something outside it that an admin or time may clear: the job
#: waits, and fails past spec.pendingDeadlineSeconds counted from status.blockedSince.
HOLDS_WITH_DEADLINE = {"QuotaExceeded", "OperatorForbidden", "FailedCreate"}
#: Reasons whose Event is a Warning although the phase is not Failed: someone has to act.
WARNING_REASONS = HOLDS_WITH_DEADLINE | {"ChildNameConflict"}


# ---------------------------------------------------------------------------------------- time helpers


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fmt_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def fmt_duration(seconds: float) -> str:
    """Short human duration: 45s, 3m20s, 2h05m."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# ------------------------------------------------------------------------------------------ child Jobs


def _true_condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return c
    return None


def job_state(job: dict[str, Any] | None) -> str:
    """Absent, Failed, Complete, Suspended or Active."""
    if job is None:
        return "Absent"
    if _true_condition(job, "Failed") or _true_condition(job, "FailureTarget"):
        return "Failed"
    if _true_condition(job, "Complete"):
        return "Complete"
    if (job.get("spec") or {}).get("suspend"):
        return "Suspended"
    return "Active"


def job_failure(job: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) of a failed Job's Failed (or FailureTarget) condition."""
    c = _true_condition(job, "Failed") or _true_condition(job, "FailureTarget") or {}
    return c.get("reason") or "Failed", c.get("message") or ""


def parse_indexes(text: str | None) -> list[int]:
    """Job status index sets ("1,3-5") -> [1, 3, 4, 5]."""
    out: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


# ------------------------------------------------------------------------------------------------ pods


def _age(obj: dict[str, Any], now: dt.datetime, stamp: str | None = None) -> float:
    t = parse_time(stamp if stamp is not None else (obj.get("metadata") or {}).get("creationTimestamp"))
    return (now - t).total_seconds() if t else 0.0


def pod_problem(pods: list[dict[str, Any]], now: dt.datetime, *, fail_fast_seconds: float,
                pending_deadline_seconds: float) -> tuple[str, str] | None:
    """The first reason to fail now from the pods' states, as (reason, message), or None."""
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        meta, st = pod.get("metadata") or {}, pod.get("status") or {}
        name = meta.get("name", "?")
        if meta.get("deletionTimestamp"):
            continue
        for cs in st.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in FAIL_FAST_REASONS and _age(pod, now) >= fail_fast_seconds:
                detail = waiting.get("message") or ""
                return reason, f"pod {name}: {reason}" + (f": {detail}" if detail else "")
        if st.get("phase", "Pending") != "Pending":
            continue
        age = _age(pod, now)
        if age < pending_deadline_seconds:
            continue
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                return "Unschedulable", (f"pod {name} could not be scheduled for {fmt_duration(age)}, past "
                                         f"spec.pendingDeadlineSeconds={int(pending_deadline_seconds)}: "
                                         f"{c.get('message', '')}")
        return "PendingDeadlineExceeded", (f"pod {name} has been Pending for {fmt_duration(age)}, "
                                           f"past spec.pendingDeadlineSeconds={int(pending_deadline_seconds)}")
    return None


def any_pod_running(pods: list[dict[str, Any]]) -> bool:
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)


def any_pod_placed(pods: list[dict[str, Any]]) -> bool:
    """A pod the scheduler bound to a node that has not failed: a worker is getting on with it."""
    return any((p.get("spec") or {}).get("nodeName") and (p.get("status") or {}).get("phase") != "Failed"
               and not (p.get("metadata") or {}).get("deletionTimestamp") for p in pods)


# -------------------------------------------------------------------------------------------- progress
# Progress comes from the ppl Job's own status (completedIndexes, failedIndexes), never from the store.


def index_shards(inputs: dict[str, Any], indexes: list[int]) -> int:
    """How many shards the given ppl indexes (shard groups) hold."""
    total, per = int(inputs.get("shards") or 0), int(inputs.get("shardsPerIndex") or 1)
    return sum(len(layout.shards_of_index(total, i, per)) for i in indexes)


def progress_of(inputs: dict[str, Any] | None, ppl: dict[str, Any] | None, ppl_done: bool,
                previous: dict[str, Any], now: dt.datetime) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(progress, shards) of status from the ppl Job's completed and failed indexes."""
    if not inputs:
        return None, {"completed": 0, "failed": 0, "summary": "0/?"}
    total_shards, total_samples = int(inputs.get("shards") or 0), int(inputs.get("samples") or 0)
    st = (ppl or {}).get("status") or {}
    completed = total_shards if ppl_done else index_shards(inputs, parse_indexes(st.get("completedIndexes")))
    failed = index_shards(inputs, parse_indexes(st.get("failedIndexes")))
    shards = {"total": total_shards, "completed": completed, "failed": failed,
              "summary": f"{completed}/{total_shards}"}
    done = total_samples if ppl_done else (total_samples * completed // total_shards if total_shards else 0)
    percent = 100.0 if ppl_done else (round(100.0 * completed / total_shards, 1) if total_shards else 0.0)
    out: dict[str, Any] = {"samplesDone": done, "samplesTotal": total_samples, "percent": percent,
                           "percentText": f"{percent:.1f}%"}
    before = previous.get("progress") or {}
    moved = (previous.get("shards") or {}).get("completed") != completed
    out["lastProgressTime"] = fmt_time(now) if moved or not before.get("lastProgressTime") \
        else before["lastProgressTime"]
    started = parse_time(st.get("startTime"))
    if not ppl_done and started and done:
        rate = done / max(1.0, (now - started).total_seconds())
        out["samplesPerSecond"] = round(rate, 3)
        out["eta"] = fmt_duration((total_samples - done) / rate)
    return out, shards


# ------------------------------------------------------------------------------------------- results


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def results_of(report: dict[str, Any]) -> dict[str, Any]:
    """status.results: the cmp pod's report as it is (``protocol.MetricsSummary`` bounds it, once), with the
    headline as text for the printer column and only the values status can hold (finite numbers)."""
    out: dict[str, Any] = {}
    if report.get("evaluator"):
        out["evaluator"] = str(report["evaluator"])
    headline = report.get("headline") or {}
    if _number(headline.get("value")):
        out["headline"] = f"{float(headline['value']):.3f}"
        out["headlineMetric"] = str(headline.get("name", ""))
    out["summary"] = {k: v for k, v in (report.get("summary") or {}).items() if _number(v)}
    if report.get("truncated"):
        out["truncated"] = int(report["truncated"])
    return out


# ------------------------------------------------------------------------------------------ conditions


def set_condition(previous: list[dict[str, Any]], ctype: str, status: bool, reason: str, message: str,
                  generation: int | None, now: dt.datetime) -> dict[str, Any]:
    """A metav1.Condition; keeps the previous lastTransitionTime unless the status flips."""
    text = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old["lastTransitionTime"] if old and old.get("status") == text and old.get("lastTransitionTime") \
        else fmt_time(now)
    cond = {"type": ctype, "status": text, "reason": reason, "message": message[:1024],
            "lastTransitionTime": since}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def conditions_for(phase: str, reason: str, message: str, previous: list[dict[str, Any]],
                   generation: int | None, now: dt.datetime,
                   progressing: tuple[bool, str, str] | None = None) -> list[dict[str, Any]]:
    active = phase in (RUNNING, EVALUATING)
    # A condition that holds carries the phase's reason; one that does not names the phase instead.
    table = {
        "Ready": (phase == SUCCEEDED, reason, message),
        "Running": (active, reason if active else phase, message if active else ""),
        "Succeeded": (phase == SUCCEEDED, reason if phase == SUCCEEDED else phase, ""),
        "Failed": (phase == FAILED, reason if phase == FAILED else phase, message if phase == FAILED else ""),
        "Suspended": (phase == SUSPENDED, reason if phase == SUSPENDED else phase,
                      message if phase == SUSPENDED else ""),
        "Reconciling": (phase in (PENDING, RUNNING, EVALUATING), reason if phase in (PENDING, RUNNING, EVALUATING)
                        else phase, ""),
        "Stalled": (phase == FAILED, reason if phase == FAILED else phase, message if phase == FAILED else ""),
        "ShardsProgressing": progressing or (phase == RUNNING, reason if phase == RUNNING else phase, ""),
    }
    return [set_condition(previous, t, *table[t], generation, now) for t in CONDITION_TYPES]


# -------------------------------------------------------------------------------------------- derive


@dataclass
class Observed:
    """Everything ``derive`` looks at, gathered by ``plan`` from Kubernetes objects only."""

    name: str
    spec: JobSpec
    now: dt.datetime
    generation: int | None = None
    previous: dict[str, Any] = field(default_factory=dict)
    resolve: dict[str, Any] | None = None
    ppl: dict[str, Any] | None = None
    cmp: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    #: the pinned inputs, from status or from the resolve pod's termination message
    inputs: dict[str, Any] | None = None
    #: the cmp pod's report (a ``protocol.MetricsSummary``, bounded by the pod)
    report: dict[str, Any] | None = None
    #: error lines from the termination messages of failed pods, by role
    errors: dict[str, str] = field(default_factory=dict)
    #: a failure the reconcile met: (reason, message), e.g. a policy refusal or a Job the API refused
    blocker: tuple[str, str] | None = None
    #: something outside the job holds it, for now: (reason, message), e.g. quota refusing a child Job
    hold: tuple[str, str] | None = None
    #: the Job controller's FailedCreate message (quota, LimitRange, admission), if pods cannot be made
    failed_create: str | None = None
    #: a suspended child waits for Kueue (queue label or Workload), and its Workload's message if any
    queued: bool = False
    admission: str | None = None
    #: the retryToken of the attempt whose children exist (status.retryToken)
    attempt: str | None = None
    #: stage -> how often its Job was rerun because its report was lost with its pod; and the bound
    stage_reruns: dict[str, int] = field(default_factory=dict)
    max_stage_reruns: int = 3
    results_uri: str | None = None
    fail_fast_seconds: float = 60.0
    stall_seconds: float = 3600.0


def _stage_done(o: Observed, role: str) -> bool:
    """A stage is done once its result is in status: the pinned inputs, the ppl Job's completion, the cmp
    report (a Complete cmp Job whose report was lost with its pod is not done)."""
    if role == "cmp":
        return o.report is not None
    return (o.previous.get("stages") or {}).get(role) == "Complete" or job_state(getattr(o, role)) == "Complete"


def _held_too_long(o: Observed, reason: str) -> float | None:
    """Seconds the job has been held, if past spec.pendingDeadlineSeconds (held since status.blockedSince)."""
    if reason not in HOLDS_WITH_DEADLINE:
        return None
    since = parse_time(o.previous.get("blockedSince")) or o.now
    held = (o.now - since).total_seconds()
    return held if held >= o.spec.pending_deadline_seconds else None


def decide(o: Observed) -> tuple[str, str, str]:
    """(phase, reason, message), in order of precedence: failures, finish, suspend, run, wait."""
    spec = o.spec
    resolve_state, ppl_state, cmp_state = job_state(o.resolve), job_state(o.ppl), job_state(o.cmp)
    retries = spec.ppl.max_retries_per_shard
    if o.blocker:
        return FAILED, o.blocker[0], o.blocker[1]
    hold = o.hold or (("FailedCreate", f"pods cannot be created: {o.failed_create}") if o.failed_create else None)
    if hold and cmp_state != "Complete" and not spec.suspend:
        held = _held_too_long(o, hold[0])
        if held is not None:
            return FAILED, "PendingDeadlineExceeded", (f"held for {fmt_duration(held)}, past "
                                                       f"spec.pendingDeadlineSeconds={spec.pending_deadline_seconds}: "
                                                       f"{hold[1]}")
    lost = [role for role in ("resolve", "cmp") if job_state(getattr(o, role)) == "Complete"
            and o.stage_reruns.get(role, 0) >= o.max_stage_reruns
            and (o.inputs is None if role == "resolve" else o.report is None)]
    if lost:
        reason = "InputsUnavailable" if lost[0] == "resolve" else "MetricsUnavailable"
        return FAILED, reason, (f"the {lost[0]} Job completed {o.max_stage_reruns + 1} times but its pod was gone "
                                f"before its report was read each time (pods deleted by hand, by a cleanup job or "
                                f"with their node); stop that, then change spec.retryToken")
    if resolve_state == "Failed" and not o.inputs:
        reason, message = job_failure(o.resolve or {})
        detail = o.errors.get("resolve") or f"{reason}: {message}"
        return FAILED, "InputsUnavailable", (f"the inputs could not be pinned: {detail}; fix them, then change "
                                             "spec.retryToken to try again")
    if ppl_state == "Failed":
        reason, message = job_failure(o.ppl or {})
        indexes = parse_indexes(((o.ppl or {}).get("status") or {}).get("failedIndexes"))
        oom = sorted((p.get("metadata") or {}).get("name", "?") for p in o.pods if _is_oom(p) and _role(p) == "ppl")
        if oom and reason != "PodFailurePolicy":
            return FAILED, "OOMKilled", (f"ppl pods ran out of memory (OOMKilled: {', '.join(oom[:4])}) and the "
                                         f"group ran out of retries (spec.ppl.maxRetriesPerShard={retries}); lower "
                                         "spec.ppl.batchSize or raise the memory limit in spec.ppl.resources, then "
                                         "change spec.retryToken")
        if reason == "PodFailurePolicy":
            detail = o.errors.get("ppl") or message
            return FAILED, PERMANENT_ERROR, (
                f"a ppl worker exited with code 3 (a deterministic error such as a bad handler or a corrupt "
                f"shard): {detail}; read `assay job logs {o.name}`")
        if reason == "DeadlineExceeded":
            return FAILED, DEADLINE_EXCEEDED, f"ran past spec.activeDeadlineSeconds={spec.active_deadline_seconds}"
        where = ", ".join(_index_text(i, o.inputs) for i in indexes) or "a ppl index"
        return FAILED, SHARD_RETRIES_EXHAUSTED, (
            f"{where} failed {retries + 1} times, past spec.ppl.maxRetriesPerShard={retries}; fix the cause, "
            f"then change spec.retryToken to rerun only the unfinished shards ({reason}: {message})".rstrip())
    if cmp_state == "Failed":
        reason, message = job_failure(o.cmp or {})
        if reason == "DeadlineExceeded":
            return FAILED, DEADLINE_EXCEEDED, f"ran past spec.activeDeadlineSeconds={spec.active_deadline_seconds}"
        detail = o.errors.get("cmp") or f"{reason}: {message}"
        return FAILED, METRICS_FAILED, f"the cmp Job failed: {detail}; read `assay job logs {o.name}`"
    progressing = any_pod_placed(o.pods) or bool(((o.ppl or {}).get("status") or {}).get("completedIndexes"))
    problem = pod_problem(o.pods, o.now, fail_fast_seconds=o.fail_fast_seconds,
                          pending_deadline_seconds=spec.pending_deadline_seconds)
    if problem and cmp_state != "Complete" and (problem[0] in FAIL_FAST_REASONS or not progressing):
        return FAILED, problem[0], problem[1]
    if _stage_done(o, "cmp"):
        return SUCCEEDED, "Succeeded", _headline_message(o.report or {})
    if cmp_state == "Complete" or (o.stage_reruns.get("cmp") and cmp_state == "Absent" and _stage_done(o, "ppl")):
        return EVALUATING, "WaitingForMetrics", ("the cmp Job completed but its report was gone with its pod; "
                                                 "computing the metrics again")
    if spec.suspend:
        return SUSPENDED, "SuspendedBySpec", "spec.suspend is true; set it to false to resume where it stopped"
    if hold:
        return PENDING, hold[0], hold[1]
    if cmp_state == "Active":
        return EVALUATING, "ComputingMetrics", "the cmp Job is computing the metrics"
    if "Suspended" in (resolve_state, ppl_state, cmp_state):
        if o.queued or spec.queue_name:
            stage = next(r for r in ("cmp", "ppl", "resolve") if job_state(getattr(o, r)) == "Suspended")
            where = f"Kueue LocalQueue {spec.queue_name!r}" if spec.queue_name else "Kueue"
            return PENDING, "WaitingForAdmission", (f"the {stage} Job is queued in {where}"
                                                    + (f": {o.admission}" if o.admission else ""))
        return PENDING, "Resuming", "resuming the suspended Jobs"
    if _stage_done(o, "ppl"):
        return EVALUATING, "InferenceComplete", "every shard is predicted; starting the cmp Job"
    if ppl_state == "Active":
        st = (o.ppl or {}).get("status") or {}
        # once a worker ran, the job stays Running between shard groups (pods come and go)
        started = o.previous.get("phase") == RUNNING or st.get("completedIndexes")
        if int(st.get("ready") or 0) or any_pod_running(o.pods) or started:
            return RUNNING, "ShardsRunning", f"{spec.ppl.workers} ppl worker(s) predicting"
        return PENDING, "PodsStarting", "waiting for the ppl pods to start"
    if not o.inputs:
        return PENDING, "Resolving", "pinning the model and dataset to exact versions"
    return PENDING, "Creating", "creating the ppl Job"


def _role(pod: dict[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(ROLE_LABEL)


def _is_oom(pod: dict[str, Any]) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                return True
    return False


def _index_text(index: int, inputs: dict[str, Any] | None) -> str:
    if not inputs:
        return f"ppl index {index}"
    shards = layout.shards_of_index(int(inputs["shards"]), index, int(inputs["shardsPerIndex"]))
    shown = f"{shards[0]}-{shards[-1]}" if len(shards) > 1 else ", ".join(map(str, shards))
    return f"ppl index {index} (shard{'s' if len(shards) != 1 else ''} {shown})"


def _headline_message(report: dict[str, Any]) -> str:
    h = report.get("headline") or {}
    if isinstance(h.get("value"), int | float):
        return f"{h.get('name', 'headline')} = {float(h['value']):.4f}"
    return "metrics computed"


def _progressing(o: Observed, phase: str, progress: dict[str, Any] | None) -> tuple[bool, str, str]:
    """ShardsProgressing: False while ppl pods run but no shard group completed for stall_seconds."""
    if phase != RUNNING:
        return False, phase, ""
    last = parse_time((progress or {}).get("lastProgressTime"))
    idle = (o.now - last).total_seconds() if last else 0.0
    if idle > o.stall_seconds:
        return False, "NoShardCompleted", (f"no shard group completed for {fmt_duration(idle)}; check "
                                           f"`assay job logs {o.name}` for a worker that hangs")
    return True, "ShardsCompleting", ""


def derive(o: Observed) -> tuple[dict[str, Any], str]:
    """The status to write (our fields only) and the phase reason; writes nothing."""
    phase, reason, message = decide(o)
    prev = o.previous
    ppl_done = _stage_done(o, "ppl") or job_state(o.cmp) != "Absent"
    progress, shards = progress_of(o.inputs, o.ppl, ppl_done, prev, o.now)
    out: dict[str, Any] = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "observedGeneration": o.generation,
        "retryToken": o.attempt if o.attempt is not None else (o.spec.retry_token or ""),
        "conditions": conditions_for(phase, reason, message, prev.get("conditions") or [], o.generation, o.now,
                                     _progressing(o, phase, progress)),
    }
    start = prev.get("startTime") or (fmt_time(o.now) if o.resolve is not None or o.inputs else None)
    if start:
        out["startTime"] = start
    if phase in TERMINAL:
        out["completionTime"] = prev.get("completionTime") or fmt_time(o.now)
    if o.inputs:
        out["inputs"] = o.inputs
        out["modelDigest"] = o.inputs["model"]["version"]
        out["datasetDigest"] = o.inputs["dataset"]["version"]
    stages = {role: "Complete" for role in ("resolve", "ppl", "cmp")
              if (role == "resolve" and o.inputs) or (role != "resolve" and _stage_done(o, role))}
    if stages:
        out["stages"] = stages
    if o.stage_reruns:
        out["stageReruns"] = dict(o.stage_reruns)
    if phase == PENDING and reason in HOLDS_WITH_DEADLINE:
        out["blockedSince"] = prev.get("blockedSince") or fmt_time(o.now)
    out["shards"] = shards
    if progress is not None:
        out["progress"] = progress
    if o.report is not None and phase == SUCCEEDED:
        out["results"] = results_of(o.report)
        if o.results_uri:
            out["resultsUri"] = o.results_uri
    if out["observedGeneration"] is None:
        del out["observedGeneration"]
    return out, reason


def failed_status(previous: dict[str, Any], spec_retry_token: str | None, reason: str, message: str,
                  generation: int | None, now: dt.datetime) -> dict[str, Any]:
    """Status of a job that fails before any Job exists (e.g. an invalid spec)."""
    out = {"phase": FAILED, "reason": reason, "message": message, "retryToken": spec_retry_token or "",
           "conditions": conditions_for(FAILED, reason, message, previous.get("conditions") or [], generation, now),
           "completionTime": previous.get("completionTime") or fmt_time(now)}
    if generation is not None:
        out["observedGeneration"] = generation
    return out
