"""assay_operator.policy: what an EvaluationJob may borrow from the operator (the confused-deputy rules).

Issue 18, item 8: a user allowed only to create EvaluationJobs ran a pod as another ServiceAccount of
the namespace and read any Secret back through status.message (runtime.env valueFrom.secretKeyRef
replacing assay's own variables; the runner echoed the bad value; the operator copied it into status).
"""

from __future__ import annotations

from typing import Any

import pytest

from assay import protocol
from assay.spec import EvaluationJob, JobSpec
from assay_operator import manifests, policy
from assay_operator.settings import Settings

DEFAULT = Settings()
SECRET_VALUE = "s3cr3t-VALUE-9f2e"


def job(namespace: str = "evals", **spec: Any) -> EvaluationJob:
    base: dict[str, Any] = {"model": {"uri": "s3://m/model"}, "dataset": {"uri": "s3://d/data"},
                            "output": {"uri": "s3://o/eval"}, "storage": {"secretRef": {"name": "s3"}}}
    base.update(spec)
    return EvaluationJob(name="eval", namespace=namespace, spec=JobSpec(**base))


def env(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"env": list(entries)}


def secret_ref(name: str, key: str = "password") -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


class TestDefaults:
    def test_a_plain_job_passes(self) -> None:
        assert policy.check(job(), DEFAULT) == []
        assert policy.refusal(job(), DEFAULT) is None

    def test_the_issue_18_job_is_refused_on_every_count(self) -> None:
        """Another ServiceAccount, and a foreign Secret's key in a variable the runner parses."""
        attack = job(runtime={"serviceAccountName": "cloud-admin",
                              **env({"name": "ASSAY_BATCH_SIZE", "valueFrom": secret_ref("db-creds")})})
        found = policy.check(attack, DEFAULT)
        assert len(found) == 3, found
        reason, message = policy.refusal(attack, DEFAULT)
        assert reason == "PolicyViolation"
        assert "serviceAccountName 'cloud-admin'" in message and "db-creds" in message
        assert "spec.runtime.env[0] (ASSAY_BATCH_SIZE)" in message and "hint:" in message


class TestImages:
    def test_default_prefix_is_the_runner_images_directory(self) -> None:
        assert policy.image_prefixes(DEFAULT) == ["ghcr.io/assay-dev/"]
        assert policy.check(job(runtime={"image": "ghcr.io/assay-dev/assay-runner:0.2.0-cu124"}), DEFAULT) == []
        (found,) = policy.check(job(runtime={"image": "docker.io/evil/miner:1"}), DEFAULT)
        assert found.startswith("spec.runtime.image 'docker.io/evil/miner:1'") and "ghcr.io/assay-dev/" in found

    @pytest.mark.parametrize("image, prefix", [
        ("ghcr.io/assay-dev/assay-runner:0.1.0", "ghcr.io/assay-dev/"),
        ("registry.example:5000/ml/assay-runner@sha256:" + "a" * 64, "registry.example:5000/ml/"),
        ("assay-runner:1", "assay-runner:"),
    ])
    def test_default_prefix_of(self, image: str, prefix: str) -> None:
        assert policy.default_image_prefix(image) == prefix

    def test_configured_prefixes_any_and_none(self) -> None:
        mine = Settings(allowed_image_prefixes=["registry.example/ml/"])
        assert policy.check(job(runtime={"image": "registry.example/ml/runner:1"}), mine) == []
        assert policy.check(job(runtime={"image": "ghcr.io/assay-dev/assay-runner:9"}), mine)
        assert policy.check(job(runtime={"image": "anything/at:all"}), Settings(allowed_image_prefixes=["*"])) == []
        closed = Settings(allowed_image_prefixes=[])
        assert "none allowed" in policy.check(job(runtime={"image": "ghcr.io/assay-dev/x:1"}), closed)[0]

    def test_the_configured_runner_image_is_always_allowed(self) -> None:
        closed = Settings(runner_image="local/runner:dev", allowed_image_prefixes=[])
        assert policy.check(job(runtime={"image": "local/runner:dev"}), closed) == []


class TestServiceAccounts:
    def test_none_allowed_by_default_but_the_operators_own(self) -> None:
        assert policy.check(job(runtime={"serviceAccountName": "irsa"}), DEFAULT)
        assert policy.check(job(runtime={"serviceAccountName": "jobs"}), Settings(pod_service_account="jobs")) == []

    def test_names_and_namespaced_names(self) -> None:
        s = Settings(allowed_service_accounts=["irsa", "team-a/gcs-reader"])
        assert policy.check(job(runtime={"serviceAccountName": "irsa"}), s) == []
        assert policy.check(job("team-a", runtime={"serviceAccountName": "gcs-reader"}), s) == []
        assert policy.check(job("team-b", runtime={"serviceAccountName": "gcs-reader"}), s)
        assert policy.check(job(runtime={"serviceAccountName": "x"}), Settings(allowed_service_accounts=["*"])) == []


