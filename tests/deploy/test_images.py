"""The Dockerfile's two targets, really built (scripts/build-images.sh: podman, offline, on a debootstrap
Python base) and run the way the chart runs them: uid 1000, read-only root, writable /tmp (and the
runner's /var/cache/assay) only, no network.

Slow and root-only: a cold build is about 5 minutes and 20 GB of disk on the way (the runner holds
torch's CUDA wheels); warm, the build is a few seconds. Run with `python -m pytest -m slow
tests/deploy/test_images.py` as root; the real node of tests/cluster imports the same images.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = next(line.split(":", 1)[1].strip().strip('"') for line in
               (ROOT / "charts/assay/Chart.yaml").read_text().splitlines() if line.startswith("appVersion:"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="podman's rootful store and debootstrap need root"),
    pytest.mark.skipif(not shutil.which("apt-get"), reason="scripts/build-images.sh installs podman with apt-get"),
]


@pytest.fixture(scope="module")
def podman() -> list[str]:
    proc = subprocess.run(["bash", "scripts/build-images.sh"], cwd=ROOT, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    images = Path(os.environ.get("ASSAY_IMAGES_DIR")
                  or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "assay" / "images")
    env = {"CONTAINERS_CONF": str(images / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(images / "storage.conf")}
    return ["env", *(f"{k}={v}" for k, v in env.items()), "podman"]


def run(podman: list[str], target: str, code: str, *mounts: str) -> str:
    tmpfs = [arg for m in ("/tmp", *mounts) for arg in ("--tmpfs", m)]
    proc = subprocess.run([*podman, "run", "--rm", "--user", "1000:1000", "--read-only", *tmpfs,
                           "--network=none", f"ghcr.io/assay-dev/assay-{target}:{VERSION}", "python", "-c", code],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_operator_image_imports_the_operator_without_torch(podman):
    out = run(podman, "operator", (
        "import os, importlib.util, assay_operator.main\n"
        "assert importlib.util.find_spec('torch') is None and importlib.util.find_spec('boto3') is None\n"
        "print(os.getuid(), os.getgid())"))
    assert out.split() == ["1000", "1000"]


def test_runner_image_runs_a_torchvision_model_as_uid_1000(podman):
    out = run(podman, "runner", (
        "import os, assay, torch, torchvision, pycocotools, faster_coco_eval, pyarrow, boto3\n"
        "m = torchvision.models.resnet18(weights=None).eval()\n"
        "with torch.inference_mode():\n"
        "    y = m(torch.zeros(1, 3, 64, 64))\n"
        "open('/var/cache/assay/probe', 'w').write('ok')\n"
        "print(os.getuid(), assay.__version__, tuple(y.shape))"), "/var/cache/assay")
    assert out.split() == ["1000", VERSION, "(1,", "1000)"]


def test_images_keep_no_build_leftovers(podman):
    """The wheel is removed once installed, and the build-time mounts (the host's CA bundle for an
    intercepting proxy, the pip cache) leave no file behind."""
    for target in ("operator", "runner"):
        proc = subprocess.run([*podman, "run", "--rm", "--user", "0", "--network=none",
                               f"ghcr.io/assay-dev/assay-{target}:{VERSION}",
                               "sh", "-c", "ls -A /tmp /root/.cache/pip /etc/pip.conf 2>&1 || true"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        listed = [line for line in proc.stdout.splitlines() if line and not line.endswith(":")]
        assert all("No such file" in line for line in listed), f"{target}: {listed}"
