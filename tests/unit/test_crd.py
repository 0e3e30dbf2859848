"""The CRD is the single source of the manifest schema: it must be a valid CRD, match the typed
JobSpec field for field, and accept every example manifest."""

from __future__ import annotations

import typing
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml

from assay import spec as spec_mod
from assay.errors import SpecError
from assay.spec import EvaluationJob, JobSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/**/job*.yaml"))


def full_manifest() -> dict:
    """A manifest that sets every spec field."""
    return {
        "apiVersion": "assay.dev/v1alpha1", "kind": "EvaluationJob",
        "metadata": {"name": "full", "namespace": "evals"},
        "spec": {
            "model": {"uri": "s3://models/detector/1"}, "dataset": {"uri": "s3://data/pennfudan"},
            "output": {"uri": "s3://runs/full"}, "evaluator": "coco",
            "runtime": {"image": "ghcr.io/x/runner:1", "imagePullPolicy": "Always",
                        "imagePullSecrets": [{"name": "regcred"}],
                        "env": [{"name": "X", "value": "1"},
                                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
            "ppl": {"workers": 4, "batchSize": 8, "device": "cuda", "precision": "bf16", "prefetch": 4,
                    "maxRetriesPerShard": 2, "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}},
                    "nodeSelector": {"gpu": "a100"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {"nodeAffinity": {}}, "priorityClassName": "batch"},
            "cmp": {"resources": {"requests": {"cpu": "2"}}},
            "storage": {"endpoint": "http://minio:9000", "region": "us-east-1", "secretRef": {"name": "s3"}},
            "activeDeadlineSeconds": 3600, "pendingDeadlineSeconds": 300, "ttlSecondsAfterFinished": 600,
            "suspend": False, "retryToken": "1", "queueName": "gpu",
        },
    }


def test_crd_is_a_valid_custom_resource_definition() -> None:
    for version in ("1.31", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(spec_mod.crd(), version, strict=True)


def test_printer_columns_point_at_status_fields() -> None:
    version = spec_mod.crd()["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] != "status":
            continue
        node = status
        for part in path[1:]:
            node = node["properties"][part]
        assert node["type"] == column["type"], column["name"]


def _model_of(annotation) -> type[pydantic.BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, pydantic.BaseModel):
            return arg
        for inner in typing.get_args(arg):
            if isinstance(inner, type) and issubclass(inner, pydantic.BaseModel):
                return inner
    return None


def _drift(model: type[pydantic.BaseModel], schema: dict, where: str) -> list[str]:
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    props = schema.get("properties") or {}
    out = [f"{where}.{k}: in the CRD, not in {model.__name__}" for k in sorted(set(props) - set(fields))]
    out += [f"{where}.{k}: in {model.__name__}, not in the CRD" for k in sorted(set(fields) - set(props))]
    for key in sorted(set(fields) & set(props)):
        sub = props[key]
        sub = sub.get("items", sub) if sub.get("type") == "array" else sub
        nested = _model_of(fields[key].annotation)
        if nested is not None:
            out += _drift(nested, sub, f"{where}.{key}")
        if "default" in props[key] and props[key]["default"] != {}:
            default = fields[key].get_default(call_default_factory=True)
            if default != props[key]["default"]:
                out.append(f"{where}.{key}: default {default!r} in {model.__name__}, {props[key]['default']!r} in the CRD")
    return out


def test_jobspec_matches_the_crd_schema() -> None:
    schema = spec_mod.job_schema()["properties"]["spec"]
    assert _drift(JobSpec, schema, "spec") == []
    assert set(schema["required"]) == {(f.alias or n) for n, f in JobSpec.model_fields.items() if f.is_required()}


def test_drift_check_catches_a_missing_field() -> None:
    schema = dict(spec_mod.job_schema()["properties"]["spec"])
    schema["properties"] = dict(schema["properties"], newField={"type": "string"})
    assert _drift(JobSpec, schema, "spec") == ["spec.newField: in the CRD, not in JobSpec"]


def test_a_manifest_setting_every_field_validates_and_parses() -> None:
    job = EvaluationJob.from_manifest(full_manifest())
    assert job.spec.ppl.workers == 4 and job.spec.storage.secret_ref.name == "s3"
    assert job.to_manifest()["spec"] == spec_mod.validate_manifest(full_manifest())["spec"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_example_manifests_validate_against_the_crd(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        EvaluationJob.from_manifest(doc, str(path))


def test_inline_credentials_are_rejected() -> None:
    doc = full_manifest()
    doc["spec"]["storage"]["accessKeyId"] = "AKIA..."
    with pytest.raises(SpecError, match="unknown field"):
        spec_mod.validate_manifest(doc)


def test_core_v1_blocks_are_generated_from_kubernetes_definitions():
    """resources, tolerations, affinity and env are the core/v1 schemas (bounded), not free-form objects."""
    from scripts import crd_core_schemas as core_schemas

    text = core_schemas.CRD.read_text()
    assert core_schemas.regenerate(text) == text, "run `python -m scripts.crd_core_schemas`"
    ppl = spec_mod.job_schema()["properties"]["spec"]["properties"]["ppl"]["properties"]
    assert ppl["tolerations"]["items"]["properties"]["effect"]["type"] == "string"
    assert "x-kubernetes-preserve-unknown-fields" not in ppl["resources"]
    assert ppl["resources"]["properties"]["limits"]["additionalProperties"]["x-kubernetes-int-or-string"]
