"""The test tier's own machinery: the control plane is real and the process kubelet acts like a kubelet.

These pin what the EvaluationJob tests rely on: env resolution, volumes at their real paths, the
service-account token, exit codes and termination messages, image pull failures, and Pod Security.
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.conftest import RUNNER_IMAGE, wait_for

pytestmark = pytest.mark.cluster

RESTRICTED_POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    "restartPolicy": "Never",
}
RESTRICTED_CONTAINER = {"securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True}}

PROBE = r"""
import json, os, pathlib, sys
sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
out = {k: os.environ.get(k) for k in ("FROM_SECRET", "FROM_CM", "INDEX", "POD", "CPU_LIMIT", "MEM_MB", "EXPANDED")}
out["token"] = (sa / "token").is_file() and len((sa / "token").read_text()) > 100
out["ca"] = (sa / "ca.crt").read_text().startswith("-----BEGIN")
out["namespace"] = (sa / "namespace").read_text()
pathlib.Path("/tmp/x").write_text("tmp is writable")
pathlib.Path("/var/cache/assay/x").write_text("cache is writable")
try:
    pathlib.Path("/etc/assay-test").write_text("no")
    out["rootfs"] = "writable"
except OSError as exc:
    out["rootfs"] = exc.strerror
pathlib.Path("/dev/termination-log").write_text(json.dumps(out))
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def probe_pod(name: str, exit_code: int = 0, image: str = RUNNER_IMAGE) -> dict:
    container = {
        "name": "probe", "image": image, "command": ["python", "-c", PROBE],
        "env": [
            {"name": "EXIT", "value": str(exit_code)},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}},
            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
            {"name": "INDEX", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM_MB", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
            {"name": "EXPANDED", "value": "pod=$(POD)"},
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": "/var/cache/assay"}],
    } | RESTRICTED_CONTAINER
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {"batch.kubernetes.io/job-completion-index": "4"}},
            "spec": {"containers": [container], "automountServiceAccountToken": True,
                     "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]} | RESTRICTED_POD}


def pod_status(core: client.CoreV1Api, ns: str, name: str) -> dict:
    return json.loads(core.read_namespaced_pod(name, ns, _preload_content=False).data).get("status") or {}


def terminated(core, ns, name) -> dict | None:
    st = pod_status(core, ns, name)
    if st.get("phase") in ("Succeeded", "Failed"):
        return st
    return None


def test_nodes_are_ready_with_capacity(admin, kubelet):
    nodes = {n.metadata.name: n for n in client.CoreV1Api(admin).list_node().items}
    assert set(nodes) == {"node-cpu", "node-gpu"}
    for node in nodes.values():
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
        assert not node.spec.taints
    assert nodes["node-gpu"].status.allocatable["nvidia.com/gpu"] == "1"


def test_pod_runs_with_its_env_volumes_and_token(admin, kubelet, ns):
    core = client.CoreV1Api(admin)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cm"}, "data": {"greeting": "hello"}})
    core.create_namespaced_pod(ns, probe_pod("probe"))
    st = wait_for(lambda: terminated(core, ns, "probe"), "the probe pod to finish", timeout=60)
    assert st["phase"] == "Succeeded", st
    cs = st["containerStatuses"][0]
    assert cs["state"]["terminated"]["exitCode"] == 0 and cs["state"]["terminated"]["reason"] == "Completed"
    seen = json.loads(cs["state"]["terminated"]["message"])
    assert seen == {"FROM_SECRET": "testing", "FROM_CM": "hello", "INDEX": "4", "POD": "probe", "CPU_LIMIT": "2",
                    "MEM_MB": "64", "EXPANDED": "pod=probe", "token": True, "ca": True, "namespace": ns,
                    "rootfs": "Read-only file system"}


def test_exit_code_and_log_tail_as_termination_message(admin, kubelet, ns):
    core = client.CoreV1Api(admin)
    pod = probe_pod("fails", exit_code=3)
    c = pod["spec"]["containers"][0]
    c["command"] = ["python", "-c", "import sys; print('line one'); print('the reason'); sys.exit(3)"]
    c["env"], c["terminationMessagePolicy"] = [], "FallbackToLogsOnError"
    core.create_namespaced_pod(ns, pod)
    st = wait_for(lambda: terminated(core, ns, "fails"), "the failing pod to finish", timeout=60)
    term = st["containerStatuses"][0]["state"]["terminated"]
    assert st["phase"] == "Failed" and term["exitCode"] == 3 and term["reason"] == "Error"
    assert term["message"].endswith("the reason")


def test_unknown_image_is_err_image_pull_then_back_off(admin, kubelet, ns):
    core = client.CoreV1Api(admin)
    core.create_namespaced_pod(ns, probe_pod("nope", image="registry.example/nope:1"))

    def reason():
        cs = pod_status(core, ns, "nope").get("containerStatuses") or [{}]
        return ((cs[0].get("state") or {}).get("waiting") or {}).get("reason")

    wait_for(lambda: reason() == "ErrImagePull", "ErrImagePull", timeout=30, interval=0.05)
    wait_for(lambda: reason() == "ImagePullBackOff", "ImagePullBackOff", timeout=30)
    assert pod_status(core, ns, "nope")["phase"] == "Pending"


def test_restricted_pod_security_is_enforced(admin, kubelet, ns):
    pod = probe_pod("unrestricted")
    pod["spec"]["containers"][0]["securityContext"] = {}  # may escalate, keeps its capabilities
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(admin).create_namespaced_pod(ns, pod)
    assert err.value.status == 403 and 'violates PodSecurity' in err.value.body, err.value.body


def test_deleted_pod_gets_sigterm_then_goes(admin, kubelet, ns):
    core = client.CoreV1Api(admin)
    pod = probe_pod("sleeper")
    pod["spec"]["containers"][0]["command"] = ["python", "-c", "import time; time.sleep(600)"]
    pod["spec"]["containers"][0]["env"] = []
    core.create_namespaced_pod(ns, pod)
    wait_for(lambda: pod_status(core, ns, "sleeper").get("phase") == "Running", "the pod to run", timeout=30)
    core.delete_namespaced_pod("sleeper", ns)
    wait_for(lambda: not [p for p in core.list_namespaced_pod(ns).items if p.metadata.name == "sleeper"],
             "the pod to be removed", timeout=30)
