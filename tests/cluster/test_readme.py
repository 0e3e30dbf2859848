"""The README's "Install on a cluster" flow, its commands read from the README and run as written on the real node.

The commands are the shell lines of that section's code blocks (the image builds aside: the images are
already in the node's containerd). What this machine cannot take as written, the test changes, and
says so: the Secret's ``...`` keys, and in a copy of ``examples/minio/evaluationjob.yaml`` the store's
address (no cluster DNS here, so no ``minio.evals.svc.cluster.local``: moto S3 on the node's address)
and the resource requests (2 CPUs each for 2 workers, on a 2-core node). The store holds what
examples/minio/README.md uploads: the PennFudanPed test split as ``pennfudan`` and a model named
``pennfudan-maskrcnn`` (the oracle test handler, imperfect through its ``miss.flag``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from kubernetes import client

from tests.cluster.conftest import BIN, Api, wait_for
from tests.cluster.containerd import POD_CIDR
from tests.cluster.test_evaluationjob import assay_run_metrics, read_s3_json
from tests.conftest import FIXTURES, REPO, write_dataset_yaml

pytestmark = pytest.mark.cluster

JOB = "pennfudan-maskrcnn"
EXAMPLE = "examples/minio/evaluationjob.yaml"
#: What the README says to run, in order (a change there must change this test too).
FLOW = [
    "kubectl create namespace evals",
    "helm install assay charts/assay -n assay-system --create-namespace --set 'watch.namespaces={evals}'",
    "kubectl -n assay-system rollout status deployment/assay",
    "kubectl -n evals create secret generic assay-s3 --from-literal=AWS_ACCESS_KEY_ID=... "
    "--from-literal=AWS_SECRET_ACCESS_KEY=...",
    f"kubectl -n evals apply -f {EXAMPLE}",
    f"assay job watch {JOB} -n evals",
    f"kubectl -n evals wait evaljob/{JOB} --for=jsonpath='{{.status.completionTime}}' --timeout=1h",
    f"kubectl -n evals get evaljob/{JOB} -o jsonpath='{{.status.phase}}{{\"\\n\"}}'",
    f"assay job results {JOB} -n evals",
]


def readme_commands() -> list[str]:
    """The shell lines of the README's "Install on a cluster" section: continuations joined, comments
    dropped, the image builds (docker) left out."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Install on a cluster"):]
    section = section[:section.index("\n## ", 1)]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] != "docker":
                commands.append(shlex.join(words))
    return commands


def test_the_readme_still_says_what_this_test_runs():
    assert readme_commands() == [shlex.join(shlex.split(c)) for c in FLOW]


@pytest.fixture
def readme_store(s3_env, pennfudan_dir, tmp_path):
    """What examples/minio/README.md uploads, in the cluster's S3 (bucket ``assay``)."""
    from assay import datasets, packages

    store = "s3://assay/store"
    datasets.build(datasets.load_config(write_dataset_yaml(tmp_path, pennfudan_dir)), store, log=lambda s: None)
    pkg = tmp_path / "model"
    shutil.copytree(FIXTURES / "oracle", pkg)
    (pkg / "miss.flag").write_text("misses some instances: an imperfect model\n")
    config = (pkg / "model.yaml").read_text().replace("name: oracle", f"name: {JOB}")
    (pkg / "model.yaml").write_text(config.replace('code: ["handler.py"]', 'code: ["handler.py", "miss.flag"]'))
    packages.build(packages.load_config(pkg / "model.yaml"), store, log=lambda s: None)
    return s3_env


def example_for_this_machine(endpoint: str, path) -> dict:
    """examples/minio/evaluationjob.yaml with the store's address and without the resource requests."""
    manifest = yaml.safe_load((REPO / EXAMPLE).read_text())
    assert manifest["spec"]["storage"]["endpoint"] == "http://minio.evals.svc.cluster.local:9000"
    manifest["spec"]["storage"]["endpoint"] = endpoint
    for stage in ("ppl", "cmp"):
        manifest["spec"][stage].pop("resources")
    path.write_text(yaml.safe_dump(manifest))
    return manifest


def test_the_readme_cluster_flow_as_written(operator, control_plane, admin, readme_store, tmp_path):
    manifest = example_for_this_machine(readme_store, tmp_path / "evaluationjob.yaml")
    env = os.environ | {"KUBECONFIG": str(control_plane.kubeconfig)}
    # the README's placeholders, and the example's copy for this machine
    changed = {f"--from-literal={key}=...": f"--from-literal={key}=testing"
               for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")} | {EXAMPLE: str(tmp_path / "evaluationjob.yaml")}

    def run(command: str) -> subprocess.CompletedProcess:
        words = [changed.get(w, w) for w in shlex.split(command)]
        tool = {"kubectl": [str(BIN / "kubectl")], "helm": [str(BIN / "helm")],
                "assay": [sys.executable, "-m", "assay.cli.main"]}[words[0]]
        proc = subprocess.run([*tool, *words[1:]], capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
                              check=False)
        assert proc.returncode == 0, f"$ {command}\n{proc.stdout}\n{proc.stderr}"
        return proc

    operator.uninstall()  # the suite's own install, cluster-wide, would take this job too
    try:
        for command in FLOW:
            print(f"$ {command}\n{run(command).stdout}")
        api = Api(admin, "evals")
        st = api.status(JOB)
        assert st["phase"] == "Succeeded" and run(FLOW[7]).stdout == "Succeeded\n", st

        local = assay_run_metrics(manifest, tmp_path)
        assert read_s3_json(st["resultsUri"])["summary"] == local["summary"]
        assert st["results"]["summary"] == {k: round(float(v), 6) for k, v in local["summary"].items()}
        assert 0.0 < local["summary"]["bbox/AP"] < 1.0
        table = run(FLOW[8]).stdout
        assert re.search(rf"bbox/AP\s+{local['summary']['bbox/AP']:.4f}", table), table

        # every pod on the pod network, and every one would pass Pod Security "restricted"
        pods = api.pods(f"assay.dev/job={JOB}")
        assert {p["metadata"]["labels"]["assay.dev/role"] for p in pods} == {"resolve", "ppl", "cmp"}
        assert all(ipaddress.ip_address(p["status"]["podIP"]) in ipaddress.ip_network(POD_CIDR) for p in pods)
        check = run("kubectl label --dry-run=server --overwrite namespace evals "
                    "pod-security.kubernetes.io/enforce=restricted")
        assert "violate" not in check.stderr, check.stderr
        wide = run("kubectl -n evals get pods -o wide").stdout
        print(f"\n$ kubectl -n evals get pods -o wide\n{wide}")
        assert json.loads(run(f"kubectl -n evals get evaljob {JOB} -o json").stdout)["status"]["phase"] == "Succeeded"
    finally:
        subprocess.run([str(BIN / "helm"), "--kubeconfig", str(control_plane.kubeconfig), "uninstall", "assay", "-n",
                        "assay-system", "--wait"], capture_output=True, timeout=180, check=False)
        client.CoreV1Api(admin).delete_namespace("evals")
        wait_for(lambda: "evals" not in [n.metadata.name for n in client.CoreV1Api(admin).list_namespace().items],
                 "the evals namespace to go", timeout=120)
        operator.install()
