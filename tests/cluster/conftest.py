"""The real control plane, a real node running the project's images, moto S3 and the Helm chart, started once.

The cluster fixtures are package-scoped: started by the first test here, stopped after the last, so
the rest of the suite does not share the 2 cores with an idle control plane.

The node is real (tests/cluster/node.py): containerd + runc, the kubelet and kube-proxy; the operator
and the job pods run in containers from the images ``scripts/build-images.sh`` built from this tree
(imported into the node's containerd by ``scripts/import-images.sh``). The API server and the S3 server
listen on the node's address, where pods reach them.

Every test module here sets ``pytestmark = pytest.mark.cluster`` (``-m 'not cluster'`` leaves them out);
the tests skip, naming what is missing, only when .tools/bin lacks the binaries (``bash scripts/install-kube.sh``,
``sudo bash scripts/install-node.sh``) or when not root; missing images fail them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.containerd import SOCKET
from tests.cluster.controlplane import BINARIES, CONTROLLERS, NODE_CONTROLLERS, ControlPlane, free_port
from tests.cluster.node import RealNode, host_ip
from tests.conftest import FIXTURES, REPO, write_dataset_yaml

BIN = REPO / ".tools" / "bin"
GROUP, VERSION, PLURAL = "assay.dev", "v1alpha1", "evaluationjobs"
OPERATOR_NS, RELEASE = "assay-system", "assay"
CHART = REPO / "charts" / "assay"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
OPERATOR_IMAGE = f"ghcr.io/assay-dev/assay-operator:{APP_VERSION}"
RUNNER_IMAGE = f"ghcr.io/assay-dev/assay-runner:{APP_VERSION}"
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
BUCKET = "assay"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
#: The one extended resource the node advertises (an admin's PATCH of its status, as without a device plugin).
GPU = "nvidia.com/gpu"
NODE = "assay-node"


# ------------------------------------------------------------------------------------ the cluster


@pytest.fixture(scope="package")
def node_ip() -> str:
    missing = [b for b in (*BINARIES, "kubectl", "helm", "kubelet", "kube-proxy", "crictl") if not (BIN / b).is_file()]
    missing += [t for t in ("containerd", "runc", "ctr", "podman", "skopeo") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: run `bash scripts/install-kube.sh`, `bash scripts/install-helm.sh`, "
                    "`sudo bash scripts/install-node.sh` and `sudo bash scripts/build-images.sh`")
    if os.geteuid() != 0:
        pytest.skip("the real node runs containers: needs root")
    ip = host_ip()
    if ip is None:
        pytest.skip("no non-loopback address for the node (pods cannot reach a loopback API server)")
    return ip


@pytest.fixture(scope="package")
def control_plane(node_ip, tmp_path_factory):
    plane = ControlPlane(BIN, tmp_path_factory.mktemp("kube"), node_ip=node_ip,
                         controllers=CONTROLLERS + NODE_CONTROLLERS)
    try:
        yield plane.start()
    finally:
        plane.stop()


@pytest.fixture(scope="package")
def admin(control_plane) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert = control_plane.server, str(control_plane.pki.ca)
    cfg.cert_file, cfg.key_file = map(str, control_plane.admin_cert)
    return client.ApiClient(cfg)


@pytest.fixture(scope="package")
def node(control_plane, admin, tmp_path_factory):
    """The real node with the project's images in its containerd and one (advertised) GPU."""
    n = RealNode(control_plane, admin, tmp_path_factory.mktemp("node"), BIN, NODE)
    n.start()
    try:
        import_images()
        advertise(admin, n.name, {GPU: "1"})
        yield n
    finally:
        n.stop()


def import_images() -> None:
    """``scripts/import-images.sh``: what containerd lacks of the images podman built (nothing, mostly)."""
    began = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "import-images.sh"), str(SOCKET)], capture_output=True,
                          text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        pytest.fail(f"the project's images could not be imported into the node's containerd; build them first "
                    f"with `sudo bash scripts/build-images.sh` (`make test` does):\n{proc.stdout}{proc.stderr}",
                    pytrace=False)
    print(f"images imported in {time.monotonic() - began:.0f}s:\n{proc.stdout}")


def advertise(admin: client.ApiClient, node: str, resources: dict[str, str]) -> None:
    """Extended resources in the Node's capacity, as an admin advertises them (the kubelet keeps them)."""
    core = client.CoreV1Api(admin)
    core.patch_node_status(node, {"status": {"capacity": resources}})
    wait_for(lambda: all(core.read_node(node).status.allocatable.get(k) == v for k, v in resources.items()),
             f"{resources} in {node}'s allocatable", timeout=60)


