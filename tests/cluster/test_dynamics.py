"""Real cluster dynamics (issue 18): pods that vanish before their report is read, namesakes being
garbage-collected, quota that refuses a child Job and then relents, pods that can never be created.

Each test's docstring names what went wrong before. Kueue's part is in test_kueue.py.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from tests.cluster.conftest import NODE, Api, evaljob, wait_for
from tests.cluster.test_evaluationjob import apply, result_ids, slow

pytestmark = pytest.mark.cluster



@contextlib.contextmanager
def cordoned(kubectl) -> Iterator[None]:
    """No new pod is scheduled while the block runs (those already placed run on)."""
    kubectl("cordon", NODE)
    try:
        yield
    finally:
        uncordon(kubectl)


def uncordon(kubectl) -> None:
    kubectl("uncordon", NODE)


def complete(api: Api, job: str) -> bool:
    conds = (api.jobs().get(job) or {}).get("status", {}).get("conditions") or []
    return any(c["type"] == "Complete" and c["status"] == "True" for c in conds)


def delete_pods(kubectl, api: Api, ns: str, selector: str) -> None:
    kubectl("delete", "pod", "-n", ns, "-l", selector, "--wait=true")
    wait_for(lambda: not api.pods(selector), f"pods {selector} to go", timeout=60)


def lose_the_report(kubectl, operator, api: Api, ns: str, name: str, role: str,
                    start: Callable[[], object] | None = None) -> None:
    """Run ``role``'s pod while the operator is down and delete it before the operator can read its
    termination message: the pod waits for the cordoned nodes until the operator is gone. ``start`` runs
    once the nodes are cordoned (e.g. applies the job)."""
    selector = f"assay.dev/job={name},assay.dev/role={role}"
    with cordoned(kubectl):
        if start is not None:
            start()
        wait_for(lambda: api.pods(selector), f"the {role} pod", timeout=240)
        with operator.down():
            uncordon(kubectl)
            wait_for(lambda: complete(api, f"{name}-{role}"), f"the {role} Job to complete", timeout=180)
            delete_pods(kubectl, api, ns, selector)


def test_a_cmp_report_lost_with_its_pod_reruns_cmp(operator, kubectl, api: Api, ns, inputs, s3_env):
    """cmp Complete, its pod gone before the operator read its termination message (the operator down
    during an upgrade, `kubectl delete pod`): Evaluating/WaitingForMetrics for ever, and no retryToken
    could help because stages.cmp was recorded as Complete."""
    manifest = evaljob("lostcmp", inputs, s3_env, **slow(ppl={"workers": 3, "shardsPerIndex": 1}))
    apply(kubectl, ns, manifest)
    # every ppl pod placed before the cordon: then the cmp pod waits for the nodes, not for the operator
    wait_for(lambda: len([p for p in api.pods("assay.dev/job=lostcmp,assay.dev/role=ppl")
                          if p["spec"].get("nodeName")]) == int(inputs["shards"]), "every ppl pod placed",
             timeout=180)
    lose_the_report(kubectl, operator, api, ns, "lostcmp", "cmp")
    st = api.wait_phase("lostcmp", ("Succeeded", "Failed"), timeout=240)
    assert st["phase"] == "Succeeded", st
    assert st["stageReruns"] == {"cmp": 1} and st["stages"]["cmp"] == "Complete" and st["results"]["summary"]
    ids = result_ids(manifest["spec"]["output"]["uri"])
    assert len(ids) == len(set(ids)) == int(inputs["samples"]), "inference was not rerun"


def test_a_resolve_report_lost_with_its_pod_reruns_resolve(operator, kubectl, api: Api, ns, inputs, s3_env):
    """resolve Complete, its pod gone before its report was read: Failed/InputsUnavailable, and a
    retryToken reused the Complete resolve Job of the old token, so nothing could clear it."""
    lose_the_report(kubectl, operator, api, ns, "lostpin", "resolve",
                    start=lambda: apply(kubectl, ns, evaljob("lostpin", inputs, s3_env)))
    st = api.wait_phase("lostpin", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    assert st["stageReruns"] == {"resolve": 1} and st["inputs"]["model"]["uri"] == inputs["model"]


def test_a_recreated_job_waits_for_its_predecessors_children(operator, kubectl, api: Api, ns, inputs, s3_env):
    """Deleting an EvaluationJob and applying it again at once failed the new one for good
    (ChildNameConflict) while the garbage collector was still deleting the old one's Jobs."""
    manifest = evaljob("again", inputs, s3_env)
    apply(kubectl, ns, manifest)
    wait_for(lambda: api.jobs().get("again-resolve"), "the resolve Job", timeout=60)
    # Another controller's finalizer holds the old Job while it is being deleted, as a slow collection would.
    kubectl("patch", "job", "again-resolve", "-n", ns, "--type=merge", "-p",
            '{"metadata":{"finalizers":["example.com/hold"]}}')
    old = api.jobs()["again-resolve"]["metadata"]["uid"]
    kubectl("delete", "evaljob", "again", "-n", ns, "--wait=true")
    wait_for(lambda: api.jobs()["again-resolve"]["metadata"].get("deletionTimestamp"), "the collector's delete",
             timeout=60)
    apply(kubectl, ns, manifest)
    st = wait_for(lambda: api.status("again") if api.status("again").get("phase") else None, "a status", timeout=60)
    assert st["phase"] == "Pending", st
    kubectl("patch", "job", "again-resolve", "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    st = api.wait_phase("again", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    assert api.jobs()["again-resolve"]["metadata"]["uid"] != old


def test_a_quota_refused_cmp_job_waits_and_runs_once_the_quota_allows(operator, kubectl, admin, api: Api, ns,
                                                                      inputs, s3_env):
    """A 403 `exceeded quota: count/jobs.batch` on the cmp Job was a terminal InvalidSpec after the whole
    inference ran, and stayed so after the quota was raised."""
    core = client.CoreV1Api(admin)
    core.create_namespaced_resource_quota(ns, {"metadata": {"name": "two-jobs"},
                                               "spec": {"hard": {"count/jobs.batch": "2"}}})
    wait_for(lambda: (core.read_namespaced_resource_quota("two-jobs", ns).status.hard or {}),
             "the quota controller to count", timeout=60)
    apply(kubectl, ns, evaljob("quota", inputs, s3_env))
    st = wait_for(lambda: api.status("quota") if api.status("quota").get("reason") == "QuotaExceeded" else None,
                  "QuotaExceeded", timeout=300)
    assert st["phase"] == "Pending" and "exceeded quota" in st["message"] and st["blockedSince"], st
    events = json.loads(core.list_namespaced_event(ns, field_selector="involvedObject.name=quota",
                                                   _preload_content=False).data)["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "QuotaExceeded" for e in events), events
    core.delete_namespaced_resource_quota("two-jobs", ns)
    st = api.wait_phase("quota", ("Succeeded", "Failed"), timeout=180)
    assert st["phase"] == "Succeeded" and "blockedSince" not in st, st


def test_pods_that_can_never_be_created_fail_at_the_pending_deadline(operator, kubectl, admin, api: Api, ns,
                                                                     inputs, s3_env):
    """No pod could be created (quota, a missing ServiceAccount or PriorityClass): pod_problem looked only
    at pods that exist, so spec.pendingDeadlineSeconds never fired and the job stayed Pending for ever."""
    client.CoreV1Api(admin).create_namespaced_resource_quota(ns, {"metadata": {"name": "no-pods"},
                                                                  "spec": {"hard": {"pods": "0"}}})
    apply(kubectl, ns, evaljob("never", inputs, s3_env, pendingDeadlineSeconds=20))
    st = api.wait_phase("never", ("Failed",), timeout=180)
    assert st["reason"] == "PendingDeadlineExceeded" and "exceeded quota: no-pods" in st["message"], st
    events = json.loads(client.CoreV1Api(admin).list_namespaced_event(
        ns, field_selector="involvedObject.name=never", _preload_content=False).data)["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "FailedCreate" for e in events), events
    wait_for(lambda: "never-resolve" not in api.jobs(), "the unfinished resolve Job to be stopped", timeout=60)
