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


#: 4 shards in 2 groups of 2, 40 samples.
INPUTS = {"model": {"uri": "/m/v1", "name": "m", "version": "v1"}, "dataset": {"uri": "/d/v2", "name": "d", "version": "v2"},
          "shards": 4, "samples": 40, "shardsPerIndex": 2, "indexes": 2}
REPORT = {"evaluator": "coco", "headline": {"name": "bbox/AP", "value": 0.5}, "summary": {"bbox/AP": 0.5}}


def observed(**kw: Any) -> S.Observed:
    base: dict[str, Any] = {"name": "eval", "spec": spec(), "now": NOW, "generation": 1, "inputs": INPUTS,
                            "results_uri": "/o/metrics.json"}
    base.update(kw)
    return S.Observed(**base)


def pod(name: str = "p", created: str = OLD, role: str = "ppl", **status: Any) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created, "labels": {"assay.dev/role": role}},
            "status": status}


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
        assert S.decide(observed(inputs=None))[:2] == ("Pending", "Resolving")
        assert S.decide(observed(inputs=None, resolve=job()))[:2] == ("Pending", "Resolving")
        assert S.decide(observed())[:2] == ("Pending", "Creating")

    def test_resolve_failure_names_the_inputs_error(self) -> None:
        o = observed(inputs=None, resolve=job(("Failed", "PodFailurePolicy")),
                     errors={"resolve": "no dataset at s3://b/d (no manifest.json or LATEST there)"})
        phase, reason, message = S.decide(o)
        assert (phase, reason) == ("Failed", "InputsUnavailable") and "no dataset at s3://b/d" in message

    def test_blockers_fail_at_once(self) -> None:
        o = observed(blocker=("ChildNameConflict", "Job eval-ppl exists and is not this EvaluationJob's"))
        assert S.decide(o)[:2] == ("Failed", "ChildNameConflict")

    def test_failed_create_is_shown(self) -> None:
        o = observed(ppl=job(), failed_create='pods "eval-ppl-0-x" is forbidden: exceeded quota: q')
        assert S.decide(o)[:2] == ("Pending", "FailedCreate") and "exceeded quota" in S.decide(o)[2]

    def test_running_once_a_pod_runs(self) -> None:
        assert S.decide(observed(ppl=job(), pods=[pod(phase="Running")]))[0] == "Running"
        assert S.decide(observed(ppl=job(ready=1)))[0] == "Running"
        assert S.decide(observed(ppl=job(), pods=[pod(created="2026-01-01T11:59:00Z", phase="Pending")]))[:2] == \
            ("Pending", "PodsStarting")

    def test_ppl_complete_then_cmp(self) -> None:
        assert S.decide(observed(ppl=job(("Complete", ""))))[:2] == ("Evaluating", "InferenceComplete")
        assert S.decide(observed(ppl=job(("Complete", "")), cmp=job()))[:2] == ("Evaluating", "ComputingMetrics")

    def test_succeeded_only_with_the_cmp_report(self) -> None:
        done = {"ppl": job(("Complete", "")), "cmp": job(("Complete", ""))}
        assert S.decide(observed(**done))[:2] == ("Evaluating", "WaitingForMetrics")
        assert S.decide(observed(report=REPORT, **done)) == ("Succeeded", "Succeeded", "bbox/AP = 0.5000")

    def test_a_finished_stage_counts_even_when_its_job_is_gone(self) -> None:
        o = observed(previous={"stages": {"resolve": "Complete", "ppl": "Complete"}})
        assert S.decide(o)[:2] == ("Evaluating", "InferenceComplete")

    def test_suspended(self) -> None:
        assert S.decide(observed(spec=spec(suspend=True), ppl=job(suspend=True)))[0] == "Suspended"

    def test_queued_waits_for_admission(self) -> None:
        assert S.decide(observed(spec=spec(queueName="q"), ppl=job(suspend=True)))[:2] == \
            ("Pending", "WaitingForAdmission")

    def test_index_past_retry_budget_names_the_shards(self) -> None:
        o = observed(ppl=job(("Failed", "FailedIndexes"), failedIndexes="1"))
        phase, reason, message = S.decide(o)
        assert (phase, reason) == ("Failed", "ShardRetriesExhausted")
        assert "ppl index 1 (shards 2-3) failed 4 times" in message and "retryToken" in message

    def test_permanent_exit_code_with_the_pods_error(self) -> None:
        o = observed(ppl=job(("Failed", "PodFailurePolicy")), errors={"ppl": "handler predict() failed"})
        assert S.decide(o)[1] == "PermanentError" and "handler predict() failed" in S.decide(o)[2]

    def test_deadlines_are_the_jobs_own(self) -> None:
        """An operator wall clock counted time queued in Kueue: a queued job was failed at 3,601 s."""
        assert S.decide(observed(ppl=job(("Failed", "DeadlineExceeded"))))[1] == "DeadlineExceeded"
        queued = observed(spec=spec(activeDeadlineSeconds=60, queueName="q"), ppl=job(suspend=True),
                          previous={"startTime": OLD})
        assert S.decide(queued)[:2] == ("Pending", "WaitingForAdmission")

    def test_oom_killed_counts_against_the_retry_budget(self) -> None:
        oom = pod(phase="Failed", containerStatuses=[{"name": "runner", "state": {}, "lastState": {
            "terminated": {"reason": "OOMKilled", "exitCode": 137}}}])
        assert S.decide(observed(ppl=job(), pods=[oom, pod(phase="Running")]))[0] == "Running"
        assert S.decide(observed(ppl=job(("Failed", "FailedIndexes")), pods=[oom]))[1] == "OOMKilled"

    def test_pending_deadline_only_while_nothing_progresses(self) -> None:
        """One unschedulable worker for 10 minutes failed a job whose other workers were running."""
        stuck = pod(name="b", phase="Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                                            "reason": "Unschedulable", "message": "no gpu"}])
        placed = pod(name="a", phase="Pending") | {"spec": {"nodeName": "gpu-1"}}  # bound, still starting
        o = observed(spec=spec(pendingDeadlineSeconds=60), ppl=job(), pods=[placed, stuck])
        assert S.decide(o)[0] == "Pending"
        o = observed(spec=spec(pendingDeadlineSeconds=60), ppl=job(), pods=[pod(name="a", phase="Running")
                                                                              | {"spec": {"nodeName": "gpu-1"}}, stuck])
        assert S.decide(o)[0] == "Running"
        assert S.decide(observed(spec=spec(pendingDeadlineSeconds=60), ppl=job(), pods=[stuck]))[1] == "Unschedulable"

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
    def test_progress_from_the_ppl_jobs_completed_indexes(self) -> None:
        ppl = job(completedIndexes="1", startTime="2026-01-01T11:59:00Z")
        progress, shards = S.progress_of(INPUTS, ppl, False, {}, NOW)
        assert shards == {"total": 4, "completed": 2, "failed": 0, "summary": "2/4"}
        assert progress["samplesDone"] == 20 and progress["percent"] == 50.0
        assert progress["samplesPerSecond"] == round(20 / 60, 3) and progress["eta"] == "1m00s"
        assert progress["lastProgressTime"] == S.fmt_time(NOW)
        later, _ = S.progress_of(INPUTS, ppl, False, {"progress": progress, "shards": shards},
                                 NOW + dt.timedelta(minutes=5))
        assert later["lastProgressTime"] == S.fmt_time(NOW), "it moves only when a group completes"
        done, shards = S.progress_of(INPUTS, ppl, True, {}, NOW)
        assert done["percent"] == 100.0 and shards["summary"] == "4/4"
        _, failed = S.progress_of(INPUTS, job(failedIndexes="0"), False, {}, NOW)
        assert failed["failed"] == 2
        assert S.progress_of(None, None, False, {}, NOW) == (None, {"completed": 0, "failed": 0, "summary": "0/?"})

    def test_stalled_shards_are_flagged_without_failing(self) -> None:
        previous = {"shards": {"completed": 0}, "progress": {"lastProgressTime": OLD}}
        st, _ = S.derive(observed(ppl=job(startTime=OLD), pods=[pod(phase="Running")], previous=previous,
                                  stall_seconds=600))
        cond = next(c for c in st["conditions"] if c["type"] == "ShardsProgressing")
        assert st["phase"] == "Running" and (cond["status"], cond["reason"]) == ("False", "NoShardCompleted")

    def test_results_are_the_pods_bounded_report_as_it_is(self) -> None:
        """status.results trimmed the pod's already bounded summary again, to 32 sorted keys (a second
        policy): now the report's own bound (protocol.MetricsSummary) is the only one."""
        report = {"evaluator": "coco", "headline": {"name": "bbox/AP", "value": 0.81234}, "truncated": 7,
                  "summary": {f"m{i:02d}": i / 10 for i in range(50, 0, -1)} | {"nan": float("nan"), "none": None}}
        r = S.results_of(report)
        assert r["headline"] == "0.812" and r["headlineMetric"] == "bbox/AP" and r["evaluator"] == "coco"
        assert list(r["summary"]) == [f"m{i:02d}" for i in range(50, 0, -1)] and r["truncated"] == 7, \
            "every key the pod reported, in its order; only what status cannot hold (non-numbers) is left out"

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
                                     now=later, report=REPORT))
        times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
        assert times["Ready"] == times["Running"] == times["Succeeded"] == S.fmt_time(later)
        assert times["Failed"] == S.fmt_time(NOW)

    def test_kstatus_abnormal_true_conditions(self) -> None:
        """Without Stalled, kstatus (Flux's wait) saw a failed job as in progress until its timeout."""
        def cond(st, t):
            return next(c["status"] for c in st["conditions"] if c["type"] == t)

        running, _ = S.derive(observed(ppl=job(), pods=[pod(phase="Running")]))
        assert (cond(running, "Reconciling"), cond(running, "Stalled")) == ("True", "False")
        done, _ = S.derive(observed(ppl=job(("Complete", "")), cmp=job(("Complete", "")), report=REPORT))
        assert (cond(done, "Reconciling"), cond(done, "Stalled"), cond(done, "Ready")) == ("False", "False", "True")
        failed, _ = S.derive(observed(ppl=job(("Failed", "BackoffLimitExceeded"))))
        assert failed["phase"] == "Failed"
        assert (cond(failed, "Reconciling"), cond(failed, "Stalled")) == ("False", "True")

    def test_terminal_status_fields(self) -> None:
        st, _ = S.derive(observed(ppl=job(("Complete", ""), startTime=OLD), cmp=job(("Complete", "")),
                                  report={**REPORT, "summary": {"a": 1}}, previous={"startTime": OLD}))
        assert st["phase"] == "Succeeded" and st["startTime"] == OLD
        assert st["completionTime"] == S.fmt_time(NOW)
        assert st["resultsUri"] == "/o/metrics.json" and st["results"]["summary"] == {"a": 1.0}
        assert (st["modelDigest"], st["datasetDigest"]) == ("v1", "v2") and st["inputs"] == INPUTS
        assert st["stages"] == {"resolve": "Complete", "ppl": "Complete", "cmp": "Complete"}
        assert st["shards"]["summary"] == "4/4"


def test_derived_status_matches_the_crd_status_schema() -> None:
    """A status field the CRD does not declare would be pruned by the API server."""
    import jsonschema

    from assay import spec as spec_mod

    schema = spec_mod._strict(spec_mod.job_schema()["properties"]["status"])
    done, _ = S.derive(observed(ppl=job(("Complete", "")), cmp=job(("Complete", "")), report=REPORT))
    failed, _ = S.derive(observed(ppl=job(("Failed", "FailedIndexes"), failedIndexes="0")))
    running, _ = S.derive(observed(ppl=job(ready=1, completedIndexes="0", startTime=OLD)))
    for st in (done, failed, running, S.failed_status({}, None, "InvalidSpec", "bad", 1, NOW)):
        jsonschema.Draft7Validator(schema).validate(st)
