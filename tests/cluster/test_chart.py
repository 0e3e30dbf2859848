"""The chart's default install (one namespace, a Role, no ClusterRole) runs a job with nothing more."""

from __future__ import annotations

import json
import re

import pytest
from kubernetes import client

from tests.cluster.conftest import (
    CHART,
    OPERATOR_NS,
    RELEASE,
    S3_KEYS,
    Api,
    _ready,
    create_namespace,
    evaljob,
    wait_for,
)
from tests.cluster.test_evaluationjob import apply, no_forbidden

pytestmark = pytest.mark.cluster


def test_default_install_watches_its_namespace_with_a_role_only(operator, kubectl, admin, inputs, s3_env):
    ns = "assay-default"
    create_namespace(admin, ns)
    client.CoreV1Api(admin).create_namespaced_secret(ns, {"metadata": {"name": "s3"}, "stringData": S3_KEYS})
    api = Api(admin, ns)
    # the cluster-wide operator would reconcile this namespace's jobs too
    with operator.down():
        try:
            kubectl.helm("install", "second", str(CHART), "-n", ns, "--wait", "--timeout", "120s",
                         "--set", "crds.install=false",
                         "--set", "operator.logFormat=text")
            roles = json.loads(kubectl("get", "clusterrole,clusterrolebinding", "-o", "json",
                                       "-l", "app.kubernetes.io/instance=second").stdout)["items"]
            assert roles == []
            assert kubectl("get", "role", "-n", ns, "-o", "name", "-l", "app.kubernetes.io/instance=second").stdout
            apply(kubectl, ns, evaljob("namespaced", inputs, s3_env))
            st = api.wait_phase("namespaced", ("Succeeded", "Failed"), timeout=240)
            assert st["phase"] == "Succeeded", st
            # the chart's Role sufficed: no request of its service account was denied (as no_forbidden checks)
            second = kubectl("logs", "-n", ns, "deployment/second-assay", "-c", "operator").stdout
            assert "Activity 'login_via_client' succeeded" in second
            assert not re.findall(r'User \\?"system:serviceaccount:', second), second[-2000:]
        finally:
            kubectl.helm("uninstall", "second", "-n", ns, "--wait", check=False)
    wait_for(lambda: [p for p in operator.pods() if _ready(p)], "the cluster-wide operator back", timeout=90)
    no_forbidden(operator)
    client.CoreV1Api(admin).delete_namespace(ns)


def test_the_operators_requests_are_classified_into_its_own_priority_level(operator, kubectl):
    """Issue 23, item 5: with flowControl.enabled (the test install sets it) the API server puts the
    operator's requests into the chart's PriorityLevelConfiguration; everyone else's stay where they were.
    The API server names the FlowSchema and level it chose in every response's X-Kubernetes-PF-* headers."""
    schema = json.loads(kubectl("get", "flowschema", RELEASE, "-o", "json").stdout)
    level = json.loads(kubectl("get", "prioritylevelconfiguration", RELEASE, "-o", "json").stdout)
    assert schema["spec"]["priorityLevelConfiguration"]["name"] == RELEASE

    def classified(*who: str) -> tuple[str, str]:
        # -v=8 prints the response headers; APF classifies after impersonation, before authorization
        # (so a refused request is classified too)
        out = kubectl("get", "evaluationjobs", "-A", "-v=8", *who, check=False).stderr
        headers = dict(re.findall(r"(X-Kubernetes-Pf-[A-Za-z-]+): (\S+)", out, flags=re.IGNORECASE))
        lower = {k.lower(): v for k, v in headers.items()}
        return lower.get("x-kubernetes-pf-flowschema-uid", ""), lower.get("x-kubernetes-pf-prioritylevel-uid", "")

    account = f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}"
    assert classified(f"--as={account}", "--as-group=system:serviceaccounts") == (
        schema["metadata"]["uid"], level["metadata"]["uid"])
    other = classified("--as=system:serviceaccount:default:default", "--as-group=system:serviceaccounts")
    assert other[0] and other[0] != schema["metadata"]["uid"], "another service account is not the operator"
    # the flow schema's status says the API server resolved its priority level
    conditions = {c["type"]: c["status"] for c in schema.get("status", {}).get("conditions", [])}
    assert conditions.get("Dangling") == "False", schema.get("status")
