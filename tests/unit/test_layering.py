"""Import rules: `import assay` stays cheap, only one module per side talks to Kubernetes or S3, and
`assay` never imports the operator."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_cli_and_core_import_without_torch_or_kubernetes():
    code = ("import sys, assay, assay.spec, assay.storage, assay.shards, assay.metrics, assay.cli.main; "
            "bad = [m for m in ('torch', 'torchvision', 'kubernetes', 'kopf') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_assay_never_imports_the_operator():
    for path in (REPO / "runner" / "assay").rglob("*.py"):
        assert not any(n.startswith("assay_operator") for n in _imports(path)), path


def test_only_storage_imports_boto3_and_only_cluster_or_kube_import_kubernetes():
    for root in ("runner", "operator"):
        for path in (REPO / root).rglob("*.py"):
            names = _imports(path)
            if any(n.split(".")[0] in ("boto3", "botocore") for n in names):
                assert path.name == "storage.py", path
            if any(n.split(".")[0] == "kubernetes" for n in names):
                assert path.name in ("cluster.py", "kube.py"), path


def test_no_top_level_operator_package_shadows_the_stdlib():
    assert not (REPO / "operator" / "__init__.py").exists()
    assert not (REPO / "runner" / "__init__.py").exists()
    out = subprocess.run([sys.executable, "-c", "import operator; print(operator.__file__)"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "lib/python" in out or "python3" in out