class TestClasses:
    def test_runtime_class_allow_list(self) -> None:
        assert policy.check(job(runtime={"runtimeClassName": "nvidia"}), DEFAULT)
        assert policy.check(job(runtime={"runtimeClassName": "nvidia"}),
                            Settings(allowed_runtime_class_names=["nvidia"])) == []

    def test_priority_class_allow_list(self) -> None:
        (found,) = policy.check(job(ppl={"priorityClassName": "system-cluster-critical"}), DEFAULT)
        assert found.startswith("spec.ppl.priorityClassName 'system-cluster-critical'")
        assert policy.check(job(ppl={"priorityClassName": "batch-low"}),
                            Settings(allowed_priority_class_names=["batch-low"])) == []


class TestSecretsAndEnv:
    def test_storage_secret_any_by_default_restricted_when_listed(self) -> None:
        assert policy.check(job(), DEFAULT) == []
        s = Settings(allowed_storage_secrets=["assay-s3"])
        (found,) = policy.check(job(), s)
        assert found.startswith("spec.storage.secretRef 's3'")
        assert policy.check(job(storage={"secretRef": {"name": "assay-s3"}}), s) == []

    def test_secret_key_ref_only_to_the_storage_secret_or_allowed(self) -> None:
        own = job(runtime=env({"name": "EXTRA_TOKEN", "valueFrom": secret_ref("s3", "token")}))
        assert policy.check(own, DEFAULT) == []
        foreign = job(runtime=env({"name": "EXTRA_TOKEN", "valueFrom": secret_ref("db-creds")}))
        (found,) = policy.check(foreign, DEFAULT)
        assert "spec.runtime.env[0] (EXTRA_TOKEN): valueFrom.secretKeyRef" in found and "'db-creds'" in found
        assert policy.check(foreign, Settings(allowed_env_secrets=["db-creds"])) == []
        assert policy.check(foreign, Settings(allowed_env_secrets=["*"])) == []

    def test_secret_key_ref_without_storage_secret_or_name(self) -> None:
        nameless = {"name": "X", "valueFrom": {"secretKeyRef": {"key": "k"}}}
        no_store = job(storage={}, runtime=env(nameless))
        assert policy.check(no_store, DEFAULT)

    def test_config_map_key_ref_allow_list(self) -> None:
        cm = job(runtime=env({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}}))
        assert "configMapKeyRef" in policy.check(cm, DEFAULT)[0]
        assert policy.check(cm, Settings(allowed_env_config_maps=["settings"])) == []

    def test_field_and_resource_refs_and_plain_values_pass(self) -> None:
        ok = job(runtime=env({"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                             {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
                             {"name": "ASSAY_TEST_JITTER", "value": "1"},
                             {"name": "AWS_REQUEST_CHECKSUM_CALCULATION", "value": "when_required"}))
        assert policy.check(ok, DEFAULT) == []

    @pytest.mark.parametrize("name", ["ASSAY_OUTPUT_URI", "ASSAY_BATCH_SIZE", "JOB_COMPLETION_INDEX",
                                      "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY", "HOME", "TMPDIR",
                                      "PYTHONUNBUFFERED", "ASSAY_TERMINATION_LOG"])
    def test_reserved_names_are_refused_without_their_value(self, name: str) -> None:
        (found,) = policy.check(job(runtime=env({"name": name, "value": SECRET_VALUE})), DEFAULT)
        assert f"({name}): assay sets this variable itself" in found
        assert SECRET_VALUE not in policy.message([found])

    def test_reserved_names_are_every_variable_the_operator_sets(self) -> None:
        """The list is written out in policy.py; manifests.env is what the pods get."""
        full = job(storage={"secretRef": {"name": "s3"}, "endpoint": "http://minio:9000", "region": "r"},
                   evaluator="coco")
        inputs = {"model": {"uri": "s3://m/v1", "version": "v1"}, "dataset": {"uri": "s3://d/v1", "version": "v1"},
                  "shardsPerIndex": 1}
        for role in protocol.ROLES:
            names = {e["name"] for e in manifests.env(full, role, inputs)}
            assert names <= policy.RESERVED_ENV, names - policy.RESERVED_ENV
        assert "JOB_COMPLETION_INDEX" in policy.RESERVED_ENV  # set by Kubernetes, read as the work item


class TestSettings:
    def test_lists_come_from_comma_separated_variables(self, monkeypatch) -> None:
        monkeypatch.setenv("ASSAY_OPERATOR_ALLOWED_SERVICE_ACCOUNTS", "irsa, team-a/reader")
        monkeypatch.setenv("ASSAY_OPERATOR_ALLOWED_IMAGE_PREFIXES", "")
        monkeypatch.setenv("ASSAY_OPERATOR_ALLOWED_STORAGE_SECRETS", "*")
        s = Settings()
        assert s.allowed_service_accounts == ["irsa", "team-a/reader"]
        assert s.allowed_image_prefixes == [] and s.allowed_storage_secrets == ["*"]
        assert Settings.model_fields["allowed_image_prefixes"].default is None  # unset: derived
