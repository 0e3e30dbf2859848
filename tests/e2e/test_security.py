"""Secrets stay out of logs, status and the job folder of a real run."""

from __future__ import annotations

import shutil

import pytest

from assay import datasets, packages, storage
from assay.errors import AssayError
from assay.runner.local import run_job
from assay.spec import EvaluationJob
from tests.conftest import FIXTURES, job_manifest, write_dataset_yaml

PLANTED = "PLANTED-secret-4b1d"


def test_planted_secret_never_reaches_job_folder_or_store(s3, pennfudan_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED)  # moto accepts any credentials
    storage.reset_clients()
    s3.create_bucket(Bucket="secure")
    ds = datasets.build(datasets.load_config(write_dataset_yaml(tmp_path, pennfudan_dir)), "s3://secure/s",
                        log=lambda s: None)
    shutil.copytree(FIXTURES / "oracle", tmp_path / "pkg")
    model = packages.build(packages.load_config(tmp_path / "pkg" / "model.yaml"), "s3://secure/s",
                           log=lambda s: None)
    monkeypatch.chdir(tmp_path)
    ok = EvaluationJob.from_manifest(job_manifest("ok", model.uri, ds.uri, "s3://secure/ok", workers=2))
    run_job(ok, progress=False)
    monkeypatch.setenv("ASSAY_TEST_FAIL_ON", "PennPed00016")  # and a failing run, whose logs hold an error
    bad = EvaluationJob.from_manifest(job_manifest("bad", model.uri, ds.uri, "s3://secure/bad", workers=1))
    with pytest.raises(AssayError) as failed:
        run_job(bad, progress=False)
    assert "planted failure on PennPed00016" in str(failed.value) and PLANTED not in str(failed.value)
    written = [p for p in (tmp_path / ".assay").rglob("*") if p.is_file()]
    assert any(p.name == "status.json" for p in written)
    # the premise: the failing run's logs are among what is searched, and they do hold its error
    assert any("planted failure on PennPed00016" in p.read_text() for p in written if p.suffix == ".log")
    for path in written:
        assert PLANTED.encode() not in path.read_bytes(), path
    for prefix in ("s3://secure/ok", "s3://secure/bad"):
        for name in storage.list_names(prefix):
            assert PLANTED.encode() not in storage.read_bytes(storage.join(prefix, name)), name
