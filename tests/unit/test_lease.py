"""The S3 output lease and its conditional writes (issue 19 items 7-11), against the moto server over
HTTP, with tests/faultproxy.py in front where a store fault is needed.

moto checks If-None-Match / If-Match but not atomically (two concurrent writers can both pass the
check), so races between live writers are not tested here: only each writer's handling of the answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from assay import storage
from assay.errors import EXIT_PERMANENT
from assay.runrecord import Lease, OutputBusy
from tests.conftest import REPO
from tests.faultproxy import FaultProxy

BUCKET = "assay-lease"
OUT = f"s3://{BUCKET}/job"
KEY = "job/lease.json"


@pytest.fixture
def bucket(s3):
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    yield s3
    s3.delete_object(Bucket=BUCKET, Key=KEY)


@pytest.fixture
def proxied(bucket, moto_endpoint, monkeypatch):
    """Route assay's S3 calls through a FaultProxy; set ``proxy.when`` to inject faults."""
    with FaultProxy(moto_endpoint, rate=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.reset_clients()
        yield proxy
    storage.reset_clients()


def once(fault: str, method: str, header: str):
    """A ``when`` that injects ``fault`` into the first ``method`` request carrying ``header``."""
    fired = []

    def when(command, path, headers):
        if command == method and header in headers and not fired:
            fired.append(1)
            return fault
        return None

    return when


def plant(s3, **doc) -> None:
    """A lease of another host's run, written now (the store's LastModified is fresh)."""
    holder = {"host": "elsewhere", "pid": 1, "runId": "other", "ttlSeconds": 5, **doc}
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=json.dumps(holder).encode())


def holder_of(s3) -> str:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read())["runId"]


@pytest.mark.parametrize("value", ["0", "abc", "4.9", "-1", "inf"])
def test_a_bad_lease_ttl_is_refused_naming_what_it_accepts(value, tmp_path):
    """Item 11: ASSAY_LEASE_TTL=0 renewed in a busy loop."""
    job = tmp_path / "job.yaml"
    job.write_text("kind: EvaluationJob\n")
    env = {**os.environ, "ASSAY_LEASE_TTL": value,
           "PYTHONPATH": os.pathsep.join([str(REPO / "runner"), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from assay.cli.main import main; sys.exit(main(['run', sys.argv[1]]))"
    proc = subprocess.run([sys.executable, "-c", code, str(job)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == EXIT_PERMANENT, proc.stderr
    assert "error: ASSAY_LEASE_TTL is not valid: it takes a number of seconds >= 5" in proc.stderr
    assert "hint:" in proc.stderr or "fix or unset" in proc.stderr
