"""storage against servers and processes, as issue 9 found it failing: URIs containing "bucket", an
endpoint that never answers, and the garbage killed writers leave (local temp files, .staging, S3 multipart).
The settings checks are in tests/unit/test_storage_integrity.py."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from assay import storage
from assay.errors import ObjectNotFound, TransientStorageError
from assay.storage import s3, s3client
from tests.conftest import cli as _cli

# ------------------------------------------------------------------------------------------ "bucket"

class TestBucketInUri:
    """Any S3 URI containing the word "bucket" broke exists(): a 404 whose message (which holds the URI)
    contained "bucket" was taken for a missing bucket. Errors are now told apart by code and status."""

    URIS = ["s3://bucket/store/a.json", "s3://ml-bucket/store/a.json", "s3://data/team-bucket-x/a.json"]

    @pytest.mark.parametrize("uri", URIS)
    def test_exists_read_write_list(self, s3, uri, tmp_path):
        loc = storage.parse(uri)
        s3.create_bucket(Bucket=loc.bucket)
        assert storage.exists(uri) is False, "a missing key in an existing bucket is just absent"
        with pytest.raises(ObjectNotFound, match=f"no such object: {uri}"):
            storage.read_bytes(uri)
        with pytest.raises(ObjectNotFound, match=f"no such object: {uri}"):
            storage.size(uri)
        storage.write_text(uri, '{"ok": 1}')
        assert storage.exists(uri) and storage.read_text(uri) == '{"ok": 1}' and storage.size(uri) == 9
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(1 << 20))
        storage.upload(big, uri + ".bin")
        storage.download(uri + ".bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
        parent = uri.rsplit("/", 1)[0]
        assert storage.list_names(parent) == ["a.json", "a.json.bin"]
        storage.delete(uri)
        assert not storage.exists(uri)

    def test_missing_bucket_is_an_error_naming_it(self, s3):
        named = r"no such bucket: s3://missing-bucket/x \(bucket 'missing-bucket' does not exist at http"
        for op in (storage.exists, storage.size, storage.read_bytes, storage.list_names):
            with pytest.raises(ObjectNotFound, match=named):
                op("s3://missing-bucket/x")
        with pytest.raises(ObjectNotFound, match="bucket 'missing-bucket' does not exist"):
            storage.write_text("s3://missing-bucket/x", "v")
        with pytest.raises(ObjectNotFound, match="bucket 'missing-bucket' does not exist"):
            storage.upload(__file__, "s3://missing-bucket/x")

    def test_cli_lists_a_store_in_a_bucket_named_bucket(self, s3, moto_endpoint):
        s3.create_bucket(Bucket="bucket")
        done = _cli("dataset", "list", "--store", "s3://bucket/store", "--format", "json")
        print(f"\nassay dataset list --store s3://bucket/store -> exit {done.returncode}: "
              f"{done.stdout.strip()}")
        assert done.returncode == 0, done.stderr
        done = _cli("dataset", "list", "--store", "s3://no-such-bucket/store")
        print(f"... s3://no-such-bucket/store -> exit {done.returncode}: {done.stderr.strip()}")
        assert done.returncode == 3 and "no such bucket" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------- deadline

@pytest.fixture
def silent_endpoint(monkeypatch):
    """An "S3 endpoint" that accepts TCP connections and never answers, with credentials in its URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    for k, v in {"AWS_ENDPOINT_URL": f"http://alice:s3cr3t@127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
                 "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    storage.reset_clients()
    yield f"127.0.0.1:{port}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()
    storage.reset_clients()


class TestUnresponsiveEndpoint:
    """An endpoint that accepts connections and never answers hung a command for about 18 minutes
    (60 s read timeout x 3 botocore tries x 6 attempts). Every operation now has a deadline."""

    @pytest.mark.parametrize("op", ["exists", "read_bytes", "write_text", "upload", "download", "list_names"])
    def test_each_operation_fails_within_its_deadline(self, silent_endpoint, monkeypatch, op, tmp_path):
        monkeypatch.setenv("ASSAY_STORAGE_DEADLINE", "3")
        calls = {"exists": lambda: storage.exists("s3://b/k"),
                 "read_bytes": lambda: storage.read_bytes("s3://b/k"),
                 "write_text": lambda: storage.write_text("s3://b/k", "v"),
                 "upload": lambda: storage.upload(__file__, "s3://b/k"),
                 "download": lambda: storage.download("s3://b/k", tmp_path / "k"),
                 "list_names": lambda: storage.list_names("s3://b/k")}
        t0 = time.monotonic()
        with pytest.raises(TransientStorageError) as caught:
            calls[op]()
        took = time.monotonic() - t0
        text = str(caught.value)
        print(f"\n{op}: {took:.1f} s: {text}")
        assert took < 3 + 2, "the deadline bounds the whole operation, retries included"
        assert silent_endpoint in text and "s3://b/k" in text and "AWS_ENDPOINT_URL" in text
        assert "s3cr3t" not in text and "alice" not in text, "credentials in the endpoint URL are never shown"
        assert caught.value.retryable, "an unreachable store may come back: the error is transient"
        assert not (tmp_path / "k").exists()

    def test_cli_fails_within_the_deadline_naming_the_endpoint(self, silent_endpoint):
        t0 = time.monotonic()
        done = _cli("dataset", "list", "--store", "s3://bucket/store", env={"ASSAY_STORAGE_DEADLINE": "4"})
        took = time.monotonic() - t0
        print(f"\nassay dataset list (deadline 4 s) -> exit {done.returncode} after {took:.1f} s: "
              f"{done.stderr.strip()}")
        assert done.returncode == 1 and took < 4 + 10
        assert done.stderr.startswith("error: gave up on s3://bucket/store")
        assert silent_endpoint in done.stderr
        assert "s3cr3t" not in done.stderr and "Traceback" not in done.stderr

    def test_cli_fails_within_90_s_at_default_settings(self, silent_endpoint):
        t0 = time.monotonic()
        done = _cli("dataset", "list", "--store", "s3://bucket/store", timeout=200)
        took = time.monotonic() - t0
        print(f"\nassay dataset list (defaults) -> exit {done.returncode} after {took:.1f} s: "
              f"{done.stderr.strip()}")
        assert done.returncode == 1 and took < 90 and silent_endpoint in done.stderr

    def test_timeouts_fit_the_deadline(self, monkeypatch):
        cfg = storage.settings()
        assert cfg.deadline == 60 and cfg.attempt_bound() <= cfg.deadline
        monkeypatch.setenv("ASSAY_STORAGE_READ_TIMEOUT", "300")
        cfg = storage.settings()
        assert cfg.timeouts()[1] == 15, "the read timeout is capped by the deadline"
        assert cfg.attempt_bound() <= cfg.deadline

    def test_a_slow_transfer_that_keeps_moving_is_not_cut_off(self):
        """The deadline counts time without progress, not the length of a big transfer."""
        clock = s3client.Clock()
        clock.start -= 3600
        clock.progress()
        assert clock.idle() < 1


# ------------------------------------------------------------------------------------ stale garbage

_WRITER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from assay import storage
    what, target, mode = sys.argv[1:4]
    if what == "atomic":
        ctx = storage.atomic_local_file(target)
    else:
        ctx = storage.scratch_dir(what, target if target != "-" else None)
    with ctx as tmp:
        path = Path(tmp) / "shard-000000.tar" if what != "atomic" else Path(tmp)
        path.write_bytes(b"x" * 4096)
        print(tmp, flush=True)
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stdin.read()
""")


def _writer(what: str, target: str, mode: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, what, target, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    line = proc.stdout.readline().strip()
    assert line, "the writer did not start"
    if mode == "kill":
        assert proc.wait(30) == -signal.SIGKILL
    return proc, line


class TestStaleLocal:
    """SIGKILLed builds left garbage nothing cleaned (2.19 GB of .staging after 7 killed dataset builds,
    816 MB of temp files after 5 killed model builds). Temp names now carry pid@host, and clean_stale
    removes those of dead writers."""

    def test_killed_writers_are_cleaned_live_ones_kept(self, tmp_path):
        store = tmp_path / "store"
        _, dead_tmp = _writer("atomic", str(store / "models" / "m" / "v1" / "package.tar"), "kill")
        _, dead_stage = _writer("dataset", str(store), "kill")
        live, live_tmp = _writer("atomic", str(store / "models" / "m" / "v2" / "package.tar"), "hold")
        live2, live_stage = _writer("dataset", str(store), "hold")
        try:
            assert os.path.basename(live_tmp).startswith(f".tmp-{live.pid}@")
            assert os.path.dirname(dead_stage) == str(store / ".staging")
            legacy_old = store / ".staging" / "assay-dataset-abcd1234"
            legacy_old.mkdir()
            os.utime(legacy_old, (time.time() - 2 * 86400,) * 2)
            legacy_new = store / "datasets" / ".tmp-zz99yy88"
            legacy_new.parent.mkdir(parents=True)
            legacy_new.write_bytes(b"")
            # issue 19.1: clean_stale lists the folders it is given, never walks, and removes only names
            # with pid@host (so the ownerless legacy entries stay: nothing proves them assay's)
            removed = storage.clean_stale(str(store / "models" / "m"), ("v1", "v2")) + storage.clean_stale(str(store))
            print("\nremoved:", *removed, sep="\n  ")
            assert sorted(removed) == sorted([dead_tmp, dead_stage])
            assert not os.path.exists(dead_tmp) and not os.path.exists(dead_stage) and legacy_old.exists()
            assert os.path.exists(live_tmp) and os.path.exists(live_stage) and legacy_new.exists()
        finally:
            for proc in (live, live2):
                proc.communicate("", timeout=30)
        assert not os.path.exists(live_tmp), "a live writer finishes normally"
        assert storage.clean_stale(str(store)) == []

    def test_killed_scratch_in_system_temp(self, tmp_path, monkeypatch):
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
        _, dead = _writer("model", "-", "kill", env={"TMPDIR": str(tmp_path)})
        assert os.path.dirname(dead) == str(tmp_path) and os.path.basename(dead).startswith("assay-model-")
        other = tmp_path / "assay-model-notours"
        other.mkdir()
        assert storage.clean_stale_scratch() == [dead]
        assert other.exists(), "a folder not named by assay's owner pattern is left alone"


class TestStaleMultipart:
    """An incomplete S3 multipart upload of a killed writer survived a successful rebuild."""

    def test_upload_aborts_earlier_incomplete_uploads_of_its_key(self, s3, tmp_path, monkeypatch):
        monkeypatch.setenv("ASSAY_STORAGE_MULTIPART_THRESHOLD", "5M")
        s3.create_bucket(Bucket="bucket")
        key, other = "store/models/m/v1/package.tar", "store/models/m/v2/package.tar"
        killed = s3.create_multipart_upload(Bucket="bucket", Key=key)["UploadId"]
        s3.upload_part(Bucket="bucket", Key=key, UploadId=killed, PartNumber=1, Body=b"x" * (5 << 20))
        s3.create_multipart_upload(Bucket="bucket", Key=other)
        s3.create_multipart_upload(Bucket="bucket", Key=key + ".bak")  # same prefix, another key
        src = tmp_path / "package.tar"
        src.write_bytes(os.urandom(6 << 20))
        storage.upload(src, f"s3://bucket/{key}")
        head = s3.head_object(Bucket="bucket", Key=key)
        assert head["ContentLength"] == 6 << 20
        assert head["ETag"].strip('"').endswith("-2"), "uploaded in 2 parts"
        left = sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket="bucket").get("Uploads", []))
        print("\nincomplete uploads after the rebuild:", left)
        assert left == sorted([other, key + ".bak"]), "only the earlier upload of exactly this key is aborted"

        # moto reports every upload as initiated in 2010, so both count as old here
        removed = storage.clean_stale("s3://bucket/store/models/m/v2")
        print("clean_stale aborted:", removed)
        assert len(removed) == 1 and "m/v2/package.tar (upload " in removed[0]
        left = [u["Key"] for u in s3.list_multipart_uploads(Bucket="bucket").get("Uploads", [])]
        assert left == [key + ".bak"], "clean_stale stays under its prefix"

    def test_a_killed_uploader_leaves_nothing_after_the_rebuild(self, s3, moto_endpoint, tmp_path, monkeypatch):
        """As a user hits it: a build SIGKILLed mid-upload, then the same build again."""
        from tests.faultproxy import FaultProxy

        monkeypatch.setenv("ASSAY_STORAGE_MULTIPART_THRESHOLD", "5M")
        s3.create_bucket(Bucket="ml-bucket")
        src = tmp_path / "package.tar"
        src.write_bytes(os.urandom(24 << 20))
        uri = "s3://ml-bucket/store/models/m/v1/package.tar"
        code = f"from assay import storage; storage.upload({str(src)!r}, {uri!r})"
        with FaultProxy(moto_endpoint, rate=1.0, faults=("slow",), slow_seconds=1.0) as proxy:
            proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "AWS_ENDPOINT_URL": proxy.url})
            deadline = time.monotonic() + 60
            while not s3.list_multipart_uploads(Bucket="ml-bucket").get("Uploads"):
                assert proc.poll() is None and time.monotonic() < deadline, "the upload never started"
                time.sleep(0.05)
            proc.kill()
            proc.wait(30)
        assert len(s3.list_multipart_uploads(Bucket="ml-bucket")["Uploads"]) == 1, "the killed writer's upload"
        storage.upload(src, uri)
        assert s3.head_object(Bucket="ml-bucket", Key="store/models/m/v1/package.tar")["ContentLength"] == 24 << 20
        assert not s3.list_multipart_uploads(Bucket="ml-bucket").get("Uploads"), "nothing survives the rebuild"

    def test_clean_stale_keeps_recent_uploads(self, monkeypatch):
        now = datetime.datetime.now(datetime.timezone.utc)
        uploads = [{"Key": "p/old", "UploadId": "1", "Initiated": now - datetime.timedelta(days=2)},
                   {"Key": "p/new", "UploadId": "2", "Initiated": now - datetime.timedelta(minutes=5)}]
        aborted = []
        monkeypatch.setattr(s3, "_incomplete_uploads", lambda loc, uri, exact: uploads)
        monkeypatch.setattr(s3, "_abort", lambda loc, upload: aborted.append(upload["Key"]))
        assert storage.clean_stale("s3://b/p") == ["s3://b/p/old (upload 1)"] and aborted == ["p/old"]
        assert len(storage.clean_stale("s3://b/p", older_than=60)) == 2

    def test_an_aborted_upload_of_ours_is_retried(self):
        from botocore.exceptions import ClientError

        exc = ClientError({"Error": {"Code": "NoSuchUpload"}, "ResponseMetadata": {"HTTPStatusCode": 404}},
                          "CompleteMultipartUpload")
        assert isinstance(s3client.classify(exc, "s3://b/k"), TransientStorageError)
