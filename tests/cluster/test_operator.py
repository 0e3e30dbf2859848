"""The operator's review findings (issue 11), each on the real control plane with the chart's operator.

Each test's docstring names what went wrong before.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kubernetes import client

from tests.cluster.conftest import OPERATOR_NS, RUNNER_IMAGE, Api, evaljob, wait_for
from tests.cluster.test_evaluationjob import apply, result_ids, running_ppl_pods, slow

pytestmark = pytest.mark.cluster


def test_the_operator_never_loads_an_s3_client_nor_reaches_the_store(operator, kubectl, api: Api, ns, inputs,
                                                                     s3_env):
    """It read every tenant's store itself, with the tenant's Secret, every resync. Its image now has no S3
    client at all: a job runs to the end while the running operator's Python cannot import one."""
    apply(kubectl, ns, evaljob("guarded", inputs, s3_env))
    st = api.wait_phase("guarded", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    assert st["results"]["headlineMetric"] == "bbox/AP" and st["inputs"]["shards"] == int(inputs["shards"])
    pod = operator.pods()[0]["metadata"]["name"]
    probe = ("import importlib.util as u, assay_operator; "
             "print(sorted(m for m in ('boto3', 'botocore', 's3transfer', 'aiobotocore') if u.find_spec(m)))")
    out = kubectl("exec", "-n", OPERATOR_NS, pod, "-c", "operator", "--", "python", "-c", probe)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_foreign_job_with_the_childs_name_is_not_adopted(operator, kubectl, api: Api, ns, inputs, s3_env):
    """A leftover <name>-ppl Job of another owner was adopted: inference skipped, cmp created at once."""
    foreign = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "clash-resolve"},
               "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                   {"name": "c", "image": "registry.example/other:1", "securityContext": {
                       "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                       "seccompProfile": {"type": "RuntimeDefault"}}}]}}}}
    apply(kubectl, ns, foreign)
    uid = api.jobs()["clash-resolve"]["metadata"]["uid"]
    apply(kubectl, ns, evaljob("clash", inputs, s3_env))
    st = wait_for(lambda: api.status("clash") if api.status("clash").get("reason") == "ChildNameConflict" else None,
                  "ChildNameConflict", timeout=60)
    assert st["phase"] == "Pending" and "clash-resolve" in st["message"], st
    jobs = api.jobs()
    assert set(jobs) == {"clash-resolve"} and jobs["clash-resolve"]["metadata"]["uid"] == uid
    assert not jobs["clash-resolve"]["metadata"].get("ownerReferences")
    # re-checked, not frozen: once the foreign Job is gone the job runs (it was Failed for good)
    kubectl("delete", "job", "clash-resolve", "-n", ns, "--wait=true")
    assert api.wait_phase("clash", ("Succeeded", "Failed"), timeout=300)["phase"] == "Succeeded"


