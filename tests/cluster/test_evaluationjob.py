"""EvaluationJobs on the real control plane, run by the operator that `helm install` deployed.

Each test names what the kmock emulator could not show: real CEL and OpenAPI validation, printer
columns, the Job controller's podFailurePolicy and pod replacement, the garbage collector, RBAC from
the chart and Pod Security admission of the job pods.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.cluster.conftest import NODE, Api, evaljob, wait_for

pytestmark = pytest.mark.cluster


def apply(kubectl, ns: str, manifest: dict, check: bool = True):
    return kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(manifest), check=check)


def result_ids(output_uri: str) -> list[str]:
    """Every sample id in the job's results files (predictions are keyed by sample id; the match tables
    beside them, ``shard-N.matches.parquet``, are no results files)."""
    import boto3
    import pyarrow.parquet as pq

    bucket, _, prefix = output_uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/results/").get("Contents", [])
            if o["Key"].endswith(".parquet") and not o["Key"].endswith(".matches.parquet")]
    ids: list[str] = []
    for key in keys:
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()), columns=["sample_id"])
        ids += table.column("sample_id").to_pylist()
    return ids


def assay_run_metrics(manifest: dict, folder) -> dict:
    """The same job run by `assay run` on this machine (local processes), its metrics.json."""
    local = json.loads(json.dumps(manifest))
    local["spec"]["output"] = {"uri": str(folder / "out")}
    local["spec"]["storage"].pop("secretRef")
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(local))
    # the variables the pods get from spec.runtime.env (e.g. the test handler's ASSAY_TEST_JITTER)
    env = os.environ | {e["name"]: e["value"] for e in manifest["spec"].get("runtime", {}).get("env", []) if "value" in e}
    proc = subprocess.run([sys.executable, "-m", "assay.cli.main", "run", str(path), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((folder / "out" / "metrics.json").read_text())


def read_s3_json(uri: str) -> dict:
    from assay import storage

    return json.loads(storage.read_text(uri))


def no_forbidden(operator) -> None:
    """The chart's RBAC sufficed: no request of the operator's service account was denied.

    (A 403 for an Event in a namespace being deleted is NamespaceLifecycle admission, not RBAC.)
    """
    denied = [line for line in operator.log().splitlines() if re.search(r'User \\?"system:serviceaccount:', line)]
    assert not denied, denied[:3]


@pytest.fixture(autouse=True)
def _rbac_sufficed(operator):
    """After each test of this module, whatever order they run in: none of the operator's calls was denied."""
    yield
    no_forbidden(operator)


# ---------------------------------------------------------------------------------------- success


def test_apply_wait_ready_metrics_equal_assay_run(operator, kubectl, api: Api, ns, inputs, s3_env, tmp_path):
    """kubectl apply, kubectl wait --for=condition=Ready; status metrics equal `assay run`'s."""
    manifest = evaljob("pennfudan", inputs, s3_env)
    apply(kubectl, ns, manifest)
    out = kubectl("wait", "-n", ns, "evaljob/pennfudan", "--for=condition=Ready", "--timeout=300s", check=False)
    st = api.status("pennfudan")
    assert out.returncode == 0, (out.stderr, st, operator.log()[-3000:])
    assert st["phase"] == "Succeeded" and st["shards"]["summary"] == f"{inputs['shards']}/{inputs['shards']}"

    local = assay_run_metrics(manifest, tmp_path)
    cluster = read_s3_json(st["resultsUri"])
    assert cluster["summary"] == local["summary"]
    assert st["results"]["summary"] == {k: round(float(v), 6) for k, v in local["summary"].items()}
    assert 0.0 < local["summary"]["bbox/AP"] < 1.0  # the jittered oracle: real, imperfect numbers
    assert sorted(result_ids(manifest["spec"]["output"]["uri"])) == sorted(set(result_ids(
        manifest["spec"]["output"]["uri"])))

    wide = kubectl("get", "evaljob", "-n", ns, "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "SHARDS", "PROGRESS", "AP", "AGE"]
    assert row.split()[:5] == ["pennfudan", "Succeeded", st["shards"]["summary"], "100.0%",
                               st["results"]["headline"]]
    print("\n$ kubectl get evaljob -o wide\n" + wide)
    full = kubectl("get", "evaljob", "pennfudan", "-n", ns, "-o", "yaml").stdout
    print("\n$ kubectl get evaljob pennfudan -o yaml\n" + full)

    # Job pods were admitted under the namespace's enforced Pod Security "restricted" level.
    pods = api.pods("assay.dev/job=pennfudan")
    assert {p["metadata"]["labels"]["assay.dev/role"] for p in pods} == {"resolve", "ppl", "cmp"}
    assert st["inputs"]["model"]["uri"] == inputs["model"] and st["stages"]["cmp"] == "Complete"
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)
    no_forbidden(operator)


