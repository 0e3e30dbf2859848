"""The chart's default install (one namespace, a Role, no ClusterRole) runs a job with nothing more."""

from __future__ import annotations

import json
import re

import pytest
from kubernetes import client

from tests.cluster.conftest import (
    CHART,
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
