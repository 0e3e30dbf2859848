"""The chart's default install (one namespace, a Role, no ClusterRole) runs a job with nothing more."""

from __future__ import annotations

import json

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
    free_port,
    wait_for,
)
from tests.cluster.test_evaluationjob import apply, no_forbidden

pytestmark = pytest.mark.cluster


def scale(kubectl, replicas: int) -> None:
    kubectl("scale", "deployment", RELEASE, "-n", OPERATOR_NS, f"--replicas={replicas}")


def test_default_install_watches_its_namespace_with_a_role_only(operator, kubectl, admin, inputs, s3_env):
    ns = "assay-default"
    create_namespace(admin, ns)
    client.CoreV1Api(admin).create_namespaced_secret(ns, {"metadata": {"name": "s3"}, "stringData": S3_KEYS})
    api = Api(admin, ns)
    scale(kubectl, 0)  # the cluster-wide operator would reconcile this namespace's jobs too
    wait_for(lambda: not operator.pods(), "the cluster-wide operator to stop", timeout=60)
    try:
        kubectl.helm("install", "second", str(CHART), "-n", ns, "--wait", "--timeout", "120s",
                     "--set", "crds.install=false", "--set", "operator.resyncSeconds=1",
                     "--set", "operator.logFormat=text", "--set", f"health.port={free_port()}",
                     "--set", f"metrics.port={free_port()}")
        roles = json.loads(kubectl("get", "clusterrole,clusterrolebinding", "-o", "json",
                                   "-l", "app.kubernetes.io/instance=second").stdout)["items"]
        assert roles == []
        assert kubectl("get", "role", "-n", ns, "-o", "name", "-l", "app.kubernetes.io/instance=second").stdout
        apply(kubectl, ns, evaljob("namespaced", inputs, s3_env))
        st = api.wait_phase("namespaced", ("Succeeded", "Failed"), timeout=240)
        assert st["phase"] == "Succeeded", st
        no_forbidden(operator)
    finally:
        kubectl.helm("uninstall", "second", "-n", ns, "--wait", check=False)
        scale(kubectl, 1)
        wait_for(lambda: [p for p in operator.pods() if _ready(p)], "the cluster-wide operator back", timeout=90)
        client.CoreV1Api(admin).delete_namespace(ns)
