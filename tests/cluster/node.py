"""A real node for the test control plane: containerd + runc, the kubelet and kube-proxy, on this machine.

Installed by ``scripts/install-node.sh``. The control plane must serve on the node's address
(``ControlPlane(node_ip=host_ip(), controllers=CONTROLLERS + NODE_CONTROLLERS)``): pods reach the API
server through the ``kubernetes`` Service, which kube-proxy routes to that address.

Everything runs as children of the test process and dies with it. The node changes the host, so
``stop`` undoes it, step by step, even after a failed start: the pods (crictl rmp: containers, network
namespaces, mounts), kube-proxy's iptables chains (``kube-proxy --cleanup``), the pods' bridge, the
kubelet's mounts, folder and cgroups, and the sysctls the kubelet, kube-proxy and the CNI bridge
rewrite at every start (``Sysctls``). A run that was killed leaves its saved sysctls behind; the next
``start`` restores them first, and clears the pods and chains the killed run left.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.containerd import BRIDGE, POD_CIDR, RUN, SOCKET, Containerd
from tests.cluster.controlplane import WITH_PARENT, ControlPlane, free_port, wait_ready

#: The kubelet's folder (pods' volumes, plugins): one node per machine, as for the containerd.
KUBELET_ROOT = Path("/var/lib/assay-kubelet")
#: The cgroup v1 hierarchies the kubelet makes ``kubepods`` in (cgroupfs driver).
CGROUP_V1 = Path("/sys/fs/cgroup")


def host_ip() -> str | None:
    """The address this machine's default route leaves from (the node IP), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))  # TEST-NET-3; no packet is sent: this only picks the route
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if ip.startswith("127.") else ip


class Sysctls:
    """The host settings the node rewrites, saved to a file before it starts and written back after.

    The kubelet sets vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops and the
    root keyring quotas at every start; the CNI bridge turns on ip_forward. kube-proxy is configured to
    leave its conntrack and route_localnet settings alone; they are saved all the same."""

    KEYS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
            "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
            "net.ipv4.conf.all.route_localnet", "net.netfilter.nf_conntrack_max",
            "net.netfilter.nf_conntrack_tcp_timeout_established",
            "net.netfilter.nf_conntrack_tcp_timeout_close_wait")

    def __init__(self, saved: Path = RUN.with_name("assay-node-sysctls.json")) -> None:
        self.saved = saved

    @staticmethod
    def _path(key: str) -> Path:
        return Path("/proc/sys") / key.replace(".", "/")

    def save(self) -> None:
        if self.saved.exists():  # a killed run's: those are the host's own values
            self.restore()
        values = {k: self._path(k).read_text().strip() for k in self.KEYS if self._path(k).exists()}
        self.saved.write_text(json.dumps(values, indent=1))

    def restore(self) -> None:
        if not self.saved.exists():
            return
        for key, value in json.loads(self.saved.read_text()).items():
            if self._path(key).read_text().strip() != value:
                self._path(key).write_text(value)
        self.saved.unlink()


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

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 120) -> RealNode:
        self.containerd.start()  # first: its lock says no other node runs here, whose state to leave alone
        try:
            self.sysctls.save()
            self.containerd.ensure_pause()
            self.containerd.remove_pods()  # a killed run's, recovered from containerd's store
            self._cleanup_iptables()
            self._clear_kubelet_root()
            self._allow_apiserver_to_kubelet()
            self._start_kubelet()
            self._start_kube_proxy()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Undo the node, each step on its own: one failing does not keep the others from running."""
        steps = [lambda: self._terminate("kubelet"), self.containerd.remove_pods,
                 lambda: self._terminate("kube-proxy"), self._cleanup_iptables, self.containerd.stop,
                 lambda: subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False),
                 self._clear_kubelet_root, _remove_kubepods_cgroups, self.sysctls.restore]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - report them all at the end
                errors.append(f"{type(exc).__name__}: {exc}")
        if errors:
            raise RuntimeError("the real node did not stop cleanly:\n" + "\n".join(errors))

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
        config = kubelet_config(self.plane.pki.ca, serving, free_port(), free_port())
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

    # ---------------------------------------------------------------------------------- host state

    def _cleanup_iptables(self) -> None:
        """Remove the KUBE-* chains kube-proxy and the kubelet (this run's or a killed one's) leave in iptables."""
        out = subprocess.run([str(self.bin / "kube-proxy"), "--cleanup", "--v=0"], capture_output=True,
                             text=True, timeout=60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"kube-proxy --cleanup exited {out.returncode}: {out.stderr[-2000:]}")
        # The kubelet's own (pkg/kubelet/kubelet_network_linux.go), which it makes at every start and
        # never removes: KUBE-FIREWALL drops packets to 127.0.0.0/8 that do not come from it.
        for tool in ("iptables", "ip6tables"):
            for args in (("-D", "INPUT", "-j", "KUBE-FIREWALL"), ("-D", "OUTPUT", "-j", "KUBE-FIREWALL"),
                         ("-F", "KUBE-FIREWALL"), ("-X", "KUBE-FIREWALL"), ("-X", "KUBE-KUBELET-CANARY"),
                         ("-t", "nat", "-X", "KUBE-KUBELET-CANARY"), ("-t", "mangle", "-X", "KUBE-KUBELET-CANARY"),
                         ("-t", "mangle", "-X", "KUBE-IPTABLES-HINT")):
                subprocess.run([tool, "-w", *args], capture_output=True, check=False)  # absent: fine
            left = [line for line in subprocess.run([f"{tool}-save"], capture_output=True, text=True,
                                                    check=False).stdout.splitlines() if "KUBE-" in line]
            if left:
                raise RuntimeError(f"{tool} rules left: {left}")

    def _clear_kubelet_root(self) -> None:
        """Unmount what the kubelet mounted (secret and projected volumes are tmpfs) and remove its folder."""
        for root in (KUBELET_ROOT, RUN):
            for mount in reversed(_mounts_under(root)):
                subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False)
            if _mounts_under(root):
                raise RuntimeError(f"mounts left under {root}: {_mounts_under(root)}")
        shutil.rmtree(KUBELET_ROOT, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, outermost first (from /proc/self/mountinfo)."""
    prefix = str(root).rstrip("/") + "/"
    points = [line.split()[4].replace("\\040", " ") for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(root) or p.startswith(prefix)]


def _remove_kubepods_cgroups() -> None:
    """The kubelet's empty ``kubepods`` cgroups (cgroup v1 keeps them after their processes are gone)."""
    for tree in CGROUP_V1.glob("*/kubepods"):
        for folder in sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            folder.rmdir()
        tree.rmdir()


def kubelet_config(ca: Path, serving: tuple[Path, Path], port: int, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "port": port, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
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