# ---------------------------------------------------------------------------------- schema


def test_kubectl_explain_shows_the_descriptions(operator, kubectl):
    out = kubectl("explain", "evaluationjob.spec").stdout
    assert "What to evaluate and how to run it" in out
    assert "ppl pods running at once" in kubectl("explain", "evaluationjob.spec.ppl.workers").stdout
    # the core/v1 types are typed: explain sees into them
    assert "operator" in kubectl("explain", "evaluationjob.spec.ppl.tolerations").stdout
    assert "nodeAffinity" in kubectl("explain", "evaluationjob.spec.ppl.affinity").stdout


CEL_CASES = [
    # (rule, refused change, accepted change next to it) on a started (Suspended) job
    ("spec.model is immutable", {"model": {"uri": "s3://assay/store/models/other"}}, {"ppl": {"workers": 3}}),
    ("spec.dataset is immutable", {"dataset": {"uri": "s3://assay/store/datasets/other"}}, {"suspend": False}),
    ("spec.output is immutable", {"output": {"uri": "s3://assay/jobs/elsewhere"}}, {"activeDeadlineSeconds": 600}),
    # a new retryToken no longer lets settings change under a running job (issue 18, finding 6)
    ("shape the predictions", {"ppl": {"batchSize": 2}, "retryToken": "with-a-new-token"}, {"ppl": {"workers": 2}}),
    ("the run settings", {"runtime": {"env": []}, "retryToken": "new"}, {"ttlSecondsAfterFinished": 60}),
    ("spec.retryToken reruns a Failed job", {"retryToken": "again"}, {"pendingDeadlineSeconds": 600}),
    ("spec.queueName may change only", {"queueName": "elsewhere"}, {"suspend": True}),
]


@pytest.mark.parametrize("message,refused,accepted", CEL_CASES, ids=["model", "dataset", "output", "prediction",
                                                                     "settings", "token", "queue"])
def test_cel_rules_refuse_and_accept(operator, kubectl, api: Api, ns, inputs, s3_env, message, refused, accepted):
    apply(kubectl, ns, evaljob("cel", inputs, s3_env, suspend=True))
    api.wait_phase("cel", ("Suspended",), timeout=60)  # started: the rules on a running job apply
    bad = kubectl("patch", "evaljob", "cel", "-n", ns, "--type=merge", "-p", json.dumps({"spec": refused}),
                  check=False)
    assert bad.returncode != 0 and message in bad.stderr, bad.stderr
    ok = kubectl("patch", "evaljob", "cel", "-n", ns, "--type=merge", "-p", json.dumps({"spec": accepted}),
                 check=False)
    assert ok.returncode == 0, ok.stderr


