"""charts/assay/templates/admission-policy.yaml: the ValidatingAdmissionPolicy enforcing `policy` at
admission carries the same lists as the operator's settings (ASSAY_OPERATOR_ALLOWED_*) and the same
reserved variables as assay_operator.policy, is bound where the operator acts, and can be turned off.

Whether the API server really refuses with it is tests/cluster/test_operator.py's part; CEL is not
evaluated here (no CEL interpreter of Kubernetes' flavour in Python)."""

from __future__ import annotations

import json

import pytest

from assay_operator import policy
from assay_operator.settings import Settings
from tests.deploy.helm import CHART, by_kind, render, run_helm
from tests.deploy.test_chart import env_of

VAP, BINDING = "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"
LISTS = {  # VAP variable -> Settings field
    "allowedImagePrefixes": "allowed_image_prefixes", "allowedServiceAccounts": "allowed_service_accounts",
    "allowedStorageSecrets": "allowed_storage_secrets", "allowedEnvSecrets": "allowed_env_secrets",
    "allowedEnvConfigMaps": "allowed_env_config_maps", "allowedRuntimeClassNames": "allowed_runtime_class_names",
    "allowedPriorityClassNames": "allowed_priority_class_names",
}
CUSTOM = {"policy": {"allowedImagePrefixes": ["registry.example/ml/", "ghcr.io/assay-dev/"],
                     "allowedServiceAccounts": ["irsa", "team-a/reader"], "allowedStorageSecrets": ["assay-s3"],
                     "allowedEnvSecrets": ["hf-token"], "allowedEnvConfigMaps": ["proxy"],
                     "allowedRuntimeClassNames": ["nvidia"], "allowedPriorityClassNames": ["*"]},
          "watch": {"namespaces": ["team-a", "team-b"]}}


def variables(objs) -> dict[str, str]:
    (vap,) = by_kind(objs, VAP)
    return {v["name"]: v["expression"] for v in vap["spec"]["variables"]}


def operator_settings(objs) -> Settings:
    env = {k.removeprefix("ASSAY_OPERATOR_").lower(): v for k, v in env_of(objs).items()
           if k.startswith("ASSAY_OPERATOR_ALLOWED_") or k == "ASSAY_OPERATOR_RUNNER_IMAGE"}
    return Settings(**env)


@pytest.mark.parametrize("values", [{}, CUSTOM, {"jobDefaults": {"runnerImage": {"repository": "reg:5000/ml/run"}}}],
                         ids=["default", "custom", "own-registry"])
def test_the_policy_and_the_operator_get_the_same_lists(values):
    objs = render(values)
    found, settings = variables(objs), operator_settings(objs)
    for variable, field in LISTS.items():
        assert json.loads(found[variable]) == getattr(settings, field), variable
    if "policy" not in values:  # unset allowedImagePrefixes: the chart derives what the operator would
        assert json.loads(found["allowedImagePrefixes"]) == policy.image_prefixes(
            Settings(runner_image=settings.runner_image))


def test_defaults_allow_the_runner_images_registry_and_any_storage_secret_and_nothing_else():
    found = variables(render())
    assert json.loads(found["allowedImagePrefixes"]) == ["ghcr.io/assay-dev/"]
    assert json.loads(found["allowedStorageSecrets"]) == ["*"]
    for variable in ("allowedServiceAccounts", "allowedEnvSecrets", "allowedEnvConfigMaps",
                     "allowedRuntimeClassNames", "allowedPriorityClassNames"):
        assert json.loads(found[variable]) == [], variable


def test_reserved_variables_are_the_operators():
    assert json.loads(variables(render())["reservedEnv"]) == sorted(policy.RESERVED_ENV)


def test_policy_refuses_what_it_cannot_evaluate_and_leaves_status_writes_alone():
    objs = render()
    (vap,) = by_kind(objs, VAP)
    (binding,) = by_kind(objs, BINDING)
    assert vap["spec"]["failurePolicy"] == "Fail"
    (rule,) = vap["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["evaluationjobs"] and rule["operations"] == ["CREATE", "UPDATE"]
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    fields = {"spec.runtime.image", "spec.runtime.serviceAccountName", "spec.storage.secretRef",
              "spec.runtime.runtimeClassName", "spec.ppl.priorityClassName", "valueFrom.secretKeyRef",
              "valueFrom.configMapKeyRef", "spec.runtime.env may not set"}
    messages = " ".join(v["message"] for v in vap["spec"]["validations"])
    assert all(f in messages for f in fields), fields
    assert all(v["reason"] == "Forbidden" for v in vap["spec"]["validations"])


@pytest.mark.parametrize("values, namespaces", [
    ({}, ["assay-system"]), (CUSTOM, ["team-a", "team-b"]), ({"watch": {"clusterWide": True}}, None)])
def test_bound_where_the_operator_acts(values, namespaces):
    (binding,) = by_kind(render(values), BINDING)
    if namespaces is None:
        assert "matchResources" not in binding["spec"]
    else:
        (expr,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
        assert expr == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}


def test_operator_service_account_and_runner_image_are_allowed_in_the_cel():
    (vap,) = by_kind(render({"jobDefaults": {"serviceAccountName": "jobs"}}), VAP)
    exprs = [v["expression"] for v in vap["spec"]["validations"]]
    assert any("variables.serviceAccount == 'jobs'" in e for e in exprs)
    assert any("variables.image == 'ghcr.io/assay-dev/assay-runner:" in e for e in exprs)


def test_warn_only_and_off():
    (binding,) = by_kind(render({"admissionPolicy": {"validationActions": ["Warn", "Audit"]}}), BINDING)
    assert binding["spec"]["validationActions"] == ["Warn", "Audit"]
    off = render({"admissionPolicy": {"enabled": False}})
    assert not by_kind(off, VAP) and not by_kind(off, BINDING)
    assert "ASSAY_OPERATOR_ALLOWED_ENV_SECRETS" in env_of(off)  # the operator's checks stay


@pytest.mark.parametrize("bad", [
    {"policy": {"allowedEnvSecrets": ["a,b"]}},  # a comma would split in the operator's variable
    {"policy": {"allowedEnvSecrets": ["x'||true||'"]}},  # quotes: nothing can be injected into the CEL
    {"policy": {"allowedServiceAccounts": ["Team/A"]}},
    {"policy": {"allowedImagePrefixes": "ghcr.io/"}},
    {"admissionPolicy": {"validationActions": ["Allow"]}},
    {"policy": {"unknown": []}},
])
def test_values_schema_refuses_bad_policy_values(bad, tmp_path):
    values = tmp_path / "values.json"
    values.write_text(json.dumps(bad))
    proc = run_helm("template", "rel", str(CHART), "--values", str(values), check=False)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