class Kubectl:
    """``kubectl`` and ``helm`` with the admin kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess:
        return self._run("kubectl", args, input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self._run("helm", args, None, check, timeout)

    def _run(self, tool: str, args: tuple[str, ...], input: str | None, check: bool, timeout: float):
        proc = subprocess.run([str(BIN / tool), "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(scope="package")
def kubectl(control_plane) -> Kubectl:
    return Kubectl(control_plane.kubeconfig)


def create_namespace(admin: client.ApiClient, name: str) -> None:
    core = client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": name, "labels": RESTRICTED}})
    wait_for(lambda: _exists(lambda: core.read_namespaced_service_account("default", name)),
             f"the default ServiceAccount of {name}", timeout=30)


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------- S3 and inputs


@pytest.fixture(scope="package")
def cluster_s3(node_ip):
    """A moto S3 server on the node's address, where pods reach it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=node_ip, port=port, verbose=False)
    server.start()
    yield f"http://{node_ip}:{port}"
    server.stop()


@pytest.fixture(scope="package")
def s3_env(cluster_s3):
    """The test process's own S3 settings (for building inputs and reading outputs)."""
    from assay import storage

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ENDPOINT_URL": cluster_s3, "AWS_DEFAULT_REGION": "us-east-1", **S3_KEYS}.items():
            mp.setenv(key, value)
        storage.reset_clients()
        import boto3

        boto3.client("s3", endpoint_url=cluster_s3).create_bucket(Bucket=BUCKET)
        yield cluster_s3
    storage.reset_clients()


@pytest.fixture(scope="package")
def inputs(s3_env, pennfudan_dir, tmp_path_factory) -> dict[str, str]:
    """The real PennFudanPed test split (17 images, 3 shards) and the oracle model, in moto S3."""
    from assay import datasets, packages

    store = f"s3://{BUCKET}/store"
    cfg = datasets.load_config(write_dataset_yaml(tmp_path_factory.mktemp("ds"), pennfudan_dir))
    dataset = datasets.build(cfg, store, log=lambda s: None)
    model = packages.build(packages.load_config(FIXTURES / "oracle" / "model.yaml"), store, log=lambda s: None)
    return {"dataset": dataset.uri, "model": model.uri, "shards": str(len(dataset.shards)),
            "samples": str(sum(s.samples for s in dataset.shards))}


# -------------------------------------------------------------------------------------- the chart


@pytest.fixture(scope="package")
def operator(control_plane, node, kubectl, admin):
    """``helm install`` of charts/assay: the operator runs from its image, in a pod with the chart's RBAC
    only, and reaches the API server through the ``kubernetes`` Service (in-cluster config)."""
    create_namespace(admin, OPERATOR_NS)
    return Operator(kubectl, admin).install()


