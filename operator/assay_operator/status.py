"""Pure status derivation: what the cluster and the store show -> the EvaluationJob's status.

``derive(Observed)`` maps the child Jobs' conditions and ``failedIndexes``, their pods' states, the
runners' progress objects and the metrics summary to a phase, metav1.Conditions (lastTransitionTime
only moves when a condition's status flips), shard counts, progress and results. No API calls here.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from assay import layout
from assay.spec import JobSpec

PENDING, RUNNING, EVALUATING, SUCCEEDED, FAILED, SUSPENDED = (
    "Pending", "Running", "Evaluating", "Succeeded", "Failed", "Suspended")
TERMINAL = {SUCCEEDED, FAILED}
#: Reconciling and Stalled are kstatus' abnormal-true conditions: Flux and kstatus-based tools see a
#: job in progress while Reconciling is True and give up at once when Stalled is True (a failed job).
CONDITION_TYPES = ("Ready", "Running", "Succeeded", "Failed", "Suspended", "Reconciling", "Stalled")

#: Container waiting reasons that rarely heal by themselves: fail after the short fail-fast grace.
FAIL_FAST_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                     "CreateContainerError"}
#: Failure reasons the operator decides itself (the Jobs are still running and must be stopped).
OPERATOR_FAILURES = FAIL_FAST_REASONS | {"OOMKilled", "Unschedulable", "PendingDeadlineExceeded",
                                         "DeadlineExceeded", "InvalidSpec"}


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
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                term = state.get("terminated") or {}
                if term.get("reason") == "OOMKilled":
                    return "OOMKilled", (f"pod {name} ran out of memory (OOMKilled); lower spec.ppl.batchSize "
                                         "or raise the memory limit in spec.ppl.resources / spec.cmp.resources")
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


# -------------------------------------------------------------------------------------------- progress


def aggregate_progress(reports: list[dict[str, Any]], samples_total: int | None, done: bool,
                       now: dt.datetime, stale_seconds: float = 300.0) -> dict[str, Any] | None:
    """Sum the ppl workers' progress objects; None when nothing is known yet."""
    if not reports and not done:
        return None
    total = samples_total if samples_total is not None else sum(int(r.get("samplesTotal") or 0) for r in reports)
    sample_done = sum(int(r.get("samplesDone") or 0) for r in reports)
    if done:
        sample_done = total or sample_done
    sample_done = min(sample_done, total) if total else sample_done
    rate = 0.0
    for r in reports:
        fresh = _age({}, now, r.get("updatedAt") or "") <= stale_seconds if r.get("updatedAt") else True
        if fresh and int(r.get("samplesDone") or 0) < int(r.get("samplesTotal") or 0):
            rate += float(r.get("samplesPerSecond") or 0.0)
    out: dict[str, Any] = {"samplesDone": sample_done, "samplesTotal": total}
    percent = 100.0 if done else (round(100.0 * sample_done / total, 1) if total else 0.0)
    out["percent"] = percent
    out["percentText"] = f"{percent:.1f}%"
    if not done:
        out["samplesPerSecond"] = round(rate, 2)
        if rate > 0 and total:
            out["eta"] = fmt_duration((total - sample_done) / rate)
    return out


def shard_counts(total: int | None, workers: int, reports: list[dict[str, Any]], ppl_done: bool,
                 failed_indexes: list[int]) -> dict[str, Any]:
    by_worker = {int(r.get("worker", -1)): r for r in reports}
    if ppl_done:
        completed = total if total is not None else sum(int(r.get("shardsDone") or 0) for r in reports)
    else:
        completed = sum(int(r.get("shardsDone") or 0) for r in reports)
        if total is not None:
            completed = min(completed, total)
    failed = 0
    for i in failed_indexes:
        done_i = int((by_worker.get(i) or {}).get("shardsDone") or 0)
        failed += max(0, len(layout.shards_of_worker(total, i, workers)) - done_i) if total is not None else 1
    out = {"completed": completed, "failed": failed,
           "summary": f"{completed}/{total if total is not None else '?'}"}
    if total is not None:
        out["total"] = total
    return out


