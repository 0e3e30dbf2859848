"""Reading the user's YAML config files (dataset.yaml, model.yaml) with errors that say what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from assay.errors import SpecError


def read_mapping(path: str | Path, kind: str, expected: str, known: set[str]) -> dict[str, Any]:
    """Parse ``path`` as a YAML mapping whose keys are all in ``known``."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no such file: {path}", f"pass the path of a {kind}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a mapping with {expected}")
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SpecError(f"{path}: unknown field {unknown[0]!r}", f"fields allowed: {', '.join(sorted(known))}")
    return doc
