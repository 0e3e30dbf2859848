"""The only module that reads or writes objects: local paths, ``file://`` and ``s3://bucket/prefix`` URIs.

S3 settings come from the usual AWS sources (environment, ``~/.aws/config``, instance roles), including
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for MinIO and other S3-compatible stores.

Guarantees:
- writes are atomic: a reader sees the whole object or none (local: temp file + rename; S3: PUT and
  multipart uploads only become visible when complete);
- large objects stream between disk and store, never whole in memory;
- transient failures (5xx, throttling, resets, timeouts) are retried with exponential backoff;
  permanent ones (403, no such bucket or key) fail at once with an error that names the URI.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from assay.errors import AccessDenied, ObjectNotFound, StorageError, TransientStorageError

T = TypeVar("T")

#: Attempts for one operation, counting the first, before a transient error is raised.
RETRY_ATTEMPTS = int(os.environ.get("ASSAY_STORAGE_RETRIES", "6"))
#: First backoff delay in seconds; doubles each attempt, with jitter.
RETRY_BASE_DELAY = float(os.environ.get("ASSAY_STORAGE_RETRY_DELAY", "0.2"))
#: Seconds to wait for a TCP connection or a response chunk before the attempt counts as failed.
CONNECT_TIMEOUT = float(os.environ.get("ASSAY_STORAGE_CONNECT_TIMEOUT", "5"))
READ_TIMEOUT = float(os.environ.get("ASSAY_STORAGE_READ_TIMEOUT", "60"))

_PERMANENT_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "NoSuchUpload"}
_PERMANENT_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "AllAccessDisabled", "AccountProblem"}


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` is ``file`` or ``s3``; ``bucket`` is empty for files."""

    scheme: str
    bucket: str
    path: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.scheme == "s3" else self.path


