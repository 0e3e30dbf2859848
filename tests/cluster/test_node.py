"""The real node itself: containerd + runc, the kubelet and kube-proxy (tests/cluster/node.py), driven by the real
control plane.

Containers run as the pod's user on a read-only root filesystem, get an address on the pod network,
reach the API server through the ``kubernetes`` Service with their service-account token, are
OOM-killed by their memory cgroup, killed at a Job's deadline, and fail to pull an image no registry has.
The image is ``probe`` (tests/cluster/probe/main.go), a static Go program in a one-file image built here,
so that these pin the node's behaviour apart from the project's images.

Needs root, scripts/install-kube.sh and scripts/install-node.sh (the package's ``node`` fixture).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import time
import uuid

import pytest
from kubernetes import client

from tests.cluster import ociimage
from tests.cluster.conftest import BIN, Kubectl, create_namespace, wait_for
from tests.cluster.containerd import POD_CIDR, SOCKET
from tests.cluster.node import RealNode

pytestmark = pytest.mark.cluster

PROBE_SOURCE = os.path.join(os.path.dirname(__file__), "probe", "main.go")
RESTRICTED_POD = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"}},
                  "restartPolicy": "Never", "terminationGracePeriodSeconds": 2}
RESTRICTED_CONTAINER = {"securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True}}


# ------------------------------------------------------------------------------------ the cluster


@pytest.fixture(scope="module")
def probe_image(node, tmp_path_factory) -> str:
    """tests/cluster/probe built static (no libc) into a one-file image, imported into the node's containerd."""
    if not shutil.which("go"):
        pytest.skip("go missing: the probe image is built here (install Go, as scripts/install-kube.sh needs)")
    folder = tmp_path_factory.mktemp("probe")
    subprocess.run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(folder / "probe"), PROBE_SOURCE],
                   check=True, capture_output=True, env=os.environ | {"CGO_ENABLED": "0"}, timeout=300)
    data = (folder / "probe").read_bytes()
    name = f"assay.test/probe:{hashlib.sha256(data).hexdigest()[:12]}"
    ociimage.write(folder / "probe.tar", name, {"/probe": (data, 0o755)}, ["/probe"])
    node.containerd.import_image(folder / "probe.tar")
    # The store outlives the run: drop the probes of older sources (crictl rmi: also their image-id names).
    old = [i for i in node.containerd.images() if i.startswith("assay.test/probe:") and i != name]
    if old:
        subprocess.run([str(BIN / "crictl"), "--runtime-endpoint", f"unix://{SOCKET}", "rmi", *old],
                       check=True, capture_output=True, timeout=60)
    return name


@pytest.fixture
def node_ns(admin, request) -> str:
    name = f"node-{request.node.name.lower().replace('_', '-')[:40].strip('-')}-{uuid.uuid4().hex[:5]}"
    create_namespace(admin, name)  # Pod Security restricted, enforced
    yield name
    client.CoreV1Api(admin).delete_namespace(name)


def pod(name: str, image: str, args: list[str], **container) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": RESTRICTED_POD | {"containers": [
                RESTRICTED_CONTAINER | {"name": "probe", "image": image, "args": args,
                                        "imagePullPolicy": "IfNotPresent"} | container]}}


def read_pod(admin: client.ApiClient, ns: str, name: str) -> dict:
    raw = client.CoreV1Api(admin).read_namespaced_pod(name, ns, _preload_content=False)
    return json.loads(raw.data)


def terminated(admin: client.ApiClient, ns: str, name: str) -> dict | None:
    statuses = read_pod(admin, ns, name).get("status", {}).get("containerStatuses") or []
    return statuses[0]["state"].get("terminated") if statuses else None


# --------------------------------------------------------------------------------------- tests


def test_node_is_ready_and_schedulable(node, admin):
    got = json.loads(client.CoreV1Api(admin).read_node(node.name, _preload_content=False).data)
    assert {"type": "InternalIP", "address": node.ip} in got["status"]["addresses"]
    info = got["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://") and info["kubeletVersion"] == "v1.37.2"
    assert not got["spec"].get("taints") and not got["spec"].get("unschedulable")


