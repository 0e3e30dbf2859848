"""The real operator (kopf) against kmock's KubernetesEmulator; the tests play the Job controller.

Each test pins one behaviour from issue 3; the class of bug it guards against is in its docstring.
"""

from __future__ import annotations

import json

from conftest import NS, wait_for

PPL, CMP = "eval-ppl", "eval-cmp"


def phase(cluster, name="eval"):
    return cluster.status(name).get("phase")


def condition(st, ctype):
    return next(c for c in st["conditions"] if c["type"] == ctype)


def test_create_makes_one_indexed_ppl_job_with_the_spec(cluster, operator):
    """Creating an EvaluationJob creates exactly the ppl Indexed Job, owned by it, and no cmp Job yet."""
    cluster.write_inputs(shards=4)
    manifest = cluster.manifest()
    with operator():
        cluster.apply(manifest)
        jobs = wait_for(cluster.jobs, what="the ppl Job")
        st = wait_for(lambda: cluster.status().get("shards", {}).get("total") and cluster.status(),
                      what="status with shard totals")
    assert list(jobs) == [PPL]
    spec = jobs[PPL]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimitPerIndex"] == 2 and spec["podReplacementPolicy"] == "Failed"
    assert spec["suspend"] is False
    owner = jobs[PPL]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "EvaluationJob", "eval", manifest["metadata"]["uid"], True)
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["command"] == ["python", "-m", "assay.runner", "ppl"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["ASSAY_JOB_NAME"] == "eval" and env["ASSAY_WORKERS"] == "2"
    assert st["phase"] == "Pending" and st["observedGeneration"] == 1
    assert st["shards"] == {"total": 4, "completed": 0, "failed": 0, "summary": "0/4"}
    assert (st["modelDigest"], st["datasetDigest"]) == ("sha256:model", "sha256:data")
    assert [e["reason"] for e in cluster.events()] == ["PodsStarting"]


def test_full_run_with_a_restart_at_every_stage(cluster, operator):
    """ppl -> cmp -> metrics, killing the operator between stages: no Job is duplicated or recreated."""
    cluster.write_inputs(shards=4)
    with operator():
        cluster.apply(cluster.manifest())
        wait_for(lambda: PPL in cluster.jobs(), what="the ppl Job")
    # Marks the Job object: a delete-and-recreate by a restarted operator would lose the mark.
    cluster.batch.patch_namespaced_job(PPL, NS, {"metadata": {"annotations": {"test/mark": "1"}}},
                                       _content_type="application/merge-patch+json")

    with operator():  # restarted: the ppl pods start and report progress
        cluster.add_pod("eval-ppl-0-abcde", PPL, "ppl", phase="Running")
        cluster.job_status(PPL, active=2, ready=2)
        cluster.write_progress("eval", 0, done=15, total=20, shards_done=1, shards_total=2)
        cluster.write_progress("eval", 1, done=5, total=20, shards_done=0, shards_total=2)
        st = wait_for(lambda: cluster.status().get("progress", {}).get("samplesDone") == 20 and cluster.status(),
                      what="progress in status")
        assert st["phase"] == "Running" and condition(st, "Running")["status"] == "True"
        assert st["progress"] == {"samplesDone": 20, "samplesTotal": 40, "percent": 50.0, "percentText": "50.0%",
                                  "samplesPerSecond": 10.0, "eta": "2s"}
        assert st["shards"]["summary"] == "1/4"

    cluster.complete(PPL, completions=2)
    with operator():  # restarted after the ppl Job completed: the cmp Job appears once
        wait_for(lambda: CMP in cluster.jobs(), what="the cmp Job")
        wait_for(lambda: phase(cluster) == "Evaluating", what="Evaluating")

    cluster.complete(CMP)
    cluster.write_metrics()
    with operator():  # restarted after the cmp Job completed: the metrics land in status
        st = wait_for(lambda: phase(cluster) == "Succeeded" and cluster.status(), what="Succeeded")
        jobs = cluster.jobs()
    assert sorted(jobs) == [CMP, PPL]
    assert jobs[PPL]["metadata"]["annotations"]["test/mark"] == "1"
    assert jobs[CMP]["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "cmp"
    assert condition(st, "Ready")["status"] == "True" and condition(st, "Succeeded")["status"] == "True"
    assert condition(st, "Failed")["status"] == "False"
    assert st["results"]["headline"] == "0.812" and st["results"]["headlineMetric"] == "bbox/AP"
    assert len(st["results"]["summary"]) == 32 and st["results"]["truncated"] == 9
    assert st["resultsUri"].endswith("/eval/metrics.json")
    assert st["shards"]["summary"] == "4/4" and st["progress"]["percentText"] == "100.0%"
    assert "eta" not in st["progress"]  # nested keys of earlier writes are removed, not merged
    assert st["startTime"] <= st["completionTime"]
    reasons = [e["reason"] for e in cluster.events()]
    assert reasons[0] == "PodsStarting" and reasons[-1] == "Succeeded"
    assert "ShardsRunning" in reasons and "ComputingMetrics" in reasons
    print("\nfinished status:", json.dumps(st, indent=1))


def test_shard_past_its_retry_budget_fails_naming_it_then_retry_token_reruns(cluster, operator):
    """A failed index fails the job naming its shards; changing retryToken reruns with a fresh ppl Job."""
    cluster.write_inputs(shards=4)
    with operator():
        cluster.apply(cluster.manifest())
        wait_for(lambda: PPL in cluster.jobs(), what="the ppl Job")
        cluster.job_status(PPL, failed=3, failedIndexes="1", completedIndexes="0", conditions=[
            {"type": "FailureTarget", "status": "True", "reason": "MaxFailedIndexesExceeded",
             "message": "Job has exceeded maxFailedIndexes"},
            {"type": "Failed", "status": "True", "reason": "MaxFailedIndexesExceeded",
             "message": "Job has exceeded maxFailedIndexes"}])
        st = wait_for(lambda: phase(cluster) == "Failed" and cluster.status(), what="Failed")
        assert st["reason"] == "ShardRetriesExhausted"
        assert "ppl index 1 (shards 1, 3) failed 3 times" in st["message"]
        assert condition(st, "Failed")["status"] == "True" and condition(st, "Ready")["status"] == "False"
        assert st["shards"]["failed"] == 2
        failed = st
        assert PPL in cluster.jobs()  # kept for `kubectl describe` and logs

        cluster.patch_spec("eval", {"retryToken": "try-2"})
        wait_for(lambda: cluster.jobs().get(PPL, {}).get("metadata", {}).get("annotations", {})
                 .get("assay.dev/retry-token") == "try-2", what="a ppl Job of the new attempt")
        st = wait_for(lambda: phase(cluster) == "Pending" and cluster.status(), what="Pending again")
    print("\nfailed status:", json.dumps(failed, indent=1))  # outside the runner: it captures stdout
    assert st["retryToken"] == "try-2" and "completionTime" not in st
    assert "status" not in cluster.jobs()[PPL] or not cluster.jobs()[PPL]["status"].get("failedIndexes")


def test_suspend_and_resume_propagate_to_the_jobs(cluster, operator):
    """spec.suspend suspends the unfinished Jobs and resumes them; the phase follows."""
    cluster.write_inputs()
    with operator():
        cluster.apply(cluster.manifest())
        wait_for(lambda: PPL in cluster.jobs(), what="the ppl Job")
        cluster.patch_spec("eval", {"suspend": True})
        wait_for(lambda: cluster.jobs()[PPL]["spec"]["suspend"] is True, what="suspended Job")
        st = wait_for(lambda: phase(cluster) == "Suspended" and cluster.status(), what="Suspended")
        assert condition(st, "Suspended")["status"] == "True"
        cluster.patch_spec("eval", {"suspend": False})
        wait_for(lambda: cluster.jobs()[PPL]["spec"]["suspend"] is False, what="resumed Job")
        st = wait_for(lambda: phase(cluster) == "Pending" and cluster.status(), what="Pending")
        assert condition(st, "Suspended")["status"] == "False"
        assert st["observedGeneration"] == 3


def test_queued_job_waits_for_kueue(cluster, operator):
    """With queueName, Jobs carry the Kueue label, start suspended, and the operator never unsuspends them."""
    cluster.write_inputs()
    with operator():
        cluster.apply(cluster.manifest(queueName="gpu-queue"))
        st = wait_for(lambda: phase(cluster) == "Pending" and cluster.status().get("reason") == "WaitingForAdmission"
                      and cluster.status(), what="WaitingForAdmission")
        job = cluster.jobs()[PPL]
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        cluster.batch.patch_namespaced_job(PPL, NS, {"spec": {"suspend": False}},  # Kueue admits it
                                           _content_type="application/merge-patch+json")
        cluster.add_pod("eval-ppl-0-abcde", PPL, "ppl", phase="Running")
        wait_for(lambda: phase(cluster) == "Running", what="Running after admission")
        assert cluster.jobs()[PPL]["spec"]["suspend"] is False
    assert "message" in st


def test_delete_removes_the_evaluation_job_and_children_are_owned(cluster, operator):
    """Deleting the EvaluationJob is not blocked by the operator; its Jobs are garbage-collected by owner."""
    cluster.write_inputs()
    manifest = cluster.manifest()
    with operator():
        cluster.apply(manifest)
        wait_for(lambda: PPL in cluster.jobs(), what="the ppl Job")
        wait_for(lambda: cluster.evaljob()["metadata"].get("finalizers"), what="kopf's finalizer")
        cluster.delete()
        wait_for(lambda: cluster.evaljob() is None, what="the EvaluationJob gone")
    # kmock runs no garbage collector; the API server deletes children through this reference.
    refs = cluster.jobs()[PPL]["metadata"]["ownerReferences"]
    assert [(r["uid"], r["blockOwnerDeletion"]) for r in refs] == [(manifest["metadata"]["uid"], True)]


def test_image_pull_failure_fails_fast_with_its_reason(cluster, operator):
    """A pod stuck in ImagePullBackOff fails the job with that reason (not Running forever), stops the Job."""
    cluster.write_inputs()
    with operator():
        cluster.apply(cluster.manifest())
        wait_for(lambda: PPL in cluster.jobs(), what="the ppl Job")
        cluster.add_pod("eval-ppl-0-abcde", PPL, "ppl", phase="Pending", containerStatuses=[{
            "name": "runner", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"waiting": {"reason": "ImagePullBackOff",
                                  "message": 'Back-off pulling image "registry.example/assay-runner:test"'}}}])
        st = wait_for(lambda: phase(cluster) == "Failed" and cluster.status(), what="Failed")
        wait_for(lambda: PPL not in cluster.jobs(), what="the ppl Job stopped")
    assert st["reason"] == "ImagePullBackOff" and condition(st, "Failed")["reason"] == "ImagePullBackOff"
    assert "Back-off pulling image" in st["message"]
    warnings = [e for e in cluster.events() if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["ImagePullBackOff"]
