"""The S3 output lease and its conditional writes (issue 19 items 7-11), against two S3 servers over
HTTP, moto and gofakes3, with tests/faultproxy.py in front where a store fault is needed.

moto checks If-None-Match / If-Match but not atomically (two concurrent writers can both pass the
check: more than one winner in 5 of 20 trials of 8 concurrent creates), so races between live writers
are refereed by gofakes3 only, whose conditional writes are atomic. gofakes3 ignores If-Match on
DeleteObject, so there exit's conditional delete is its compare-then-delete fallback's job."""

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
from tests.conftest import REPO, point_s3_at
from tests.faultproxy import FaultProxy

BUCKET = "assay-lease"
OUT = f"s3://{BUCKET}/job"
KEY = "job/lease.json"
PYTHONPATH = os.pathsep.join([str(REPO / "runner"), os.environ.get("PYTHONPATH", "")])


@pytest.fixture(params=["moto", "gofakes3"])
def endpoint(request) -> str:
    return request.getfixturevalue(f"{request.param}_endpoint")


@pytest.fixture
def bucket(endpoint, monkeypatch):
    s3 = point_s3_at(endpoint, monkeypatch)
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    yield s3
    s3.delete_object(Bucket=BUCKET, Key=KEY)
    storage.reset_clients()


@pytest.fixture
def proxied(bucket, endpoint, monkeypatch):
    """Route assay's S3 calls through a FaultProxy; set ``proxy.when`` to inject faults."""
    with FaultProxy(endpoint, rate=0.0) as proxy:
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
    """A store that refuses If-Match on DeleteObject (501): read-compare-delete instead. (gofakes3, which
    ignores the header and deletes, is the same case found by the probe.)"""
    proxied.when = lambda method, _, headers: "501" if method == "DELETE" and "If-Match" in headers else None
    lease = Lease(OUT, ttl=30).__enter__()
    plant(bucket, renewedAt=time.time())
    lease.__exit__(None, None, None)
    assert holder_of(bucket) == "other" and proxied.injected["501"] == 1
    bucket.delete_object(Bucket=BUCKET, Key=KEY)
    with Lease(OUT, ttl=30):
        pass
    assert "Contents" not in bucket.list_objects_v2(Bucket=BUCKET, Prefix=KEY)
    assert proxied.injected["501"] == 1, "a store's refusal is learnt once, not met at every exit"


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


def renewed(lease: Lease, times: int, timeout: float = 30) -> None:
    """Wait until the heartbeat has renewed ``times`` times (each renewal writes a new ETag) or lost."""
    tags, deadline = [lease._tag], time.monotonic() + timeout
    while len(tags) <= times and not lease.lost:
        assert time.monotonic() < deadline, f"{len(tags) - 1} of {times} renewals in {timeout} s"
        if lease._tag != tags[-1]:
            tags.append(lease._tag)
        time.sleep(0.01)


def test_heartbeat_survives_a_lost_answer(proxied, bucket):
    proxied.when = once("lost", "PUT", "If-Match")
    with Lease(OUT, ttl=1.5) as lease:
        renewed(lease, 3)  # three renewals, the first with its answer lost
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


# ------------------------------------------------------------------ racing writers, refereed by gofakes3


@pytest.fixture
def atomic(gofakes3_endpoint, monkeypatch):
    """gofakes3 only: moto's conditional writes are not atomic, so a race there can have two winners."""
    s3 = point_s3_at(gofakes3_endpoint, monkeypatch)
    if "assay-race" not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket="assay-race")
    yield s3
    storage.reset_clients()


def test_racing_creates_have_exactly_one_winner(atomic):
    import threading

    for round_ in range(10):
        out, start = f"s3://assay-race/round-{round_}", threading.Barrier(8)
        won, busy = [], []

        def take(out=out, start=start, won=won, busy=busy):
            start.wait()
            try:
                won.append(Lease(out, ttl=30).__enter__())
            except OutputBusy:
                busy.append(1)

        threads = [threading.Thread(target=take) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert (len(won), len(busy)) == (1, 7), f"round {round_}: {len(won)} winners"
        assert holder_of_key(atomic, f"round-{round_}/lease.json") == won[0].holder["runId"]
        won[0].__exit__(None, None, None)


def holder_of_key(s3, key: str) -> str:
    return json.loads(s3.get_object(Bucket="assay-race", Key=key)["Body"].read())["runId"]


def test_two_runs_started_together_into_one_output_one_runs_one_is_refused(atomic, test_split, oracle_model,
                                                                         tmp_path):
    """The whole command, twice at once, into one S3 output: exactly one run owns it."""
    import yaml

    from tests.conftest import job_manifest

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_manifest("race", oracle_model.uri, test_split.uri, "s3://assay-race/run",
                                               workers=1)))
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "ASSAY_TEST_PREDICT_DELAY": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "assay.cli.main", "run", str(job), "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for _ in range(2)]
    outcomes = sorted((p.wait(300), p.stderr.read()) for p in procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    (ok, _), (refused, err) = outcomes
    assert (ok, refused) == (0, EXIT_PERMANENT), outcomes
    assert "in use by another live run" in err
    doc = json.loads(atomic.get_object(Bucket="assay-race", Key="run/metrics.json")["Body"].read())
    assert doc["summary"]["bbox/AP"] == 1.0
