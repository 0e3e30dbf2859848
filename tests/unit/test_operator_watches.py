"""What kopf's watches feed (assay_operator.main -> cache, workqueue): issue 23's cache instead of reads
from the API server, with server-side selectors so a cluster-wide operator never lists every Job and pod."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from assay_operator import cache
from assay_operator import main as op_main

OWNER = [{"kind": "EvaluationJob", "apiVersion": "assay.dev/v1alpha1", "name": "eval", "controller": True}]


class Added:
    def __init__(self) -> None:
        self.keys: list[tuple[str, str]] = []
        self.forgotten: list[tuple[str, str]] = []

    def add(self, key):
        self.keys.append(key)

    def forget(self, key):
        self.forgotten.append(key)


@pytest.fixture
def queue(monkeypatch):
    added = Added()
    monkeypatch.setattr(op_main, "QUEUE", added)
    yield added
    cache.clear()


def deliver(handler, kind: str, obj: dict) -> None:
    asyncio.run(handler(event={"type": kind, "object": obj}))


def test_watches_use_server_side_selectors():
    """kopf's labels= filters in the operator: the API server sent every Job of the cluster."""
    settings = kopf.OperatorSettings()
    op_main.configure(settings=settings)
    from kopf._cogs.structs.references import Resource

    jobs = Resource("batch", "v1", "jobs", namespaced=True)
    pods = Resource("", "v1", "pods", namespaced=True)
    events = Resource("", "v1", "events", namespaced=True)
    assert list(settings.watching.label_selectors.collect(jobs)) == ["assay.dev/job"]
    assert list(settings.watching.label_selectors.collect(pods)) == ["assay.dev/job"]
    assert list(settings.watching.field_selectors.collect(events)) == ["involvedObject.kind=Job,reason=FailedCreate"]


def test_child_jobs_and_pods_are_cached_and_queue_their_evaluationjob(queue):
    job = {"metadata": {"name": "eval-ppl", "namespace": "ns", "resourceVersion": "5", "ownerReferences": OWNER,
                        "managedFields": [{"manager": "kube-controller-manager"}]}}
    deliver(op_main.child_job_changed, "ADDED", job)
    pod = {"metadata": {"name": "eval-ppl-0", "namespace": "ns", "labels": {"assay.dev/job": "eval"}}}
    deliver(op_main.pod_changed, "MODIFIED", pod)
    assert queue.keys == [("ns", "eval"), ("ns", "eval")]
    assert cache.get(cache.JOBS, "ns", "eval-ppl")["metadata"].get("managedFields") is None
    assert [p["metadata"]["name"] for p in cache.pods_of("ns", "eval")] == ["eval-ppl-0"]
    deliver(op_main.pod_changed, "DELETED", pod)
    assert cache.pods_of("ns", "eval") == []


def test_an_older_version_never_replaces_a_newer_one(queue):
    """A write's response goes into the cache before the watch delivers what came before it."""
    cache.put(cache.JOBS, {"metadata": {"name": "j", "namespace": "ns", "resourceVersion": "10"}, "spec": {"x": 2}})
    cache.put(cache.JOBS, {"metadata": {"name": "j", "namespace": "ns", "resourceVersion": "9"}, "spec": {"x": 1}})
    assert cache.get(cache.JOBS, "ns", "j")["spec"] == {"x": 2}


def test_only_events_about_our_jobs_are_kept(queue):
    event = {"metadata": {"name": "e1", "namespace": "ns"}, "reason": "FailedCreate",
             "involvedObject": {"kind": "Job", "name": "someone-elses"}}
    deliver(op_main.job_event, "ADDED", event)
    assert queue.keys == [] and cache.size()[cache.EVENTS] == 0
    cache.put(cache.JOBS, {"metadata": {"name": "eval-resolve", "namespace": "ns", "ownerReferences": OWNER}})
    ours = {**event, "metadata": {"name": "e2", "namespace": "ns"},
            "involvedObject": {"kind": "Job", "name": "eval-resolve"}}
    deliver(op_main.job_event, "ADDED", ours)
    assert queue.keys == [("ns", "eval")] and [e["metadata"]["name"] for e in cache.events_of("ns", "eval-resolve")] == ["e2"]


def test_a_deleted_evaluationjob_leaves_the_cache_and_the_queue(queue):
    job = {"metadata": {"name": "eval", "namespace": "ns", "uid": "u"}}
    deliver(op_main.evaluationjob_changed, "ADDED", job)
    deliver(op_main.evaluationjob_changed, "DELETED", job)
    assert queue.keys == [("ns", "eval")] and queue.forgotten == [("ns", "eval")]
    assert cache.get(cache.EVALUATIONJOBS, "ns", "eval") is None
