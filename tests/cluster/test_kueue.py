"""Kueue v0.17 itself, on the real control plane, without the assay operator: what it admits and what not."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.conftest import RUNNER_IMAGE, create_namespace, wait_for
from tests.cluster.kueue import (
    PRIORITY_LABEL,
    QUEUE_LABEL,
    cluster_queue,
    condition,
    local_queue,
    resource_flavor,
    workload_priority_class,
    workloads,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def queue(kueue, admin) -> tuple[str, str]:
    """A namespace with LocalQueue "lq" on a fresh ClusterQueue that covers cpu and memory only (4 cpus)
    and preempts lower priorities."""
    suffix = uuid.uuid4().hex[:5]
    namespace, cq, flavor = f"kueue-{suffix}", f"cq-{suffix}", f"flavor-{suffix}"
    create_namespace(admin, namespace)
    resource_flavor(admin, flavor)
    cluster_queue(admin, cq, flavor, {"cpu": "4", "memory": "8Gi"}, preempt_lower_priority=True)
    local_queue(admin, namespace, "lq", cq)
    yield namespace, cq
    custom = client.CustomObjectsApi(admin)
    client.CoreV1Api(admin).delete_namespace(namespace)
    # Kueue's finalizers hold the ClusterQueue until its workloads are gone; deleting it is enough here.
    custom.delete_cluster_custom_object("kueue.x-k8s.io", "v1beta2", "clusterqueues", cq)
    custom.delete_cluster_custom_object("kueue.x-k8s.io", "v1beta2", "resourceflavors", flavor)


def job(name: str, requests: dict[str, str]) -> dict[str, Any]:
    """A suspended Job for LocalQueue "lq"; its pod would pass Pod Security "restricted" but never lands
    on a node (admission is what these tests look at, not the pod)."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {QUEUE_LABEL: "lq"}},
            "spec": {"suspend": True, "backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "nodeSelector": {"assay.dev/test-no-node": "true"},
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "main", "image": RUNNER_IMAGE, "command": ["true"],
                                "resources": {"requests": requests, "limits": requests},
                                "securityContext": {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}}]}}}}


def workload_of(admin: client.ApiClient, namespace: str, job_name: str) -> dict[str, Any] | None:
    """The Workload Kueue made for that Job (it names it job-<name>-<hash> and owns it by the Job)."""
    owned = (w for w in workloads(admin, namespace)
             if any(o["kind"] == "Job" and o["name"] == job_name for o in w["metadata"].get("ownerReferences", [])))
    return next(owned, None)


def suspended(admin: client.ApiClient, namespace: str, job_name: str) -> bool:
    return bool(client.BatchV1Api(admin).read_namespaced_job(job_name, namespace).spec.suspend)


def test_kueue_admits_a_job_within_quota(admin, queue, kueue):
    namespace, cq = queue
    batch = client.BatchV1Api(admin)
    batch.create_namespaced_job(namespace, job("small", {"cpu": "500m", "memory": "256Mi"}))

    def admitted() -> dict[str, Any] | None:
        wl = workload_of(admin, namespace, "small")
        return wl if wl and condition(wl, "Admitted").get("status") == "True" else None

    wl = wait_for(admitted, "Kueue to create and admit a Workload for Job small", timeout=60)
    assert wl["status"]["admission"]["clusterQueue"] == cq
    wait_for(lambda: not suspended(admin, namespace, "small"), "Kueue to unsuspend Job small", timeout=30)


def test_kueue_does_not_admit_ephemeral_storage_outside_the_cluster_queue(admin, queue, kueue):
    """What the operator must avoid: a request for a resource the ClusterQueue does not cover (here
    ephemeral-storage) leaves the Job suspended for good, with only a condition message saying why."""
    namespace, _ = queue
    batch = client.BatchV1Api(admin)
    batch.create_namespaced_job(namespace, job("scratch", {"cpu": "500m", "memory": "256Mi",
                                                           "ephemeral-storage": "1Gi"}))

    def reason() -> str:
        wl = workload_of(admin, namespace, "scratch")
        cond = condition(wl, "QuotaReserved") if wl else {}
        return cond.get("message", "") if cond.get("status") == "False" else ""

    message = wait_for(reason, "Kueue to explain why Job scratch's Workload gets no quota", timeout=60)
    assert "ephemeral-storage" in message, message
    wl = workload_of(admin, namespace, "scratch")
    assert condition(wl, "Admitted").get("status") != "True"
    assert suspended(admin, namespace, "scratch")


def test_kueue_webhook_suspends_a_queued_job_created_running(admin, queue, kueue):
    """The Job webhook is live: a queue-labelled Job created with suspend: false is stored suspended."""
    namespace, _ = queue
    body = job("eager", {"cpu": "100m", "memory": "64Mi"})
    body["spec"]["suspend"] = False
    created = client.BatchV1Api(admin).create_namespaced_job(namespace, body)
    assert created.spec.suspend is True


def test_kueue_restart_manages_jobs_without_queue_name(admin, queue, kueue):
    """With manageJobsWithoutQueueName, a Job without the label is suspended and gets a Workload of its own
    (that no queue admits); the setting goes back off for the tests after this one."""
    namespace, _ = queue
    body = job("unlabelled", {"cpu": "100m", "memory": "64Mi"})
    del body["metadata"]["labels"]
    body["spec"]["suspend"] = False
    kueue.restart(manage_jobs_without_queue_name=True)
    try:
        created = client.BatchV1Api(admin).create_namespaced_job(namespace, body)
        assert created.spec.suspend is True
        wait_for(lambda: workload_of(admin, namespace, "unlabelled"), "a Workload for Job unlabelled", timeout=30)
    finally:
        kueue.restart(manage_jobs_without_queue_name=False)
    body["metadata"]["name"] = "unmanaged"
    assert client.BatchV1Api(admin).create_namespaced_job(namespace, body).spec.suspend is False


def test_kueue_preempts_a_lower_priority_job(admin, queue, kueue):
    """withinClusterQueue: LowerPriority with WorkloadPriorityClasses: a high-priority Job that does not fit
    beside a running low-priority one evicts it (the low Job is suspended again) and takes its quota."""
    namespace, _ = queue
    suffix = uuid.uuid4().hex[:5]
    low, high = f"low-{suffix}", f"high-{suffix}"
    workload_priority_class(admin, low, 10)
    workload_priority_class(admin, high, 1000)
    batch, custom = client.BatchV1Api(admin), client.CustomObjectsApi(admin)
    try:
        for name, priority in (("low", low), ("high", high)):
            body = job(name, {"cpu": "3", "memory": "1Gi"})  # two do not fit in 4 cpus
            body["metadata"]["labels"][PRIORITY_LABEL] = priority
            batch.create_namespaced_job(namespace, body)
            wait_for(lambda n=name: not suspended(admin, namespace, n), f"Kueue to admit Job {name}", timeout=60)
        evicted = condition(workload_of(admin, namespace, "low") or {}, "Evicted")
        assert evicted.get("status") == "True" and evicted.get("reason") == "Preempted", evicted
        assert suspended(admin, namespace, "low")
    finally:
        for name in (low, high):
            custom.delete_cluster_custom_object("kueue.x-k8s.io", "v1beta2", "workloadpriorityclasses", name)