def parse(uri: str) -> Location:
    """Split a URI into scheme, bucket and path; a bare path is a local file."""
    uri = str(uri)
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        if not bucket:
            raise StorageError(f"{uri!r} names no bucket", "write s3://BUCKET/PREFIX")
        return Location("s3", bucket, key.strip("/"))
    if uri.startswith("file://"):
        uri = uri[7:]
    elif "://" in uri:
        raise StorageError(f"unsupported URI scheme in {uri!r}", "use a local path, file:// or s3://")
    return Location("file", "", os.path.abspath(os.path.expanduser(uri)))


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI with '/' (also for local paths, which stay absolute)."""
    loc = parse(uri)
    tail = "/".join(p.strip("/") for p in parts if p)
    if loc.scheme == "s3":
        key = f"{loc.path}/{tail}" if loc.path else tail
        return f"s3://{loc.bucket}/{key}"
    return os.path.join(loc.path, *[p.strip("/") for p in parts if p])


def is_local(uri: str) -> bool:
    return parse(uri).scheme == "file"


def staging_dir(store: str) -> str | None:
    """A folder for temp files that become objects of ``store``: inside it for a local store (so they
    can be renamed into place), else None (the system's temp folder)."""
    loc = parse(store)
    if loc.scheme != "file":
        return None
    path = os.path.join(loc.path, ".staging")
    os.makedirs(path, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------- S3 client

@dataclass(frozen=True)
class S3Access:
    """Explicit S3 settings, for a process that serves many jobs with different stores (the operator).

    Fields left None fall back to the usual AWS sources. Never log this object's secret fields.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)


_access: contextvars.ContextVar[S3Access | None] = contextvars.ContextVar("assay_s3_access", default=None)
_client_lock = threading.Lock()
_clients: dict[tuple[int, S3Access | None], object] = {}


@contextlib.contextmanager
def s3_access(access: S3Access) -> Iterator[None]:
    """Use ``access`` for every S3 call made in this context (thread or task)."""
    token = _access.set(access)
    try:
        yield
    finally:
        _access.reset(token)


def _s3():
    """One boto3 client per process and access (clients are thread-safe; creating them is not)."""
    access = _access.get()
    key = (os.getpid(), access)  # a forked worker must not reuse its parent's connection pool
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            extra = {}
            if access is not None:
                extra = {k: v for k, v in {
                    "endpoint_url": access.endpoint_url, "region_name": access.region,
                    "aws_access_key_id": access.access_key_id, "aws_secret_access_key": access.secret_access_key,
                    "aws_session_token": access.session_token}.items() if v}
            client = boto3.session.Session().client(
                "s3",
                config=Config(
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                    # our own loop below retries with backoff; botocore adds a few fast tries per call
                    retries={"mode": "standard", "max_attempts": 2},
                    s3={"addressing_style": os.environ.get("ASSAY_S3_ADDRESSING_STYLE", "auto")},
                ),
                **extra,
            )
            _clients[key] = client
        return client


def reset_clients() -> None:
    """Forget cached clients (tests change endpoints and credentials between cases)."""
    with _client_lock:
        _clients.clear()


def _classify(exc: Exception, uri: str) -> Exception:
    """Map a boto/OS exception to an assay StorageError that names the URI."""
    if isinstance(exc, StorageError):
        return exc
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _PERMANENT_NOT_FOUND or status == 404:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return ObjectNotFound(f"no such {what}: {uri} ({code or status})",
                                  "check the URI, or build/upload the object first")
        if code in _PERMANENT_DENIED or status == 403:
            return AccessDenied(f"access denied to {uri} ({code or status})",
                                "check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE or the secretRef) "
                                "and the bucket policy")
        if status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout", "Throttling"}:
            return TransientStorageError(f"store error on {uri}: {code} (HTTP {status})")
        return StorageError(f"store refused {uri}: {code} (HTTP {status}): {exc}")
    from urllib3.exceptions import HTTPError as Urllib3Error

    # a body that breaks off mid-read surfaces as urllib3's ProtocolError, not as a botocore error
    if isinstance(exc, BotoCoreError | Urllib3Error | ConnectionError | TimeoutError | OSError):
        return TransientStorageError(f"cannot reach the store for {uri}: {exc}",
                                     "check AWS_ENDPOINT_URL and the network; the store may be down")
    return exc


def _retrying(uri: str, op: Callable[[], T]) -> T:
    """Run ``op``; retry transient failures with exponential backoff and jitter."""
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return op()
        except Exception as exc:  # noqa: BLE001 - classified right below
            err = _classify(exc, uri)
            if not getattr(err, "retryable", False) or attempt == RETRY_ATTEMPTS:
                if err is exc:
                    raise
                raise err from exc
            time.sleep(RETRY_BASE_DELAY * (2 ** (attempt - 1)) * (0.5 + random.random()))
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------- operations


def exists(uri: str) -> bool:
    loc = parse(uri)
    if loc.scheme == "file":
        return os.path.isfile(loc.path)

    def head() -> bool:
        try:
            _s3().head_object(Bucket=loc.bucket, Key=loc.path)
            return True
        except Exception as exc:  # noqa: BLE001
            err = _classify(exc, uri)
            if isinstance(err, ObjectNotFound) and "bucket" not in err.message:
                return False
            raise

    return _retrying(uri, head)


def size(uri: str) -> int:
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            return os.path.getsize(loc.path)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no such file: {uri}") from exc
    return _retrying(uri, lambda: _s3().head_object(Bucket=loc.bucket, Key=loc.path)["ContentLength"])


def read_bytes(uri: str) -> bytes:
    """Read a small object whole (manifests, labels, metrics); use ``download`` for shards."""
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            return Path(loc.path).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no such file: {uri}", "check the path or build the object first") from exc
        except IsADirectoryError as exc:
            raise ObjectNotFound(f"{uri} is a folder, not a file") from exc
    return _retrying(uri, lambda: _s3().get_object(Bucket=loc.bucket, Key=loc.path)["Body"].read())


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object atomically."""
    loc = parse(uri)
    if loc.scheme == "file":
        with atomic_local_file(loc.path) as tmp:
            Path(tmp).write_bytes(data)
        return
    _retrying(uri, lambda: _s3().put_object(Bucket=loc.bucket, Key=loc.path, Body=data))


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload(local_path: str | os.PathLike, uri: str, move: bool = False) -> None:
    """Stream a local file to ``uri`` atomically (multipart for large files).

    ``move``: the caller no longer needs ``local_path``; a local store then takes the file by rename
    when it is on the same filesystem (no second write of the bytes).
    """
    loc = parse(uri)
    if loc.scheme == "file":
        if move:
            os.makedirs(os.path.dirname(loc.path) or ".", exist_ok=True)
            try:
                os.replace(local_path, loc.path)
                return
            except OSError:  # another filesystem: copy instead
                pass
        with atomic_local_file(loc.path) as tmp:
            shutil.copyfile(local_path, tmp)
        return
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=32 << 20, max_concurrency=4)
    _retrying(uri, lambda: _s3().upload_file(str(local_path), loc.bucket, loc.path, Config=cfg))


def download(uri: str, local_path: str | os.PathLike) -> None:
    """Stream ``uri`` to a local file; the file appears only once complete."""
    loc = parse(uri)
    dest = os.fspath(local_path)
    if loc.scheme == "file":
        if not os.path.isfile(loc.path):
            raise ObjectNotFound(f"no such file: {uri}", "check the path or build the object first")
        with atomic_local_file(dest) as tmp:
            shutil.copyfile(loc.path, tmp)
        return

    def fetch() -> None:
        with atomic_local_file(dest) as tmp:
            body = _s3().get_object(Bucket=loc.bucket, Key=loc.path)["Body"]
            with open(tmp, "wb") as out:
                for chunk in body.iter_chunks(1 << 20):
                    out.write(chunk)

    _retrying(uri, fetch)


def list_names(prefix_uri: str) -> list[str]:
    """Names (relative to ``prefix_uri``, '/'-separated) of every object below it, sorted."""
    loc = parse(prefix_uri)
    if loc.scheme == "file":
        root = Path(loc.path)
        if not root.is_dir():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and not p.name.startswith(".tmp-") and ".staging" not in p.parts)
    prefix = f"{loc.path}/" if loc.path else ""

    def scan() -> list[str]:
        names = []
        for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            names.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
        return sorted(names)

    return _retrying(prefix_uri, scan)


def delete(uri: str) -> None:
    loc = parse(uri)
    if loc.scheme == "file":
        with contextlib.suppress(FileNotFoundError):
            os.remove(loc.path)
        return
    _retrying(uri, lambda: _s3().delete_object(Bucket=loc.bucket, Key=loc.path))


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_local_file(path: str) -> Iterator[str]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a store is shared like any folder
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