class Operator:
    #: The test install: every namespace (no resync: watches and timers only), plain log lines, pull failures
    #: fail jobs at once, the operator's requests in a priority level of their own (API Priority and Fairness).
    VALUES = ("watch.clusterWide=true", "operator.logFormat=text",
              "jobDefaults.failFastSeconds=5", "flowControl.enabled=true")

    #: The chart's default: one leads on the Lease, one follows.
    REPLICAS = 2

    def __init__(self, kubectl: Kubectl, admin: client.ApiClient) -> None:
        self.kubectl, self.core = kubectl, client.CoreV1Api(admin)
        self.past: list[str] = []  # the logs of operator pods deleted since the install

    def install(self) -> Operator:
        self.kubectl.helm("install", RELEASE, str(CHART), "-n", OPERATOR_NS, "--wait", "--timeout", "180s",
                          *[arg for value in self.VALUES for arg in ("--set", value)])
        return self

    def uninstall(self) -> None:
        """``helm uninstall`` (the CRD stays, and with it every EvaluationJob)."""
        self.past.append(self._current_logs())
        self.kubectl.helm("uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", "--timeout", "120s")

    def pods(self) -> list[dict[str, Any]]:
        raw = self.core.list_namespaced_pod(OPERATOR_NS, label_selector="app.kubernetes.io/name=assay",
                                            _preload_content=False)
        return json.loads(raw.data)["items"]

    def log(self) -> str:
        """Every operator pod's log so far: the running ones' through the kubelet (``kubectl logs``),
        the deleted ones' as kept when they were deleted."""
        return "\n".join([*self.past, self._current_logs()])

    def _current_logs(self) -> str:
        out = []
        for pod in self.pods():
            name = pod["metadata"]["name"]
            for previous in ("--previous=true", "--previous=false"):  # a restarted container's log first
                out.append(self.kubectl("logs", "-n", OPERATOR_NS, name, "-c", "operator", previous,
                                        check=False).stdout)
        return "\n".join(out)

    def restart(self) -> None:
        """Delete the operator's pod; its ReplicaSet starts a new one."""
        old = {p["metadata"]["uid"] for p in self.pods()}
        self.past.append(self._current_logs())
        self.kubectl("delete", "pod", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=assay", "--wait=true")
        wait_for(lambda: [p for p in self.pods() if p["metadata"]["uid"] not in old and _ready(p)],
                 "a new operator pod to pass its readiness probe", timeout=90)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The operator scaled to zero (an upgrade, a crash loop) for the duration of the block."""
        self.past.append(self._current_logs())
        self.kubectl("scale", "deployment/assay", "-n", OPERATOR_NS, "--replicas=0")
        try:
            wait_for(lambda: not self.pods(), "the operator pod to go", timeout=90)
            yield
        finally:
            self.kubectl("scale", "deployment/assay", "-n", OPERATOR_NS, f"--replicas={self.REPLICAS}")
            self.kubectl("rollout", "status", "deployment/assay", "-n", OPERATOR_NS, "--timeout=120s")


    def leader(self) -> str | None:
        """The name of the pod holding the leader-election Lease (None while none does)."""
        raw = self.kubectl("get", "lease", RELEASE, "-n", OPERATOR_NS, "-o", "json", check=False)
        holder = (json.loads(raw.stdout or "{}").get("spec") or {}).get("holderIdentity") if raw.returncode == 0 else None
        return holder.rsplit("_", 1)[0] if holder else None

    @contextlib.contextmanager
    def env(self, **variables: str) -> Iterator[None]:
        """The operator restarted with these ASSAY_OPERATOR_* variables for the duration of the block."""
        self.past.append(self._current_logs())
        deployment = ("deployment/assay", "-n", OPERATOR_NS)
        self.kubectl("set", "env", *deployment, *[f"{k}={v}" for k, v in variables.items()])
        try:
            self.kubectl("rollout", "status", *deployment, "--timeout=120s")
            yield
        finally:
            self.past.append(self._current_logs())
            self.kubectl("set", "env", *deployment, *[f"{k}-" for k in variables])
            self.kubectl("rollout", "status", *deployment, "--timeout=120s")


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


# ------------------------------------------------------------------------------------- per test


@pytest.fixture
def ns(admin, request, s3_env) -> str:
    """A fresh namespace (Pod Security restricted enforced) with the S3 credentials Secret."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:5]}"
    create_namespace(admin, name)
    client.CoreV1Api(admin).create_namespaced_secret(name, {"metadata": {"name": "s3"}, "stringData": S3_KEYS})
    yield name
    client.CoreV1Api(admin).delete_namespace(name)


def evaljob(name: str, inputs: dict[str, str], endpoint: str, workers: int = 2, **spec: Any) -> dict[str, Any]:
    """An EvaluationJob manifest for the test split with the oracle handler, reading moto S3."""
    body: dict[str, Any] = {
        "model": {"uri": inputs["model"]}, "dataset": {"uri": inputs["dataset"]},
        "output": {"uri": f"s3://{BUCKET}/jobs/{name}-{uuid.uuid4().hex[:6]}"},
        "ppl": {"workers": workers, "batchSize": 4, "device": "cpu", "maxRetriesPerShard": 2},
        "storage": {"endpoint": endpoint, "secretRef": {"name": "s3"}},
        "runtime": {"env": [{"name": "ASSAY_TEST_JITTER", "value": "1"},
                            {"name": "ASSAY_PROGRESS_INTERVAL", "value": "0.2"}]},
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = body[key] | value
        else:
            body[key] = value
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EvaluationJob", "metadata": {"name": name}, "spec": body}


class Api:
    """Typed-free shortcuts a test needs against one namespace."""

    def __init__(self, admin: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.custom, self.batch, self.core = (client.CustomObjectsApi(admin), client.BatchV1Api(admin),
                                              client.CoreV1Api(admin))

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def jobs(self) -> dict[str, dict[str, Any]]:
        raw = json.loads(self.batch.list_namespaced_job(self.ns, _preload_content=False).data)
        return {j["metadata"]["name"]: j for j in raw["items"]}

    def pods(self, selector: str = "") -> list[dict[str, Any]]:
        raw = self.core.list_namespaced_pod(self.ns, label_selector=selector, _preload_content=False)
        return json.loads(raw.data)["items"]

    def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float = 180) -> dict[str, Any]:
        return wait_for(lambda: self.status(name) if self.status(name).get("phase") in phases else None,
                        f"{name} to reach {phases} (now {self.status(name).get('phase')})", timeout)


@pytest.fixture
def api(admin, ns) -> Api:
    return Api(admin, ns)


# -------------------------------------------------------------------------------------- Kueue


@pytest.fixture(scope="package")
def kueue(control_plane, admin, tmp_path_factory):
    """A real Kueue (scripts/install-kueue.sh) with its CRDs and its batch/v1 Job integration; queue-name
    label required (``kueue.restart(manage_jobs_without_queue_name=True)`` switches that)."""
    from tests.cluster.kueue import Kueue

    if not (BIN / "kueue").is_file():
        pytest.skip(f"kueue not in {BIN}: run `bash scripts/install-kueue.sh`")
    k = Kueue(control_plane, admin, tmp_path_factory.mktemp("kueue"))
    try:
        yield k.start()
    finally:
        k.stop()
