"""A real node for the test control plane: containerd + runc, the kubelet and kube-proxy, on this machine.

Installed by ``scripts/install-node.sh``. The control plane must serve on the node's address
(``ControlPlane(node_ip=host_ip(), controllers=CONTROLLERS + NODE_CONTROLLERS)``): pods reach the API
server through the ``kubernetes`` Service, which kube-proxy routes to that address.

Everything runs as children of the test process and dies with it. The node changes the host (the
kubelet rewrites sysctls, leaves iptables chains, mounts and cgroups; containers outlive containerd):
``stop`` puts it back (tests/cluster/nodehost.py), even after a failed start, and so does a guard
process if the test process is killed. ``start`` also clears what a run killed some other way left.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.containerd import POD_CIDR, SOCKET, Containerd
from tests.cluster.controlplane import WITH_PARENT, ControlPlane, free_port, wait_ready
from tests.cluster.nodehost import KUBELET_ROOT, Guard, Sysctls, cleanup_iptables, clear_kubelet_root, undo


def host_ip() -> str | None:
    """The address this machine's default route leaves from (the node IP), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))  # TEST-NET-3; no packet is sent: this only picks the route
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if ip.startswith("127.") else ip


class RealNode:
    def __init__(self, plane: ControlPlane, admin: client.ApiClient, folder: Path, bin_dir: Path,
                 name: str = "assay-node") -> None:
        if not plane.node_ip:
            raise ValueError("a real node needs a control plane serving on the node IP (ControlPlane(node_ip=...))")
        self.plane, self.admin, self.folder, self.bin, self.name = plane, admin, folder, bin_dir, name
        self.ip = plane.node_ip
        self.containerd = Containerd(folder / "containerd", bin_dir / "crictl")
        self.sysctls = Sysctls()
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = plane.logs
        self.guard: Guard | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 120) -> RealNode:
        self.containerd.start()  # first: its lock says no other node runs here, whose state to leave alone
        try:
            self.guard = Guard(self.folder, self.bin, self.logs / "nodehost.log")
            self.guard.watch(self.containerd.proc.pid)
            self.sysctls.save()
            self.containerd.ensure_pause()
            self.containerd.remove_pods()  # a killed run's, recovered from containerd's store
            cleanup_iptables(self.bin)
            clear_kubelet_root()
            self._allow_apiserver_to_kubelet()
            self._start_kubelet()
            self._start_kube_proxy()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the node and put the host back; raises, once all is tried, if some step failed."""
        for name in ("kubelet", "kube-proxy"):  # first, so that neither makes anything again
            self._terminate(name)
        self._keep_pod_logs()
        errors = undo(self.containerd, self.bin)
        if self.guard:
            self.guard.release()
            self.guard = None
        if errors:
            raise RuntimeError("the real node did not stop cleanly:\n" + "\n".join(errors))

    def _keep_pod_logs(self) -> None:
        """Copy the containers' logs beside the control plane's before the kubelet's folder goes."""
        for log in (KUBELET_ROOT / "pod-logs").glob("*/*/*.log"):  # NAMESPACE_POD_UID/CONTAINER/N.log
            dest = self.logs / "pods" / f"{log.parents[1].name.rsplit('_', 1)[0]}-{log.parent.name}-{log.name}"
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(log, dest)

    def wait_ready(self, timeout: float) -> None:
        """Until the Node is Ready and the node-lifecycle controller has lifted its not-ready taint."""
        core, deadline, state = client.CoreV1Api(self.admin), time.monotonic() + timeout, "not registered"
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                node = core.read_node(self.name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            else:
                ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
                taints = [t.key for t in node.spec.taints or []]
                state = f"Ready={ready[0].status if ready else '?'} ({ready[0].message if ready else ''}), " \
                        f"taints={taints}"
                if ready and ready[0].status == "True" and not taints:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"node {self.name} not ready after {timeout:.0f}s: {state}\n{self.log_tail('kubelet')}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        return self.plane.log_tail(name, lines)

    # -------------------------------------------------------------------------------- components

    def _start_kubelet(self) -> None:
        folder = self.folder / "kubelet"
        folder.mkdir(parents=True, exist_ok=True)
        crt, key = self.plane.pki.issue(f"node-{self.name}", f"system:node:{self.name}", ("system:nodes",))
        kubeconfig = self.plane.kubeconfig_for(f"node-{self.name}", crt, key)
        serving = self.plane.pki.issue("kubelet-serving", self.name, server=True, sans=(self.ip, self.name))
        config = kubelet_config(self.plane.pki.ca, serving, self.ip, free_port(), free_port())
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        self._spawn("kubelet", [
            f"--config={folder / 'config.yaml'}", f"--kubeconfig={kubeconfig}", f"--root-dir={KUBELET_ROOT}",
            f"--hostname-override={self.name}", f"--node-ip={self.ip}", "--v=1"])

    def _start_kube_proxy(self) -> None:
        folder = self.folder / "kube-proxy"
        folder.mkdir(parents=True, exist_ok=True)
        kubeconfig = self.plane.kubeconfig_for("kube-proxy", *self.plane.pki.issue("kube-proxy", "system:kube-proxy"))
        config = kube_proxy_config(kubeconfig, self.name, free_port(), free_port())
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [f"--config={folder / 'config.yaml'}"])
        port = int(config["healthzBindAddress"].rsplit(":", 1)[1])
        wait_ready(f"http://127.0.0.1:{port}/livez", self.procs["kube-proxy"], "kube-proxy",
                   lambda: self.log_tail("kube-proxy"), 60)

    def _allow_apiserver_to_kubelet(self) -> None:
        """The API server's kubelet client may read logs (and exec): the kubelet asks the API server
        (webhook authorization), and only RBAC says yes, as kubeadm sets it up."""
        rbac = client.RbacAuthorizationV1Api(self.admin)
        body = {"metadata": {"name": "assay-apiserver-kubelet"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "system:kubelet-api-admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                              "name": "kube-apiserver-kubelet-client"}]}
        try:
            rbac.create_cluster_role_binding(body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen([*WITH_PARENT, str(self.bin / name), *args], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.guard.watch(self.procs[name].pid)

    def _terminate(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kubelet_config(ca: Path, serving: tuple[Path, Path], ip: str, port: int, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": ip, "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        # The API server checks this certificate (--kubelet-certificate-authority) for logs and exec.
        "tlsCertFile": str(serving[0]), "tlsPrivateKeyFile": str(serving[1]),
        "authentication": {"x509": {"clientCAFile": str(ca)}, "webhook": {"enabled": True},
                           "anonymous": {"enabled": False}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{SOCKET}", "imageServiceEndpoint": f"unix://{SOCKET}",
        # This VM: cgroup v1 (hybrid), no systemd, swap allowed to exist.
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False,
        # No CAP_SYS_RESOURCE: the kubelet may not lower its own oom_score_adj (-999 by default).
        "oomScoreAdj": 0,
        "resolvConf": "/etc/resolv.conf", "clusterDomain": "cluster.local",
        "podLogsDir": str(KUBELET_ROOT / "pod-logs"),
        # The disk is shared with everything else: no DiskPressure taint and no image garbage collection
        # (the project's images were imported, not pulled, and cannot be pulled again).
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "rotateCertificates": False,
    }


def kube_proxy_config(kubeconfig: Path, node: str, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)}, "mode": "iptables", "hostnameOverride": node,
        "clusterCIDR": POD_CIDR, "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # Leave the host's sysctls alone: no NodePorts on localhost (route_localnet), conntrack as it is.
        "iptables": {"localhostNodePorts": False},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "nodePortAddresses": ["primary"],
        "oomScoreAdj": 0,  # no CAP_SYS_RESOURCE here (kube-proxy asks for -999)
    }