def test_cel_freezes_workers_of_a_queued_job_and_thaws_settings_on_failure(operator, kubectl, api: Api, ns,
                                                                           inputs, s3_env):
    """Changing workers of a Kueue-admitted job made Kueue evict its running pods; settings that change
    with a new retryToken while the job ran were half-applied (ppl old, cmp new)."""
    apply(kubectl, ns, evaljob("frozen", inputs, s3_env, queueName="none", suspend=True))
    api.wait_phase("frozen", ("Suspended",), timeout=60)
    bad = kubectl("patch", "evaljob", "frozen", "-n", ns, "--type=merge", "-p", '{"spec":{"ppl":{"workers":5}}}',
                  check=False)
    assert bad.returncode != 0 and "spec.ppl.workers of a job with spec.queueName" in bad.stderr, bad.stderr
    # a failed job may take new settings and queue for its rerun; not prediction-shaping ones
    apply(kubectl, ns, evaljob("broken", inputs, s3_env, model={"uri": "s3://assay/store/models/none"}))
    assert api.wait_phase("broken", ("Failed",), timeout=120)["reason"] == "InputsUnavailable"
    ok = kubectl("patch", "evaljob", "broken", "-n", ns, "--type=merge", "-p", json.dumps(
        {"spec": {"runtime": {"env": []}, "queueName": "q", "ppl": {"workers": 3}, "retryToken": "2"}}), check=False)
    assert ok.returncode == 0, ok.stderr
    bad = kubectl("patch", "evaljob", "broken", "-n", ns, "--type=merge", "-p", '{"spec":{"ppl":{"batchSize":1}}}',
                  check=False)
    assert bad.returncode != 0 and "create a new EvaluationJob" in bad.stderr, bad.stderr


@pytest.mark.parametrize("change,message", [
    ({"ppl": {"workers": 0}}, "should be greater than or equal to 1"),
    ({"ppl": {"device": "tpu"}}, 'Unsupported value: "tpu"'),
    ({"storage": {"endpoint": "minio:9000"}}, "should match"),
    ({"ppl": {"wokers": 2}}, 'unknown field "spec.ppl.wokers"'),
    ({"ppl": {"tolerations": [{"key": "k", "tolerationSeconds": "soon"}]}}, "tolerationSeconds"),
    # a typo was found only after the resolve stage, as InvalidSpec from the refused ppl Job
    ({"ppl": {"tolerations": [{"key": "k", "operator": "Exits"}]}}, 'Unsupported value: "Exits"'),
    ({"ppl": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "in", "values": ["a"]}]}]}}}}},
     'Unsupported value: "in"'),
], ids=["minimum", "enum", "pattern", "unknown-field", "typed-core-v1", "toleration-operator",
        "selector-operator"])
