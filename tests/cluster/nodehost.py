"""What the real node (tests/cluster/node.py) changes on this machine, and how it is put back.

The kubelet rewrites kernel sysctls at every start and leaves iptables chains; kube-proxy leaves its
KUBE-* chains; the CNI bridge plugin turns on ip_forward and leaves its bridge; the kubelet mounts
volumes under its folder and makes ``kubepods`` cgroups; containers outlive containerd (their shims
are detached). ``undo`` puts all of it back, one step at a time. ``Guard`` runs ``undo`` from a process
of its own when the test process dies without stopping the node (SIGKILL, a crash), so that a killed
run does not leave, say, kernel.panic_on_oops=1 behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster.containerd import BRIDGE, REPO, RUN, Containerd

#: The kubelet's folder (pods' volumes, plugins): one node per machine, as for the containerd.
KUBELET_ROOT = Path("/var/lib/assay-kubelet")
#: Where the host's sysctls are kept while a node runs (restored from there after a crash, too).
SYSCTLS_SAVED = RUN.with_name("assay-node-sysctls.json")
#: The cgroup v1 hierarchies the kubelet makes ``kubepods`` in (cgroupfs driver).
CGROUP_V1 = Path("/sys/fs/cgroup")


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

    def __init__(self, saved: Path = SYSCTLS_SAVED) -> None:
        self.saved = saved

    @staticmethod
    def _path(key: str) -> Path:
        return Path("/proc/sys") / key.replace(".", "/")

    def save(self) -> None:
        if self.saved.exists():  # a killed run's, not put back: those are the host's own values
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


def cleanup_iptables(bin_dir: Path) -> None:
    """Remove the KUBE-* chains kube-proxy and the kubelet (this run's or a killed one's) leave in iptables."""
    out = subprocess.run([str(bin_dir / "kube-proxy"), "--cleanup", "--v=0"], capture_output=True,
                         text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"kube-proxy --cleanup exited {out.returncode}: {out.stderr[-2000:]}")
    # The kubelet's own (pkg/kubelet/kubelet_network_linux.go), made at every start and never removed:
    # KUBE-FIREWALL drops packets to 127.0.0.0/8 that do not come from there.
    for tool in ("iptables", "ip6tables"):
        for args in (("-D", "INPUT", "-j", "KUBE-FIREWALL"), ("-D", "OUTPUT", "-j", "KUBE-FIREWALL"),
                     ("-F", "KUBE-FIREWALL"), ("-X", "KUBE-FIREWALL"), ("-X", "KUBE-KUBELET-CANARY"),
                     ("-t", "nat", "-X", "KUBE-KUBELET-CANARY"), ("-t", "mangle", "-X", "KUBE-KUBELET-CANARY"),
                     ("-t", "mangle", "-X", "KUBE-IPTABLES-HINT")):
            subprocess.run([tool, "-w", *args], capture_output=True, check=False)  # absent: fine
        saved = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False).stdout
        left = [line for line in saved.splitlines() if "KUBE-" in line]
        if left:
            raise RuntimeError(f"{tool} rules left: {left}")


def delete_bridge() -> None:
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)  # absent: fine


def clear_kubelet_root() -> None:
    """Unmount what the kubelet and containerd mounted (volumes, network namespaces) and remove the
    kubelet's folder."""
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


def remove_kubepods_cgroups() -> None:
    """The kubelet's empty ``kubepods`` cgroups (cgroup v1 keeps them after their processes are gone)."""
    for tree in CGROUP_V1.glob("*/kubepods"):
        for folder in sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            folder.rmdir()
        tree.rmdir()


def undo(containerd: Containerd, bin_dir: Path) -> list[str]:
    """Put the host back, with the kubelet and kube-proxy already stopped and ``containerd`` running (or
    not: its pods are then left to the next start). Returns the errors; one does not stop the rest."""
    errors = []
    for step in (containerd.remove_pods, lambda: cleanup_iptables(bin_dir), containerd.stop, delete_bridge,
                 clear_kubelet_root, remove_kubepods_cgroups, Sysctls().restore):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - report them all at the end
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors


class Guard:
    """A process that runs ``undo`` if the test process dies with the node still up.

    It reads its stdin: ``pid N`` lines name the node's processes, ``done`` says the node was stopped;
    end of input without ``done`` means the test process died. It then waits for those processes to
    exit (they get SIGTERM from the kernel), starts the containerd again to remove the pods, and undoes."""

    def __init__(self, folder: Path, bin_dir: Path, log: Path) -> None:
        with open(log, "wb") as out:
            # Its own session: a Ctrl-C to pytest's process group does not reach it.
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.cluster.nodehost", str(folder), str(bin_dir)],
                                         stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=os.environ | {"PYTHONPATH": str(REPO)}, start_new_session=True)

    def watch(self, pid: int) -> None:
        self._send(f"pid {pid}")

    def release(self) -> None:
        self._send("done")
        self.proc.stdin.close()
        self.proc.wait(30)

    def _send(self, line: str) -> None:
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()


def _guard(folder: Path, bin_dir: Path) -> None:
    pids = []
    for line in sys.stdin:
        if line.strip() == "done":
            return
        if line.startswith("pid "):
            pids.append(int(line.split()[1]))
    print(f"nodehost: the test process died with the node up; waiting for {pids}", flush=True)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    containerd = Containerd(folder / "containerd-guard", bin_dir / "crictl")
    try:
        containerd.start()
    except Exception as exc:  # noqa: BLE001 - undo the rest all the same
        print(f"nodehost: containerd did not start, pods left: {exc}", flush=True)
    errors = undo(containerd, bin_dir)
    print("nodehost: host put back" + "".join(f"\n  {e}" for e in errors), flush=True)


if __name__ == "__main__":
    _guard(Path(sys.argv[1]), Path(sys.argv[2]))
