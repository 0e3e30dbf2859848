"""The reconcile flow (assay_operator.handlers) against an in-memory stand-in for ``assay_operator.kube``:
fast and deterministic, the test plays the Job controller and the kubelet. What only a real API server,
Job controller and garbage collector can show is tested in tests/cluster/.

Each test's docstring names the bug it pins (issue 11's review of the operator)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import uuid
from typing import Any

import pytest

from assay_operator import handlers, kube, manifests
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
    """Just enough of an API server: uids, 409 on create, uid preconditions on delete, merge patches."""

    def __init__(self) -> None:
        self.evaljobs: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.pods: list[dict] = []
        self.events: list[dict] = []
        self.status_writes = 0
        self.refuse: str | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for fn in ("get_evaluationjob", "patch_evaluationjob_status", "get_job", "create_job", "patch_job",
                   "delete_job", "list_pods", "list_job_events", "post_event"):
            monkeypatch.setattr(kube, fn, getattr(self, fn))

    # ---- kube's functions
    def get_evaluationjob(self, ns, name):
        return copy.deepcopy(self.evaljobs.get(name))

    def patch_evaluationjob_status(self, ns, name, st):
        self.status_writes += 1
        _merge(self.evaljobs[name].setdefault("status", {}), st)

    def get_job(self, ns, name):
        return copy.deepcopy(self.jobs.get(name))

    def create_job(self, ns, body):
        if self.refuse:
            raise kube.Refused(422, self.refuse)
        name = body["metadata"]["name"]
        if name in self.jobs:
            return copy.deepcopy(self.jobs[name]), False
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

    def list_pods(self, ns, selector):
        return copy.deepcopy(self.pods)

    def list_job_events(self, ns, job_name):
        return [e for e in self.events if e["involvedObject"]["name"] == job_name]

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
                               "metadata": {"name": NAME, "namespace": NS, "uid": "ej-uid", "generation": 1},
                               "spec": base}
        return self.evaljobs[NAME]

    def set_spec(self, **spec: Any) -> None:
        self.evaljobs[NAME]["spec"].update(spec)
        self.evaljobs[NAME]["metadata"]["generation"] += 1

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


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    fake = FakeAPI()
    fake.install(monkeypatch)
    monkeypatch.setattr(handlers, "_last_write", {})
    return fake


def reconcile(now: dt.datetime = NOW) -> str | None:
    return handlers.reconcile(NS, NAME, LOG, SETTINGS, now=now)


def resolve_ok(api: FakeAPI) -> None:
    api.job_status("resolve", "Complete")
    api.terminated("resolve", 0, json.dumps(INPUTS))


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


def test_full_run_reports_through_termination_messages_and_never_moves_back(api):
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
    api.terminated("cmp", 0, json.dumps(REPORT))
    assert reconcile() == "Succeeded"
    st = api.status()
    assert st["results"]["headline"] == "0.812" and st["stages"] == {"resolve": "Complete", "ppl": "Complete",
                                                                     "cmp": "Complete"}
    api.jobs.clear()  # children garbage-collected or deleted by hand
    api.job_status = None  # nothing may touch Jobs any more
    assert reconcile() == "Succeeded" and api.jobs == {}, "a finished job is never rerun"
    assert [e["reason"] for e in api.events][-1] == "Succeeded"


def test_a_namesake_job_is_never_adopted_or_touched(api):
    """A leftover <name>-ppl Job of another owner was adopted: inference skipped, cmp created at once."""
    api.apply()
    api.jobs["eval-ppl"] = {"metadata": {"name": "eval-ppl", "uid": "other", "ownerReferences": [
        {"kind": "EvaluationJob", "name": "eval", "uid": "an-older-one", "controller": True}]},
        "spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert reconcile() == "Failed"
    st = api.status()
    assert st["reason"] == "ChildNameConflict" and "an-older-one" in st["message"]
    assert set(api.jobs) == {"eval-ppl"} and api.jobs["eval-ppl"]["metadata"]["uid"] == "other"


def test_missing_inputs_fail_at_the_resolve_stage_with_the_pods_message(api):
    api.apply()
    reconcile()
    api.job_status("resolve", "Failed", reason="PodFailurePolicy")
    api.terminated("resolve", 3, "error: no dataset at s3://b/datasets/d (no manifest.json or LATEST there)\n"
                                 "  hint: build one with `assay dataset build`")
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


def test_no_finalizer_is_ever_added(api):
    """kopf's timer put a finalizer on every EvaluationJob: deleting one hung without the operator."""
    api.apply()
    reconcile()
    assert "finalizers" not in api.evaljobs[NAME]["metadata"]
    import assay_operator.main as main

    source = open(main.__file__).read()
    assert "kopf.timer" not in source and "kopf.daemon" not in source and "on.delete" not in source


def test_an_unexpected_reconcile_error_is_an_event_on_the_job_once(api, monkeypatch):
    """An exception inside reconcile was only logged: the job sat in its phase and `kubectl describe`
    said nothing. Now one Warning Event per distinct error; the next good reconcile re-arms it."""
    import assay_operator.main as main

    monkeypatch.setattr(main, "SETTINGS", SETTINGS)
    monkeypatch.setattr(main, "_REPORTED", {})
    api.apply()
    real_get_job = kube.get_job

    def broken(ns, name):
        raise RuntimeError("boom: the API answered nonsense")

    monkeypatch.setattr(kube, "get_job", broken)
    main._reconcile_logged(NS, NAME, LOG)
    main._reconcile_logged(NS, NAME, LOG)
    errors = [e for e in api.events if e["reason"] == "ReconcileError"]
    assert len(errors) == 1 and errors[0]["type"] == "Warning"
    assert "RuntimeError: boom: the API answered nonsense" in errors[0]["message"]
    assert errors[0]["involvedObject"]["name"] == NAME
    assert errors[0]["involvedObject"]["uid"] == "ej-uid", "kubectl describe lists a job's events by its uid"

    monkeypatch.setattr(kube, "get_job", real_get_job)
    main._reconcile_logged(NS, NAME, LOG)
    assert api.status()["phase"] in ("Pending", "Resolving")
    monkeypatch.setattr(kube, "get_job", broken)
    main._reconcile_logged(NS, NAME, LOG)
    assert len([e for e in api.events if e["reason"] == "ReconcileError"]) == 2, "a new failure is reported again"
