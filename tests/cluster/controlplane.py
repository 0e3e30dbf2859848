"""A real Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

The API server listens on loopback, or, for a real node (tests/cluster/node.py), on the node's address:
pods cannot reach the host's 127.0.0.1, and the ``kubernetes`` Service may not point at a loopback address.

The binaries come from ``scripts/install-kube.sh`` (``.tools/bin``). Every component runs as a child
process with its log in ``<folder>/logs/``, authenticates with its own client certificate, and dies
with the test process (``setpriv --pdeathsig``) even when pytest is killed.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.cluster.pki import PKI

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: The controllers this suite relies on (kube-controller-manager --controllers).
CONTROLLERS = ("job-controller", "garbage-collector-controller", "ttl-after-finished-controller",
               "namespace-controller", "serviceaccount-controller", "serviceaccount-token-controller",
               "root-ca-certificate-publisher-controller", "deployment-controller", "replicaset-controller",
               "resourcequota-controller",
               # type-checks the chart's ValidatingAdmissionPolicy against the CRD (status.typeChecking)
               "validatingadmissionpolicy-status-controller")
#: What a real node needs on top: Ready status and its taints from heartbeats, Service endpoints for kube-proxy.
NODE_CONTROLLERS = ("node-lifecycle-controller", "endpoints-controller", "endpointslice-controller",
                    "pod-garbage-collector-controller")
ISSUER = "https://kubernetes.default.svc.cluster.local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Run a command so that it gets SIGTERM when the test process dies (no preexec_fn: we have threads).
WITH_PARENT = [shutil.which("setpriv") or "setpriv", "--pdeathsig", "TERM", "--"]
#: The same with SIGKILL: a terminated API server waits for etcd, which died with the test process too.
KILLED_WITH_PARENT = [*WITH_PARENT[:2], "KILL", "--"]


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, namespace: str | None = None) -> Path:
    context = {"cluster": "test", "user": "user"} | ({"namespace": namespace} if namespace else {})
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "test", "context": context}],
    }))
    return path


class ControlPlane:
    def __init__(self, bin_dir: Path, folder: Path, apiserver_args: tuple[str, ...] = (),
                 node_ip: str | None = None, controllers: tuple[str, ...] = CONTROLLERS) -> None:
        """``node_ip``: serve on that address instead of 127.0.0.1, advertised as the ``kubernetes``
        Service's endpoint (for a real node; see ``NODE_CONTROLLERS``)."""
        self.bin, self.folder = bin_dir, folder
        self.apiserver_args = apiserver_args  # e.g. an audit policy (bench/operator_scale.py)
        self.host, self.node_ip, self.controllers = node_ip or "127.0.0.1", node_ip, controllers
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pki = PKI(folder / "pki")
        self.port = free_port()
        self.server = f"https://{self.host}:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.admin_cert = self.pki.issue("admin", "assay-test-admin", ("system:masters",))
        self.kubeconfig = self.kubeconfig_for("admin", *self.admin_cert)

    def kubeconfig_for(self, name: str, cert: Path, key: Path) -> Path:
        return write_kubeconfig(self.folder / f"{name}.kubeconfig", self.server, self.pki.ca, cert, key)

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> ControlPlane:
        etcd_client, etcd_peer = free_port(), free_port()
        self._spawn("etcd", [
            f"--data-dir={self.folder / 'etcd'}", "--name=test", "--log-level=error", "--unsafe-no-fsync",
            f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=test=http://127.0.0.1:{etcd_peer}"])
        crt, key = self.pki.issue("apiserver", "kube-apiserver", server=True, sans=(self.host,))
        # The "kubernetes" Service's endpoints may not be a loopback address; nothing needs them then.
        endpoints = [] if self.node_ip else ["--endpoint-reconciler-type=none"]
        kubelet_crt, kubelet_key = self.pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            f"--bind-address={self.host}", f"--secure-port={self.port}", f"--advertise-address={self.host}",
            *endpoints,
            f"--tls-cert-file={crt}", f"--tls-private-key-file={key}", f"--client-ca-file={self.pki.ca}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction,PodSecurity",
            f"--service-account-issuer={ISSUER}", f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            # Logs and exec go to the kubelet's HTTPS endpoint; its certificate is checked.
            f"--kubelet-certificate-authority={self.pki.ca}", f"--kubelet-client-certificate={kubelet_crt}",
            f"--kubelet-client-key={kubelet_key}", "--kubelet-preferred-address-types=InternalIP",
            "--service-cluster-ip-range=10.0.0.0/24", "--profiling=false", "--v=1", *self.apiserver_args])
        self._wait_ready("/readyz", self.port, "kube-apiserver", timeout=120)
        kcm = self.kubeconfig_for("controller-manager",
                                  *self.pki.issue("controller-manager", "system:kube-controller-manager"))
        kcm_port = free_port()
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kcm}", f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
            # Each controller acts as its own service account with its bootstrap role, as on a real cluster.
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", "--leader-elect=false",
            f"--controllers={','.join(self.controllers)}", f"--root-ca-file={self.pki.ca}",
            f"--service-account-private-key-file={self.pki.sa_key}", "--use-service-account-credentials=true",
            "--kube-api-qps=100", "--kube-api-burst=200", "--v=1"])
        sched = self.kubeconfig_for("scheduler", *self.pki.issue("scheduler", "system:kube-scheduler"))
        sched_port = free_port()
        self._spawn("kube-scheduler", [
            f"--kubeconfig={sched}", f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}",
            "--bind-address=127.0.0.1", f"--secure-port={sched_port}", "--leader-elect=false", "--v=1"])
        self._wait_ready("/healthz", kcm_port, "kube-controller-manager", timeout=60)
        self._wait_ready("/healthz", sched_port, "kube-scheduler", timeout=60)
        return self

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            terminate(self.procs.pop(name), grace=10)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -------------------------------------------------------------------------------------- helpers

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        prefix = KILLED_WITH_PARENT if name == "kube-apiserver" else WITH_PARENT
        self.procs[name] = subprocess.Popen([*prefix, str(self.bin / name), *args], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def _wait_ready(self, path: str, port: int, name: str, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca)) if port == self.port else \
            ssl._create_unverified_context()  # the controllers serve self-signed certificates
        ctx.load_cert_chain(*self.admin_cert)
        host = self.host if port == self.port else "127.0.0.1"
        wait_ready(f"https://{host}:{port}{path}", self.procs[name], name, lambda: self.log_tail(name),
                   timeout, ctx)


def terminate(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaped either way."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ready(url: str, proc: subprocess.Popen, name: str, log_tail: Callable[[], str], timeout: float,
               context: ssl.SSLContext | None = None) -> None:
    """Poll a component's health ``url`` until it answers 200; fail at once, with its log, if it exits."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_tail()}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise RuntimeError(f"{name} not ready after {timeout:.0f}s ({last}):\n{log_tail()}")
