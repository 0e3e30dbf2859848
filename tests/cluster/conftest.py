"""The real control plane, the process kubelet, moto S3 and the Helm chart, started once.

The cluster fixtures are package-scoped: started by the first test here, stopped after the last, so
the rest of the suite does not share the 2 cores with an idle control plane.

Every test module here sets ``pytestmark = pytest.mark.cluster`` (``-m 'not cluster'`` leaves them out);
the tests skip, naming what is missing, only when .tools/bin lacks the binaries (``bash scripts/install-kube.sh``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import BINARIES, ControlPlane, free_port
from tests.cluster.kubelet import Kubelet, Node
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


# ------------------------------------------------------------------------------------ the cluster


@pytest.fixture(scope="package")
def control_plane(tmp_path_factory):
    missing = [b for b in (*BINARIES, "kubectl", "helm") if not (BIN / b).is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not in {BIN}: run `bash scripts/install-kube.sh` "
                    "(and `bash scripts/install-helm.sh`)")
    plane = ControlPlane(BIN, tmp_path_factory.mktemp("kube"))
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


@pytest.fixture(scope="session")
def image_env() -> dict[str, str]:
    """What the test "images" bring: this venv's python first on PATH, this checkout's code."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": f"{REPO / 'runner'}:{REPO / 'operator'}", "LANG": "C.UTF-8"}


@pytest.fixture(scope="package")
def kubelet(control_plane, admin, image_env, moto_endpoint):
    # Outside /tmp: the pods' own /tmp is bind-mounted over it, and their volumes live here.
    folder = Path(tempfile.mkdtemp(prefix="assay-kubelet-", dir="/var/tmp"))
    # the operator's process carries a guard that refuses (and logs) any S3 client or store connection
    operator_env = image_env | {"PYTHONPATH": f"{Path(__file__).parent / 'operator_site'}:{image_env['PYTHONPATH']}",
                                "ASSAY_TEST_STORE_PORTS": moto_endpoint.rsplit(":", 1)[1]}
    nodes = [Node("node-cpu", {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}),
             Node("node-gpu", {"cpu": "8", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi",
                               "nvidia.com/gpu": "1"}, {"nvidia.com/gpu.present": "true"})]
    k = Kubelet(control_plane, nodes, {OPERATOR_IMAGE: operator_env, RUNNER_IMAGE: image_env}, folder, admin).start()
    try:
        yield k
    finally:
        k.stop()
        # Keep the containers' logs beside the control plane's (pytest keeps its last 3 base temps).
        for log in folder.glob("*/containers/*/*.log"):
            dest = control_plane.logs / "pods" / f"{log.parent.name}-{log.parents[2].name[:8]}-{log.name}"
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(log, dest)
        shutil.rmtree(folder, ignore_errors=True)


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
def s3_env(moto_endpoint):
    """The test process's own S3 settings (for building inputs and reading outputs)."""
    from assay import storage

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_DEFAULT_REGION": "us-east-1", **S3_KEYS}.items():
            mp.setenv(key, value)
        storage.reset_clients()
        import boto3

        boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=BUCKET)
        yield moto_endpoint
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
def operator(control_plane, kubelet, kubectl, admin):
    """``helm install`` of charts/assay: the operator runs in a pod with the chart's RBAC only."""
    create_namespace(admin, OPERATOR_NS)
    kubectl.helm("install", RELEASE, str(CHART), "-n", OPERATOR_NS, "--wait", "--timeout", "180s",
                 "--set", "watch.clusterWide=true", "--set", "operator.resyncSeconds=1",
                 "--set", "operator.logFormat=text", "--set", f"health.port={free_port()}",
                 "--set", f"metrics.port={free_port()}", "--set", "jobDefaults.failFastSeconds=5")
    return Operator(kubectl, kubelet, admin)


class Operator:
    def __init__(self, kubectl: Kubectl, kubelet: Kubelet, admin: client.ApiClient) -> None:
        self.kubectl, self.kubelet, self.core = kubectl, kubelet, client.CoreV1Api(admin)

    def pods(self) -> list[dict[str, Any]]:
        raw = self.core.list_namespaced_pod(OPERATOR_NS, label_selector="app.kubernetes.io/name=assay",
                                            _preload_content=False)
        return json.loads(raw.data)["items"]

    def log(self) -> str:
        """Every operator pod's log so far (the kubelet keeps them in files)."""
        out = []
        for folder in self.kubelet.folder.glob("*/containers/operator"):
            out += [p.read_text(errors="replace") for p in sorted(folder.glob("*.log"))]
        return "\n".join(out)

    def restart(self) -> None:
        """Delete the operator's pod; its ReplicaSet starts a new one."""
        old = {p["metadata"]["uid"] for p in self.pods()}
        self.kubectl("delete", "pod", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=assay", "--wait=true")
        wait_for(lambda: [p for p in self.pods() if p["metadata"]["uid"] not in old and _ready(p)],
                 "a new operator pod to pass its readiness probe", timeout=90)


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
