"""storage on S3 (moto's server over real HTTP): round trips, errors that name the URI, settings per run."""

from __future__ import annotations

import os
import time

import pytest

from assay import storage
from assay.errors import AccessDenied, ObjectNotFound, StorageError, TransientStorageError


class TestS3:
    def test_round_trip_list_and_stream(self, s3, tmp_path):
        s3.create_bucket(Bucket="roundtrip")
        storage.write_text("s3://roundtrip/p/a.json", "{}")
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(3 << 20))
        storage.upload(big, "s3://roundtrip/p/shards/big.bin")
        storage.download("s3://roundtrip/p/shards/big.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
        assert storage.list_names("s3://roundtrip/p") == ["a.json", "shards/big.bin"]
        assert storage.exists("s3://roundtrip/p/a.json")
        assert not storage.exists("s3://roundtrip/p/none.json")
        assert storage.size("s3://roundtrip/p/shards/big.bin") == 3 << 20

    def test_no_such_key_and_bucket_fail_fast_naming_the_uri(self, s3):
        s3.create_bucket(Bucket="present")
        t0 = time.monotonic()
        with pytest.raises(ObjectNotFound, match="s3://present/missing.json"):
            storage.read_bytes("s3://present/missing.json")
        with pytest.raises(ObjectNotFound, match="no such bucket: s3://absent-bucket/x"):
            storage.read_bytes("s3://absent-bucket/x")
        assert time.monotonic() - t0 < 5, "permanent errors are not retried"

    def test_access_denied_names_the_uri(self, s3, monkeypatch):
        s3.create_bucket(Bucket="locked")
        s3.put_bucket_policy(Bucket="locked", Policy='{"Version":"2012-10-17","Statement":[{"Effect":"Deny",'
                             '"Principal":"*","Action":"s3:*","Resource":["arn:aws:s3:::locked/*"]}]}')
        with pytest.raises((AccessDenied, StorageError), match="s3://locked/x"):
            storage.read_bytes("s3://locked/x")

    def test_unreachable_endpoint_times_out_bounded(self, monkeypatch):
        from tests.conftest import free_port

        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
        monkeypatch.setenv("ASSAY_STORAGE_RETRIES", "3")
        monkeypatch.setenv("ASSAY_STORAGE_RETRY_DELAY", "0.01")
        storage.reset_clients()
        t0 = time.monotonic()
        with pytest.raises(TransientStorageError, match="cannot reach the store for s3://b/k"):
            storage.read_bytes("s3://b/k")
        assert time.monotonic() - t0 < 30
        storage.reset_clients()

    def test_explicit_access_overrides_environment(self, s3, moto_endpoint, monkeypatch):
        s3.create_bucket(Bucket="explicit")
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        storage.reset_clients()
        access = storage.S3Access(endpoint_url=moto_endpoint, access_key_id="a", secret_access_key="b",
                                  region="us-east-1")
        with storage.using(access):
            storage.write_text("s3://explicit/k", "v")
            assert storage.read_text("s3://explicit/k") == "v"
        assert "b" not in repr(access).split("secret")[0][-3:], "secrets are kept out of repr"

    def test_using_applies_to_storage_calls_never_to_the_environment(self, s3, moto_endpoint, monkeypatch):
        """A job's spec.storage was applied by rewriting os.environ for the whole process. ``using`` holds
        for the calls of its block, its nested blocks and the threads started in a copy of its context."""
        import contextvars
        import threading

        s3.create_bucket(Bucket="using")
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing there: only the explicit one works
        monkeypatch.setenv("ASSAY_STORAGE_DEADLINE", "5")
        storage.reset_clients()
        before = dict(os.environ)
        with storage.using(endpoint_url=moto_endpoint, region="us-east-1") as outer:
            assert dict(os.environ) == before and storage.current_access() == outer
            storage.write_text("s3://using/k", "v")
            with storage.using(region="eu-west-1") as inner:  # what it leaves None stays as it was
                assert inner.endpoint_url == moto_endpoint and inner.region == "eu-west-1"
            with storage.using(None):
                assert storage.current_access() == outer
            read: list[str] = []
            worker = threading.Thread(target=contextvars.copy_context().run,
                                      args=(lambda: read.append(storage.read_text("s3://using/k")),))
            worker.start()
            worker.join()
            assert read == ["v"]
        assert storage.current_access() is None and dict(os.environ) == before

    def test_a_runs_spec_storage_reaches_its_lease_renewals(self, s3, moto_endpoint, monkeypatch):
        """The lease is renewed from a thread of its own: it must talk to the job's store too."""
        from assay import runrecord
        from assay.runner.local import storage_settings
        from assay.spec import EvaluationJob
        from tests.conftest import job_manifest

        s3.create_bucket(Bucket="lease-using")
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        monkeypatch.setenv("ASSAY_STORAGE_DEADLINE", "5")
        storage.reset_clients()
        doc = job_manifest("j", "m", "d", "s3://lease-using/out")
        doc["spec"]["storage"] = {"endpoint": moto_endpoint, "region": "us-east-1"}
        job = EvaluationJob.from_manifest(doc)
        before = dict(os.environ)
        with storage_settings(job), runrecord.Lease(job.spec.output.uri, ttl=0.6) as lease:
            first = lease._tag
            deadline = time.monotonic() + 10
            while lease._tag == first and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lease._tag != first and not lease.lost, "renewed at the job's endpoint"
            assert dict(os.environ) == before
        assert not s3.list_objects_v2(Bucket="lease-using").get("Contents"), "released at the job's endpoint"

    def test_dataset_and_job_on_s3(self, s3, pennfudan_dir, test_split, oracle_model, tmp_path, monkeypatch):
        """The same flow with every object in S3: shards stream down, results go up."""
        import shutil

        from assay import datasets, packages
        from assay.runner.local import run_job
        from assay.spec import EvaluationJob
        from tests.conftest import FIXTURES, job_manifest, write_dataset_yaml

        s3.create_bucket(Bucket="assay")
        cfg = datasets.load_config(write_dataset_yaml(tmp_path, pennfudan_dir))
        ds = datasets.build(cfg, "s3://assay/store", log=lambda s: None)
        assert ds.version == test_split.version
        shutil.copytree(FIXTURES / "oracle", tmp_path / "oracle")
        model = packages.build(packages.load_config(tmp_path / "oracle" / "model.yaml"), "s3://assay/store",
                               log=lambda s: None)
        job = EvaluationJob.from_manifest(job_manifest("s3job", "s3://assay/store/models/oracle",
                                                       "s3://assay/store/datasets/pennfudan", "s3://assay/out", 2))
        monkeypatch.chdir(tmp_path)  # the job folder (.assay/) goes here; undone after the test
        run = run_job(job, progress=False)
        assert run.report.summary["segm/AP"] == 1.0
        names = storage.list_names("s3://assay/out")
        assert {"metrics.json", "summary.txt", "results/shard-000000.parquet", "logs/ppl-0000.log"} <= set(names)
        assert model.version == oracle_model.version
