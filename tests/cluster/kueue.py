"""A real Kueue (``.tools/bin/kueue`` from ``scripts/install-kueue.sh``) beside the test control plane.

Kueue runs as a child process like the control plane's components (``setpriv --pdeathsig``), with its log
in ``<control plane>/logs/kueue.log``, its state (configuration, certificates, kubeconfig) in its own
folder, a client certificate in ``system:masters``, and its admission webhooks registered with a URL on
loopback and the test CA. Only the integration this suite uses is enabled: ``batch/job``.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.cluster.controlplane import WITH_PARENT, ControlPlane, free_port, terminate, wait_ready

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
QUEUE_LABEL = f"{GROUP}/queue-name"
PRIORITY_LABEL = f"{GROUP}/priority-class"
DEFAULT_VERSION = "v0.17.0"
#: Only the webhooks for these API groups are registered: Kueue's own objects and batch/v1 Jobs. The
#: pod/deployment/... ones would put every pod creation in the suite behind a Fail-policy webhook.
WEBHOOK_GROUPS = {GROUP, "batch"}
WEBHOOK_CONFIGS = {"MutatingWebhookConfiguration": "assay-test-kueue-mutating",
                   "ValidatingWebhookConfiguration": "assay-test-kueue-validating"}
#: Kueue v0.17 reads its metrics certificate from this fixed path when internal cert management is off
#: (cmd/kueue/main.go; no flag or setting moves it). The fixture overlays /etc in Kueue's own mount
#: namespace instead of writing into the host's /etc (this is the path below /etc).
METRICS_CERT_DIR = "kueue/metrics/certs"


class Kueue:
    def __init__(self, plane: ControlPlane, admin: client.ApiClient, folder: Path,
                 version: str = os.environ.get("ASSAY_KUEUE_VERSION", DEFAULT_VERSION)) -> None:
        self.plane, self.admin, self.folder = plane, admin, folder
        self.home = plane.bin.parent / f"kueue-{version}"  # CRDs and webhook manifests (install-kueue.sh)
        self.log = plane.logs / "kueue.log"
        self.webhook_port, self.metrics_port, self.health_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.manage_jobs_without_queue_name = False
        folder.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = plane.kubeconfig_for("kueue", *plane.pki.issue("kueue", "kueue", ("system:masters",)))
        crt, key = plane.pki.issue("kueue-serving", "kueue-webhook", server=True)  # SANs include 127.0.0.1
        for cert_dir in (folder / "webhook-certs", folder / "etc-upper" / METRICS_CERT_DIR):
            cert_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(crt, cert_dir / "tls.crt")
            shutil.copyfile(key, cert_dir / "tls.key")
        (folder / "etc-work").mkdir(exist_ok=True)

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self, manage_jobs_without_queue_name: bool = False) -> Kueue:
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(self.home / "crds"))
        names = [f"crd/{yaml.safe_load(p.read_text())['metadata']['name']}"
                 for p in sorted((self.home / "crds").glob("*.yaml"))]
        self._kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        self._run(manage_jobs_without_queue_name)
        # After readiness: a Fail-policy webhook registered earlier would reject requests meanwhile.
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=self._webhooks())
        self._wait_webhooks(timeout=30)
        return self

    def restart(self, manage_jobs_without_queue_name: bool) -> None:
        """A new Kueue process with that setting (its webhooks stay registered and answer once it is ready)."""
        self._terminate()
        self._run(manage_jobs_without_queue_name)

    def stop(self) -> None:
        # The webhooks go first: the Job webhook's failurePolicy is Fail, and the suite goes on after us.
        for kind, name in WEBHOOK_CONFIGS.items():
            self._kubectl("delete", kind.lower(), name, "--ignore-not-found", check=False)
        self._terminate()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -------------------------------------------------------------------------------------- helpers

    def _run(self, manage_jobs_without_queue_name: bool) -> None:
        self.manage_jobs_without_queue_name = manage_jobs_without_queue_name
        config = self.folder / "config.yaml"
        config.write_text(yaml.safe_dump(self._configuration(manage_jobs_without_queue_name)))
        upper, work = self.folder / "etc-upper", self.folder / "etc-work"
        overlay = f'mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc && exec "$0" "$@"'
        log = open(self.log, "ab")  # noqa: SIM115 - the child keeps it; a restart appends
        self.proc = subprocess.Popen(
            [*WITH_PARENT, shutil.which("unshare") or "unshare", "-m", "--propagation", "private", "--",
             "sh", "-c", overlay, str(self.plane.bin / "kueue"), f"--config={config}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KUBECONFIG": str(self.kubeconfig)})
        log.close()
        self._wait_ready(timeout=120)

    def _configuration(self, manage_jobs_without_queue_name: bool) -> dict[str, Any]:
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": "kueue-system",  # its default reads a service-account file we do not have
            "manageJobsWithoutQueueName": manage_jobs_without_queue_name,
            "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port,
                        "certDir": str(self.folder / "webhook-certs")},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "leaderElection": {"leaderElect": False},
            "clientConnection": {"qps": 50, "burst": 100},
            "integrations": {"frameworks": ["batch/job"]},
            # The visibility API server wants an APIService and its own serving setup; nothing here uses it.
            "featureGates": {"VisibilityOnDemand": False},
        }

    def _webhooks(self) -> str:
        """Kueue's released webhook manifests, cut to WEBHOOK_GROUPS and pointed at our loopback port."""
        ca = base64.b64encode(self.plane.pki.ca.read_bytes()).decode()
        docs = []
        for doc in yaml.safe_load_all((self.home / "webhooks.yaml").read_text()):
            if not doc:
                continue
            hooks = [h for h in doc["webhooks"]
                     if all(set(r["apiGroups"]) <= WEBHOOK_GROUPS for r in h["rules"])]
            for h in hooks:
                path = h["clientConfig"]["service"]["path"]
                h["clientConfig"] = {"url": f"https://127.0.0.1:{self.webhook_port}{path}", "caBundle": ca}
            doc["metadata"] = {"name": WEBHOOK_CONFIGS[doc["kind"]]}
            doc["webhooks"] = hooks
            docs.append(doc)
        return yaml.safe_dump_all(docs)

    def _terminate(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        wait_ready(f"http://127.0.0.1:{self.health_port}/readyz", self.proc, "kueue", self.log_tail, timeout)

    def _wait_webhooks(self, timeout: float) -> None:
        """Until the API server calls the Job webhook: a dry-run queued Job comes back suspended."""
        batch = client.BatchV1Api(self.admin)
        probe = {"metadata": {"generateName": "kueue-probe-", "labels": {QUEUE_LABEL: "probe"}},
                 "spec": {"suspend": False, "template": {"spec": {
                     "restartPolicy": "Never", "containers": [{"name": "c", "image": "probe"}]}}}}
        deadline = time.monotonic() + timeout
        while not batch.create_namespaced_job("default", probe, dry_run="All").spec.suspend:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not call Kueue's Job webhook within {timeout:.0f}s")
            time.sleep(0.1)

    def _kubectl(self, *args: str, input: str | None = None, check: bool = True) -> None:
        kubectl = [str(self.plane.bin / "kubectl"), "--kubeconfig", str(self.plane.kubeconfig)]
        proc = subprocess.run([*kubectl, *args], input=input, capture_output=True, text=True, timeout=120,
                              check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")


# ------------------------------------------------------------------------------ Kueue's objects


def _create(admin: client.ApiClient, kind: str, name: str, namespace: str | None = None,
            **fields: Any) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, **fields}
    custom, plural = client.CustomObjectsApi(admin), kind.lower() + ("es" if kind.endswith("s") else "s")
    if namespace:
        return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    return custom.create_cluster_custom_object(GROUP, VERSION, plural, body)


def resource_flavor(admin: client.ApiClient, name: str,
                    node_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return _create(admin, "ResourceFlavor", name, spec={"nodeLabels": node_labels} if node_labels else {})


def cluster_queue(admin: client.ApiClient, name: str, flavor: str, quotas: dict[str, str],
                  preempt_lower_priority: bool = False) -> dict[str, Any]:
    """A ClusterQueue open to every namespace, with one flavor covering exactly ``quotas``' resources
    (e.g. ``{"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}``): a pod that requests anything else
    (ephemeral-storage, say) is not admitted."""
    spec: dict[str, Any] = {
        "namespaceSelector": {},  # null would admit no namespace at all
        "resourceGroups": [{"coveredResources": list(quotas), "flavors": [
            {"name": flavor, "resources": [{"name": r, "nominalQuota": q} for r, q in quotas.items()]}]}],
    }
    if preempt_lower_priority:
        spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
    return _create(admin, "ClusterQueue", name, spec=spec)


def local_queue(admin: client.ApiClient, namespace: str, name: str, cluster_queue: str) -> dict[str, Any]:
    return _create(admin, "LocalQueue", name, namespace, spec={"clusterQueue": cluster_queue})


def workload_priority_class(admin: client.ApiClient, name: str, value: int) -> dict[str, Any]:
    """Jobs pick it with the label ``kueue.x-k8s.io/priority-class`` (PRIORITY_LABEL)."""
    return _create(admin, "WorkloadPriorityClass", name, value=value)


def workloads(admin: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    custom = client.CustomObjectsApi(admin)
    return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of that type, or {} when it has none yet."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})
