"""Pure manifest builders: EvaluationJob spec -> ppl Indexed Job and cmp Job dicts (no cluster)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from assay import protocol
from assay.errors import EXIT_PERMANENT
from assay.spec import EvaluationJob, JobSpec
from assay_operator import manifests
from assay_operator.settings import Settings

SETTINGS = Settings(runner_image="ghcr.io/assay/runner:default")
OWNER = {"metadata": {"name": "eval", "namespace": "evals", "uid": "uid-1"}}
#: What the resolve stage reports: 10 shards in 4 groups of 3.
INPUTS = {"model": {"uri": "s3://m/model/v1", "name": "model", "version": "v1"},
          "dataset": {"uri": "s3://d/data/v7", "name": "data", "version": "v7"},
          "shards": 10, "samples": 100, "shardsPerIndex": 3, "indexes": 4}


def ppl_job(j, inputs=INPUTS):
    return manifests.build_ppl_job(OWNER, j, SETTINGS, inputs)


def cmp_job(j, deadline=None):
    return manifests.build_cmp_job(OWNER, j, SETTINGS, INPUTS, deadline)


def job(name: str = "eval", **spec: Any) -> EvaluationJob:
    base: dict[str, Any] = {"model": {"uri": "s3://m/model"}, "dataset": {"uri": "s3://d/data"},
                            "output": {"uri": "s3://o/eval"}}
    base.update(spec)
    return EvaluationJob(name=name, namespace="evals", spec=JobSpec(**base))


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def env_of(obj: dict) -> dict[str, dict]:
    return {e["name"]: e for e in pod_spec(obj)["containers"][0]["env"]}


class TestNamesAndLabels:
    def test_child_names_are_deterministic(self) -> None:
        assert ppl_job(job())["metadata"]["name"] == "eval-ppl"

    def test_labels_select_the_job_and_role_and_reach_the_pods(self) -> None:
        ppl = ppl_job(job())
        assert ppl["metadata"]["labels"]["assay.dev/job"] == "eval"
        assert ppl["metadata"]["labels"]["assay.dev/role"] == "ppl"
        assert ppl["spec"]["template"]["metadata"]["labels"] == ppl["metadata"]["labels"]
        assert manifests.pod_selector("eval", "cmp") == "assay.dev/job=eval,assay.dev/role=cmp"

    def test_retry_token_is_recorded_on_the_child(self) -> None:
        ppl = ppl_job(job(retryToken="2"))
        assert ppl["metadata"]["annotations"][protocol.RETRY_TOKEN_ANNOTATION] == "2"


class TestPplJob:
    def test_one_index_per_shard_group_and_workers_as_parallelism(self) -> None:
        spec = ppl_job(job(ppl={"workers": 3, "maxRetriesPerShard": 5}))["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == 4 and spec["parallelism"] == 3
        assert spec["backoffLimitPerIndex"] == 5 and "backoffLimit" not in spec
        assert spec["podReplacementPolicy"] == "Failed"
        assert spec["template"]["spec"]["restartPolicy"] == "Never"

    def test_no_more_pods_than_shard_groups(self) -> None:
        """Workers beyond the number of groups would hold accelerators and exit."""
        spec = ppl_job(job(ppl={"workers": 16}))["spec"]
        assert spec["completions"] == 4 and spec["parallelism"] == 4
    def test_permanent_exit_code_fails_the_job_and_disruptions_do_not_count(self) -> None:
        rules = ppl_job(job())["spec"]["podFailurePolicy"]["rules"]
        assert rules[0]["action"] == "FailJob"
        assert rules[0]["onExitCodes"] == {"containerName": "runner", "operator": "In", "values": [EXIT_PERMANENT]}
        assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}

    def test_runner_command_image_and_context(self) -> None:
        ppl = ppl_job(job(ppl={"workers": 3, "batchSize": 16, "device": "cuda"}))
        c = pod_spec(ppl)["containers"][0]
        assert c["command"] == ["python", "-m", "assay.runner", "ppl"]
        assert c["image"] == "ghcr.io/assay/runner:default"
        env = {k: v.get("value") for k, v in env_of(ppl).items()}
        assert env["ASSAY_MODEL_URI"] == "s3://m/model/v1" and env["ASSAY_MODEL_VERSION"] == "v1"
        assert env["ASSAY_DATASET_URI"] == "s3://d/data/v7" and env["ASSAY_DATASET_VERSION"] == "v7"
        assert env["ASSAY_OUTPUT_URI"] == "s3://o/eval" and env["ASSAY_SHARDS_PER_INDEX"] == "3"
        assert (env["ASSAY_WORKERS"], env["ASSAY_BATCH_SIZE"], env["ASSAY_DEVICE"]) == ("3", "16", "cuda")
        assert "JOB_COMPLETION_INDEX" not in env  # Kubernetes sets it per index

    def test_spec_image_overrides_the_default(self) -> None:
        ppl = ppl_job(job(runtime={"image": "mine:1", "imagePullPolicy": "Always",
                                                   "imagePullSecrets": [{"name": "reg"}]}))
        assert pod_spec(ppl)["containers"][0]["image"] == "mine:1"
        assert pod_spec(ppl)["containers"][0]["imagePullPolicy"] == "Always"
        assert pod_spec(ppl)["imagePullSecrets"] == [{"name": "reg"}]

    def test_placement_and_resources(self) -> None:
        ppl = ppl_job(job(ppl={
            "resources": {"limits": {"nvidia.com/gpu": 1}}, "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}], "priorityClassName": "batch"}))
        ps = pod_spec(ppl)
        # quantities as strings: the kubernetes client's typed models refuse an integer quantity
        assert ps["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
        assert ps["nodeSelector"] == {"gpu": "a100"} and ps["priorityClassName"] == "batch"
        assert ps["tolerations"][0]["key"] == "nvidia.com/gpu"

    def test_deadline_is_set_only_when_given(self) -> None:
        assert "activeDeadlineSeconds" not in ppl_job(job())["spec"]
        assert ppl_job(job(activeDeadlineSeconds=60))["spec"]["activeDeadlineSeconds"] == 60

    @pytest.mark.parametrize(("spec", "suspended"), [({}, False), ({"suspend": True}, True),
                                                      ({"queueName": "q"}, True)])
    def test_created_suspended_when_asked_or_queued(self, spec: dict, suspended: bool) -> None:
        ppl = ppl_job(job(**spec))
        assert ppl["spec"]["suspend"] is suspended
        assert ("kueue.x-k8s.io/queue-name" in ppl["metadata"]["labels"]) is bool(spec.get("queueName"))


class TestCredentialsAndEnv:
    def test_s3_credentials_only_by_secret_reference(self) -> None:
        env = env_of(ppl_job(job(storage={"endpoint": "http://minio:9000", "region": "eu",
                                                          "secretRef": {"name": "s3"}})))
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000" and env["AWS_REGION"]["value"] == "eu"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            assert "value" not in env[key]
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "s3"
            assert env[key]["valueFrom"]["secretKeyRef"]["key"] == key
        assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
        assert "optional" not in env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]

    def test_no_secret_no_credential_variables(self) -> None:
        assert not {"AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL"} & set(env_of(ppl_job(job())))

    def test_user_env_replaces_ours(self) -> None:
        ppl = ppl_job(job(runtime={"env": [{"name": "HOME", "value": "/x"}]}))
        env = pod_spec(ppl)["containers"][0]["env"]
        assert [e["value"] for e in env if e["name"] == "HOME"] == ["/x"]


class TestPodSecurity:
    def test_restricted_pod_security(self) -> None:
        ps = pod_spec(ppl_job(job()))
        assert ps["automountServiceAccountToken"] is False
        assert ps["securityContext"]["runAsNonRoot"] is True and ps["securityContext"]["runAsUser"] == 1000
        assert ps["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = ps["containers"][0]["securityContext"]
        assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}

    def test_writable_tmp_cache_and_shm_with_every_cache_inside(self) -> None:
        ppl = ppl_job(job())
        mounts = {m["mountPath"] for m in pod_spec(ppl)["containers"][0]["volumeMounts"]}
        assert mounts == {"/tmp", manifests.CACHE_DIR, "/dev/shm"}
        volumes = {v["name"]: v["emptyDir"] for v in pod_spec(ppl)["volumes"]}
        assert volumes["shm"]["medium"] == "Memory"
        env = env_of(ppl)
        for var in ("HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
            assert any(env[var]["value"].startswith(m) for m in mounts), var
        # model packages, shards and temp files go to the large cache volume, not the 2 Gi /tmp
        assert env["ASSAY_CACHE_DIR"]["value"] == env["TMPDIR"]["value"] == manifests.CACHE_DIR

    def test_no_ephemeral_storage_request_unless_the_operator_is_told(self) -> None:
        """Every container requested 22,528 Mi of ephemeral-storage that nobody asked for: a Kueue
        ClusterQueue covering cpu, memory and GPUs never admitted the job."""
        assert "requests" not in pod_spec(ppl_job(job()))["containers"][0]["resources"]
        mine = ppl_job(job(ppl={"resources": {"requests": {"ephemeral-storage": "50Gi"}}}))
        assert pod_spec(mine)["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "50Gi"

    def test_ephemeral_storage_requested_for_the_empty_dirs_when_told(self) -> None:
        told = SETTINGS.model_copy(update={"request_ephemeral_storage": True})
        requests = pod_spec(manifests.build_ppl_job(OWNER, job(), told, INPUTS))["containers"][0]["resources"]["requests"]
        assert manifests.quantity_bytes(requests["ephemeral-storage"]) == (
            manifests.quantity_bytes(SETTINGS.tmp_size_limit) + manifests.quantity_bytes(SETTINGS.cache_size_limit))
        mine = ppl_job(job(ppl={"resources": {"requests": {"ephemeral-storage": "50Gi"}}}))
        assert pod_spec(mine)["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "50Gi"

    def test_service_account_and_runtime_class(self) -> None:
        ps = pod_spec(ppl_job(job(runtime={"serviceAccountName": "irsa", "runtimeClassName": "nvidia"})))
        assert ps["serviceAccountName"] == "irsa" and ps["runtimeClassName"] == "nvidia"
        assert ps["automountServiceAccountToken"] is False


class TestCmpJob:
    def test_single_pod_running_cmp(self) -> None:
        cmp = cmp_job(job(cmp={"resources": {"requests": {"cpu": "2"}}}))
        assert cmp["metadata"]["name"] == "eval-cmp"
        assert cmp["spec"]["completions"] == 1 and "completionMode" not in cmp["spec"]
        assert cmp["spec"]["backoffLimit"] == SETTINGS.cmp_backoff_limit
        c = pod_spec(cmp)["containers"][0]
        assert c["command"] == ["python", "-m", "assay.runner", "cmp"]
        assert c["resources"]["requests"]["cpu"] == "2"

    def test_cmp_is_not_pinned_to_the_gpu_nodes(self) -> None:
        cmp = cmp_job(job(ppl={"nodeSelector": {"gpu": "a100"}}))
        assert "nodeSelector" not in pod_spec(cmp)

    def test_remaining_deadline(self) -> None:
        assert cmp_job(job(), 120)["spec"]["activeDeadlineSeconds"] == 120
        assert cmp_job(job(), -5)["spec"]["activeDeadlineSeconds"] == 1
        assert "activeDeadlineSeconds" not in cmp_job(job())["spec"]


class TestOwnershipAndResolve:
    def test_controller_reference_by_uid_and_no_owner_labels_copied(self) -> None:
        owner = {"metadata": {**OWNER["metadata"], "labels": {"kueue.x-k8s.io/queue-name": "team", "x": "y"}}}
        for child in (manifests.build_resolve_job(owner, job(), SETTINGS), ppl_job(job()), cmp_job(job())):
            (ref,) = child["metadata"]["ownerReferences"]
            assert ref == {"apiVersion": "assay.dev/v1alpha1", "kind": "EvaluationJob", "name": "eval",
                           "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}
            assert manifests.controller_uid(child) == "uid-1"
            assert "x" not in child["metadata"]["labels"]
            assert "kueue.x-k8s.io/queue-name" not in child["metadata"]["labels"]

    def test_resolve_job_runs_the_resolve_step_unpinned(self) -> None:
        resolve = manifests.build_resolve_job(OWNER, job(), SETTINGS)
        assert resolve["metadata"]["name"] == "eval-resolve"
        c = pod_spec(resolve)["containers"][0]
        assert c["command"] == ["python", "-m", "assay.runner", "resolve"]
        assert c["terminationMessagePath"] == "/dev/termination-log"
        env = {k: v.get("value") for k, v in env_of(resolve).items()}
        assert env["ASSAY_MODEL_URI"] == "s3://m/model" and "ASSAY_MODEL_VERSION" not in env
        assert resolve["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [EXIT_PERMANENT]


def _build(kind, j):
    if kind == "resolve":
        return manifests.build_resolve_job(OWNER, j, SETTINGS)
    return ppl_job(j) if kind == "ppl" else cmp_job(j)


@pytest.mark.parametrize("build", ["resolve", "ppl", "cmp"])
def test_built_jobs_validate_against_the_kubernetes_schema(build) -> None:
    full = job(runtime={"image": "x:1", "imagePullSecrets": [{"name": "r"}], "env": [{"name": "A", "value": "b"}]},
               ppl={"workers": 2, "resources": {"limits": {"nvidia.com/gpu": 1}},
                    "tolerations": [{"key": "k", "operator": "Exists"}], "affinity": {}},
               storage={"endpoint": "http://minio:9000", "secretRef": {"name": "s3"}},
               activeDeadlineSeconds=100, queueName="q")
    kubernetes_validate.validate(_build(build, full), "1.31", strict=True)
