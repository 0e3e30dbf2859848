"""Object-store faults: a proxy in front of moto injects 5xx, slow answers and connection resets; the job
still succeeds with metrics identical to an unfaulted run, and no sample is lost or counted twice."""

from __future__ import annotations

import json
import shutil

import pytest

from assay import datasets, layout, packages, results, storage
from assay.runner.local import run_job
from assay.spec import EvaluationJob
from tests.conftest import FIXTURES, job_manifest, write_dataset_yaml
from tests.faultproxy import FaultProxy


@pytest.fixture
def jitter(monkeypatch):
    monkeypatch.setenv("ASSAY_TEST_JITTER", "1")


def _publish(tmp_path, data, store: str):
    cfg = datasets.load_config(write_dataset_yaml(tmp_path, data))
    ds = datasets.build(cfg, store, log=lambda s: None)
    if not (tmp_path / "oracle").exists():
        shutil.copytree(FIXTURES / "oracle", tmp_path / "oracle")
    model = packages.build(packages.load_config(tmp_path / "oracle" / "model.yaml"), store, log=lambda s: None)
    return ds, model


def _run(name: str, ds, model, output: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = EvaluationJob.from_manifest(job_manifest(name, model.uri, ds.uri, output, workers=2, batch_size=3))
    return run_job(job, progress=False)


def test_job_survives_store_faults_with_identical_metrics(s3, moto_endpoint, tmp_path, monkeypatch, jitter,
                                                         pennfudan_dir):
    s3.create_bucket(Bucket="faulty")
    clean_ds, clean_model = _publish(tmp_path, pennfudan_dir, "s3://faulty/clean")
    clean = _run("clean", clean_ds, clean_model, "s3://faulty/clean-out", tmp_path, monkeypatch)
    assert 0.2 < clean.report.summary["bbox/AP"] < 0.95, "the jittered oracle must not be trivially perfect"

    with FaultProxy(moto_endpoint, rate=0.2, seed=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.reset_clients()
        ds, model = _publish(tmp_path, pennfudan_dir, "s3://faulty/store")    # build through the faults too
        faulted = _run("faulted", ds, model, "s3://faulty/out", tmp_path, monkeypatch)
        print(f"\nstore faults: {proxy.requests} requests through the proxy, injected {dict(proxy.injected)}")
        injected = sum(proxy.injected.values())
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    storage.reset_clients()

    assert injected >= 5, "the proxy must actually have injected faults"
    assert ds.version == clean_ds.version and model.version == clean_model.version
    assert faulted.report.summary == clean.report.summary
    assert faulted.report.full == clean.report.full
    seen = []
    for i in range(len(ds.shards)):
        local = tmp_path / f"r{i}.parquet"
        storage.download(layout.results_uri("s3://faulty/out", i), local)
        seen += results.read_local(local)[0]
    assert len(seen) == len(set(seen)) == ds.samples == 17, "no sample lost, none counted twice"
    doc = json.loads(storage.read_text(layout.metrics_uri("s3://faulty/out")))
    assert doc["dataset"]["samples"] == 17
