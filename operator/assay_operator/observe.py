"""The read step of a reconcile: an EvaluationJob's child Jobs, their pods, and what Kueue and the Job
controller say of them, as plain dicts (``Snapshot``). Reads only: nothing here writes to the API
(``act`` does, as ``plan`` decides).

Jobs, pods and Events come from ``cache`` (watch-fed; no request). Kueue's Workloads are the one read
from the API server, and only of children that may wait for Kueue, at a reconcile (never while idle):
Kueue admits a Job by resuming it, which the Job watch sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from assay import protocol
from assay.spec import EvaluationJob
from assay_operator import cache, kube, manifests, plan


@dataclass(frozen=True)
class Snapshot:
    """What the watches (and Kueue) showed one reconcile, before it acted."""

    #: role -> the Job named ``<name>-<role>`` (whoever owns it), or None
    jobs: dict[str, dict[str, Any] | None]
    #: pods of the job's label (none are read while no child Job exists)
    pods: list[dict[str, Any]] = field(default_factory=list)
    #: child Job uid -> Kueue's Workloads of it
    workloads: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: child Job name -> the Events about it
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def children(job: EvaluationJob) -> dict[str, dict[str, Any] | None]:
    """The Jobs of the child names, by role, whoever owns them."""
    return {role: cache.get(cache.JOBS, job.namespace, manifests.child_name(job.name, role))
            for role in protocol.ROLES}


def snapshot(job: EvaluationJob) -> Snapshot:
    jobs = children(job)
    present = [child for child in jobs.values() if child is not None]
    pods = cache.pods_of(job.namespace, job.name) if present else []
    workloads = {plan.uid_of(child): kube.list_workloads(job.namespace, plan.uid_of(child))
                 for child in present if plan.may_wait_for_kueue(job, child)}
    events = {child["metadata"]["name"]: cache.events_of(job.namespace, child["metadata"]["name"])
              for child in present if plan.active_without_pods(child, pods)}
    return Snapshot(jobs=jobs, pods=pods, workloads=workloads, events=events)
