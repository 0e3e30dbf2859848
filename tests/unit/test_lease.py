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
PYTHONPATH = os.pathsep.join([str(REPO / "runner"), os.environ.get("PYTHONPATH", "")])


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


def test_exclusive_create_refuses_a_second_live_run(bucket):
    with Lease(OUT, ttl=30) as first:
        with pytest.raises(OutputBusy, match=f"run {first.holder['runId']}"):
            Lease(OUT, ttl=30).__enter__()
        assert holder_of(bucket) == first.holder["runId"]
    assert "Contents" not in bucket.list_objects_v2(Bucket=BUCKET, Prefix=KEY)


def test_takeover_after_the_holder_is_killed(bucket):
    code = ("import time; from assay.runrecord import Lease\n"
            f"l = Lease({OUT!r}, ttl=30).__enter__(); print('held', flush=True); time.sleep(120)")
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusy):
            Lease(OUT, ttl=30).__enter__()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        with Lease(OUT, ttl=30) as taker:  # same host, dead pid: no need to wait out the ttl
            assert holder_of(bucket) == taker.holder["runId"]
    finally:
        proc.kill()
        proc.wait(30)


def test_a_holder_clock_far_behind_does_not_make_a_fresh_lease_stale(bucket):
    """Item 10: staleness was time.time() - renewedAt, two nodes' clocks; a node whose clock ran a day
    ahead of the holder's took a live lease."""
    plant(bucket, renewedAt=time.time() - 86400)
    with pytest.raises(OutputBusy, match="elsewhere"):
        Lease(OUT, ttl=5).__enter__()
    assert holder_of(bucket) == "other"


def test_a_holder_clock_far_ahead_does_not_keep_a_dead_lease(bucket):
    """The store's LastModified ages; a renewedAt in the future kept a dead lease forever."""
    plant(bucket, renewedAt=time.time() + 86400, ttlSeconds=1)
    time.sleep(2.5)  # LastModified and the store's Date have one-second resolution
    with Lease(OUT, ttl=1) as taker:
        assert holder_of(bucket) == taker.holder["runId"]


def test_a_lease_released_between_create_and_read_is_created_again(proxied, bucket):
    """The holder ended after our create's 412 and before our read: no "no such object" error."""
    def when(method, path, headers):
        if method == "GET" and path.endswith("/lease.json") and not proxied.injected["released"]:
            proxied.injected["released"] += 1
            bucket.delete_object(Bucket=BUCKET, Key=KEY)  # the holder's exit, just before our read
        return None

    plant(bucket, renewedAt=time.time())
    proxied.when = when
    with Lease(OUT, ttl=30) as lease:
        assert holder_of(bucket) == lease.holder["runId"]
    assert proxied.injected["released"] == 1


def test_exit_does_not_delete_a_successors_lease(bucket):
    """Item 9: a holder that paused past the ttl deleted, on exit, the lease its successor had taken."""
    lease = Lease(OUT, ttl=30).__enter__()
    plant(bucket, renewedAt=time.time())  # the successor took over while we were paused
    lease.__exit__(None, None, None)
    assert holder_of(bucket) == "other"


def test_without_conditional_deletes_exit_compares_then_deletes(proxied, bucket):
    """A store that refuses If-Match on DeleteObject (501): read-compare-delete instead."""
    proxied.when = lambda method, _, headers: "501" if method == "DELETE" and "If-Match" in headers else None
    lease = Lease(OUT, ttl=30).__enter__()
    plant(bucket, renewedAt=time.time())
    lease.__exit__(None, None, None)
    assert holder_of(bucket) == "other" and proxied.injected["501"] == 1
    bucket.delete_object(Bucket=BUCKET, Key=KEY)
    with Lease(OUT, ttl=30):
        pass
    assert "Contents" not in bucket.list_objects_v2(Bucket=BUCKET, Prefix=KEY)
    assert proxied.injected["501"] == 2


def test_409_on_create_is_retried_not_busy(proxied, bucket):
    """Item 7: 409 ConditionalRequestConflict (AWS: retry) was taken as "another writer won"."""
    proxied.when = once("409", "PUT", "If-None-Match")
    with Lease(OUT, ttl=30) as lease:
        assert holder_of(bucket) == lease.holder["runId"]
    assert proxied.injected["409"] == 1


def test_409_on_renewal_is_retried_not_lost(proxied, bucket):
    storage.write_bytes(f"{OUT}/lease.json", b"v1")
    _, tag = storage.read_tagged(f"{OUT}/lease.json")
    proxied.when = once("409", "PUT", "If-Match")
    assert storage.replace_if(f"{OUT}/lease.json", b"v2", tag) is not None
    assert proxied.injected["409"] == 1


def test_lost_answer_to_our_own_create_is_not_busy(proxied, bucket):
    """Item 8: the create reached the store, its answer did not; the retry's 412 is our own write."""
    proxied.when = once("lost", "PUT", "If-None-Match")
    with Lease(OUT, ttl=30) as lease:
        assert holder_of(bucket) == lease.holder["runId"]
    assert proxied.injected["lost"] == 1


def test_lost_answer_to_our_own_renewal_is_not_lost(proxied, bucket):
    uri = f"{OUT}/lease.json"
    tag = storage.create_exclusive(uri, b'{"v": 1}')
    proxied.when = once("lost", "PUT", "If-Match")
    new = storage.replace_if(uri, b'{"v": 2}', tag)
    assert new is not None and new == bucket.head_object(Bucket=BUCKET, Key=KEY)["ETag"]
    assert proxied.injected["lost"] == 1
    # and a 412 for another writer's change is still "not ours"
    assert storage.replace_if(uri, b'{"v": 3}', tag) is None


def test_heartbeat_survives_a_lost_answer(proxied, bucket):
    proxied.when = once("lost", "PUT", "If-Match")
    with Lease(OUT, ttl=1.5) as lease:
        time.sleep(1.5)  # about three renewals, the first with its answer lost
        assert not lease.lost and proxied.injected["lost"] == 1
        assert holder_of(bucket) == lease.holder["runId"]


@pytest.mark.parametrize("value", ["0", "abc", "4.9", "-1", "inf"])
def test_a_bad_lease_ttl_is_refused_naming_what_it_accepts(value, tmp_path):
    """Item 11: ASSAY_LEASE_TTL=0 renewed in a busy loop."""
    job = tmp_path / "job.yaml"
    job.write_text("kind: EvaluationJob\n")
    env = {**os.environ, "ASSAY_LEASE_TTL": value,
           "PYTHONPATH": PYTHONPATH}
    code = "import sys; from assay.cli.main import main; sys.exit(main(['run', sys.argv[1]]))"
    proc = subprocess.run([sys.executable, "-c", code, str(job)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == EXIT_PERMANENT, proc.stderr
    assert "error: ASSAY_LEASE_TTL is not valid: it takes a number of seconds >= 5" in proc.stderr
    assert "hint:" in proc.stderr or "fix or unset" in proc.stderr