# ------------------------------------------------------------------------------------------- results


def bounded_results(metrics: dict[str, Any], max_keys: int) -> dict[str, Any]:
    """A small summary of metrics.json for status (the full metrics stay in the store)."""
    summary = {k: round(float(v), 6) for k, v in sorted((metrics.get("summary") or {}).items())
               if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))}
    out: dict[str, Any] = {}
    if metrics.get("evaluator"):
        out["evaluator"] = str(metrics["evaluator"])
    headline = metrics.get("headline") or {}
    value = headline.get("value")
    if isinstance(value, int | float) and math.isfinite(float(value)):
        out["headline"] = f"{float(value):.3f}"
        out["headlineMetric"] = str(headline.get("name", ""))
    keys = list(summary)[:max_keys]
    out["summary"] = {k: summary[k] for k in keys}
    if len(summary) > len(keys):
        out["truncated"] = len(summary) - len(keys)
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
                   generation: int | None, now: dt.datetime) -> list[dict[str, Any]]:
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
    }
    return [set_condition(previous, t, *table[t], generation, now) for t in CONDITION_TYPES]


# -------------------------------------------------------------------------------------------- derive


@dataclass
class Observed:
    """Everything ``derive`` looks at, gathered by the handlers."""

    name: str
    spec: JobSpec
    now: dt.datetime
    generation: int | None = None
    previous: dict[str, Any] = field(default_factory=dict)
    ppl: dict[str, Any] | None = None
    cmp: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    metrics_error: str | None = None
    shards_total: int | None = None
    samples_total: int | None = None
    model_digest: str | None = None
    dataset_digest: str | None = None
    results_uri: str | None = None
    fail_fast_seconds: float = 60.0
    max_result_keys: int = 32


def decide(o: Observed) -> tuple[str, str, str]:
    """(phase, reason, message), in order of precedence: failures, finish, metrics, suspend, run, wait."""
    spec, ppl_state, cmp_state = o.spec, job_state(o.ppl), job_state(o.cmp)
    workers, retries = spec.ppl.workers, spec.ppl.max_retries_per_shard
    if ppl_state == "Failed":
        reason, message = job_failure(o.ppl or {})
        indexes = parse_indexes(((o.ppl or {}).get("status") or {}).get("failedIndexes"))
        oom = pod_problem([p for p in o.pods if _is_oom(p)], o.now, fail_fast_seconds=0, pending_deadline_seconds=1e12)
        if oom:
            return FAILED, oom[0], oom[1]
        if reason == "PodFailurePolicy":
            return FAILED, "PermanentError", (
                f"a ppl worker exited with code 3 (a deterministic error such as a bad handler or a corrupt "
                f"shard); read `assay job logs {o.name}`: {message}")
        if reason == "DeadlineExceeded":
            return FAILED, "DeadlineExceeded", f"ran past spec.activeDeadlineSeconds={spec.active_deadline_seconds}"
        where = ", ".join(_index_text(i, o.shards_total, workers) for i in indexes) or "a ppl index"
        return FAILED, "ShardRetriesExhausted", (
            f"{where} failed {retries + 1} times, past spec.ppl.maxRetriesPerShard={retries}; fix the cause, "
            f"then change spec.retryToken to rerun only the unfinished shards ({reason}: {message})".rstrip())
    if cmp_state == "Failed":
        reason, message = job_failure(o.cmp or {})
        if reason == "DeadlineExceeded":
            return FAILED, "DeadlineExceeded", f"ran past spec.activeDeadlineSeconds={spec.active_deadline_seconds}"
        return FAILED, "MetricsFailed", f"the cmp Job failed ({reason}): {message}; read `assay job logs {o.name}`"
    problem = pod_problem(o.pods, o.now, fail_fast_seconds=o.fail_fast_seconds,
                          pending_deadline_seconds=spec.pending_deadline_seconds)
    if problem and cmp_state != "Complete":
        return FAILED, problem[0], problem[1]
    start = parse_time(o.previous.get("startTime"))
    if spec.active_deadline_seconds and start and not spec.suspend and cmp_state != "Complete" \
            and (o.now - start).total_seconds() > spec.active_deadline_seconds:
        return FAILED, "DeadlineExceeded", f"ran past spec.activeDeadlineSeconds={spec.active_deadline_seconds}"
    if cmp_state == "Complete":
        if o.metrics is not None:
            return SUCCEEDED, "Succeeded", _headline_message(o.metrics)
        return EVALUATING, "WaitingForMetrics", o.metrics_error or "the cmp Job completed; reading metrics.json"
    if spec.suspend and ppl_state != "Complete":
        return SUSPENDED, "SuspendedBySpec", "spec.suspend is true; set it to false to resume"
    if spec.suspend:
        return SUSPENDED, "SuspendedBySpec", "spec.suspend is true; set it to false to compute the metrics"
    if cmp_state == "Active":
        return EVALUATING, "ComputingMetrics", "the cmp Job is computing the metrics"
    if ppl_state == "Complete":
        return EVALUATING, "InferenceComplete", "every shard is predicted; starting the cmp Job"
    if ppl_state == "Suspended" or cmp_state == "Suspended":
        if spec.queue_name:
            return PENDING, "WaitingForAdmission", f"queued in Kueue LocalQueue {spec.queue_name!r}"
        return PENDING, "Resuming", "resuming the suspended Jobs"
    if ppl_state == "Active":
        ready = int(((o.ppl or {}).get("status") or {}).get("ready") or 0)
        if ready or any_pod_running(o.pods):
            return RUNNING, "ShardsRunning", f"{workers} ppl worker(s) predicting"
        return PENDING, "PodsStarting", "waiting for the ppl pods to start"
    return PENDING, "Creating", "creating the ppl Job"


