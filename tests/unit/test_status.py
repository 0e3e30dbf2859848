"""Pure status derivation: child Jobs, pods, progress and metrics -> phase, conditions, counts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from assay.spec import JobSpec
from assay_operator import status as S

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
OLD = "2026-01-01T11:00:00Z"


def spec(**kw: Any) -> JobSpec:
    base = {"model": {"uri": "/m"}, "dataset": {"uri": "/d"}, "output": {"uri": "/o"},
            "ppl": {"workers": 2, "maxRetriesPerShard": 3}}
    base.update(kw)
    return JobSpec(**base)


def job(*conds: tuple[str, str], suspend: bool = False, **st: Any) -> dict:
    return {"metadata": {"name": "x", "uid": "u1"}, "spec": {"suspend": suspend},
            "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": f"{r} msg"}
                                      for t, r in conds], **st}}


def observed(**kw: Any) -> S.Observed:
    base: dict[str, Any] = {"name": "eval", "spec": spec(), "now": NOW, "generation": 1, "shards_total": 4,
                            "samples_total": 40, "results_uri": "/o/metrics.json"}
    base.update(kw)
    return S.Observed(**base)


def pod(name: str = "p", created: str = OLD, **status: Any) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def waiting(reason: str, message: str = "") -> list[dict]:
    return [{"name": "runner", "state": {"waiting": {"reason": reason, "message": message}}}]


class TestJobState:
    @pytest.mark.parametrize(("obj", "state"), [
        (None, "Absent"), (job(), "Active"), (job(suspend=True), "Suspended"),
        (job(("Complete", "")), "Complete"), (job(("Failed", "BackoffLimitExceeded")), "Failed"),
        (job(("FailureTarget", "PodFailurePolicy")), "Failed")])
    def test_states(self, obj, state) -> None:
        assert S.job_state(obj) == state

    def test_index_sets(self) -> None:
        assert S.parse_indexes("1,3-5,9") == [1, 3, 4, 5, 9]
        assert S.parse_indexes("") == [] and S.parse_indexes(None) == []


class TestPhase:
    def test_nothing_yet_is_pending(self) -> None:
        assert S.decide(observed())[:2] == ("Pending", "Creating")

    def test_running_once_a_pod_runs(self) -> None:
        assert S.decide(observed(ppl=job(), pods=[pod(phase="Running")]))[0] == "Running"
        assert S.decide(observed(ppl=job(ready=1)))[0] == "Running"
        assert S.decide(observed(ppl=job(), pods=[pod(created="2026-01-01T11:59:00Z", phase="Pending")]))[:2] == \
            ("Pending", "PodsStarting")

    def test_ppl_complete_then_cmp(self) -> None:
        assert S.decide(observed(ppl=job(("Complete", ""))))[:2] == ("Evaluating", "InferenceComplete")
        assert S.decide(observed(ppl=job(("Complete", "")), cmp=job()))[:2] == ("Evaluating", "ComputingMetrics")

    def test_succeeded_only_with_metrics(self) -> None:
        done = {"ppl": job(("Complete", "")), "cmp": job(("Complete", ""))}
        assert S.decide(observed(**done))[:2] == ("Evaluating", "WaitingForMetrics")
        metrics = {"headline": {"name": "bbox/AP", "value": 0.5}, "summary": {"bbox/AP": 0.5}}
        assert S.decide(observed(metrics=metrics, **done)) == ("Succeeded", "Succeeded", "bbox/AP = 0.5000")

    def test_suspended(self) -> None:
        assert S.decide(observed(spec=spec(suspend=True), ppl=job(suspend=True)))[0] == "Suspended"

    def test_queued_waits_for_admission(self) -> None:
        assert S.decide(observed(spec=spec(queueName="q"), ppl=job(suspend=True)))[:2] == \
            ("Pending", "WaitingForAdmission")

    def test_index_past_retry_budget_names_the_shards(self) -> None:
        o = observed(ppl=job(("Failed", "FailedIndexes"), failedIndexes="1"))
        phase, reason, message = S.decide(o)
        assert (phase, reason) == ("Failed", "ShardRetriesExhausted")
        assert "ppl index 1 (shards 1, 3) failed 4 times" in message and "retryToken" in message

    def test_permanent_exit_code(self) -> None:
        assert S.decide(observed(ppl=job(("Failed", "PodFailurePolicy"))))[1] == "PermanentError"

    def test_job_deadline(self) -> None:
        assert S.decide(observed(ppl=job(("Failed", "DeadlineExceeded"))))[1] == "DeadlineExceeded"
        o = observed(spec=spec(activeDeadlineSeconds=60), ppl=job(), previous={"startTime": OLD})
        assert S.decide(o)[1] == "DeadlineExceeded"

    def test_oom_killed_is_named(self) -> None:
        oom = pod(phase="Failed", containerStatuses=[{"name": "runner", "state": {}, "lastState": {
            "terminated": {"reason": "OOMKilled", "exitCode": 137}}}])
        assert S.decide(observed(ppl=job(), pods=[oom]))[1] == "OOMKilled"
        assert S.decide(observed(ppl=job(("Failed", "FailedIndexes")), pods=[oom]))[1] == "OOMKilled"

    def test_cmp_failure(self) -> None:
        o = observed(ppl=job(("Complete", "")), cmp=job(("Failed", "BackoffLimitExceeded")))
        assert S.decide(o)[:2] == ("Failed", "MetricsFailed")


class TestPodProblems:
    @pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                                        "InvalidImageName"])
    def test_fail_fast_reasons_after_the_grace(self, reason: str) -> None:
        p = pod(phase="Pending", containerStatuses=waiting(reason, "secret \"s3\" not found"))
        assert S.pod_problem([p], NOW, fail_fast_seconds=60, pending_deadline_seconds=600)[0] == reason
        young = pod(created="2026-01-01T11:59:30Z", phase="Pending", containerStatuses=waiting(reason))
        assert S.pod_problem([young], NOW, fail_fast_seconds=60, pending_deadline_seconds=600) is None

    def test_unschedulable_after_the_pending_deadline(self) -> None:
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                "lastTransitionTime": "2026-01-01T11:55:00Z"}
        p = pod(created="2026-01-01T11:55:00Z", phase="Pending", conditions=[cond])
        assert S.pod_problem([p], NOW, fail_fast_seconds=60, pending_deadline_seconds=600) is None
        reason, message = S.pod_problem([p], NOW, fail_fast_seconds=60, pending_deadline_seconds=120)
        assert reason == "Unschedulable" and "nvidia.com/gpu" in message

    def test_running_and_terminating_pods_are_fine(self) -> None:
        gone = pod(phase="Pending", containerStatuses=waiting("ImagePullBackOff"))
        gone["metadata"]["deletionTimestamp"] = OLD
        assert S.pod_problem([pod(phase="Running"), gone], NOW, fail_fast_seconds=0,
                             pending_deadline_seconds=1) is None


class TestCounts:
    def test_progress_sums_workers_and_estimates_eta(self) -> None:
        reports = [{"worker": 0, "samplesDone": 10, "samplesTotal": 20, "samplesPerSecond": 2.0},
                   {"worker": 1, "samplesDone": 20, "samplesTotal": 20, "samplesPerSecond": 3.0}]
        p = S.aggregate_progress(reports, 40, False, NOW)
        assert p == {"samplesDone": 30, "samplesTotal": 40, "percent": 75.0, "percentText": "75.0%",
                     "samplesPerSecond": 2.0, "eta": "5s"}  # the finished worker adds no speed
        assert S.aggregate_progress([], 40, True, NOW)["percent"] == 100.0
        assert S.aggregate_progress([], 40, False, NOW) is None

    def test_shards(self) -> None:
        reports = [{"worker": 0, "shardsDone": 2}, {"worker": 1, "shardsDone": 1}]
        assert S.shard_counts(5, 2, reports, False, []) == {"total": 5, "completed": 3, "failed": 0,
                                                            "summary": "3/5"}
        assert S.shard_counts(5, 2, reports, False, [1])["failed"] == 1  # shards 1, 3: one done
        assert S.shard_counts(None, 2, [], True, [])["summary"] == "0/?"

    def test_results_are_bounded(self) -> None:
        metrics = {"evaluator": "coco", "headline": {"name": "bbox/AP", "value": 0.81234},
                   "summary": {f"m{i:02d}": i / 10 for i in range(50)} | {"nan": float("nan"), "s": "x"},
                   "full": {"huge": [0] * 1000}}
        r = S.bounded_results(metrics, 32)
        assert r["headline"] == "0.812" and r["headlineMetric"] == "bbox/AP" and r["evaluator"] == "coco"
        assert len(r["summary"]) == 32 and r["truncated"] == 18 and "full" not in r

    @pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (200, "3m20s"), (7500, "2h05m")])
    def test_durations(self, seconds: float, text: str) -> None:
        assert S.fmt_duration(seconds) == text


class TestConditions:
    def test_all_types_present_in_metav1_shape(self) -> None:
        st, _ = S.derive(observed(ppl=job(), pods=[pod(phase="Running")]))
        assert [c["type"] for c in st["conditions"]] == list(S.CONDITION_TYPES)
        for c in st["conditions"]:
            assert set(c) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
            assert c["reason"][0].isupper() and " " not in c["reason"]
        running = next(c for c in st["conditions"] if c["type"] == "Running")
        assert running["status"] == "True"

    def test_transition_time_moves_only_on_flip(self) -> None:
        first, _ = S.derive(observed(ppl=job(), pods=[pod(phase="Running")]))
        later = NOW + dt.timedelta(minutes=5)
        second, _ = S.derive(observed(ppl=job(), pods=[pod(phase="Running")], previous=first, now=later))
        assert second["conditions"] == first["conditions"]
        third, _ = S.derive(observed(ppl=job(("Complete", "")), cmp=job(("Complete", "")), previous=second,
                                     now=later, metrics={"summary": {}}))
        times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
        assert times["Ready"] == times["Running"] == times["Succeeded"] == S.fmt_time(later)
        assert times["Failed"] == S.fmt_time(NOW)

    def test_kstatus_abnormal_true_conditions(self) -> None:
        """Without Stalled, kstatus (Flux's wait) saw a failed job as in progress until its timeout."""
        def cond(st, t):
            return next(c["status"] for c in st["conditions"] if c["type"] == t)

        running, _ = S.derive(observed(ppl=job(), pods=[pod(phase="Running")]))
        assert (cond(running, "Reconciling"), cond(running, "Stalled")) == ("True", "False")
        done, _ = S.derive(observed(ppl=job(("Complete", "")), cmp=job(("Complete", "")), metrics={"summary": {}}))
        assert (cond(done, "Reconciling"), cond(done, "Stalled"), cond(done, "Ready")) == ("False", "False", "True")
        failed, _ = S.derive(observed(ppl=job(("Failed", "BackoffLimitExceeded"))))
        assert failed["phase"] == "Failed"
        assert (cond(failed, "Reconciling"), cond(failed, "Stalled")) == ("False", "True")

    def test_terminal_status_fields(self) -> None:
        st, _ = S.derive(observed(ppl=job(("Complete", ""), startTime=OLD), cmp=job(("Complete", "")),
                                  metrics={"summary": {"a": 1}}, model_digest="m1", dataset_digest="d1"))
        assert st["phase"] == "Succeeded" and st["startTime"] == OLD
        assert st["completionTime"] == S.fmt_time(NOW)
        assert st["resultsUri"] == "/o/metrics.json" and st["results"]["summary"] == {"a": 1.0}
        assert (st["modelDigest"], st["datasetDigest"]) == ("m1", "d1")
        assert st["shards"]["summary"] == "4/4"


def test_derived_status_matches_the_crd_status_schema() -> None:
    """A status field the CRD does not declare would be pruned by the API server."""
    import jsonschema

    from assay import spec as spec_mod

    schema = spec_mod._strict(spec_mod.job_schema()["properties"]["status"])
    metrics = {"evaluator": "coco", "headline": {"name": "bbox/AP", "value": 0.5}, "summary": {"bbox/AP": 0.5}}
    done, _ = S.derive(observed(ppl=job(("Complete", "")), cmp=job(("Complete", "")), metrics=metrics,
                                model_digest="m", dataset_digest="d",
                                progress=[{"worker": 0, "samplesDone": 1, "samplesTotal": 2}]))
    failed, _ = S.derive(observed(ppl=job(("Failed", "FailedIndexes"), failedIndexes="0")))
    running, _ = S.derive(observed(ppl=job(ready=1), progress=[{"worker": 0, "samplesDone": 1, "samplesTotal": 2,
                                                                "samplesPerSecond": 1.0}]))
    for st in (done, failed, running, S.failed_status({}, None, "InvalidSpec", "bad", 1, NOW)):
        jsonschema.Draft7Validator(schema).validate(st)
