"""What reconcile reads, in memory: the EvaluationJobs, their child Jobs, the pods of those Jobs and the
Job controller's FailedCreate Events, kept current by kopf's watches (``main`` feeds every watch event
here). A reconcile reads only from this store; writes go to the API server through ``kube``, and what a
write returns is put here at once, so the next reconcile does not act on what it already changed.

Why kopf's watches and not kopf indexes or an informer of our own: kopf already lists and watches with
resourceVersions, bookmarks and reconnects, and takes server-side label and field selectors
(``main.configure``); its indexes are handed only to handlers as arguments, while reconciles run on
``workqueue``'s workers, and a second list+watch loop on the kubernetes client would be a second
implementation of what kopf does.

Thread-safe: watch events arrive on kopf's event loop, reconciles read from worker threads.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from assay import protocol

Key = tuple[str, str]
Obj = dict[str, Any]

EVALUATIONJOBS, JOBS, PODS, EVENTS = "evaluationjobs", "jobs", "pods", "events"

_guard = threading.Lock()
_objects: dict[str, dict[Key, Obj]] = {EVALUATIONJOBS: {}, JOBS: {}, PODS: {}, EVENTS: {}}
#: (namespace, EvaluationJob name) -> names of its pods (by the pods' assay.dev/job label)
_pods_of: dict[Key, set[str]] = {}
#: (namespace, Job name) -> names of the Events about that Job
_events_of: dict[Key, set[str]] = {}


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name") or ""


def _group(kind: str, obj: Obj) -> tuple[dict[Key, set[str]], Key] | None:
    """The secondary index of ``kind`` and the entry ``obj`` belongs to, if ``kind`` has one."""
    namespace = key_of(obj)[0]
    if kind == PODS:
        owner = ((obj.get("metadata") or {}).get("labels") or {}).get(protocol.JOB_LABEL)
        return (_pods_of, (namespace, owner)) if owner else None
    if kind == EVENTS:
        return _events_of, (namespace, (obj.get("involvedObject") or {}).get("name") or "")
    return None


def _version(obj: Obj | None) -> int | None:
    rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return int(rv) if isinstance(rv, str) and rv.isdigit() else None


def put(kind: str, obj: Obj) -> None:
    """Store the object as a watch or a write showed it. An older resourceVersion than the stored one
    is ignored (a watch event can arrive after the response of the write that made a newer one)."""
    body = copy.deepcopy(obj)
    (body.get("metadata") or {}).pop("managedFields", None)  # never read; the bulk of a small object
    key = key_of(body)
    with _guard:
        old, new = _version(_objects[kind].get(key)), _version(body)
        if old is not None and new is not None and new < old:
            return
        _objects[kind][key] = body
        group = _group(kind, body)
        if group:
            group[0].setdefault(group[1], set()).add(key[1])


def remove(kind: str, obj: Obj) -> None:
    key = key_of(obj)
    with _guard:
        stored = _objects[kind].pop(key, None)
        group = _group(kind, stored or obj)
        if group and group[1] in group[0]:
            group[0][group[1]].discard(key[1])
            if not group[0][group[1]]:
                del group[0][group[1]]


def get(kind: str, namespace: str, name: str) -> Obj | None:
    with _guard:
        obj = _objects[kind].get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None


def pods_of(namespace: str, job_name: str) -> list[Obj]:
    """The pods labelled assay.dev/job=<job_name> (of every role and child), by name."""
    return _grouped(PODS, _pods_of, namespace, job_name)


def events_of(namespace: str, job_name: str) -> list[Obj]:
    """The stored Events about the Job of that name."""
    return _grouped(EVENTS, _events_of, namespace, job_name)


def _grouped(kind: str, index: dict[Key, set[str]], namespace: str, name: str) -> list[Obj]:
    with _guard:
        names = sorted(index.get((namespace, name)) or ())
        return [copy.deepcopy(_objects[kind][(namespace, n)]) for n in names if (namespace, n) in _objects[kind]]


def size() -> dict[str, int]:
    with _guard:
        return {kind: len(objs) for kind, objs in _objects.items()}


def clear() -> None:
    """Forget everything (tests; a restarted watch lists everything again)."""
    with _guard:
        for objs in _objects.values():
            objs.clear()
        _pods_of.clear()
        _events_of.clear()