def test_restricted_pod_runs_as_its_user_on_the_pod_network_and_calls_the_api(node, probe_image, admin,
                                                                               control_plane, node_ns):
    core = client.CoreV1Api(admin)
    core.create_namespaced_pod(node_ns, pod("whoami", probe_image, ["whoami"]))
    wait_for(lambda: read_pod(admin, node_ns, "whoami")["status"].get("phase") in ("Succeeded", "Failed"),
             "the whoami pod to finish", timeout=90)
    status = read_pod(admin, node_ns, "whoami")["status"]
    # kubectl logs: the API server fetches them from the kubelet's port, checking its certificate.
    logs = Kubectl(control_plane.kubeconfig)("logs", "-n", node_ns, "whoami").stdout
    assert status["phase"] == "Succeeded", (status, logs)
    report = json.loads(logs.strip().splitlines()[-1])
    pod_ip = status["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(POD_CIDR) and pod_ip in report["addresses"]
    assert (report["uid"], report["gid"], report["rootWritable"]) == (1000, 1000, False)
    # in-cluster config: the kubernetes Service's ClusterIP (routed by kube-proxy to the API server), the token
    assert (report["server"], report["user"]) == ("10.0.0.1:443", f"system:serviceaccount:{node_ns}:default")


def test_missing_image_fails_with_the_kubelets_pull_errors(node, admin, node_ns):
    # .invalid never resolves (RFC 2606), so the pull fails at once here, registry or not.
    client.CoreV1Api(admin).create_namespaced_pod(node_ns, pod("missing", "registry.invalid/assay/missing:1",
                                                                    ["whoami"]))

    def waiting_reason() -> str | None:
        statuses = read_pod(admin, node_ns, "missing").get("status", {}).get("containerStatuses") or []
        reason = ((statuses[0]["state"].get("waiting") or {}).get("reason")) if statuses else None
        return reason if reason in ("ErrImagePull", "ImagePullBackOff") else None

    began = time.monotonic()
    assert wait_for(waiting_reason, "ErrImagePull or ImagePullBackOff", timeout=60)
    assert time.monotonic() - began < 30


def test_memory_limit_is_enforced_by_the_kernel(node, probe_image, admin, node_ns):
    limits = {"resources": {"limits": {"memory": "32Mi", "cpu": "500m"}}}
    client.CoreV1Api(admin).create_namespaced_pod(node_ns, pod("oom", probe_image, ["oom"], **limits))
    state = wait_for(lambda: terminated(admin, node_ns, "oom"), "the oom pod's container to end", timeout=90)
    assert (state["reason"], state["exitCode"]) == ("OOMKilled", 137)


def test_job_deadline_kills_the_container(node, probe_image, admin, node_ns):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "deadline"},
           "spec": {"activeDeadlineSeconds": 10, "backoffLimit": 0,
                    "template": {k: v for k, v in pod("deadline", probe_image, ["sleep", "600"]).items()
                                 if k in ("metadata", "spec")}}}
    client.BatchV1Api(admin).create_namespaced_job(node_ns, job)
    running = wait_for(lambda: crictl_ps(node, node_ns), "the deadline Job's container to run", timeout=60)

    def failed() -> str | None:
        conditions = client.BatchV1Api(admin).read_namespaced_job("deadline", node_ns).status.conditions
        return next((c.reason for c in conditions or [] if c.type == "Failed" and c.status == "True"), None)

    assert wait_for(failed, "the Job to fail at its deadline", timeout=60) == "DeadlineExceeded"
    # The container itself is gone from containerd: the real kubelet stopped it.
    wait_for(lambda: not crictl_ps(node, node_ns), f"container {running[0]} to stop", timeout=60)


def test_termination_message_reaches_pod_status(node, probe_image, admin, node_ns):
    message = "shard 3: no such file: s3://bucket/x"
    client.CoreV1Api(admin).create_namespaced_pod(node_ns, pod("fail", probe_image, ["fail", message]))
    state = wait_for(lambda: terminated(admin, node_ns, "fail"), "the fail pod's container to end", timeout=60)
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", message)


def crictl_ps(node: RealNode, namespace: str) -> list[str]:
    """Ids of the running containers of pods in ``namespace``, as containerd sees them."""
    out = subprocess.run([str(BIN / "crictl"), "--runtime-endpoint", f"unix://{SOCKET}", "ps", "--quiet",
                          "--state", "Running", "--label", f"io.kubernetes.pod.namespace={namespace}"],
                         capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.split()