def _is_oom(pod: dict[str, Any]) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            if (state.get("terminated") or {}).get("reason") == "OOMKilled":
                return True
    return False


def _index_text(index: int, total: int | None, workers: int) -> str:
    if total is None:
        return f"ppl index {index}"
    shards = layout.shards_of_worker(total, index, workers)
    shown = ", ".join(map(str, shards[:8])) + (", ..." if len(shards) > 8 else "")
    return f"ppl index {index} (shard{'s' if len(shards) != 1 else ''} {shown})"


def _headline_message(metrics: dict[str, Any]) -> str:
    h = metrics.get("headline") or {}
    if isinstance(h.get("value"), int | float):
        return f"{h.get('name', 'headline')} = {float(h['value']):.4f}"
    return "metrics computed"


def derive(o: Observed) -> tuple[dict[str, Any], str]:
    """The status to write (our fields only) and the phase reason; writes nothing."""
    phase, reason, message = decide(o)
    prev = o.previous
    ppl_state, cmp_state = job_state(o.ppl), job_state(o.cmp)
    ppl_done = ppl_state == "Complete" or cmp_state != "Absent"
    out: dict[str, Any] = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "observedGeneration": o.generation,
        "retryToken": o.spec.retry_token or "",
        "conditions": conditions_for(phase, reason, message, prev.get("conditions") or [], o.generation, o.now),
    }
    start = prev.get("startTime") or (((o.ppl or {}).get("status") or {}).get("startTime")) \
        or (fmt_time(o.now) if o.ppl is not None else None)
    if start:
        out["startTime"] = start
    if phase in TERMINAL:
        out["completionTime"] = prev.get("completionTime") or fmt_time(o.now)
    failed_idx = parse_indexes(((o.ppl or {}).get("status") or {}).get("failedIndexes"))
    out["shards"] = shard_counts(o.shards_total, o.spec.ppl.workers, o.progress, ppl_done, failed_idx)
    progress = aggregate_progress(o.progress, o.samples_total, ppl_done, o.now)
    if progress is not None:
        out["progress"] = progress
    if o.metrics is not None:
        out["results"] = bounded_results(o.metrics, o.max_result_keys)
    if o.results_uri and o.metrics is not None:
        out["resultsUri"] = o.results_uri
    if o.model_digest:
        out["modelDigest"] = o.model_digest
    if o.dataset_digest:
        out["datasetDigest"] = o.dataset_digest
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
