"""The commands of README.md and of the examples' READMEs run as written (issue 12).

They run in a copy of the repository's layout (examples/pennfudan beside a link to ../shared), so the
relative paths, the default store .assay/store and job.yaml's URIs are exactly those a user meets.
The offline training command is the example model's one training in a test run: `make demo`'s step 2
(the trained_example fixture, train.py's recipe with 2 steps instead of 600) writes what it writes, and
its files are put where this command's --out puts them. Commands that need what this test does not have
are listed in NOT_HERE with the test or CI step that runs them; a README command in neither list fails
this test.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# the examples first: README.md shows commands (assay report) that need the job the example runs
DOCS = [*(REPO / "examples" / name / "README.md" for name in ("pennfudan", "torchvision")), REPO / "README.md"]
TRAIN = "python examples/pennfudan/train.py --data ../shared/data/PennFudanPed --out examples/pennfudan --steps 600"

#: command prefix -> what runs it instead
NOT_HERE = {
    "make demo": "tests/e2e/test_example_pennfudan.py::test_make_demo_runs_the_whole_demo (TORCH_INDEX needs internet)",
    "make test": ".ci/run",
    "python examples/pennfudan/train.py --data ../shared/data/PennFudanPed --out examples/pennfudan --weights":
        "needs the COCO file; its errors: test_example_pennfudan.py::test_train_weights_errors_are_one_line",
    "python examples/pennfudan/train.py --data ../shared/data/PennFudanPed --out examples/pennfudan --pretrained":
        "needs internet; offline it fails in one line: test_train_weights_errors_are_one_line",
    "docker ": "tests/deploy/test_dockerfile.py", "helm ": "tests/deploy/test_chart.py",
    "kubectl ": "a cluster (tests/cluster)", "assay job ": "a cluster (tests/cluster/test_evaluationjob.py)",
    "bash scripts/install-helm.sh": ".ci/run (make test)", "bash scripts/install-kube.sh": ".ci/run",
    "bash scripts/install-chromium.sh": ".ci/run (make test)",
    "bash scripts/install-kueue.sh": ".ci/run", "bash scripts/install-gofakes3.sh": ".ci/run (make test)",
    "sudo bash scripts/install-node.sh": ".ci/run (make test, as root)",
    "sudo bash scripts/build-images.sh": ".ci/run (make test, as root)",
    # examples/torchvision: COCO weights need internet; the same commands on weights made offline:
    "assay model build examples/torchvision/model.yaml":
        "test_builtin_handlers.py::TestTorchvisionWeightsNames (a weights name, packed from torch.hub's cache)",
    "assay model info maskrcnn-coco": "test_builtin_handlers.py::TestTorchvisionWeightsNames (after that build)",
    "assay run examples/torchvision/job.yaml":
        "test_builtin_handlers.py::TestMaskRCNN::test_weights_file_evaluates_with_no_handler_code",
}


def commands(doc: Path) -> list[str]:
    out = []
    for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


@pytest.mark.timeout(1800)  # about ten subprocesses that import torch, two short jobs, two pipeline checks
def test_readme_commands_run_as_written(pennfudan_dir, trained_example, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "examples" / "pennfudan", root / "examples" / "pennfudan",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt", "config.json"))
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "PennFudanPed").symlink_to(pennfudan_dir)
    ran, elsewhere = [], []
    for doc in DOCS:
        for cmd in commands(doc):
            if any(cmd.startswith(p) for p in NOT_HERE):
                elsewhere.append(cmd)
                continue
            if cmd in dict(ran):  # both READMEs show the same build, info and check: once is enough
                continue
            argv = shlex.split(cmd)
            if cmd == TRAIN:  # trained once per test run; its output goes where --out puts it
                out = root / argv[argv.index("--out") + 1]
                for name in ("maskrcnn.pt", "config.json"):
                    shutil.copy(trained_example.model_dir / name, out / name)
                ran.append((cmd, trained_example.proc.stdout))
                continue
            if argv[0] == "assay":
                argv = [sys.executable, "-m", "assay.cli.main", *argv[1:]]
            elif argv[0] == "python":
                argv[0] = sys.executable
            assert argv[0] in (sys.executable, "cat"), f"{doc.name}: no rule for {cmd!r}"
            proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{doc.name}: {cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            ran.append((cmd, proc.stdout))
    out = dict(ran)
    assert "bbox AP 1.000, segm AP 1.000" in out["assay dataset check pennfudan"]
    assert "pennfudan" in out["assay dataset list"], "the default store holds what was built"
    assert "bbox/AP" in out["cat .assay/jobs/pennfudan-maskrcnn/summary.txt"]
    page = (root / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "pennfudan-maskrcnn" in page and 'id="worst"' in page
    assert len(ran) >= 9 and len(elsewhere) >= 5
