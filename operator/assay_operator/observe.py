"""The read step of a reconcile: an EvaluationJob's child Jobs, their pods, and what Kueue and the Job
controller say of them, as plain dicts (``Snapshot``). Reads only: nothing here writes to the API
(``act`` does, as ``plan`` decides).

It reads what ``plan`` may look at and little more: Workloads only of children that may wait for Kueue,
Events only of active children without pods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from assay import protocol
from assay.spec import EvaluationJob
from assay_operator import kube, manifests, plan


@dataclass(frozen=True)
class Snapshot:
    """What the API server showed one reconcile, before it acted."""

    #: role -> the Job named ``<name>-<role>`` (whoever owns it), or None
    jobs: dict[str, dict[str, Any] | None]
    #: pods of the job's label selector (none are listed while no child Job exists)
    pods: list[dict[str, Any]] = field(default_factory=list)
    #: child Job uid -> Kueue's Workloads of it
    workloads: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: child Job name -> the Events about it
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def children(job: EvaluationJob) -> dict[str, dict[str, Any] | None]:
    """The Jobs of the child names, by role, whoever owns them."""
    return {role: kube.get_job(job.namespace, manifests.child_name(job.name, role)) for role in protocol.ROLES}


def snapshot(job: EvaluationJob) -> Snapshot:
    jobs = children(job)
    present = [child for child in jobs.values() if child is not None]
    pods = kube.list_pods(job.namespace, manifests.pod_selector(job.name)) if present else []
    workloads = {plan.uid_of(child): kube.list_workloads(job.namespace, plan.uid_of(child))
                 for child in present if plan.may_wait_for_kueue(job, child)}
    events = {child["metadata"]["name"]: kube.list_job_events(job.namespace, child["metadata"]["name"])
              for child in present if plan.active_without_pods(child, pods)}
    return Snapshot(jobs=jobs, pods=pods, workloads=workloads, events=events)
