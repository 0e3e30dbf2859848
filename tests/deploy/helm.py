"""Find helm (``.tools/bin/helm`` from scripts/install-helm.sh, else PATH) and render the chart."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "assay"
INSTALL_HINT = "helm not found: run `bash scripts/install-helm.sh` (puts helm into .tools/bin/; CI does it)"


@functools.cache
def helm_path() -> str | None:
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file():
        return str(local)
    return shutil.which("helm")


def helm() -> str:
    """The helm binary, or skip the calling test with how to get it."""
    path = helm_path()
    if path is None:
        pytest.skip(INSTALL_HINT)
    return path


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm(), *args], capture_output=True, text=True, timeout=60,
                          env={"HOME": "/tmp", "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": "/tmp/helm-cache",
                               "HELM_CONFIG_HOME": "/tmp/helm-config", "HELM_DATA_HOME": "/tmp/helm-data"})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@functools.cache
def _render(values_json: str, namespace: str) -> tuple[dict[str, Any], ...]:
    args = ["template", "rel", str(CHART), "--namespace", namespace, "--kube-version", "1.31.0"]
    if values_json != "{}":
        values_file = Path("/tmp") / f"assay-values-{abs(hash(values_json))}.json"
        values_file.write_text(values_json)
        args += ["--values", str(values_file)]
    out = run_helm(*args).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def render(values: dict[str, Any] | None = None, namespace: str = "assay-system") -> list[dict[str, Any]]:
    """The chart's objects for these values (cached: helm runs once per distinct input)."""
    return [dict(d) for d in _render(json.dumps(values or {}, sort_keys=True), namespace)]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]
