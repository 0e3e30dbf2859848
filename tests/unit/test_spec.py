"""EvaluationJob manifests: validated against the CRD with messages that name the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from assay.errors import SpecError
from assay.spec import EvaluationJob, RunContext, load_job, validate_manifest, with_local_uris_relative_to

REPO = Path(__file__).resolve().parents[2]
BASE = {"apiVersion": "assay.dev/v1alpha1", "kind": "EvaluationJob", "metadata": {"name": "ok"},
        "spec": {"model": {"uri": "s3://bucket/m"}, "dataset": {"uri": "s3://bucket/d"}, "output": {"uri": "s3://bucket/o"}}}


def _with(path: str, value):
    doc = copy.deepcopy(BASE)
    keys = path.split(".")
    target = doc
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return doc


_DELETE = object()

INVALID = [
    ("kind", "Job", "apiVersion/kind"),
    ("apiVersion", "assay.dev/v1", "apiVersion/kind"),
    ("metadata.name", "Bad_Name", "metadata.name"),
    ("spec.model", _DELETE, "'model' is a required property"),
    ("spec.model.uri", "", "spec.model.uri"),
    ("spec.ppl.workers", 0, "spec.ppl.workers: 0 is less than the minimum of 1"),
    ("spec.ppl.workers", "two", "spec.ppl.workers: 'two' is not of type 'integer'"),
    ("spec.ppl.batchSize", 100000, "spec.ppl.batchSize"),
    ("spec.ppl.device", "tpu", "spec.ppl.device: 'tpu' is not one of"),
    ("spec.ppl.precision", "int8", "spec.ppl.precision"),
    ("spec.ppl.wokers", 2, "unknown field spec.ppl.wokers"),
    ("spec.evaluator", "bleu", "spec.evaluator"),
    ("spec.storage.endpoint", "minio:9000", "spec.storage.endpoint"),
    ("spec.storage.secretRef", {}, "'name' is a required property"),
    ("spec.runtime.imagePullPolicy", "Sometimes", "spec.runtime.imagePullPolicy"),
    ("spec.activeDeadlineSeconds", -5, "spec.activeDeadlineSeconds"),
    ("spec.suspend", "yes", "spec.suspend"),
]


@pytest.mark.parametrize("path,value,message", INVALID, ids=[f"{p}={v!r}"[:40] for p, v, _ in INVALID])
def test_invalid_manifests_name_the_field(path, value, message):
    with pytest.raises(SpecError) as err:
        validate_manifest(_with(path, value))
    assert message in str(err.value)


def test_defaults_come_from_the_crd():
    job = EvaluationJob.from_manifest(copy.deepcopy(BASE))
    assert job.spec.ppl.workers == 1 and job.spec.ppl.batch_size == 4 and job.spec.ppl.device == "auto"
    assert job.spec.suspend is False


def test_example_job_validates():
    job = load_job(REPO / "examples" / "pennfudan" / "job.yaml")
    assert job.spec.ppl.workers == 2


def test_relative_uris_resolve_against_manifest_folder(tmp_path):
    doc = _with("spec.output.uri", "out")
    job = with_local_uris_relative_to(EvaluationJob.from_manifest(doc), tmp_path)
    assert job.spec.output.uri == str(tmp_path / "out")
    assert job.spec.model.uri == "s3://bucket/m"


def test_bad_yaml_and_multiple_documents(tmp_path):
    (tmp_path / "a.yaml").write_text("spec: [")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(BASE) + "---\n" + yaml.safe_dump(BASE))
    with pytest.raises(SpecError, match="exactly one YAML document"):
        load_job(tmp_path / "b.yaml")


def test_run_context_round_trips_through_pod_environment():
    job = EvaluationJob.from_manifest(_with("spec.ppl", {"workers": 4, "batchSize": 8, "precision": "bf16"}))
    ctx = RunContext.for_worker(job, 2)
    env = {**ctx.to_env(), "JOB_COMPLETION_INDEX": "2"}
    assert RunContext.from_env(env) == ctx
    with pytest.raises(SpecError, match="ASSAY_MODEL_URI"):
        RunContext.from_env({"ASSAY_JOB_NAME": "x"})
