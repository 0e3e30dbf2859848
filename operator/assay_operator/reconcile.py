"""One level-triggered reconcile per call, in four steps as JobSet splits calculating from acting:
``observe`` reads the child Jobs, their pods, Workloads and Events (reads only, from ``cache``); ``plan``
decides the actions from that and the spec (pure); ``act`` performs them; ``status.derive`` makes the
status (pure), written here in one merge patch that carries the resourceVersion of the job it was derived
from: a conflict (the cache was behind, or a second operator wrote) reads the job again and derives anew.
``due`` says when time alone changes the decision: the caller's timer for the job. The operator reads
Kubernetes objects only: what the pods learn from the store (pinned inputs, metrics) reaches it through
their termination messages.

A finished job is never rerun unless its retryToken changes; every step is idempotent (``plan``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from assay.spec import EvaluationJob, JobSpec
from assay_operator import act, cache, due, kube, observe, plan, status
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
#: How often one reconcile derives anew after its status write conflicted before it gives up (and is retried).
CONFLICT_ATTEMPTS = 3


@dataclass(frozen=True)
class Outcome:
    phase: str
    #: when to reconcile again although nothing the watches see changes; None: only at the next change
    due: dt.datetime | None = None


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
              now: dt.datetime | None = None) -> Outcome | None:
    """Bring one EvaluationJob's children in line and write its status (None if the job is gone)."""
    with _lock(f"{namespace}/{name}"):  # read inside the lock: what the last holder wrote
        body = cache.get(cache.EVALUATIONJOBS, namespace, name)
        for attempt in range(CONFLICT_ATTEMPTS):
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return None  # the garbage collector removes the children with their owner
            try:
                return _reconcile(body, logger, settings, now or status.now_utc())
            except kube.Conflict:
                if attempt == CONFLICT_ATTEMPTS - 1:
                    raise
                logger.info("the job changed since it was read; reading it again")
                body = kube.get_evaluationjob(namespace, name)
                if body is not None:
                    cache.put(cache.EVALUATIONJOBS, body)
        raise AssertionError("unreachable")  # the last attempt returns or raises


def _reconcile(body: dict[str, Any], logger: logging.Logger, settings: Settings, now: dt.datetime) -> Outcome:
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta.get("namespace") or "default", meta.get("generation")
    previous = dict(body.get("status") or {})
    try:
        # fields of a newer CRD than this operator are ignored: upgrade the CRD first, then the operator
        spec = JobSpec(**known_fields(JobSpec, dict(body.get("spec") or {})))
        job = EvaluationJob(name=name, namespace=namespace, spec=spec)
    except (ValidationError, TypeError) as exc:
        if previous.get("phase") in status.TERMINAL:
            return Outcome(previous["phase"])
        new = status.failed_status(previous, (body.get("spec") or {}).get("retryToken"), "InvalidSpec",
                                   f"spec does not match the EvaluationJob schema: {exc}", generation, now)
        return _write(body, previous, new, logger, now, settings)

    token = job.spec.retry_token or ""
    rerun = previous.get("phase") == status.FAILED and previous.get("retryToken", "") != token
    if previous.get("phase") in status.TERMINAL and not rerun:
        # A terminal phase never moves back; only the TTL still acts. A Succeeded job has observed a new
        # generation (only control fields without effect on a finished job may change); a Failed one has
        # not: its edited spec runs only when spec.retryToken starts a rerun, so kstatus keeps saying so.
        children = observe.children(job)
        if plan.expired(job, previous, now):
            act.perform(namespace, plan.expire(job, meta["uid"], children), logger)
        if (previous["phase"] == status.SUCCEEDED and generation is not None
                and previous.get("observedGeneration") != generation):
            _patch_status(body, {"observedGeneration": generation})
        op_metrics.observe(namespace, name, previous["phase"], {})
        return Outcome(previous["phase"], due.finished(job, previous, children.values(), now))
    if rerun:
        logger.info("spec.retryToken changed to %r: rerunning; finished shards are reused", token)
        previous = {k: v for k, v in previous.items() if k not in PER_ATTEMPT}
        previous["stages"] = {k: v for k, v in (previous.get("stages") or {}).items() if k != "cmp"}

    todo = plan.plan(job, body, previous, observe.snapshot(job), settings, now)
    done, refused = act.perform(namespace, todo.actions, logger)
    observed = plan.settle(todo, done, refused, job)
    new, reason = status.derive(observed)
    op_metrics.observe(namespace, name, new["phase"], new, observed.ppl)
    if new["phase"] == status.FAILED:
        act.perform(namespace, plan.stop(observed, reason), logger)
    written = _write(body, previous, new, logger, now, settings)
    return Outcome(written.phase, due.earlier(written.due, due.running(observed, new, settings.hold_retry_seconds)))


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


def _patch_status(body: dict[str, Any], patch: dict[str, Any]) -> None:
    """Write ``patch`` to the status of the job ``body`` was read as (kube.Conflict if it changed since);
    the job as written goes into the cache."""
    meta = body["metadata"]
    written = kube.patch_evaluationjob_status(meta.get("namespace") or "default", meta["name"], patch,
                                              meta.get("resourceVersion"))
    cache.put(cache.EVALUATIONJOBS, written)


def _write(body: dict[str, Any], previous: dict[str, Any], new: dict[str, Any], logger: logging.Logger,
           now: dt.datetime, settings: Settings) -> Outcome:
    """Write the whole status in one merge patch (null removes stale fields); announce a phase change.
    A progress-only change held back by progress_write_seconds is due when that has passed."""
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
        return Outcome(phase)
    changed = set(patch) - _PROGRESS_ONLY
    if not changed and _conditions_same(stored, new):
        wait = settings.progress_write_seconds - (time.monotonic() - _last_write.get(meta["uid"], -math.inf))
        if wait > 0:
            return Outcome(phase, now + dt.timedelta(seconds=wait))
    _patch_status(body, patch)
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
    return Outcome(phase)


def _conditions_same(stored: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether every condition keeps its status and reason (a flip is always written at once)."""
    def key(conds: list[dict[str, Any]] | None) -> dict[Any, tuple[Any, Any]]:
        return {c.get("type"): (c.get("status"), c.get("reason")) for c in conds or []}
    return key(stored.get("conditions")) == key(new.get("conditions"))