def test_a_model_rebuilt_mid_run_changes_nothing_the_job_evaluates(operator, kubectl, api: Api, ns, inputs,
                                                                    s3_env, tmp_path):
    """Each pod resolved LATEST when it started: workers of one job could run different model versions."""
    import shutil

    from assay import packages
    from tests.conftest import FIXTURES

    store = "s3://assay/rebuilt"
    pkg = tmp_path / "pkg"
    shutil.copytree(FIXTURES / "oracle", pkg)
    v1 = packages.build(packages.load_config(pkg / "model.yaml"), store, log=lambda s: None)
    name_folder = v1.uri.rsplit("/", 1)[0]
    manifest = evaljob("rebuilt", {**inputs, "model": name_folder}, s3_env, **slow())
    apply(kubectl, ns, manifest)
    wait_for(lambda: running_ppl_pods(api, "rebuilt"), "a running ppl pod", timeout=120)
    (pkg / "empty.flag").write_text("a different model\n")
    (pkg / "model.yaml").write_text((pkg / "model.yaml").read_text().replace('code: ["handler.py"]',
                                                                             'code: ["handler.py", "empty.flag"]'))
    v2 = packages.build(packages.load_config(pkg / "model.yaml"), store, log=lambda s: None)
    assert v2.version != v1.version
    st = api.wait_phase("rebuilt", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    assert st["inputs"]["model"]["version"] == v1.version == st["modelDigest"]
    assert st["results"]["summary"]["bbox/AP"] > 0.2, "v2 finds nothing: its AP would be 0"
    from assay import storage

    metrics = json.loads(storage.read_text(st["resultsUri"]))
    assert metrics["model"]["version"] == v1.version


def test_a_queued_job_waiting_past_its_deadline_is_not_failed(operator, kueue, kubectl, admin, api: Api, ns,
                                                               inputs, s3_env):
    """The operator's own clock counted time queued in Kueue: a queued job that never ran failed at 3,601 s."""
    from tests.cluster.test_kueue_evaluations import GPU_QUEUE, queue

    name = queue(admin, ns, GPU_QUEUE, held=True)  # a real Kueue that admits nothing for now
    apply(kubectl, ns, evaljob("queued", inputs, s3_env, queueName=name, activeDeadlineSeconds=3))
    wait_for(lambda: api.status("queued").get("reason") == "WaitingForAdmission", "WaitingForAdmission", timeout=60)
    time.sleep(8)  # well past activeDeadlineSeconds while queued
    st = api.status("queued")
    assert st["phase"] == "Pending" and st["reason"] == "WaitingForAdmission", st
    job = api.jobs()["queued-resolve"]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == name


def test_names_too_long_for_pod_hostnames_are_refused_at_admission(operator, kubectl, ns, inputs, s3_env):
    """A 58-character name was accepted, then every Job create failed with a 422 that never reached status."""
    out = apply(kubectl, ns, evaljob("n" * 58, inputs, s3_env), check=False)
    assert out.returncode != 0 and "at most 53 characters" in out.stderr, out.stderr
    assert apply(kubectl, ns, evaljob("n" * 53, inputs, s3_env, suspend=True), check=False).returncode == 0


def test_a_quota_blocked_job_shows_the_reason(operator, kubectl, admin, api: Api, ns, inputs, s3_env):
    """Pods that could not be created (quota, LimitRange, admission) left the job Pending forever, silently."""
    client.CoreV1Api(admin).create_namespaced_resource_quota(ns, {"metadata": {"name": "no-gpus"}, "spec": {
        "hard": {"requests.nvidia.com/gpu": "0"}}})
    apply(kubectl, ns, evaljob("blocked", inputs, s3_env, ppl={"resources": {"limits": {"nvidia.com/gpu": 1}}}))
    st = wait_for(lambda: api.status("blocked") if api.status("blocked").get("reason") == "FailedCreate" else None,
                  "the FailedCreate reason in status", timeout=120)
    assert st["phase"] == "Pending" and "exceeded quota: no-gpus" in st["message"], st


def test_more_workers_than_shard_groups_finish_without_idle_pods(operator, kubectl, api: Api, ns, inputs, s3_env):
    """Workers beyond the shard count held GPUs and exited."""
    manifest = evaljob("wide", inputs, s3_env, ppl={"workers": 8, "shardsPerIndex": 1})
    apply(kubectl, ns, manifest)
    st = api.wait_phase("wide", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    ppl = api.jobs()["wide-ppl"]["spec"]
    assert ppl["completions"] == ppl["parallelism"] == int(inputs["shards"])
    pods = api.pods("assay.dev/job=wide,assay.dev/role=ppl")
    assert len(pods) == int(inputs["shards"]), [p["metadata"]["name"] for p in pods]
    ids = result_ids(manifest["spec"]["output"]["uri"])
    assert len(ids) == len(set(ids)) == int(inputs["samples"])


def test_deleting_jobs_and_their_namespace_works_with_the_operator_gone(operator, kubectl, admin, api: Api, ns,
                                                                         inputs, s3_env):
    """kopf's timer put a finalizer on every EvaluationJob: with the operator uninstalled, deleting jobs or
    their namespace hung in Terminating."""
    apply(kubectl, ns, evaljob("orphan", inputs, s3_env, **slow()))
    wait_for(lambda: api.jobs().get("orphan-ppl") or api.jobs().get("orphan-resolve"), "a child Job", timeout=120)
    assert not (api.get("orphan")["metadata"].get("finalizers"))
    with operator.down():
        kubectl("delete", "evaljob", "orphan", "-n", ns, "--timeout=60s")
        wait_for(lambda: not api.jobs() and not api.pods("assay.dev/job=orphan"), "the children to be collected",
                 timeout=120)


def test_workers_can_change_while_the_job_runs(operator, kubectl, api: Api, ns, inputs, s3_env):
    apply(kubectl, ns, evaljob("rescaled", inputs, s3_env, **slow(ppl={"workers": 1, "shardsPerIndex": 1,
                                                                     "batchSize": 4, "device": "cpu"})))
    wait_for(lambda: running_ppl_pods(api, "rescaled"), "a running ppl pod", timeout=120)
    kubectl("patch", "evaljob", "rescaled", "-n", ns, "--type=merge", "-p", '{"spec":{"ppl":{"workers":3}}}')
    wait_for(lambda: api.jobs()["rescaled-ppl"]["spec"]["parallelism"] == 3, "parallelism 3", timeout=60)
    assert api.wait_phase("rescaled", ("Succeeded", "Failed"), timeout=300)["phase"] == "Succeeded"
    print("\n" + yaml.safe_dump({"status": api.status("rescaled")}))


PLANTED = "PLANTED-cloud-token-51e3"


def test_a_job_author_cannot_borrow_other_service_accounts_or_secrets(operator, kubectl, admin, ns, inputs, s3_env):
    """Issue 18 item 8 (confused deputy): a user who may only create EvaluationJobs ran a pod as another
    ServiceAccount of the namespace and read any Secret back through status.message. The chart's
    ValidatingAdmissionPolicy now refuses such a spec at `kubectl apply`, for that user as for anyone."""
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    core.create_namespaced_secret(ns, {"metadata": {"name": "cloud-admin"}, "stringData": {"token": PLANTED}})
    core.create_namespaced_service_account(ns, {"metadata": {"name": "cloud-admin"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "evaluator"}, "rules": [
        {"apiGroups": ["assay.dev"], "resources": ["evaluationjobs"], "verbs": ["get", "list", "create", "patch"]}]})
    rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "evaluator"},
                                            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                        "name": "evaluator"},
                                            "subjects": [{"kind": "User", "name": "alice"}]})

    def as_alice(name: str, **spec):
        manifest = yaml.safe_dump(evaljob(name, inputs, s3_env, suspend=True, **spec))
        return kubectl("apply", "--as", "alice", "-n", ns, "-f", "-", input=manifest, check=False)

    def steal(name: str) -> dict:
        return {"runtime": {"env": [{"name": name, "valueFrom": {"secretKeyRef": {"name": "cloud-admin",
                                                                                  "key": "token"}}}]}}

    # the API server reports the first rule a spec breaks
    refused = {"overrides-ours": (steal("ASSAY_BATCH_SIZE"), "may not set a variable assay sets itself"),
               "foreign-secret": (steal("TOKEN"), "valueFrom.secretKeyRef may name only"),
               "foreign-account": ({"runtime": {"serviceAccountName": "cloud-admin"}}, "serviceAccountName must be"),
               "foreign-image": ({"runtime": {"image": "docker.io/someone/else:1"}}, "spec.runtime.image must")}
    for name, (spec, rule) in refused.items():
        out = as_alice(name, **spec)
        assert out.returncode != 0 and "ValidatingAdmissionPolicy" in out.stderr and rule in out.stderr, (
            name, out.stderr)
        assert PLANTED not in out.stdout + out.stderr
    # every expression type-checks against the CRD's schema (a rule that errors refuses every job)
    vaps = client.AdmissionregistrationV1Api(admin)
    checked = wait_for(lambda: (lambda st: st if st and st.observed_generation else None)(
        vaps.read_validating_admission_policy("assay-evaluationjobs.assay.dev").status),
        "the policy's type checking", timeout=60)
    assert not (checked.type_checking and checked.type_checking.expression_warnings), checked
    # the job's own storage Secret, a variable of its own, and the runner image: admitted
    own = {"runtime": {"image": RUNNER_IMAGE,
                       "env": [{"name": "ASSAY_TEST_JITTER", "value": "1"}, {
                           "name": "KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}}]}}
    out = as_alice("own-secret", **own)
    assert out.returncode == 0, out.stderr

