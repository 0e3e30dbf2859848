"""EvaluationJobs under a real Kueue (issue 18): admission of every stage, a GPU ClusterQueue without
ephemeral-storage, suspend before and after admission, manageJobsWithoutQueueName, workers of an admitted
job, and preemption by a higher-priority workload. Kueue itself: tests/cluster/kueue.py.

Each test's docstring names what went wrong before.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client, watch

from tests.cluster.conftest import RUNNER_IMAGE, Api, evaljob, wait_for
from tests.cluster.kueue import (
    GROUP,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    VERSION,
    cluster_queue,
    local_queue,
    resource_flavor,
    workload_priority_class,
    workloads,
)
from tests.cluster.test_evaluationjob import apply, result_ids, running_ppl_pods, slow

pytestmark = pytest.mark.cluster

#: What a typical GPU ClusterQueue covers: no ephemeral-storage.
GPU_QUEUE = {"cpu": "8", "memory": "16Gi", "nvidia.com/gpu": "1"}


def queue(admin, ns: str, quotas: dict[str, str], *, preempt: bool = False, held: bool = False) -> str:
    """A flavor, a ClusterQueue named after the namespace and a LocalQueue ``evals`` pointing at it."""
    resource_flavor(admin, ns)
    cluster_queue(admin, ns, ns, quotas, preempt_lower_priority=preempt)
    if held:
        hold(admin, ns, True)
    local_queue(admin, ns, "evals", ns)
    return "evals"


def hold(admin, name: str, held: bool) -> None:
    """Stop (or resume) admission into a ClusterQueue (Kueue's stopPolicy)."""
    client.CustomObjectsApi(admin).patch_cluster_custom_object(
        GROUP, VERSION, "clusterqueues", name, {"spec": {"stopPolicy": "Hold" if held else "None"}})


def stage_workloads(admin, ns: str) -> dict[str, dict[str, Any]]:
    """Workloads by the role of the Job that owns them."""
    out = {}
    for w in workloads(admin, ns):
        owner = next((r["name"] for r in w["metadata"].get("ownerReferences") or [] if r["kind"] == "Job"), "")
        out[owner.rsplit("-", 1)[-1]] = w
    return out


def admitted(w: dict[str, Any]) -> bool:
    return any(c["type"] == "Admitted" and c["status"] == "True" for c in w.get("status", {}).get("conditions") or [])


def job_events(admin, ns: str, seconds: float, since: str) -> list[tuple[str, dict]]:
    """Every watch event of the namespace's Jobs for ``seconds`` from resourceVersion ``since``."""
    batch, out = client.BatchV1Api(admin), []
    w = watch.Watch()
    end = time.monotonic() + seconds
    for ev in w.stream(batch.list_namespaced_job, ns, resource_version=since, timeout_seconds=int(seconds) + 1):
        out.append((ev["type"], ev["raw_object"]))
        if time.monotonic() > end:
            w.stop()
    return out


def resource_version(admin, ns: str) -> str:
    return client.BatchV1Api(admin).list_namespaced_job(ns).metadata.resource_version


def test_every_stage_is_admitted_by_a_gpu_queue_without_ephemeral_storage(operator, kueue, kubectl, admin,
                                                                          api: Api, ns, inputs, s3_env):
    """Every container requested ephemeral-storage (tmp + cache limits, 22,528 Mi) that the user never asked
    for: a ClusterQueue covering cpu, memory and nvidia.com/gpu left the Workload pending for ever, while
    status said only WaitingForAdmission."""
    name = queue(admin, ns, GPU_QUEUE)
    manifest = evaljob("queued", inputs, s3_env, queueName=name)
    apply(kubectl, ns, manifest)
    st = api.wait_phase("queued", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", (st, kueue.log_tail())
    by_stage = stage_workloads(admin, ns)
    assert set(by_stage) == {"resolve", "ppl", "cmp"}, "each stage is its own Workload"
    assert all(admitted(w) for w in by_stage.values()), by_stage
    ids = result_ids(manifest["spec"]["output"]["uri"])
    assert len(ids) == len(set(ids)) == int(inputs["samples"])


def test_waiting_for_admission_says_why(operator, kueue, kubectl, admin, api: Api, ns, inputs, s3_env):
    """Status said only WaitingForAdmission; the Workload's own message (what the queue lacks) is shown."""
    name = queue(admin, ns, {"cpu": "50m", "memory": "16Gi"})  # the resolve pod asks for 100m
    apply(kubectl, ns, evaljob("starved", inputs, s3_env, queueName=name))
    st = wait_for(lambda: api.status("starved") if "Workload" in api.status("starved").get("message", "") else None,
                  "the Workload's message in status", timeout=90)
    assert st["phase"] == "Pending" and st["reason"] == "WaitingForAdmission", st
    assert "resolve Job is queued" in st["message"] and "cpu" in st["message"], st


def test_suspending_a_job_that_waits_for_admission_creates_nothing(operator, kueue, kubectl, admin, api: Api, ns,
                                                                   inputs, s3_env):
    """spec.suspend on a queued job still waiting for admission: the operator created the resolve Job and
    deleted it in every reconcile (239 creates in 20 s), each making and removing a Workload, while status
    calmly said Suspended."""
    name = queue(admin, ns, GPU_QUEUE, held=True)
    manifest = evaljob("held", inputs, s3_env, queueName=name)
    apply(kubectl, ns, manifest)
    wait_for(lambda: api.status("held").get("reason") == "WaitingForAdmission", "WaitingForAdmission", timeout=60)
    since = resource_version(admin, ns)
    kubectl("patch", "evaljob", "held", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    events = job_events(admin, ns, 10, since)
    creates = [e for e, _ in events if e == "ADDED"]
    assert creates == [], f"{len(creates)} Jobs created in 10 s while suspended"
    assert api.status("held")["phase"] == "Suspended" and "held-resolve" not in api.jobs()
    hold(admin, ns, False)
    kubectl("patch", "evaljob", "held", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    st = api.wait_phase("held", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st


def test_an_admitted_job_suspends_resumes_and_keeps_its_workers(operator, kueue, kubectl, admin, api: Api, ns,
                                                                inputs, s3_env):
    """Changing spec.ppl.workers of an admitted job made Kueue see a Job that no longer matched its
    Workload: it suspended it, deleted the Workload and requeued it, evicting the running pods."""
    name = queue(admin, ns, GPU_QUEUE)
    manifest = evaljob("admitted", inputs, s3_env, queueName=name, **slow(ppl={"workers": 2, "shardsPerIndex": 1}))
    apply(kubectl, ns, manifest)
    wait_for(lambda: running_ppl_pods(api, "admitted"), "a running ppl pod", timeout=180)
    bad = kubectl("patch", "evaljob", "admitted", "-n", ns, "--type=merge", "-p", '{"spec":{"ppl":{"workers":3}}}',
                  check=False)
    assert bad.returncode != 0 and "spec.ppl.workers of a job with spec.queueName" in bad.stderr, bad.stderr
    assert api.jobs()["admitted-ppl"]["spec"]["suspend"] is False
    kubectl("patch", "evaljob", "admitted", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    assert api.wait_phase("admitted", ("Suspended",), timeout=60)["reason"] == "SuspendedBySpec"
    wait_for(lambda: "admitted-ppl" not in api.jobs(), "the unfinished ppl Job to go", timeout=60)
    kubectl("patch", "evaljob", "admitted", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    st = api.wait_phase("admitted", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    ids = result_ids(manifest["spec"]["output"]["uri"])
    assert len(ids) == len(set(ids)) == int(inputs["samples"]), "every sample scored once"


def test_no_fight_over_suspend_under_manage_jobs_without_queue_name(operator, kueue, kubectl, admin, api: Api, ns,
                                                                     inputs, s3_env):
    """Under Kueue's manageJobsWithoutQueueName a job without queueName had the operator resume its Job on
    every reconcile and Kueue suspend it again (243 resumes and 469 suspends in 40 s; the job never moved)."""
    kueue.restart(manage_jobs_without_queue_name=True)
    try:
        since = resource_version(admin, ns)
        apply(kubectl, ns, evaljob("unqueued", inputs, s3_env))
        events = job_events(admin, ns, 15, since)
        flips, last = 0, None
        for _, job in events:
            if job["metadata"]["name"] != "unqueued-resolve":
                continue
            now = job["spec"].get("suspend")
            flips += last is not None and now != last
            last = now
        assert last is True, "Kueue holds the Job: no queue admits it"
        assert flips <= 1, f"suspend flipped {flips} times in 15 s"
        st = api.status("unqueued")
        assert st["phase"] == "Pending" and st["reason"] == "WaitingForAdmission", st
    finally:
        kueue.restart(manage_jobs_without_queue_name=False)


def test_a_preempted_evaluation_resumes_and_scores_every_sample_once(operator, kueue, kubectl, admin, api: Api,
                                                                     ns, inputs, s3_env):
    """Preemption by a higher-priority workload: Kueue evicts the ppl Job (suspends it, its pods go), runs
    the other workload, then readmits the evaluation, which resumes from its finished shards."""
    name = queue(admin, ns, {"cpu": "1", "memory": "16Gi"}, preempt=True)
    workload_priority_class(admin, f"{ns}-high", 1000)
    manifest = evaljob("low", inputs, s3_env, queueName=name, **slow(ppl={
        "workers": 1, "shardsPerIndex": 1, "resources": {"requests": {"cpu": "900m"}}}))
    apply(kubectl, ns, manifest)
    wait_for(lambda: running_ppl_pods(api, "low"), "a running ppl pod", timeout=180)
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                  "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
    urgent = {"apiVersion": "batch/v1", "kind": "Job",
              "metadata": {"name": "urgent", "labels": {QUEUE_LABEL: name, PRIORITY_LABEL: f"{ns}-high"}},
              "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [{
                  "name": "c", "image": RUNNER_IMAGE, "command": ["python", "-c", "import time; time.sleep(3)"],
                  "resources": {"requests": {"cpu": "900m"}}, "securityContext": restricted}]}}}}
    apply(kubectl, ns, urgent)
    wait_for(lambda: api.jobs()["low-ppl"]["spec"]["suspend"] is True, "the ppl Job to be preempted", timeout=90)
    st = wait_for(lambda: api.status("low") if api.status("low").get("reason") == "WaitingForAdmission" else None,
                  "WaitingForAdmission while preempted", timeout=60)
    assert st["phase"] == "Pending", st
    wait_for(lambda: any(c["type"] == "Complete" and c["status"] == "True"
                         for c in api.jobs()["urgent"].get("status", {}).get("conditions") or []),
             "the urgent Job to finish", timeout=120)
    st = api.wait_phase("low", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    ids = result_ids(manifest["spec"]["output"]["uri"])
    assert len(ids) == len(set(ids)) == int(inputs["samples"]), "every sample scored once"
    assert not api.jobs()["low-ppl"]["status"].get("failedIndexes"), "preemption spent no retry budget"
