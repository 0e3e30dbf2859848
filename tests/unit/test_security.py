"""Nothing reads data with pickle or unrestricted torch.load (secrets in logs: tests/e2e/test_security.py)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_unsafe_deserialisation_in_the_code():
    """No pickle, no marshal, no yaml.load, and torch.load only with weights_only=True."""
    offenders = []
    for path in list((REPO / "runner").rglob("*.py")) + list((REPO / "operator").rglob("*.py")) + \
            list((REPO / "examples").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "marshal", "dill", "cloudpickle") for n in names):
                    offenders.append(f"{path}:{node.lineno} imports pickle-like module")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = getattr(node.func.value, "id", "")
                if owner == "torch" and node.func.attr == "load":
                    kw = {k.arg: k.value for k in node.keywords}
                    if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                        offenders.append(f"{path}:{node.lineno} torch.load without weights_only=True")
                if owner == "yaml" and node.func.attr in ("load", "unsafe_load", "full_load"):
                    offenders.append(f"{path}:{node.lineno} yaml.{node.func.attr}")
                if owner == "np" and node.func.attr == "load":
                    kw = {k.arg: k.value for k in node.keywords}
                    if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                        offenders.append(f"{path}:{node.lineno} np.load(allow_pickle=True)")
    assert offenders == []
