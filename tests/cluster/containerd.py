"""A private containerd for the real node: its own config, socket and state, and a pod network (CNI bridge).

Images live under ``~/.cache/assay/containerd`` (``$XDG_CACHE_HOME/assay/containerd``), next to the
image store of scripts/build-images.sh, so that what is imported once (the pause image, the project's
images: 12 GB with torch) is there for the next run and for every clone on the machine; state, sockets and the pods' network namespaces live under
``/run/assay-containerd``, which nothing outlives. Only one such containerd runs on a machine at a
time (``RUN`` is fixed so that other tools can find the socket): ``start`` takes a lock and says who
holds it. Import images from another process while none runs with::

    python -m tests.cluster.containerd IMAGE.tar...
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster.controlplane import WITH_PARENT, terminate

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "assay" / "containerd"
RUN = Path("/run/assay-containerd")
SOCKET = RUN / "containerd.sock"
IMAGES = REPO / ".tools" / "images"
PAUSE_TAG = "3.10.2"  # scripts/install-node.sh builds this one
PAUSE_IMAGE = f"registry.k8s.io/pause:{PAUSE_TAG}"
#: The pods' network: not the host's, the Services' (10.0.0.0/24) or podman's default (10.88.0.0/16).
POD_CIDR = "10.244.0.0/16"
BRIDGE = "assay0"
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins


def config(folder: Path) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{ROOT}"
state = "{RUN / 'state'}"
# Not used here, and each would log its failure to load.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{SOCKET}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE in this VM: containers may not get a lower oom_score_adj than containerd's.
  restrict_oom_score_adj = true
  # The pods' network namespaces under RUN too, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        # cgroupfs, as the kubelet is told: no systemd runs here.
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{folder / 'cni'}"
"""


def cni_conflist(folder: Path) -> dict:
    """One bridge for the pods, addresses from host-local (its leases in ``folder``), hostPort via portmap.

    containerd adds the loopback interface itself (the ``loopback`` plugin from the same folder)."""
    return {"cniVersion": "1.0.0", "name": "assay", "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}],
                  "dataDir": str(folder / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}


class Containerd:
    def __init__(self, folder: Path, crictl: Path) -> None:
        self.folder, self.crictl = folder, crictl
        self.proc: subprocess.Popen | None = None
        self._lock: int | None = None

    def start(self) -> Containerd:
        RUN.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(RUN.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock, 64, 0).decode().strip()
            raise RuntimeError(f"another private containerd runs (pid {holder}, lock {RUN}.lock)") from None
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, str(os.getpid()).encode(), 0)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        (self.folder / "cni").mkdir(parents=True, exist_ok=True)
        (self.folder / "cni" / "10-assay.conflist").write_text(json.dumps(cni_conflist(self.folder), indent=1))
        (self.folder / "containerd.toml").write_text(config(self.folder))
        ROOT.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "containerd.log", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([*WITH_PARENT, "containerd", "--config", str(self.folder / "containerd.toml")],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{self.log_tail()}")
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", str(SOCKET), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, check=check, timeout=300)

    def images(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet").stdout.split())

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def ensure_pause(self) -> None:
        if PAUSE_IMAGE not in self.images():
            archive = IMAGES / f"pause-{PAUSE_TAG}.tar"
            if not archive.is_file():
                raise RuntimeError(f"{archive} missing: run `bash scripts/install-node.sh`")
            self.import_image(archive)

    def remove_pods(self) -> None:
        """Stop and remove every pod sandbox: containers killed, network torn down (CNI DEL), mounts gone."""
        subprocess.run([str(self.crictl), "--runtime-endpoint", f"unix://{SOCKET}", "--timeout", "60s",
                        "rmp", "--all", "--force"], capture_output=True, text=True, timeout=180, check=False)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            terminate(self.proc)
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def log_tail(self, lines: int = 30) -> str:
        path = self.folder / "containerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def main(archives: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="assay-containerd-") as folder:
        ctd = Containerd(Path(folder), REPO / ".tools" / "bin" / "crictl").start()
        try:
            for archive in archives:
                ctd.import_image(Path(archive))
            print("\n".join(sorted(ctd.images())))
        finally:
            ctd.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
