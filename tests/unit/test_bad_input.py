"""A table of invalid inputs, each with the message a user must see: EvaluationJob manifests go through
the CRD schema and through `assay run`; dataset.yaml and model.yaml through the API and the CLI."""

from __future__ import annotations

import copy

import pytest
import yaml

from assay import datasets, packages
from assay.cli.main import main as cli
from assay.errors import EXIT_PERMANENT, SpecError
from assay.spec import validate_manifest

BASE = {"apiVersion": "assay.dev/v1alpha1", "kind": "EvaluationJob", "metadata": {"name": "ok"},
        "spec": {"model": {"uri": "s3://bucket/m"}, "dataset": {"uri": "s3://bucket/d"},
                 "output": {"uri": "s3://bucket/o"}}}
DELETE = object()


def _with(path: str, value):
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    target = doc
    for k in parents:
        target = target.setdefault(k, {})
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


JOBS = [
    ("kind", "Job", "apiVersion/kind"),
    ("apiVersion", "assay.dev/v1", "apiVersion/kind"),
    ("metadata.name", "Bad_Name", "metadata.name"),
    ("metadata.name", "x" * 60, "metadata.name"),
    ("spec.model", DELETE, "'model' is a required property"),
    ("spec.output", DELETE, "'output' is a required property"),
    ("spec.model.uri", "", "spec.model.uri"),
    ("spec.dataset.uri", "gs://bucket/d", "spec.dataset.uri"),
    ("spec.dataset.uri", "s3://B/d", "spec.dataset.uri"),
    ("spec.ppl.workers", 0, "spec.ppl.workers: 0 is less than the minimum of 1"),
    ("spec.ppl.workers", 5000, "spec.ppl.workers: 5000 is greater than the maximum of 1024"),
    ("spec.ppl.workers", "two", "spec.ppl.workers: 'two' is not of type 'integer'"),
    ("spec.ppl.batchSize", 100000, "spec.ppl.batchSize"),
    ("spec.ppl.device", "tpu", "spec.ppl.device: 'tpu' is not one of"),
    ("spec.ppl.precision", "int8", "spec.ppl.precision"),
    ("spec.ppl.wokers", 2, "unknown field spec.ppl.wokers"),
    ("spec.ppl.maxRetriesPerShard", -1, "spec.ppl.maxRetriesPerShard"),
    ("spec.ppl.nodeSelector", {"gpu": 1}, "spec.ppl.nodeSelector.gpu: 1 is not of type 'string'"),
    ("spec.evaluator", "bleu", "spec.evaluator"),
    ("spec.storage.endpoint", "minio:9000", "spec.storage.endpoint"),
    ("spec.storage.secretRef", {}, "'name' is a required property"),
    ("spec.storage.accessKey", "AKIA...", "unknown field spec.storage.accessKey"),
    ("spec.runtime.imagePullPolicy", "Sometimes", "spec.runtime.imagePullPolicy"),
    ("spec.runtime.env", [{"value": "x"}], "'name' is a required property"),
    ("spec.activeDeadlineSeconds", -5, "spec.activeDeadlineSeconds"),
    ("spec.suspend", "yes", "spec.suspend"),
    ("spec.retryToken", "x" * 64, "spec.retryToken"),
    ("spec.extra", 1, "unknown field spec.extra"),
]


@pytest.mark.parametrize("path,value,message", JOBS, ids=[f"{p}={v!r}"[:40] for p, v, _ in JOBS])
def test_invalid_job_via_schema_and_assay_run(path, value, message, tmp_path, capsys):
    doc = _with(path, value)
    with pytest.raises(SpecError) as err:
        validate_manifest(doc)
    assert message in str(err.value)
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    assert cli(["run", str(manifest)]) == EXIT_PERMANENT
    stderr = capsys.readouterr().err
    assert message in stderr and "error:" in stderr
    assert not (tmp_path / "o").exists(), "nothing is written for a rejected manifest"


DATA = "name: ds\ndata_dir: {data}\ndata_filter: 'PNGImages/*6.png'\nprocess: pennfudan\n"
DATASETS = [
    ("name: x\n", "field 'data_dir' is required"),
    ("- a list\n", "expected a mapping"),
    ("name: [\n", "not valid YAML"),
    (DATA.replace("name: ds", "name: Bad Name"), "name 'Bad Name' is not valid"),
    (DATA + "bogus: 1\n", "unknown field 'bogus'"),
    (DATA + "attr: {volume_size: lots}\n", "not a size"),
    (DATA + "attr: 3\n", "attr must be a mapping"),
    (DATA.replace("{data}", "/nonexistent/data"), "data_dir /nonexistent/data does not exist"),
    (DATA.replace("*6.png", "*.jpg"), "matches no file"),
    (DATA.replace("process: pennfudan", "process: nomodule:Source"), "cannot import module 'nomodule'"),
    (DATA.replace("process: pennfudan", "process: justaname"), "'justaname' is neither a built-in source nor"),
    (DATA.replace("process: pennfudan", "process: imagefolders"), "did you mean imagefolder"),
]


@pytest.mark.parametrize("text,message", DATASETS)
def test_invalid_dataset_yaml(text, message, tmp_path, pennfudan_dir, capsys):
    path = tmp_path / "dataset.yaml"
    path.write_text(text.replace("{data}", str(pennfudan_dir)))
    with pytest.raises(SpecError, match=message):
        datasets.build(datasets.load_config(path), str(tmp_path / "store"))
    assert cli(["dataset", "build", str(path), "--store", str(tmp_path / "store")]) == EXIT_PERMANENT
    assert message.split("{")[0] in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


MODELS = [
    ("name: x\n", "run.handler is missing"),
    ("name: x\nrun: handler:H\n", "run must be a mapping"),
    ("name: x\nrun: {handler: h.H}\n", "run.handler is missing or not 'module:Class'"),
    ("name: x\nrun: {handler: h:H, evaluator: bleu}\n", "run.evaluator 'bleu' is unknown"),
    ("name: X Y\nrun: {handler: h:H}\n", "not valid"),
    ("run: {handler: h:H}\n", "name '' is missing"),
    ("name: x\nrun: {handler: h:H}\nextra: 1\n", "unknown field 'extra'"),
    ("name: x\nmodel: [w.pt]\nrun: {handler: h:H}\n", "weight file 'w.pt'"),
]


@pytest.mark.parametrize("text,message", MODELS)
def test_invalid_model_yaml(text, message, tmp_path, capsys):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        packages.build(packages.load_config(path), str(tmp_path / "store"))
    assert cli(["model", "build", str(path), "--store", str(tmp_path / "store")]) == EXIT_PERMANENT
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_the_table_is_large_enough():
    assert len(JOBS) + len(DATASETS) + len(MODELS) >= 30


def test_missing_files_are_named(tmp_path, capsys):
    for args in (["run", str(tmp_path / "nope.yaml")], ["dataset", "build", str(tmp_path / "d.yaml")],
                 ["model", "build", str(tmp_path / "m.yaml")]):
        assert cli(args) == EXIT_PERMANENT
        assert f"no such file: {tmp_path}" in capsys.readouterr().err

