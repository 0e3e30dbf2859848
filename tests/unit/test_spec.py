"""EvaluationJob manifests: validated against the CRD with messages that name the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from assay.errors import SpecError
from assay.spec import EvaluationJob, RunContext, load_job, with_local_uris_relative_to
from tests.unit.test_bad_input import BASE, _with

REPO = Path(__file__).resolve().parents[2]


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
