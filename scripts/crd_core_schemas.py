"""The core/v1 types inside the CRD (resources, tolerations, affinity, env), generated from Kubernetes' own
OpenAPI definitions (as shipped by kubernetes-validate) so that server-side validation, CEL and
`kubectl explain` see into them. Bounds (maxItems, maxLength, maxProperties) are added so the CRD's CEL
rules have a bounded cost.

Regenerate the marked blocks of crds/evaluationjob.yaml with ``python -m scripts.crd_core_schemas``;
tests/unit/test_crd.py fails when they drift.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "evaluationjob.yaml"
VERSION = "v1.37.0-local"
TYPES = {"ResourceRequirements": "io.k8s.api.core.v1.ResourceRequirements",
         "Toleration": "io.k8s.api.core.v1.Toleration",
         "Affinity": "io.k8s.api.core.v1.Affinity",
         "EnvVar": "io.k8s.api.core.v1.EnvVar"}
MAX_ITEMS, MAX_LENGTH, MAX_PROPERTIES = 16, 512, 32
#: Strings the API server accepts only from a fixed set, though its OpenAPI types them as free strings: as
#: enums a typo is refused at `kubectl apply`, not found after the resolve stage as a refused Job.
ENUMS = {("io.k8s.api.core.v1.Toleration", "operator"): ["", "Exists", "Equal"],
         ("io.k8s.api.core.v1.Toleration", "effect"): ["", "NoSchedule", "PreferNoSchedule", "NoExecute"],
         ("io.k8s.api.core.v1.NodeSelectorRequirement", "operator"): ["In", "NotIn", "Exists", "DoesNotExist",
                                                                      "Gt", "Lt"],
         ("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement", "operator"): ["In", "NotIn", "Exists",
                                                                                         "DoesNotExist"]}
_BLOCK = re.compile(r"( *)# BEGIN core/v1 (\w+)( list)?\n.*?\n\1# END core/v1 \2\n", re.S)


def _definitions() -> dict[str, Any]:
    import kubernetes_validate

    path = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / VERSION / "_definitions.json"
    return json.loads(path.read_text())["$defs"]


def _describe(text: str | None) -> str | None:
    if not text:
        return None
    first = text.strip().split("\n")[0]
    first = re.split(r"(?<=\.)\s", first)[0]
    return first[:200]


def structural(ref: str, defs: dict[str, Any] | None = None, depth: int = 0) -> dict[str, Any]:
    """The definition ``ref`` as a structural OpenAPI schema: refs inlined, nullable types plain, quantities
    int-or-string, every list, string and map bounded."""
    defs = defs or _definitions()
    node = defs[ref]
    return _convert(node, defs, depth, ref)


def _convert(node: dict[str, Any], defs: dict[str, Any], depth: int, name: str = "") -> dict[str, Any]:
    if "$ref" in node:
        ref = node["$ref"].rsplit("/", 1)[1]
        out = _convert(defs[ref], defs, depth, ref)
        if node.get("description"):
            out["description"] = _describe(node["description"])
        return out
    if "oneOf" in node:  # Quantity and IntOrString
        out = {"x-kubernetes-int-or-string": True}
        if node.get("description"):
            out["description"] = _describe(node["description"])
        return out
    types = node.get("type")
    kind = next((t for t in types if t != "null"), None) if isinstance(types, list) else types
    out: dict[str, Any] = {}
    if node.get("description"):
        out["description"] = _describe(node["description"])
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {k: _convert(v, defs, depth + 1) for k, v in sorted(node["properties"].items())}
        for prop, values in ((p, v) for (n, p), v in ENUMS.items() if n == name and p in out["properties"]):
            schema = out["properties"][prop]
            schema.pop("maxLength", None)
            schema["enum"] = list(values)  # a copy: a shared list would be dumped as a YAML anchor
        if node.get("required"):
            out["required"] = sorted(node["required"])
    elif kind == "object" or "additionalProperties" in node:
        out["type"] = "object"
        if isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = _convert(node["additionalProperties"], defs, depth + 1)
        out["maxProperties"] = MAX_PROPERTIES
    elif kind == "array":
        out["type"] = "array"
        out["items"] = _convert(node["items"], defs, depth + 1)
        out["maxItems"] = MAX_ITEMS
        for key in ("x-kubernetes-list-type", "x-kubernetes-list-map-keys"):
            if key in node:
                out[key] = node[key]
    elif kind == "string":
        out["type"] = "string"
        if "enum" in node:
            out["enum"] = [e for e in node["enum"] if e is not None]
        else:
            out["maxLength"] = MAX_LENGTH
    elif kind in ("integer", "number", "boolean"):
        out["type"] = kind
        if node.get("format") in ("int32", "int64"):
            out["format"] = node["format"]
    return out


def render(name: str, as_list: bool, indent: int) -> str:
    """The YAML lines of one marked block."""
    schema = structural(TYPES[name])
    if as_list:
        schema = {"type": "array", "maxItems": 64 if name == "EnvVar" else MAX_ITEMS, "items": schema}
    text = yaml.safe_dump(schema, sort_keys=False, width=1000)
    pad = " " * indent
    marker = f"{pad}# BEGIN core/v1 {name}{' list' if as_list else ''}\n"
    return marker + "".join(pad + line + "\n" for line in text.splitlines()) + f"{pad}# END core/v1 {name}\n"


def regenerate(text: str) -> str:
    return _BLOCK.sub(lambda m: render(m.group(2), bool(m.group(3)), len(m.group(1))), text)


if __name__ == "__main__":
    CRD.write_text(regenerate(CRD.read_text()))
    print(f"regenerated the core/v1 blocks of {CRD}")
