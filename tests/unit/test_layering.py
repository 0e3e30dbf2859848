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


def test_only_storage_s3_imports_boto3_and_only_cluster_or_kube_import_kubernetes():
    storage = REPO / "runner" / "assay" / "storage"
    for root in ("runner", "operator"):
        for path in (REPO / root).rglob("*.py"):
            names = _imports(path)
            if any(n.split(".")[0] in ("boto3", "botocore") for n in names):
                assert path.parent == storage and path.name.startswith("s3"), path
            if any(n.split(".")[0] == "kubernetes" for n in names):
                assert path.name in ("cluster.py", "kube.py"), path


def test_layout_names_objects_and_reads_no_store():
    """The operator imports assay.layout: it may join URIs (assay.storage.uri, no S3 client, no I/O), never
    reach the storage operations (finding versions in a store is assay.versions)."""
    tree = ast.parse((REPO / "runner" / "assay" / "layout.py").read_text())
    imported = {f"{n.module}.{a.name}" if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names}
    assert {m for m in imported if m.startswith("assay")} == {"assay.storage.uri.join", "assay.storage.uri.parse"}
    code = ("import sys, assay.layout; bad = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_no_top_level_operator_package_shadows_the_stdlib():
    assert not (REPO / "operator" / "__init__.py").exists()
    assert not (REPO / "runner" / "__init__.py").exists()
    out = subprocess.run([sys.executable, "-c", "import operator; print(operator.__file__)"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "lib/python" in out or "python3" in out


def test_cmp_imports_neither_the_model_stack_nor_the_s3_side():
    """A cmp pod's own work at 5,000 images took 0.25 s and its imports 0.7 s: it imports nothing it does not
    use (torch, plotting, other COCO engines), and on local files not the S3 side (pydantic-settings, boto3)."""
    code = ("import sys, assay.runner.__main__, assay.runner.cmp; "
            "bad = [m for m in ('torch', 'torchvision', 'matplotlib', 'faster_coco_eval', 'PIL', 'pydantic_settings', "
            "'boto3', 'botocore') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
