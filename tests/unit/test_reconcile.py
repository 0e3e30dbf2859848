"""The reconcile flow (assay_operator.reconcile) against an in-memory stand-in for ``assay_operator.kube``:
fast and deterministic, the test plays the Job controller and the kubelet, and the watches: before each
reconcile ``FakeAPI.feed`` puts the world into ``assay_operator.cache`` as kopf's watches would. What only a real API server,
Job controller and garbage collector can show is tested in tests/cluster/.

Each test's docstring names the bug it pins (issue 11's review of the operator)."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from assay import protocol
from assay.spec import EvaluationJob, JobSpec
from assay_operator import act, cache, kube, observe, plan
from assay_operator import reconcile as rec
from assay_operator.settings import Settings

NS, NAME = "evals", "eval"
LOG = logging.getLogger("test")
SETTINGS = Settings(runner_image="runner:test", progress_write_seconds=30)
NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
INPUTS = {"model": {"uri": "s3://b/models/m/v1", "name": "m", "version": "v1"},
          "dataset": {"uri": "s3://b/datasets/d/v2", "name": "d", "version": "v2"},
          "shards": 6, "samples": 60, "shardsPerIndex": 2, "indexes": 3}
REPORT = {"evaluator": "coco", "headline": {"name": "bbox/AP", "value": 0.8123}, "summary": {"bbox/AP": 0.8123}}


def _merge(target: dict, patch: dict) -> dict:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


class FakeAPI:
    """Just enough of an API server: uids, 409 on create, uid preconditions on delete, merge patches of
    status that carry a resourceVersion (409 when it is not the job's)."""

    def __init__(self) -> None:
        self.evaljobs: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.pods: list[dict] = []
        self.events: list[dict] = []
        self.status_writes = 0
        self.refuse: str | None = None
        self.refuse_status = 422
        self.workloads: dict[str, list[dict]] = {}  # job uid -> Kueue Workloads
        self.creates = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for fn in ("get_evaluationjob", "patch_evaluationjob_status", "get_job", "create_job", "patch_job",
                   "delete_job", "post_event", "list_workloads"):
            monkeypatch.setattr(kube, fn, getattr(self, fn))

    def feed(self) -> None:
        """The watches caught up: the cache holds the world as it is now."""
        cache.clear()
        for obj in self.evaljobs.values():
            cache.put(cache.EVALUATIONJOBS, obj)
        for obj in self.jobs.values():  # the Job watch's server-side selector: our label only
            if protocol.JOB_LABEL in (obj["metadata"].get("labels") or {}):
                cache.put(cache.JOBS, _merge(copy.deepcopy(obj), {"metadata": {"namespace": NS}}))
        for pod in self.pods:
            cache.put(cache.PODS, _merge(copy.deepcopy(pod), {"metadata": {"namespace": NS}}))
        for i, event in enumerate(self.events):
            if event["involvedObject"]["name"] in self.jobs:
                cache.put(cache.EVENTS, {**event, "metadata": {"name": f"event-{i}", "namespace": NS}})

    # ---- kube's functions
    def get_evaluationjob(self, ns, name):
        return copy.deepcopy(self.evaljobs.get(name))

    def patch_evaluationjob_status(self, ns, name, st, resource_version):
        meta = self.evaljobs[name]["metadata"]
        if resource_version is not None and resource_version != meta["resourceVersion"]:
            raise kube.Conflict(f"the object has been modified (at {meta['resourceVersion']})")
        self.status_writes += 1
        _merge(self.evaljobs[name].setdefault("status", {}), st)
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return copy.deepcopy(self.evaljobs[name])

    def get_job(self, ns, name):
        return copy.deepcopy(self.jobs.get(name))

    def create_job(self, ns, body):
        if self.refuse:
            raise kube.Refused(self.refuse_status, self.refuse)
        name = body["metadata"]["name"]
        if name in self.jobs:
            return copy.deepcopy(self.jobs[name]), False
        self.creates += 1
        job = copy.deepcopy(body)
        job["metadata"]["uid"] = str(uuid.uuid4())
        job["status"] = {}
        self.jobs[name] = job
        return copy.deepcopy(job), True

    def patch_job(self, ns, name, patch):
        return copy.deepcopy(_merge(self.jobs[name], patch))

    def delete_job(self, ns, name, uid):
        if name not in self.jobs or self.jobs[name]["metadata"]["uid"] != uid:
            return False
        del self.jobs[name]
        return True

    def list_workloads(self, ns, uid):
        return copy.deepcopy(self.workloads.get(uid, []))

    def post_event(self, owner, event_type, reason, message, when):
        self.events.append({"type": event_type, "reason": reason, "message": message,
                            "involvedObject": {"name": owner["metadata"]["name"], "kind": "EvaluationJob",
                                               "uid": owner["metadata"].get("uid")}})

    # ---- the user, the Job controller and the kubelet
    def apply(self, **spec: Any) -> dict:
        base = {"model": {"uri": "s3://b/models/m"}, "dataset": {"uri": "s3://b/datasets/d"},
                "output": {"uri": "s3://b/out"}, "ppl": {"workers": 2, "maxRetriesPerShard": 2}}
        base.update(spec)
        self.evaljobs[NAME] = {"apiVersion": "assay.dev/v1alpha1", "kind": "EvaluationJob",
                               "metadata": {"name": NAME, "namespace": NS, "uid": "ej-uid", "generation": 1,
                                            "resourceVersion": "1"},
                               "spec": base}
        return self.evaljobs[NAME]

    def set_spec(self, **spec: Any) -> None:
        self.evaljobs[NAME]["spec"].update(spec)
        meta = self.evaljobs[NAME]["metadata"]
        meta["generation"] += 1
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    def status(self) -> dict:
        return self.evaljobs[NAME].get("status") or {}

    def job_status(self, role: str, *conds: str, **st: Any) -> None:
        conditions = [{"type": c, "status": "True", "reason": st.pop("reason", c), "message": ""} for c in conds]
        self.jobs[f"{NAME}-{role}"]["status"] = {**st, **({"conditions": conditions} if conditions else {})}

    def terminated(self, role: str, exit_code: int, message: str, finished: str = "2026-01-01T11:59:00Z") -> None:
        job = self.jobs[f"{NAME}-{role}"]
        self.pods.append({"metadata": {"name": f"{job['metadata']['name']}-{len(self.pods)}", "labels": {
            "assay.dev/job": NAME, "assay.dev/role": role,
            "batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}},
            "status": {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [{
                "name": "runner", "state": {"terminated": {"exitCode": exit_code, "message": message,
                                                           "finishedAt": finished}}}]}})


#: The fixture's world, fed to the cache by ``reconcile()``.
WORLD: FakeAPI | None = None


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPI]:
    global WORLD
    fake = FakeAPI()
    fake.install(monkeypatch)
    monkeypatch.setattr(rec, "_last_write", {})
    WORLD = fake
    yield fake
    cache.clear()


def untouchable(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make these functions of kube fail the test when called."""
    for fn in names:
        def refuse(*args: Any, _fn: str = fn, **kwargs: Any) -> None:
            raise AssertionError(f"kube.{_fn} called")
        monkeypatch.setattr(kube, fn, refuse)


def reconcile(now: dt.datetime = NOW) -> str | None:
    return outcome(now).phase


def outcome(now: dt.datetime = NOW, settings: Settings = SETTINGS) -> rec.Outcome:
    assert WORLD is not None
    WORLD.feed()
    result = rec.reconcile(NS, NAME, LOG, settings, now=now)
    assert result is not None
    return result


def resolve_ok(api: FakeAPI) -> None:
    api.job_status("resolve", "Complete")
    api.terminated("resolve", 0, json.dumps({"result": INPUTS}))


def test_first_stage_pins_the_inputs_before_any_gpu_is_held(api):
    """Each pod resolved LATEST when it started: workers of one job could run different model versions."""
    api.apply()
    assert reconcile() == "Pending"
    assert list(api.jobs) == ["eval-resolve"] and api.status()["reason"] == "Resolving"
    resolve_ok(api)
    reconcile()
    st = api.status()
    assert st["inputs"] == INPUTS and (st["modelDigest"], st["datasetDigest"]) == ("v1", "v2")
    ppl = api.jobs["eval-ppl"]
    assert (ppl["spec"]["completions"], ppl["spec"]["parallelism"]) == (3, 2)
    env = {e["name"]: e.get("value") for e in ppl["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["ASSAY_MODEL_URI"], env["ASSAY_MODEL_VERSION"]) == ("s3://b/models/m/v1", "v1")
    assert (env["ASSAY_DATASET_URI"], env["ASSAY_SHARDS_PER_INDEX"]) == ("s3://b/datasets/d/v2", "2")
    # the resolve Job may go (TTL, a user): the pinned inputs stay and it is never recreated
    del api.jobs["eval-resolve"]
    reconcile()
    assert "eval-resolve" not in api.jobs and api.status()["inputs"] == INPUTS


def test_full_run_reports_through_termination_messages_and_never_moves_back(api, monkeypatch):
    """The operator read metrics.json from the store itself; now the cmp pod's termination message."""
    api.apply(activeDeadlineSeconds=3600)
    reconcile()
    resolve_ok(api)
    reconcile()
    api.job_status("ppl", completedIndexes="0", startTime="2026-01-01T11:50:00Z", ready=2)
    reconcile(NOW)
    st = api.status()
    assert st["phase"] == "Running" and st["shards"]["summary"] == "2/6" and st["progress"]["samplesDone"] == 20
    api.job_status("ppl", "Complete", completedIndexes="0-2", startTime="2026-01-01T11:50:00Z",
                   completionTime="2026-01-01T11:55:00Z")
    reconcile()
    cmp = api.jobs["eval-cmp"]
    assert cmp["spec"]["activeDeadlineSeconds"] == 3600 - 300, "the ppl Job's own clock, not the operator's"
    api.job_status("cmp", "Complete")
    api.terminated("cmp", 0, json.dumps({"result": REPORT}))
    assert reconcile() == "Succeeded"
    st = api.status()
    assert st["results"]["headline"] == "0.812" and st["stages"] == {"resolve": "Complete", "ppl": "Complete",
                                                                     "cmp": "Complete"}
    api.jobs.clear()  # children garbage-collected or deleted by hand
    untouchable(monkeypatch, "get_job", "create_job", "patch_job", "delete_job")
    assert reconcile() == "Succeeded" and api.jobs == {}, "a finished job is never rerun, nor looked at"
    assert [e["reason"] for e in api.events][-1] == "Succeeded"


def test_a_namesake_job_is_never_adopted_or_touched(api):
    """A leftover <name>-resolve Job of another owner was adopted: inference skipped, cmp created at once.
    Then the conflict froze the job as Failed for good although the foreign Job could be deleted. The
    watch-fed cache never shows a Job without our label: the create's 409 is where the conflict shows."""
    api.apply()
    api.jobs["eval-resolve"] = {"metadata": {"name": "eval-resolve", "uid": "other", "ownerReferences": [
        {"kind": "Workflow", "apiVersion": "argoproj.io/v1alpha1", "name": "eval", "uid": "a-workflow",
         "controller": True}]},
        "spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    out = outcome()
    st = api.status()
    assert out.phase == "Pending" and st["reason"] == "ChildNameConflict" and "a-workflow" in st["message"], st
    assert set(api.jobs) == {"eval-resolve"} and api.jobs["eval-resolve"]["metadata"]["uid"] == "other"
    assert api.events[-1]["type"] == "Warning" and api.events[-1]["reason"] == "ChildNameConflict"
    assert out.due is not None and out.due <= NOW + dt.timedelta(seconds=SETTINGS.hold_retry_seconds), \
        "no watch shows the foreign Job go: the conflict is looked at again"
    del api.jobs["eval-resolve"]  # the user deletes it: the job goes on
    assert reconcile() == "Pending" and api.status()["reason"] == "Resolving"
    assert api.jobs["eval-resolve"]["metadata"]["ownerReferences"][0]["uid"] == "ej-uid"


def test_a_recreated_job_waits_for_its_predecessors_children(api):
    """Re-creating an EvaluationJob of the same name failed it for good (ChildNameConflict) while the
    garbage collector was still deleting the deleted predecessor's Jobs."""
    api.apply()
    predecessor = {"kind": "EvaluationJob", "apiVersion": "assay.dev/v1alpha1", "name": NAME, "uid": "old-uid",
                   "controller": True}
    ours = {protocol.JOB_LABEL: NAME}
    api.jobs["eval-resolve"] = {"metadata": {"name": "eval-resolve", "uid": "r0", "ownerReferences": [predecessor],
                                             "labels": ours}, "spec": {}, "status": {}}
    api.jobs["eval-ppl"] = {"metadata": {"name": "eval-ppl", "uid": "p0", "deletionTimestamp": "2026-01-01T11:59:00Z",
                                         "ownerReferences": [predecessor], "labels": ours}, "spec": {}, "status": {}}
    assert reconcile() == "Pending" and api.status()["reason"] == "WaitingForPredecessor"
    assert api.jobs["eval-resolve"]["metadata"]["uid"] == "r0", "the predecessor's Job is the collector's"
    api.jobs.clear()  # collected
    reconcile()
    assert api.jobs["eval-resolve"]["metadata"]["ownerReferences"][0]["uid"] == "ej-uid"


def test_missing_inputs_fail_at_the_resolve_stage_with_the_pods_message(api):
    api.apply()
    reconcile()
    api.job_status("resolve", "Failed", reason="PodFailurePolicy")
    api.terminated("resolve", 3, protocol.failure_message(protocol.Failure(
        error="no dataset at s3://b/datasets/d (no manifest.json or LATEST there)",
        hint="build one with `assay dataset build`", kind="ObjectNotFound")))
    assert reconcile() == "Failed"
    st = api.status()
    assert st["reason"] == "InputsUnavailable" and "no dataset at s3://b/datasets/d" in st["message"]
    assert "hint: build one" in st["message"] and "eval-ppl" not in api.jobs


def test_a_job_the_api_server_refuses_fails_with_its_message(api):
    """A 422 on Job creation looped silently."""
    api.apply()
    api.refuse = 'Job.batch "eval-resolve" is invalid: metadata.labels: Invalid value'
    assert reconcile() == "Failed"
    assert api.status()["reason"] == "InvalidSpec" and "metadata.labels: Invalid value" in api.status()["message"]


def test_pods_that_cannot_be_created_show_why(api):
    """Quota, LimitRange or admission refusing the pods left the job Pending forever, silently."""
    api.apply()
    reconcile()
    resolve_ok(api)
    reconcile()
    api.events.append({"reason": "FailedCreate", "lastTimestamp": "2026-01-01T11:59:00Z",
                       "involvedObject": {"name": "eval-ppl", "kind": "Job", "uid": api.jobs["eval-ppl"]["metadata"]["uid"]},
                       "message": 'pods "eval-ppl-0-x" is forbidden: exceeded quota: gpu, requested: nvidia.com/gpu=1'})
    reconcile()
    assert api.status()["reason"] == "FailedCreate" and "exceeded quota: gpu" in api.status()["message"]


def test_retry_token_reruns_only_what_is_unfinished(api):
    api.apply()
    reconcile()
    resolve_ok(api)
    reconcile()
    old = api.jobs["eval-ppl"]["metadata"]["uid"]
    api.job_status("ppl", "Failed", reason="FailedIndexes", failedIndexes="2", completedIndexes="0-1")
    assert reconcile() == "Failed"
    assert "ppl index 2 (shards 4-5) failed 3 times" in api.status()["message"]
    api.set_spec(retryToken="2")
    reconcile()  # deletes the failed Job of the earlier attempt
    reconcile()  # creates the new one
    assert api.jobs["eval-ppl"]["metadata"]["uid"] != old
    assert api.jobs["eval-ppl"]["metadata"]["annotations"]["assay.dev/retry-token"] == "2"
    assert api.status()["inputs"] == INPUTS and api.status()["phase"] == "Pending"


def test_queued_jobs_are_never_unsuspended_by_the_operator(api):
    """The operator unsuspended Jobs Kueue suspended and re-suspended Jobs Kueue admitted."""
    api.apply(queueName="gpu")
    reconcile()
    assert api.jobs["eval-resolve"]["spec"]["suspend"] is True
    assert api.jobs["eval-resolve"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    reconcile()
    assert api.jobs["eval-resolve"]["spec"]["suspend"] is True and api.status()["reason"] == "WaitingForAdmission"
    resolve_ok(api)
    reconcile()
    api.jobs["eval-ppl"]["spec"]["suspend"] = False  # Kueue admits it
    reconcile()
    assert api.jobs["eval-ppl"]["spec"]["suspend"] is False
    api.set_spec(suspend=True)  # the user suspends a queued job: its unfinished Jobs go, not their suspend
    assert reconcile() == "Suspended" and "eval-ppl" not in api.jobs
    api.set_spec(suspend=False)
    reconcile()
    assert api.jobs["eval-ppl"]["spec"]["suspend"] is True, "created again, queued again"


def test_suspending_a_queued_job_before_its_inputs_are_pinned_creates_nothing(api):
    """spec.suspend on a queued job still waiting for admission: each reconcile created the resolve Job and
    deleted it again (239 creates in 20 s with a real Kueue, each making and removing a Workload)."""
    api.apply(queueName="gpu")
    reconcile()
    api.set_spec(suspend=True)
    for _ in range(20):  # each delete is a watch event, i.e. another reconcile
        assert reconcile() == "Suspended"
    assert api.creates == 1 and api.jobs == {}
    api.set_spec(suspend=False)
    reconcile()
    assert api.creates == 2 and api.jobs["eval-resolve"]["spec"]["suspend"] is True


def test_suspend_without_a_queue_uses_the_jobs_suspend(api):
    api.apply()
    reconcile()
    resolve_ok(api)
    reconcile()
    api.set_spec(suspend=True)
    assert reconcile() == "Suspended" and api.jobs["eval-ppl"]["spec"]["suspend"] is True
    api.set_spec(suspend=False)
    reconcile()
    assert api.jobs["eval-ppl"]["spec"]["suspend"] is False


def test_a_suspend_set_by_kueue_is_not_fought_over(api):
    """Under Kueue's manageJobsWithoutQueueName a job without a queue name had the operator resume its
    Job on every reconcile and Kueue suspend it again (243 resumes, 469 suspends in 40 s)."""
    api.apply()
    reconcile()
    uid = api.jobs["eval-resolve"]["metadata"]["uid"]
    api.jobs["eval-resolve"]["spec"]["suspend"] = True  # Kueue's webhook or reconciler
    api.workloads[uid] = [{"metadata": {"name": "job-eval-resolve-1"}, "status": {"conditions": [
        {"type": "QuotaReserved", "status": "False", "message": "couldn't assign flavors to pod set main"}]}}]
    for _ in range(5):
        reconcile()
    assert api.jobs["eval-resolve"]["spec"]["suspend"] is True
    st = api.status()
    assert st["reason"] == "WaitingForAdmission" and "couldn't assign flavors" in st["message"]
    api.set_spec(suspend=True)  # a real edge of the spec is still applied ...
    reconcile()
    api.set_spec(suspend=False)  # ... and resuming leaves a Job with a Workload to Kueue
    reconcile()
    assert api.jobs["eval-resolve"]["spec"]["suspend"] is True
    assert api.jobs["eval-resolve"]["metadata"]["annotations"]["assay.dev/suspend"] == "false"


def test_a_job_suspended_by_kueue_before_its_workload_exists_is_looked_at_again(api):
    """Kueue's webhook suspends a Job at creation and its Workload comes a moment later; no watch of the
    operator shows the Workload, so without a timer the status said Resuming for ever (the cluster test
    under manageJobsWithoutQueueName caught this once the resync loop was gone)."""
    api.apply()
    reconcile()
    child = api.jobs["eval-resolve"]
    child["metadata"]["creationTimestamp"] = "2026-01-01T11:59:59Z"
    child["spec"]["suspend"] = True
    child["status"] = {"conditions": [{"type": "Suspended", "status": "True"}]}
    out = outcome()
    assert api.status()["reason"] == "Resuming" and child["spec"]["suspend"] is True, "not fought over"
    assert out.due == dt.datetime(2026, 1, 1, 12, 0, 2, tzinfo=dt.UTC), "first look soon after creation"
    assert outcome(out.due).due == dt.datetime(2026, 1, 1, 12, 0, 9, tzinfo=dt.UTC), "then a few more"
    api.workloads[child["metadata"]["uid"]] = [{"metadata": {"name": "job-eval-resolve-1"}, "status": {}}]
    out = outcome(out.due)
    assert api.status()["reason"] == "WaitingForAdmission" and out.due is not None, "no word from Kueue yet"
    api.workloads[child["metadata"]["uid"]][0]["status"] = {"conditions": [
        {"type": "QuotaReserved", "status": "False", "message": "couldn't assign flavors to pod set main"}]}
    out = outcome(out.due)
    assert "couldn't assign flavors" in api.status()["message"] and out.due is None, \
        "Kueue resumes an admitted Job, which the Job watch shows: nothing left to look at"
    late = dt.datetime(2026, 1, 1, 12, 10, tzinfo=dt.UTC)
    api.workloads[child["metadata"]["uid"]][0]["status"] = {}
    assert outcome(late).due is None, "a job waiting in a queue for long costs nothing"


def test_kueue_ownership_follows_the_childs_label_not_the_live_spec(api):
    """Removing spec.queueName mid-run made the operator unsuspend a Job that still carried the queue
    label (bypassing Kueue); changing workers of an admitted Job made Kueue evict its pods."""
    api.apply(queueName="gpu")
    reconcile()
    resolve_ok(api)
    reconcile()
    api.evaljobs[NAME]["spec"].pop("queueName")  # a CRD before the CEL rule let this through
    api.set_spec(ppl={"workers": 1, "maxRetriesPerShard": 2})
    reconcile()
    ppl = api.jobs["eval-ppl"]
    assert ppl["spec"]["suspend"] is True and ppl["spec"]["parallelism"] == 2


def test_workers_change_the_parallelism_of_a_running_job(api):
    api.apply()
    reconcile()
    resolve_ok(api)
    reconcile()
    api.set_spec(ppl={"workers": 8, "maxRetriesPerShard": 2})
    reconcile()
    assert api.jobs["eval-ppl"]["spec"]["parallelism"] == 3, "never more pods than shard groups"


def test_progress_writes_are_rate_limited_but_phase_changes_are_not(api):
    api.apply()
    reconcile()
    resolve_ok(api)
    reconcile()
    api.job_status("ppl", completedIndexes="0", startTime="2026-01-01T11:50:00Z", ready=1)
    reconcile()
    writes = api.status_writes
    api.job_status("ppl", completedIndexes="0-1", startTime="2026-01-01T11:50:00Z", ready=1)
    reconcile(NOW + dt.timedelta(seconds=5))
    assert api.status_writes == writes, "a progress-only change waits"
    api.job_status("ppl", "Complete", completedIndexes="0-2")
    reconcile(NOW + dt.timedelta(seconds=6))
    assert api.status_writes == writes + 1 and api.status()["phase"] == "Evaluating"


def test_no_finalizer_is_ever_added():
    """kopf's timer put a finalizer on every EvaluationJob: deleting one hung without the operator. kopf
    adds its finalizer for a daemon, a timer or a deletion handler, and keeps progress and diff-base
    records on the object for any change handler: the operator registers none of them, only event
    handlers (asked of kopf's own registry, not of the source text)."""
    import kopf

    import assay_operator.main as main

    registry = kopf.get_default_registry()
    ours = {kind: [h.id for h in getattr(registry, kind).get_all_handlers()
                   if getattr(h.fn, "__module__", None) == main.__name__]
            for kind in ("_watching", "_spawning", "_changing")}
    assert ours == {"_watching": ["evaluationjob_changed", "child_job_changed", "pod_changed", "job_event"],
                    "_spawning": [], "_changing": []}


def test_an_unexpected_reconcile_error_is_an_event_on_the_job_once(api, monkeypatch):
    """An exception inside reconcile was only logged: the job sat in its phase and `kubectl describe`
    said nothing. Now one Warning Event per distinct error; the next good reconcile re-arms it."""
    import assay_operator.main as main

    monkeypatch.setattr(main, "SETTINGS", SETTINGS)
    monkeypatch.setattr(main, "_REPORTED", {})
    api.apply()
    api.feed()
    real_create_job = kube.create_job

    def broken(ns, body):
        raise RuntimeError("boom: the API answered nonsense")

    monkeypatch.setattr(kube, "create_job", broken)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):  # raised on: the work queue retries with backoff
            main.reconcile_logged(NS, NAME, LOG)
    errors = [e for e in api.events if e["reason"] == "ReconcileError"]
    assert len(errors) == 1 and errors[0]["type"] == "Warning"
    assert "RuntimeError: boom: the API answered nonsense" in errors[0]["message"]
    assert errors[0]["involvedObject"]["name"] == NAME
    assert errors[0]["involvedObject"]["uid"] == "ej-uid", "kubectl describe lists a job's events by its uid"

    monkeypatch.setattr(kube, "create_job", real_create_job)
    main.reconcile_logged(NS, NAME, LOG)
    assert (api.status()["phase"], api.status()["reason"]) == ("Pending", "Resolving")
    api.jobs.clear()
    api.feed()
    monkeypatch.setattr(kube, "create_job", broken)
    with pytest.raises(RuntimeError):
        main.reconcile_logged(NS, NAME, LOG)
    assert len([e for e in api.events if e["reason"] == "ReconcileError"]) == 2, "a new failure is reported again"


def finish_ppl(api: FakeAPI) -> None:
    api.job_status("ppl", "Complete", completedIndexes="0-2", startTime="2026-01-01T11:50:00Z",
                   completionTime="2026-01-01T11:55:00Z")


def test_a_cmp_report_lost_with_its_pod_reruns_cmp_and_is_bounded(api):
    """cmp Complete without a readable report (pod GC after a node went, `kubectl delete pod`) sat in
    Evaluating/WaitingForMetrics for ever, with stages.cmp Complete so that nothing could rerun it."""
    api.apply()
    reconcile()
    resolve_ok(api)
    reconcile()
    finish_ppl(api)
    reconcile()
    for attempt in range(1, SETTINGS.max_stage_reruns + 1):
        api.job_status("cmp", "Complete")  # and its pod is gone
        assert reconcile() == "Evaluating" and "eval-cmp" not in api.jobs
        st = api.status()
        assert st["reason"] == "WaitingForMetrics" and st["stageReruns"] == {"cmp": attempt}
        assert "cmp" not in st["stages"], "a stage is done only once its report is in status"
        reconcile()
        assert "eval-cmp" in api.jobs, "cmp runs again"
    api.job_status("cmp", "Complete")
    assert reconcile() == "Failed"
    assert api.status()["reason"] == "MetricsUnavailable" and "retryToken" in api.status()["message"]
    api.set_spec(retryToken="again")  # the retry token now reruns it
    reconcile()
    reconcile()
    assert "eval-cmp" in api.jobs and "stageReruns" not in api.status()
    api.job_status("cmp", "Complete")
    api.terminated("cmp", 0, json.dumps({"result": REPORT}))
    assert reconcile() == "Succeeded" and api.status()["stages"]["cmp"] == "Complete"


def test_a_resolve_report_lost_with_its_pod_reruns_resolve(api):
    """resolve Complete without a readable report failed InputsUnavailable, and no retryToken cleared it
    (the Complete resolve Job of the old token was reused)."""
    api.apply()
    reconcile()
    api.job_status("resolve", "Complete")
    assert reconcile() == "Pending" and "eval-resolve" not in api.jobs
    reconcile()
    resolve_ok(api)
    reconcile()
    assert api.status()["inputs"] == INPUTS and "eval-ppl" in api.jobs


def test_a_quota_refusal_waits_then_fails_at_the_pending_deadline(api):
    """A 403 `exceeded quota: count/jobs.batch` on creating cmp was a terminal InvalidSpec after the whole
    inference ran, and stayed so after the quota was raised."""
    api.apply(pendingDeadlineSeconds=600)
    reconcile()
    resolve_ok(api)
    reconcile()
    finish_ppl(api)
    api.refuse, api.refuse_status = 'jobs.batch "eval-cmp" is forbidden: exceeded quota: jobs, used: count/jobs.batch=2', 403
    assert reconcile() == "Pending"
    st = api.status()
    assert st["reason"] == "QuotaExceeded" and st["blockedSince"] == "2026-01-01T12:00:00Z"
    assert api.events[-1]["type"] == "Warning"
    assert reconcile(NOW + dt.timedelta(seconds=300)) == "Pending"
    api.refuse = None  # the quota is raised
    assert reconcile(NOW + dt.timedelta(seconds=310)) == "Evaluating" and "eval-cmp" in api.jobs
    assert "blockedSince" not in api.status()
    # held past the deadline, it fails saying why
    del api.jobs["eval-cmp"]
    api.refuse = "exceeded quota: jobs"
    reconcile(NOW + dt.timedelta(seconds=320))
    assert reconcile(NOW + dt.timedelta(seconds=1000)) == "Failed"
    assert api.status()["reason"] == "PendingDeadlineExceeded" and "exceeded quota" in api.status()["message"]


def test_an_rbac_refusal_has_its_own_reason(api):
    api.apply()
    api.refuse, api.refuse_status = 'jobs.batch is forbidden: User "system:serviceaccount:x:y" cannot create', 403
    assert reconcile() == "Pending" and api.status()["reason"] == "OperatorForbidden"


def test_pods_that_cannot_be_created_fail_at_the_pending_deadline(api):
    """A missing ServiceAccount or PriorityClass: pods never exist, so pendingDeadlineSeconds never fired
    and the job stayed Pending/FailedCreate for ever."""
    api.apply(pendingDeadlineSeconds=120)
    reconcile()
    api.events.append({"reason": "FailedCreate", "lastTimestamp": "2026-01-01T11:59:00Z", "involvedObject": {
        "name": "eval-resolve", "kind": "Job", "uid": api.jobs["eval-resolve"]["metadata"]["uid"]},
        "message": 'pods "eval-resolve-x" is forbidden: error looking up service account evals/gone'})
    assert reconcile() == "Pending" and api.status()["reason"] == "FailedCreate"
    assert api.events[-1]["type"] == "Warning", "FailedCreate is an Event someone has to act on"
    assert reconcile(NOW + dt.timedelta(seconds=60)) == "Pending"
    assert reconcile(NOW + dt.timedelta(seconds=121)) == "Failed"
    st = api.status()
    assert st["reason"] == "PendingDeadlineExceeded" and "service account evals/gone" in st["message"]
    assert "eval-resolve" not in api.jobs, "the unfinished Job is stopped"


def test_the_status_retry_token_moves_only_once_its_children_exist(api):
    """status.retryToken moved to a new token before any child of it existed."""
    api.apply()
    reconcile()
    resolve_ok(api)
    reconcile()
    api.job_status("ppl", "Failed", reason="FailedIndexes", failedIndexes="2", completedIndexes="0-1")
    reconcile()
    api.set_spec(retryToken="2")
    api.refuse, api.refuse_status = "exceeded quota: jobs", 403
    reconcile()  # deletes the failed ppl Job of the earlier attempt
    reconcile()  # cannot create the new one
    assert api.status()["retryToken"] == "" and api.status()["reason"] == "QuotaExceeded"
    api.refuse = None
    reconcile()
    assert api.status()["retryToken"] == "2"


def test_cmp_scores_with_the_settings_the_predictions_were_made_with(api):
    """cmp was built from the live spec while the running ppl Job kept the old settings: the job failed
    (output owned by other settings) and could never succeed."""
    api.apply(ppl={"workers": 2, "maxRetriesPerShard": 2, "batchSize": 8})
    reconcile()
    resolve_ok(api)
    reconcile()
    api.set_spec(ppl={"workers": 2, "maxRetriesPerShard": 2, "batchSize": 2}, evaluator="classification")
    finish_ppl(api)
    reconcile()
    env = {e["name"]: e.get("value") for e in api.jobs["eval-cmp"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ASSAY_BATCH_SIZE"] == "8" and "ASSAY_EVALUATOR" not in env
    assert env["ASSAY_MODEL_VERSION"] == "v1"


def test_the_phase_stays_running_between_shard_groups(api):
    """With one worker the phase went Running -> Pending(PodsStarting) -> Running between shard groups,
    posting an Event each time."""
    api.apply(ppl={"workers": 1, "maxRetriesPerShard": 2})
    reconcile()
    resolve_ok(api)
    reconcile()
    api.job_status("ppl", startTime="2026-01-01T11:50:00Z", ready=1)
    assert reconcile() == "Running"
    api.job_status("ppl", completedIndexes="0", startTime="2026-01-01T11:50:00Z", ready=0)  # next pod starting
    events = len(api.events)
    assert reconcile() == "Running" and len(api.events) == events


def test_a_queued_cmp_job_says_it_waits_for_admission(api):
    api.apply(queueName="gpu")
    reconcile()
    resolve_ok(api)
    reconcile()
    finish_ppl(api)
    reconcile()
    assert api.jobs["eval-cmp"]["spec"]["suspend"] is True
    assert reconcile() == "Pending"
    st = api.status()
    assert st["reason"] == "WaitingForAdmission" and "cmp Job is queued" in st["message"]


def test_fields_of_a_newer_crd_are_ignored(api):
    """A CRD one optional field ahead of the operator failed every job permanently (extra="forbid")."""
    api.apply(futureField={"x": 1}, ppl={"workers": 2, "maxRetriesPerShard": 2, "newKnob": True},
              storage={"secretRef": {"name": "s3", "newRefField": "x"}},
              runtime={"imagePullSecrets": [{"name": "reg", "newItemField": 1}]})
    assert reconcile() == "Pending" and api.status()["reason"] == "Resolving"


def test_a_failed_job_does_not_claim_to_have_observed_an_edit_it_never_ran(api):
    """observedGeneration moved on terminal jobs for a spec that never ran, so kstatus and Argo CD said
    Current/Healthy."""
    api.apply()
    reconcile()
    api.job_status("resolve", "Failed", reason="BackoffLimitExceeded")
    assert reconcile() == "Failed" and api.status()["observedGeneration"] == 1
    api.set_spec(runtime={"image": "fixed:1"})
    reconcile()
    assert api.status()["observedGeneration"] == 1
    api.set_spec(retryToken="2")
    reconcile()
    assert api.status()["observedGeneration"] == 3


def test_deadlines_reach_the_running_ppl_job_and_the_resolve_job_has_one(api):
    api.apply(activeDeadlineSeconds=3600)
    reconcile()
    assert api.jobs["eval-resolve"]["spec"]["activeDeadlineSeconds"] == SETTINGS.resolve_deadline_seconds
    resolve_ok(api)
    reconcile()
    api.set_spec(activeDeadlineSeconds=7200)
    reconcile()
    assert api.jobs["eval-ppl"]["spec"]["activeDeadlineSeconds"] == 7200


def test_a_job_borrowing_a_foreign_secret_fails_before_any_child(api):
    """A user who may only create EvaluationJobs named any Secret of the namespace in runtime.env and read
    it back through status.message (issue 18, finding 8)."""
    api.apply(runtime={"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "cloud", "key": "k"}}}]},
              storage={"secretRef": {"name": "s3"}})
    assert reconcile() == "Failed"
    st = api.status()
    assert st["reason"] == "PolicyViolation" and "spec.runtime.env[0] (TOKEN)" in st["message"], st
    assert "hint:" in st["message"] and not api.jobs


def test_a_running_job_refused_by_a_tightened_policy_is_stopped(api):
    api.apply(runtime={"runtimeClassName": "nvidia"})
    assert outcome(settings=Settings(runner_image="runner:test", allowed_runtime_class_names=["nvidia"])).phase == "Pending"
    assert "eval-resolve" in api.jobs
    assert reconcile() == "Failed"  # SETTINGS allows no RuntimeClass
    assert api.status()["reason"] == "PolicyViolation" and "eval-resolve" not in api.jobs


def test_a_child_of_an_older_operator_is_resumed_once(api):
    """Children made before the suspend annotation carry none: what they have is what was applied."""
    api.apply()
    reconcile()
    resolve_ok(api)
    reconcile()
    api.jobs["eval-ppl"]["metadata"]["annotations"].pop("assay.dev/suspend")
    api.jobs["eval-ppl"]["spec"]["suspend"] = True  # suspended by the older operator; the user resumed since
    reconcile()
    assert api.jobs["eval-ppl"]["spec"]["suspend"] is False
    assert api.jobs["eval-ppl"]["metadata"]["annotations"]["assay.dev/suspend"] == "false"


WRITES = ("patch_evaluationjob_status", "create_job", "patch_job", "delete_job", "post_event")


def _suspend_unqueued(api: FakeAPI) -> None:
    resolve_ok(api)
    reconcile()
    api.set_spec(suspend=True)


def _lose_the_resolve_report(api: FakeAPI) -> None:
    api.job_status("resolve", "Complete")


def _new_retry_token(api: FakeAPI) -> None:
    resolve_ok(api)
    reconcile()
    api.job_status("ppl", "Failed", reason="FailedIndexes", failedIndexes="2", completedIndexes="0-1")
    reconcile()
    api.set_spec(retryToken="2")


def _queued_and_failing_to_create(api: FakeAPI) -> None:
    uid = api.jobs["eval-resolve"]["metadata"]["uid"]
    api.jobs["eval-resolve"]["spec"]["suspend"] = True
    api.workloads[uid] = [{"metadata": {"name": "wl"}, "status": {}}]
    api.events.append({"reason": "FailedCreate", "involvedObject": {"name": "eval-resolve", "uid": uid},
                       "message": "exceeded quota"})


@pytest.mark.parametrize(("world", "planned"), [
    (lambda api: api.jobs.clear(), plan.Create),
    (_suspend_unqueued, plan.Patch),
    (_lose_the_resolve_report, plan.Delete),
    (_new_retry_token, plan.Delete),
])
def test_observe_only_reads(api, monkeypatch, world, planned):
    """``handlers._observe`` created, patched and deleted Jobs while it read them (issue 21): the read step
    now writes nothing in a world where the plan made of its reading does write."""
    api.apply()
    reconcile()
    world(api)
    body = api.evaljobs[NAME]
    job = EvaluationJob(name=NAME, namespace=NS, spec=JobSpec(**body["spec"]))
    untouchable(monkeypatch, *WRITES)
    api.feed()
    seen = observe.snapshot(job)
    todo = plan.plan(job, body, dict(body.get("status") or {}), seen, SETTINGS, NOW)
    assert any(isinstance(a, planned) for a in todo.actions), todo.actions
    with pytest.raises(AssertionError, match="kube.*called"):  # acting on it is what writes
        act.perform(NS, todo.actions, LOG)


def test_observe_reads_what_the_plan_needs(api, monkeypatch):
    """Workloads of a suspended child and Events of an active child without pods are read, and only then."""
    api.apply()
    reconcile()
    job = EvaluationJob(name=NAME, namespace=NS, spec=JobSpec(**api.evaljobs[NAME]["spec"]))
    uid = api.jobs["eval-resolve"]["metadata"]["uid"]
    untouchable(monkeypatch, *WRITES)
    api.feed()
    seen = observe.snapshot(job)
    assert (seen.workloads, list(seen.events), seen.pods) == ({}, ["eval-resolve"], [])
    _queued_and_failing_to_create(api)
    api.feed()
    seen = observe.snapshot(job)
    assert seen.workloads == {uid: api.workloads[uid]} and seen.events == {}
    assert seen.jobs["resolve"] == api.jobs["eval-resolve"] and seen.jobs["ppl"] is None


def test_a_deleted_job_leaves_no_lock_and_no_write_time(api):
    """Per-job locks and last write times were kept for ever: an operator that saw many jobs come and go
    grew without bound."""
    import assay_operator.main as main

    api.apply()
    assert reconcile() == "Pending"
    key, uid = f"{NS}/{NAME}", api.evaljobs[NAME]["metadata"]["uid"]
    assert key in rec._locks and uid in rec._last_write
    asyncio.run(main.evaluationjob_changed(event={"type": "DELETED", "object": api.evaljobs.pop(NAME)}))
    assert key not in rec._locks and uid not in rec._last_write
    assert cache.get(cache.EVALUATIONJOBS, NS, NAME) is None


# ------------------------------------------------------------------ optimistic concurrency, timers


def test_a_status_derived_from_a_stale_job_is_refused_and_derived_again(api):
    """Status was merge-patched without a resourceVersion: a reconcile working from an older copy of the
    job (a cache behind its watch, a second operator) overwrote a newer status, even a terminal one."""
    api.apply()
    reconcile()
    resolve_ok(api)
    api.feed()  # the cache sees the inputs pinned: this reconcile has a status to write
    # written elsewhere since the cache was fed: the job finished
    api.evaljobs[NAME]["status"] = {**api.status(), "phase": "Succeeded", "reason": "Succeeded"}
    api.evaljobs[NAME]["metadata"]["resourceVersion"] = "99"
    result = rec.reconcile(NS, NAME, LOG, SETTINGS, now=NOW)  # the cache still says Pending
    assert result is not None and result.phase == "Succeeded"
    assert api.status()["phase"] == "Succeeded", "a terminal phase never moves back"
    assert cache.get(cache.EVALUATIONJOBS, NS, NAME)["metadata"]["resourceVersion"] == "99", "read again"


def test_a_conflict_that_persists_is_raised_for_the_queue_to_retry(api, monkeypatch):
    api.apply()
    api.feed()

    def always_conflicts(ns, name, st, resource_version):
        raise kube.Conflict("the object has been modified")

    monkeypatch.setattr(kube, "patch_evaluationjob_status", always_conflicts)
    with pytest.raises(kube.Conflict):
        rec.reconcile(NS, NAME, LOG, SETTINGS, now=NOW)


def _pod(phase: str, created: str, waiting: str | None = None) -> dict:
    uid = WORLD.jobs[f"{NAME}-ppl"]["metadata"]["uid"]
    statuses = [{"name": "runner", "state": {"waiting": {"reason": waiting}}}] if waiting else []
    return {"metadata": {"name": f"ppl-{len(WORLD.pods)}", "creationTimestamp": created, "labels": {
        "assay.dev/job": NAME, "assay.dev/role": "ppl", "batch.kubernetes.io/controller-uid": uid}},
        "status": {"phase": phase, "containerStatuses": statuses}}


def _started(api: FakeAPI, **spec: Any) -> None:
    api.apply(**spec)
    reconcile()
    resolve_ok(api)
    reconcile()


def test_a_pending_pod_is_due_at_its_pending_deadline(api):
    """Without the resync loop nothing would look at a pod that stays Pending: its deadline is a timer."""
    _started(api, pendingDeadlineSeconds=600)
    api.pods.append(_pod("Pending", "2026-01-01T11:58:00Z"))
    assert outcome().due == dt.datetime(2026, 1, 1, 12, 8, tzinfo=dt.UTC)
    assert reconcile(dt.datetime(2026, 1, 1, 12, 8, tzinfo=dt.UTC)) == "Failed"
    assert api.status()["reason"] == "PendingDeadlineExceeded"


def test_an_image_that_cannot_be_pulled_is_due_at_the_fail_fast_grace(api):
    _started(api)
    api.pods.append(_pod("Pending", "2026-01-01T11:59:30Z", waiting="ImagePullBackOff"))
    assert outcome().due == dt.datetime(2026, 1, 1, 12, 0, 30, tzinfo=dt.UTC)  # fail_fast_seconds=60
    assert reconcile(dt.datetime(2026, 1, 1, 12, 0, 30, tzinfo=dt.UTC)) == "Failed"
    assert api.status()["reason"] == "ImagePullBackOff"


def test_a_running_job_is_due_when_it_would_stall(api):
    """ShardsProgressing turned False only when a resync happened to look after stall_seconds."""
    _started(api)
    api.job_status("ppl", startTime="2026-01-01T11:50:00Z", ready=1)
    result = outcome()
    assert result.phase == "Running"
    stall = NOW + dt.timedelta(seconds=SETTINGS.stall_seconds + 1)
    assert result.due == stall
    reconcile(stall)
    cond = next(c for c in api.status()["conditions"] if c["type"] == "ShardsProgressing")
    assert (cond["status"], cond["reason"]) == ("False", "NoShardCompleted")
    assert outcome(stall).due is None, "a stalled job waits for a change"


def test_a_held_back_progress_write_is_due_when_it_may_be_written(api):
    _started(api)
    api.job_status("ppl", completedIndexes="0", startTime="2026-01-01T11:50:00Z", ready=1)
    reconcile()
    api.job_status("ppl", completedIndexes="0-1", startTime="2026-01-01T11:50:00Z", ready=1)
    held = outcome(NOW + dt.timedelta(seconds=5))
    assert held.due is not None and held.due <= NOW + dt.timedelta(seconds=5 + SETTINGS.progress_write_seconds)


def test_a_quota_refusal_is_retried_by_a_timer(api):
    api.apply()
    api.refuse, api.refuse_status = "exceeded quota: jobs", 403
    result = outcome()
    assert result.phase == "Pending" and result.due == NOW + dt.timedelta(seconds=SETTINGS.hold_retry_seconds)


def test_a_finished_job_is_due_only_until_its_ttl_removed_its_children(api):
    """A finished job with ttlSecondsAfterFinished was reconciled every resync for ever, even with its
    children gone; now it is due once, at its TTL, and then costs nothing."""
    api.apply(ttlSecondsAfterFinished=60)
    reconcile()
    api.evaljobs[NAME]["status"].update(phase="Succeeded", completionTime="2026-01-01T12:00:00Z")
    assert outcome().due == NOW + dt.timedelta(seconds=60)
    assert outcome(NOW + dt.timedelta(seconds=60)).phase == "Succeeded" and api.jobs == {}
    assert outcome(NOW + dt.timedelta(seconds=61)).due is None