def test_server_side_validation_refuses(operator, kubectl, ns, inputs, s3_env, change, message):
    out = apply(kubectl, ns, evaljob("invalid", inputs, s3_env, **change), check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr


# ----------------------------------------------------------------------------------- failures


def test_ppl_exit_3_fails_the_job_through_pod_failure_policy_then_retry_token_reruns(operator, kubectl, api: Api, ns, inputs, s3_env):
    env = [{"name": "ASSAY_TEST_FAIL_ON", "value": "FudanPed00006"}]
    apply(kubectl, ns, evaljob("exit3", inputs, s3_env, runtime={"env": env}))
    # the README's wait returns on failure too (condition=Ready would wait its whole timeout)
    out = kubectl("wait", "-n", ns, "evaljob/exit3", "--for=jsonpath={.status.completionTime}", "--timeout=180s",
                  check=False)
    assert out.returncode == 0, out.stderr
    st = api.status("exit3")
    assert st["phase"] == "Failed", st
    # FailureTarget comes first; Failed once the Job controller has seen every pod terminate.
    failed = wait_for(lambda: {c["type"]: c for c in api.jobs()["exit3-ppl"]["status"].get("conditions") or []
                               }.get("Failed"), "the ppl Job's Failed condition", timeout=60)
    assert failed["status"] == "True" and failed["reason"] == "PodFailurePolicy", failed
    pods = [p for p in api.pods("assay.dev/job=exit3,assay.dev/role=ppl")
            if p["status"]["containerStatuses"][0]["state"].get("terminated", {}).get("exitCode") == 3]
    assert len(pods) == 1  # not retried: the shard's retry budget (2) was not spent
    assert "exit3-cmp" not in api.jobs()

    # A new spec.retryToken (with the planted failure gone) reruns it: the failed Job is replaced.
    fixed = {"spec": {"retryToken": "second", "runtime": {"env": [{"name": "ASSAY_TEST_JITTER", "value": "1"}]}}}
    kubectl("patch", "evaljob", "exit3", "-n", ns, "--type=merge", "-p", json.dumps(fixed))
    st = api.wait_phase("exit3", ("Succeeded",), timeout=240)
    assert st["retryToken"] == "second"
    no_forbidden(operator)


def test_shard_past_its_retry_budget_fails_naming_it_then_retry_token_reruns(operator, kubectl, api: Api, ns,
                                                                            inputs, s3_env):
    """Retryable failures (exit 1: the store unreachable) spend backoffLimitPerIndex, then the Job fails."""
    dies = [{"name": "ASSAY_TEST_EXIT_ON", "value": "PennPed00016"}]  # in shard 1: the worker exits 1
    apply(kubectl, ns, evaljob("budget", inputs, s3_env, runtime={"env": dies},
                               ppl={"maxRetriesPerShard": 1, "workers": 2}))
    st = api.wait_phase("budget", ("Failed", "Succeeded"), timeout=180)
    assert st["phase"] == "Failed" and st["reason"] == "ShardRetriesExhausted", st
    assert "ppl index 1 (shard 1) failed 2 times" in st["message"] and "maxRetriesPerShard=1" in st["message"]
    exits = [p["status"]["containerStatuses"][0]["state"].get("terminated", {}).get("exitCode")
             for p in api.pods("assay.dev/job=budget,assay.dev/role=ppl")]
    assert exits.count(1) >= 2, exits  # one index tried twice (the other may have been stopped)

    kubectl("patch", "evaljob", "budget", "-n", ns, "--type=merge", "-p",
            json.dumps({"spec": {"retryToken": "fixed", "runtime": {"env": []}}}))
    assert api.wait_phase("budget", ("Succeeded",), timeout=240)["retryToken"] == "fixed"


def test_unknown_image_fails_fast_with_image_pull_back_off(operator, kubectl, api: Api, ns, inputs, s3_env):
    apply(kubectl, ns, evaljob("noimage", inputs, s3_env, runtime={"image": "ghcr.io/assay-dev/missing:1"}))
    st = api.wait_phase("noimage", ("Failed",), timeout=120)
    assert st["reason"] in ("ImagePullBackOff", "ErrImagePull"), st
    wait_for(lambda: "noimage-ppl" not in api.jobs(), "the stopped ppl Job to go", timeout=60)


def test_gpu_request_schedules_on_the_gpu_node_and_a_second_worker_waits(operator, kubectl, api: Api, ns,
                                                                          inputs, s3_env):
    """The real scheduler counts nvidia.com/gpu: one GPU, two workers asking for one each. One
    unschedulable worker used to fail a job whose other worker was running; now the groups queue for
    the one GPU and the job finishes."""
    gpu = {"limits": {"nvidia.com/gpu": 1}}
    apply(kubectl, ns, evaljob("gpus", inputs, s3_env, pendingDeadlineSeconds=5,
                               ppl={"resources": gpu, "workers": 2, "shardsPerIndex": 1}))
    waiting = wait_for(lambda: [p for p in api.pods("assay.dev/job=gpus,assay.dev/role=ppl") if any(
        c.get("reason") == "Unschedulable" for c in p["status"].get("conditions") or [])], "an unschedulable worker",
        timeout=120)
    assert "Insufficient nvidia.com/gpu" in next(c["message"] for c in waiting[0]["status"]["conditions"]
                                                 if c.get("reason") == "Unschedulable")
    st = api.wait_phase("gpus", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    nodes = {p["spec"].get("nodeName") for p in api.pods("assay.dev/job=gpus,assay.dev/role=ppl")}
    assert nodes == {NODE}


def test_oom_killed_worker_counts_against_the_retry_budget_and_fails_the_job_naming_it(operator, kubectl,
                                                                                      api: Api, ns, inputs, s3_env):
    """A ppl worker past its memory limit is killed by the kernel (the container's memory cgroup): each
    OOMKilled pod spends one retry of its group; with none left the job fails naming the pods."""
    hog = [{"name": "ASSAY_TEST_HOG_ON", "value": "PennPed00016"}]  # in shard 1: the worker allocates until killed
    apply(kubectl, ns, evaljob("oom", inputs, s3_env, runtime={"env": hog}, ppl={
        "workers": 2, "maxRetriesPerShard": 1, "resources": {"limits": {"memory": "1Gi"}}}))
    st = api.wait_phase("oom", ("Failed", "Succeeded"), timeout=300)
    assert st["phase"] == "Failed" and st["reason"] == "OOMKilled", st
    killed = [p for p in api.pods("assay.dev/job=oom,assay.dev/role=ppl")
              if p["status"]["containerStatuses"][0]["state"].get("terminated", {}).get("reason") == "OOMKilled"]
    assert {p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in killed} == {"1"}
    assert len(killed) == 2, [p["metadata"]["name"] for p in killed]  # tried, retried once, then no budget left
    assert all(p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137 for p in killed)
    assert all(p["metadata"]["name"] in st["message"] for p in killed), st


# ------------------------------------------------------------------------------ disruptions


def slow(delay: float = 1.5, **spec):
    """Workers that take ``delay`` seconds per batch, so a test can act mid-run."""
    env = [{"name": "ASSAY_TEST_JITTER", "value": "1"}, {"name": "ASSAY_TEST_PREDICT_DELAY", "value": str(delay)},
           {"name": "ASSAY_PROGRESS_INTERVAL", "value": "0.2"}]
    return {"runtime": {"env": env}} | spec


def running_ppl_pods(api: Api, name: str) -> list[dict]:
    return [p for p in api.pods(f"assay.dev/job={name},assay.dev/role=ppl")
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def test_deleted_ppl_pod_is_replaced_and_every_sample_is_scored_once(operator, kubectl, api: Api, ns, inputs,
                                                                       s3_env):
    manifest = evaljob("replaced", inputs, s3_env, **slow(delay=4))
    apply(kubectl, ns, manifest)
    victim = wait_for(lambda: running_ppl_pods(api, "replaced"), "a running ppl pod", timeout=120)[0]
    # Deleted while its Python starts, a container's PID 1 has no SIGTERM handler yet, and the kernel drops
    # the kubelet's SIGTERM: the pod then finishes its shard (Succeeded) within its grace period, and
    # nothing is replaced. Delete it once its step runs (4 s batches: mid-shard, not done).
    wait_for(lambda: "loaded on" in kubectl("logs", "-n", ns, victim["metadata"]["name"], check=False).stdout,
             "the victim's model to be loaded", timeout=120)
    index = victim["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]
    kubectl("delete", "pod", "-n", ns, victim["metadata"]["name"], "--wait=true")
    st = api.wait_phase("replaced", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    same_index = api.pods(f"assay.dev/job=replaced,batch.kubernetes.io/job-completion-index={index},"
                          "assay.dev/role=ppl")
    assert [p["status"]["phase"] for p in same_index] == ["Succeeded"]  # the replacement
    ids = result_ids(manifest["spec"]["output"]["uri"])
    assert len(ids) == len(set(ids)) == int(inputs["samples"])


def test_operator_restarted_mid_run(operator, kubectl, api: Api, ns, inputs, s3_env):
    apply(kubectl, ns, evaljob("restarted", inputs, s3_env, **slow()))
    wait_for(lambda: running_ppl_pods(api, "restarted"), "a running ppl pod", timeout=120)
    operator.restart()
    st = api.wait_phase("restarted", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    assert sorted(api.jobs()) == ["restarted-cmp", "restarted-ppl", "restarted-resolve"]
    no_forbidden(operator)


def test_deleting_the_evaluationjob_deletes_its_jobs_and_pods(operator, kubectl, api: Api, ns, inputs, s3_env):
    apply(kubectl, ns, evaljob("owned", inputs, s3_env, **slow()))
    wait_for(lambda: running_ppl_pods(api, "owned"), "a running ppl pod", timeout=120)
    ppl = api.jobs()["owned-ppl"]
    assert ppl["metadata"]["ownerReferences"][0]["kind"] == "EvaluationJob"
    kubectl("delete", "evaljob", "owned", "-n", ns)  # background propagation: the garbage collector's work
    wait_for(lambda: not api.jobs() and not api.pods("assay.dev/job=owned"), "the Jobs and pods to go",
             timeout=120)


def test_suspend_stops_the_pods_and_resume_finishes(operator, kubectl, api: Api, ns, inputs, s3_env):
    """The real Job controller deletes a suspended Job's pods and recreates them on resume."""
    manifest = evaljob("paused", inputs, s3_env, **slow())
    apply(kubectl, ns, manifest)
    wait_for(lambda: running_ppl_pods(api, "paused"), "a running ppl pod", timeout=120)
    kubectl("patch", "evaljob", "paused", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    st = api.wait_phase("paused", ("Suspended",), timeout=60)
    assert st["reason"] == "SuspendedBySpec"
    assert api.jobs()["paused-ppl"]["spec"]["suspend"] is True
    wait_for(lambda: not [p for p in api.pods("assay.dev/job=paused,assay.dev/role=ppl")
                          if p["status"].get("phase") not in ("Succeeded", "Failed")],
             "the suspended Job's pods to stop", timeout=60)
    kubectl("patch", "evaljob", "paused", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    st = api.wait_phase("paused", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    ids = result_ids(manifest["spec"]["output"]["uri"])
    assert len(ids) == len(set(ids)) == int(inputs["samples"])


def test_ttl_after_finished_deletes_the_jobs_and_keeps_the_evaluationjob(operator, kubectl, api: Api, ns, inputs,
                                                                          s3_env):
    apply(kubectl, ns, evaljob("expiring", inputs, s3_env, ttlSecondsAfterFinished=2))
    assert api.wait_phase("expiring", ("Succeeded", "Failed"))["phase"] == "Succeeded"
    wait_for(lambda: not api.jobs() and not api.pods("assay.dev/job=expiring"), "the Jobs and pods to go",
             timeout=60)
    assert api.status("expiring")["phase"] == "Succeeded"


# ---------------------------------------------------------------------------------------- CLI


def test_assay_job_cli(operator, control_plane, api: Api, ns, inputs, s3_env, tmp_path):
    path = tmp_path / "job.yaml"
    manifest = evaljob("cli", inputs, s3_env)
    manifest["metadata"]["namespace"] = ns
    path.write_text(yaml.safe_dump(manifest))
    env = os.environ | {"KUBECONFIG": str(control_plane.kubeconfig)}

    def assay(*args: str, check: bool = True):
        proc = subprocess.run([sys.executable, "-m", "assay.cli.main", "job", *args], capture_output=True,
                              text=True, env=env, timeout=300, check=False)
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    submitted = assay("submit", str(path))
    assert f"submitted evaluationjob {ns}/cli" in submitted.stdout and "succeeded: bbox/AP" in submitted.stdout
    assert "Succeeded" in assay("watch", "cli", "-n", ns).stdout
    res = json.loads(assay("results", "cli", "-n", ns, "--format", "json").stdout)
    assert res["results"]["summary"] == api.status("cli")["results"]["summary"]
    assert "cli" in assay("list", "-n", ns).stdout
    logs = assay("logs", "cli", "-n", ns, "--shard", "1").stdout  # through the API server to the kubelet
    assert "==> cli-ppl-1-" in logs and len(logs.splitlines()) > 1, logs
    assert "==> cli-cmp-" in assay("logs", "cli", "-n", ns, "--cmp").stdout
    assert "cancelled evaluationjob cli" in assay("cancel", "cli", "-n", ns).stdout
    wait_for(lambda: api.get("cli") is None, "the EvaluationJob to be deleted", timeout=60)
    missing = assay("results", "cli", "-n", ns, check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_operator_log_has_no_rbac_denials(operator):
    """The operator logged in, and no call it made so far under the chart's RBAC was denied; it needs no
    place in the order: every test here checks its own calls after it (_rbac_sufficed)."""
    assert "Activity 'login_via_client' succeeded" in operator.log()
    no_forbidden(operator)
