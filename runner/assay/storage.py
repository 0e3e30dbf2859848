"""The only module that reads or writes objects: local paths, ``file://`` and ``s3://bucket/prefix`` URIs.

S3 settings come from the usual AWS sources (environment, ``~/.aws/config``, instance roles), including
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for MinIO and other S3-compatible stores.

Guarantees:
- writes are atomic: a reader sees the whole object or none (local: temp file + rename; S3: PUT and
  multipart uploads only become visible when complete);
- large objects stream between disk and store, never whole in memory;
- transient failures (5xx, throttling, resets, timeouts) are retried with exponential backoff, within a
  deadline: a store that stops answering fails the operation in about a minute, naming the endpoint;
  permanent ones (403, no such bucket or key) fail at once with an error that names the URI. Errors are
  told apart by error code and HTTP status, never by message text (which contains the URI);
- what a killed writer leaves behind is findable: local temp files name their writer's pid and host, and
  ``clean_stale`` removes those of dead writers and aborts old incomplete multipart uploads.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import math
import os
import random
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from assay.errors import AccessDenied, ObjectNotFound, SpecError, StorageError, TransientStorageError

T = TypeVar("T")

#: Overrides of the ASSAY_STORAGE_RETRIES and ASSAY_STORAGE_RETRY_DELAY settings for this process
#: (None: use the environment). Tests and the operator set them; users set the variables.
RETRY_ATTEMPTS: int | None = None
RETRY_BASE_DELAY: float | None = None
#: Tries botocore makes per call before our own loop sees the error (one fast retry, e.g. per multipart part).
BOTOCORE_TRIES = 2

_PERMANENT_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_PERMANENT_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "AllAccessDisabled", "AccountProblem"}
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "Throttling", "InternalError", "ServiceUnavailable",
                    "ConditionalRequestConflict"}  # AWS: a concurrent conditional request; retry


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


def redact(text: str) -> str:
    """Hide ``user:password@`` in any URL inside ``text`` (an endpoint may carry credentials)."""
    return re.sub(r"(?<=://)[^/@\s\"']+@", "***@", str(text))


# ------------------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class StorageSettings:
    """Storage settings, from ASSAY_STORAGE_* variables. Read when an operation first needs them, never
    at import, so a bad value is an error message from the command that uses it, not a crash at start."""

    #: ASSAY_STORAGE_RETRIES: attempts per operation, counting the first (1: no retries).
    retries: int = 6
    #: ASSAY_STORAGE_RETRY_DELAY: first backoff delay in seconds; doubles each attempt, with jitter.
    retry_delay: float = 0.2
    #: ASSAY_STORAGE_CONNECT_TIMEOUT / _READ_TIMEOUT: seconds to wait for a TCP connection or the next
    #: bytes of an answer before one try counts as failed (capped so that the tries fit the deadline).
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    #: ASSAY_STORAGE_DEADLINE: seconds an operation may go without progress (no answer, no bytes moved)
    #: before it fails. A long transfer that keeps moving bytes is never cut off.
    deadline: float = 60.0
    #: ASSAY_STORAGE_MULTIPART_THRESHOLD: uploads at least this large go in parts (bytes, or 64M, 1G).
    multipart_threshold: int = 64 << 20
    #: ASSAY_S3_ADDRESSING_STYLE: how the bucket appears in requests.
    addressing_style: str = "auto"

    def timeouts(self) -> tuple[float, float]:
        """Connect and read timeouts of one try, capped so that all of botocore's tries fit the deadline."""
        cap = self.deadline / (2 * BOTOCORE_TRIES)
        return min(self.connect_timeout, cap), min(self.read_timeout, cap)

    def attempt_bound(self) -> float:
        """The longest one attempt can wait on a store that accepts connections and never answers
        (botocore sleeps up to a second before its own retry)."""
        return BOTOCORE_TRIES * sum(self.timeouts()) + (BOTOCORE_TRIES - 1)


def _number(kind: type, low: float, strict: bool) -> Callable[[str], float]:
    def convert(text: str) -> float:
        value = kind(text.strip())
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise ValueError(text)
        return value
    return convert


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(text)
    value = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]
    if value < 5 << 20:  # S3's smallest part
        raise ValueError(text)
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text.strip() not in allowed:
            raise ValueError(text)
        return text.strip()
    return convert


#: variable -> (field, converter, the values it accepts)
_VARIABLES = {
    "ASSAY_STORAGE_RETRIES": ("retries", _number(int, 1, False),
                              "a whole number of attempts >= 1 (1: no retries)"),
    "ASSAY_STORAGE_RETRY_DELAY": ("retry_delay", _number(float, 0, False), "seconds >= 0, like 0.2"),
    "ASSAY_STORAGE_CONNECT_TIMEOUT": ("connect_timeout", _number(float, 0, True), "seconds > 0, like 5"),
    "ASSAY_STORAGE_READ_TIMEOUT": ("read_timeout", _number(float, 0, True), "seconds > 0, like 15"),
    "ASSAY_STORAGE_DEADLINE": ("deadline", _number(float, 0, True), "seconds > 0, like 60"),
    "ASSAY_STORAGE_MULTIPART_THRESHOLD": ("multipart_threshold", _size,
                                          "a size of at least 5M, like 64M or 1G"),
    "ASSAY_S3_ADDRESSING_STYLE": ("addressing_style", _choice("auto", "virtual", "path"),
                                  "auto, virtual or path"),
}


def settings() -> StorageSettings:
    """The settings now in force: the environment, validated, then this process's overrides."""
    values = {}
    for name, (attr, convert, accepted) in _VARIABLES.items():
        raw = os.environ.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[attr] = convert(raw)
        except ValueError:
            # not the value: it may come from a Secret, and this message reaches the job's status
            raise SpecError(f"{name} is not valid: it takes {accepted}",
                            f"fix or unset {name} (default {getattr(StorageSettings, attr)})") from None
    found = StorageSettings(**values)
    if RETRY_ATTEMPTS is not None:
        found = replace(found, retries=RETRY_ATTEMPTS)
    if RETRY_BASE_DELAY is not None:
        found = replace(found, retry_delay=RETRY_BASE_DELAY)
    return found


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
_clients: dict[tuple, object] = {}


@contextlib.contextmanager
def s3_access(access: S3Access) -> Iterator[None]:
    """Use ``access`` for every S3 call made in this context (thread or task)."""
    token = _access.set(access)
    try:
        yield
    finally:
        _access.reset(token)


def _s3():
    """One boto3 client per process, access and timeouts (clients are thread-safe; creating them is not)."""
    access = _access.get()
    cfg = settings()
    # a forked worker must not reuse its parent's connection pool
    key = (os.getpid(), access, cfg.timeouts(), cfg.addressing_style)
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            client = _new_client(access, cfg)
            _clients[key] = client
        return client


def _new_client(access: S3Access | None, cfg: StorageSettings):
    import boto3
    from botocore.config import Config

    extra = {}
    if access is not None:
        extra = {k: v for k, v in {
            "endpoint_url": access.endpoint_url, "region_name": access.region,
            "aws_access_key_id": access.access_key_id, "aws_secret_access_key": access.secret_access_key,
            "aws_session_token": access.session_token}.items() if v}
    connect, read = cfg.timeouts()
    return boto3.session.Session().client(
        "s3",
        config=Config(
            connect_timeout=connect,
            read_timeout=read,
            # our own loop retries with backoff within the deadline; botocore adds one fast try per call
            retries={"mode": "standard", "total_max_attempts": BOTOCORE_TRIES},
            s3={"addressing_style": cfg.addressing_style},
        ),
        **extra,
    )


def reset_clients() -> None:
    """Forget cached clients and what was learnt of their stores (tests change endpoints between cases)."""
    with _client_lock:
        _clients.clear()
        _conditional_delete.clear()


def endpoint() -> str:
    """The S3 endpoint in use, credentials hidden, for messages."""
    try:
        return redact(_s3().meta.endpoint_url)
    except Exception:  # noqa: BLE001 - only for a message
        return "the S3 endpoint"


def _code(exc: Exception) -> tuple[str, int]:
    """A ClientError's error code and HTTP status (a HEAD answer has no body: its code is the status)."""
    response = getattr(exc, "response", None) or {}
    return (str(response.get("Error", {}).get("Code", "")),
            int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0))


def _classify(exc: Exception, uri: str) -> Exception:
    """Map a boto/OS exception to an assay StorageError that names the URI, by code and status only."""
    if isinstance(exc, StorageError):
        return exc
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, S3UploadFailedError) and (exc.__cause__ or exc.__context__):
        # upload_file re-raises the store's answer as this, keeping it only as the context
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, ClientError):
        return _classify_answer(exc, uri)
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):  # configuration: retrying cannot help
        return StorageError(f"no S3 credentials for {uri} at {endpoint()}: {redact(exc)}",
                            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or the job's "
                            "storage secretRef, then run the same command again")
    from urllib3.exceptions import HTTPError as Urllib3Error

    # a body that breaks off mid-read surfaces as urllib3's ProtocolError, not as a botocore error
    if isinstance(exc, BotoCoreError | Urllib3Error | ConnectionError | TimeoutError | OSError):
        return TransientStorageError(f"cannot reach the store for {uri} at {endpoint()}: {redact(exc)}",
                                     "check AWS_ENDPOINT_URL and the network; the store may be down")
    return exc


def _classify_answer(exc: Exception, uri: str) -> Exception:
    code, status = _code(exc)
    shown = code or status
    if code == "NoSuchBucket":
        return _no_bucket(uri)
    if code == "NoSuchUpload":  # a concurrent writer's cleanup aborted ours: upload again
        return TransientStorageError(f"the multipart upload of {uri} was aborted before it completed")
    if code in _PERMANENT_NOT_FOUND or status == 404:
        return ObjectNotFound(f"no such object: {uri} ({shown})",
                              "check the URI, or build/upload the object first")
    if code in _PERMANENT_DENIED or status == 403:
        return AccessDenied(f"access denied to {uri} ({shown})",
                            "check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE or the secretRef) "
                            "and the bucket policy")
    if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
        return TransientStorageError(f"store error on {uri}: {code} (HTTP {status})")
    return StorageError(f"store refused {uri}: {code} (HTTP {status}): {redact(exc)}")


class _Clock:
    """When an operation last made progress: its start, or the last bytes it moved."""

    def __init__(self) -> None:
        self.start = self.mark = time.monotonic()

    def progress(self, *_: object) -> None:
        self.mark = time.monotonic()

    def idle(self) -> float:
        return time.monotonic() - self.mark


def _retrying(uri: str, op: Callable[[], T], clock: _Clock | None = None) -> T:
    """Run ``op``; retry transient failures with exponential backoff and jitter, but never start an attempt
    that could end after the deadline: a store that accepts connections and never answers fails in time."""
    cfg = settings()
    clock = clock or _Clock()
    for attempt in range(1, cfg.retries + 1):
        try:
            return op()
        except Exception as exc:
            err = _classify(exc, uri)
            if not getattr(err, "retryable", False) or attempt == cfg.retries:
                if err is exc:
                    raise
                raise err from exc
            delay = cfg.retry_delay * (2 ** (attempt - 1)) * (0.5 + random.random())
            if clock.idle() + delay + cfg.attempt_bound() > cfg.deadline:
                raise _past_deadline(uri, cfg, attempt, clock, err, answered=_code(exc)[1] > 0) from exc
            time.sleep(delay)
    raise AssertionError("unreachable")


def _no_bucket(uri: str) -> ObjectNotFound:
    bucket = parse(uri).bucket
    return ObjectNotFound(f"no such bucket: {uri} (bucket {bucket!r} does not exist at {endpoint()})",
                          "check the bucket name and the endpoint, or create the bucket")


def _past_deadline(uri: str, cfg: StorageSettings, attempts: int, clock: _Clock, last: Exception,
                   answered: bool) -> Exception:
    waited = time.monotonic() - clock.start
    where = endpoint()
    how = f"failing answers from {where}" if answered else f"no answer from {where}"
    last_error = getattr(last, "message", None) or redact(last)
    return TransientStorageError(
        f"gave up on {uri} after {waited:.0f} s of {how} ({attempts} attempt(s); "
        f"another could pass the {cfg.deadline:g} s deadline); last error: {last_error}",
        f"check that {where} is the right S3 endpoint (AWS_ENDPOINT_URL or spec.storage.endpoint), that the "
        "store is up and reachable from here (proxy, firewall); ASSAY_STORAGE_DEADLINE sets how long to wait")


# ----------------------------------------------------------------------------------------- operations


def exists(uri: str) -> bool:
    """Whether the object exists. A missing bucket is an error, not False: nothing can be built into it."""
    loc = parse(uri)
    if loc.scheme == "file":
        return os.path.isfile(loc.path)
    return _retrying(uri, lambda: _head(loc, uri)) is not None


def _head(loc: Location, uri: str) -> dict | None:
    """HEAD the object; None when it does not exist. A HEAD answer has no body, so its 404 does not say
    whether the key or the bucket is missing: ask the bucket then."""
    try:
        return _s3().head_object(Bucket=loc.bucket, Key=loc.path)
    except Exception as exc:
        if not isinstance(_classify(exc, uri), ObjectNotFound):
            raise
    _check_bucket(loc, uri)
    return None


def _check_bucket(loc: Location, uri: str) -> None:
    """Raise ObjectNotFound naming the bucket when HEAD bucket says 404; any other answer (403 for
    credentials limited to objects) leaves the question to the object requests."""
    try:
        _s3().head_bucket(Bucket=loc.bucket)
    except Exception as exc:
        if _code(exc)[1] == 404:
            raise _no_bucket(uri) from exc
        if getattr(_classify(exc, uri), "retryable", False):  # no answer, or a 5xx: for the retry loop
            raise


def size(uri: str) -> int:
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            return os.path.getsize(loc.path)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no such file: {uri}") from exc
    head = _retrying(uri, lambda: _head(loc, uri))
    if head is None:
        raise ObjectNotFound(f"no such object: {uri}", "check the URI, or build/upload the object first")
    return head["ContentLength"]


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
    _upload_s3(os.fspath(local_path), loc, uri)


def _upload_s3(local_path: str, loc: Location, uri: str) -> None:
    """Upload, then abort the incomplete multipart uploads of the same key that existed before ours (a
    killed earlier writer's): S3 keeps and bills their parts forever otherwise."""
    from boto3.s3.transfer import TransferConfig

    threshold = settings().multipart_threshold
    earlier = _incomplete_uploads(loc, uri, exact=True) if os.path.getsize(local_path) >= threshold else []
    cfg = TransferConfig(multipart_threshold=threshold, multipart_chunksize=min(32 << 20, threshold),
                         max_concurrency=4)
    clock = _Clock()
    _retrying(uri, lambda: _s3().upload_file(local_path, loc.bucket, loc.path, Config=cfg,
                                             Callback=clock.progress), clock)
    for upload in earlier:
        _abort(loc, upload)


def _incomplete_uploads(loc: Location, uri: str, exact: bool) -> list[dict]:
    """Incomplete multipart uploads of the key (``exact``) or under the prefix; [] when the credentials
    may not list them (cleanup is a courtesy, never a reason to fail a write)."""
    prefix = loc.path if exact or not loc.path else f"{loc.path}/"

    def scan() -> list[dict]:
        found = []
        try:
            for page in _s3().get_paginator("list_multipart_uploads").paginate(Bucket=loc.bucket, Prefix=prefix):
                found.extend(u for u in page.get("Uploads", []) if not exact or u["Key"] == loc.path)
        except Exception as exc:
            if _code(exc)[0] != "NoSuchUpload":
                raise
            return []  # gofakes3's answer for a bucket that never had an upload: none to list
        return found

    try:
        return _retrying(uri, scan)
    except AccessDenied:
        return []


def _abort(loc: Location, upload: dict) -> None:
    uri = f"s3://{loc.bucket}/{upload['Key']}"

    def abort() -> None:
        try:
            _s3().abort_multipart_upload(Bucket=loc.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except Exception as exc:
            if _code(exc)[0] not in {"NoSuchUpload", "404"}:  # already gone: done
                raise

    with contextlib.suppress(AccessDenied):
        _retrying(uri, abort)


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
    clock = _Clock()

    def fetch() -> None:
        with atomic_local_file(dest) as tmp:
            body = _s3().get_object(Bucket=loc.bucket, Key=loc.path)["Body"]
            with open(tmp, "wb") as out:
                for chunk in body.iter_chunks(1 << 20):
                    out.write(chunk)
                    clock.progress()

    _retrying(uri, fetch, clock)


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


def top_names(prefix_uri: str) -> list[str]:
    """The entries directly below ``prefix_uri``, hidden files and empty folders included locally (unlike
    ``list_names``): what a check for foreign files must see."""
    loc = parse(prefix_uri)
    if loc.scheme == "file":
        return _names(loc.path)
    return sorted({name.split("/")[0] for name in list_names(prefix_uri)})


def delete(uri: str) -> None:
    loc = parse(uri)
    if loc.scheme == "file":
        with contextlib.suppress(FileNotFoundError):
            os.remove(loc.path)
        return
    _retrying(uri, lambda: _s3().delete_object(Bucket=loc.bucket, Key=loc.path))


# ------------------------------------------------------------------------------ temp files and cleanup

_UMASK = os.umask(0)
os.umask(_UMASK)
#: ``<pid>@<host>-`` then tempfile's 8 random characters, at the end of every temp name assay makes.
_OWNED = re.compile(r"(\d+)@([A-Za-z0-9._-]+)-[a-z0-9_]{8}$")
#: The only names assay gives its temp files and scratch folders (mkstemp and TemporaryDirectory add
#: the 8 characters); clean-up removes nothing else, so another tool's ``.tmp-*`` is never touched.
_TEMP_NAME = re.compile(r"\.tmp-\d+@[A-Za-z0-9._-]+-[a-z0-9_]{8}")
_SCRATCH_NAME = re.compile(r"assay-[a-z]+-\d+@[A-Za-z0-9._-]+-[a-z0-9_]{8}")
STALE_AFTER = 24 * 3600.0


def _owner() -> str:
    """This writer's tag in temp names: its pid and host, so a later run can tell a dead writer's files."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:63] or "host"
    return f"{os.getpid()}@{host}"


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def writable_target(path: str) -> str:
    """The path a write to ``path`` replaces: ``path``, or the file its symlinks lead to (the links stay).

    Refuses anything but a regular file or a new path: a rename over a device, FIFO or folder would
    replace it with a file (``-o /dev/full`` as root), and writing into one may block or go nowhere.
    """
    real = os.path.realpath(path)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real  # a new path (or a dangling link's target): created there
    if stat.S_ISREG(mode):
        return real
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    via = f" (where the link {path} leads)" if real != os.path.abspath(path) else ""
    raise StorageError(f"{real}{via} is {kind}: assay writes only regular files and never replaces anything else",
                       hint="name a regular file or a new path")


@contextlib.contextmanager
def atomic_local_file(path: str) -> Iterator[str]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds.

    A symlink is written through (its target is replaced, the link stays); a non-regular file is refused
    before and again just before the rename (see ``writable_target``)."""
    path = writable_target(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{_owner()}-", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a store is shared like any folder
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        writable_target(path)  # it may have become a FIFO or a link meanwhile
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def scratch_dir(kind: str, store: str | None = None) -> Iterator[Path]:
    """A temp folder named for its writer (``assay-<kind>-<pid>@<host>-XXXXXXXX``), removed afterwards:
    in ``store``'s ``.staging`` folder for a local store (so files can be renamed into it), else in the
    system's temp folder. A SIGKILLed writer's folder is what ``clean_stale`` and ``clean_stale_scratch``
    remove later."""
    folder = staging_dir(store) if store else None
    with tempfile.TemporaryDirectory(prefix=f"assay-{kind}-{_owner()}-", dir=folder) as tmp:
        yield Path(tmp)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _is_stale(path: str, older_than: float) -> bool:
    """A dead writer's entry (its name carries pid@host): its pid is gone on this host; an entry of
    another host only once untouched for ``older_than`` seconds."""
    m = _OWNED.search(os.path.basename(path))
    if m and m.group(2) == _owner().partition("@")[2]:
        return not _alive(int(m.group(1)))
    try:
        return time.time() - os.lstat(path).st_mtime > older_than
    except FileNotFoundError:
        return False


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError, PermissionError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def clean_stale(prefix_uri: str, folders: tuple[str, ...] = ("",), older_than: float = STALE_AFTER) -> list[str]:
    """Remove what killed assay writers left in ``prefix_uri``; return what was removed.

    Local: the temp files of atomic writes in each of ``folders`` (relative to the prefix; listed, never
    walked) and the temp files and scratch folders in ``<prefix>/.staging``, and of those only entries
    with a name assay gives (``.tmp-<pid>@<host>-XXXXXXXX``, ``assay-<kind>-<pid>@<host>-XXXXXXXX``)
    whose writer is dead (see ``_is_stale``). Anything else, another tool's ``.tmp-draft.md`` or
    ``.staging/deploy-bundle.tar`` included, is never touched. S3: incomplete multipart uploads
    initiated more than ``older_than`` seconds ago (S3 does not say who started them, so age is the only
    safe sign).
    """
    loc = parse(prefix_uri)
    if loc.scheme == "s3":
        return _abort_old_uploads(loc, prefix_uri, older_than)
    owned = [os.path.join(loc.path, folder, name) for folder in folders
             for name in _names(os.path.join(loc.path, folder)) if _TEMP_NAME.fullmatch(name)]
    staging = os.path.join(loc.path, ".staging")
    owned += [os.path.join(staging, name) for name in _names(staging)
              if _TEMP_NAME.fullmatch(name) or _SCRATCH_NAME.fullmatch(name)]
    removed = []
    for path in owned:
        if _is_stale(path, older_than):
            _remove(path)
            removed.append(path)
    return removed


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one assay gives the temp file of an atomic write."""
    return _TEMP_NAME.fullmatch(name) is not None


def _names(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def clean_stale_scratch(older_than: float = STALE_AFTER) -> list[str]:
    """Remove the ``scratch_dir`` folders of dead writers from the system temp folder (top level only)."""
    root = tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if _SCRATCH_NAME.fullmatch(name) and _is_stale(path, older_than):
                _remove(path)
                removed.append(path)
    return removed


def clean_leftovers(store: str, kind: str, name: str) -> None:
    """Before a build of ``<store>/<kind>/<name>``: remove what killed builds left (temp files in the
    name's folder and its version folders, the store's staging, scratch folders, incomplete uploads)."""
    prefix = join(store, kind, name)
    versions = tuple(d for d in _names(parse(prefix).path) if not d.startswith(".")) if is_local(store) else ()
    clean_stale(prefix, ("", *versions))
    if is_local(store):
        clean_stale(store, folders=())  # the store's .staging only
    clean_stale_scratch()


def _abort_old_uploads(loc: Location, prefix_uri: str, older_than: float) -> list[str]:
    now = datetime.datetime.now(datetime.timezone.utc)
    removed = []
    for upload in _incomplete_uploads(loc, prefix_uri, exact=False):
        if (now - upload["Initiated"]).total_seconds() > older_than:
            _abort(loc, upload)
            removed.append(f"s3://{loc.bucket}/{upload['Key']} (upload {upload['UploadId']})")
    return removed


# ------------------------------------------------------------------------------ conditional writes
# The run record and the output lease need compare-and-swap: S3 conditional writes (If-None-Match /
# If-Match, served by AWS S3 and MinIO), and link(2) / flock(2) on local stores.
#
# A conditional PUT whose response was lost is retried (by botocore and by ``_retrying``), and the retry
# finds assay's own write: 412. So on 412 the object is read back: if it holds exactly the bytes we sent,
# the write was ours. Callers make writes unique where it matters (each lease write carries a nonce; two
# run records with equal bytes name the same run, so either's claim is the other's).
# 409 ConditionalRequestConflict means a concurrent request was in flight and nothing was written: AWS
# documents it as "retry", so it is classified transient (``_classify_answer``), never as "someone won".


def create_exclusive(uri: str, data: bytes) -> str | None:
    """Write ``uri`` only if no object is there; return its entity tag, or None if one is (another writer won)."""
    loc = parse(uri)
    if loc.scheme == "file":
        folder = os.path.dirname(loc.path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{_owner()}-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.link(tmp, loc.path)  # atomic, complete, and fails if the name exists
            return _local_tag(loc.path)
        except FileExistsError:
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def put() -> str | None:
        try:
            return _s3().put_object(Bucket=loc.bucket, Key=loc.path, Body=data, IfNoneMatch="*")["ETag"]
        except Exception as exc:
            if _precondition_failed(exc):
                return _tag_if_ours(loc, data)
            raise

    return _retrying(uri, put)


def read_tagged(uri: str) -> tuple[bytes, str]:
    """An object's bytes and its entity tag, for a later ``replace_if``."""
    data, tag, _ = read_aged(uri)
    return data, tag


def read_aged(uri: str) -> tuple[bytes, str, float]:
    """An object's bytes, entity tag and age in seconds. On S3 the age is the store's own clock (the
    answer's Date) minus the object's LastModified, so a skewed clock on this node or the writer's cannot
    make a live object look old."""
    loc = parse(uri)
    if loc.scheme == "file":
        data = read_bytes(uri)
        return data, _local_tag(loc.path), max(0.0, time.time() - os.stat(loc.path).st_mtime)

    def get() -> tuple[bytes, str, float]:
        resp = _s3().get_object(Bucket=loc.bucket, Key=loc.path)
        return resp["Body"].read(), resp["ETag"], _store_age(resp)

    return _retrying(uri, get)


def _store_age(resp: dict) -> float:
    import email.utils

    modified = resp["LastModified"]
    try:
        now = email.utils.parsedate_to_datetime(resp["ResponseMetadata"]["HTTPHeaders"]["date"])
    except (KeyError, TypeError, ValueError):  # no usable Date: only then this node's clock
        now = datetime.datetime.now(datetime.timezone.utc)
    return max(0.0, (now - modified).total_seconds())


def replace_if(uri: str, data: bytes, tag: str) -> str | None:
    """Overwrite ``uri`` only if it still has entity tag ``tag``; return the new tag, or None if someone
    changed or removed it since."""
    loc = parse(uri)
    if loc.scheme == "file":
        with local_lock(loc.path + ".lock") as held:
            if not held or not os.path.isfile(loc.path) or _local_tag(loc.path) != tag:
                return None
            write_bytes(uri, data)
            return _local_tag(loc.path)

    def put() -> str | None:
        try:
            return _s3().put_object(Bucket=loc.bucket, Key=loc.path, Body=data, IfMatch=tag)["ETag"]
        except Exception as exc:
            # Ceph RGW and gofakes3 answer 412 where AWS answers 404 for a missing key: both mean "not ours"
            if _precondition_failed(exc):
                return _tag_if_ours(loc, data)
            if isinstance(_classify(exc, uri), ObjectNotFound):
                return None
            raise

    return _retrying(uri, put)


def delete_if(uri: str, tag: str) -> bool:
    """Delete ``uri`` only if it still has entity tag ``tag``; False if it changed (another writer's now)
    or is gone."""
    loc = parse(uri)
    if loc.scheme == "file":
        with local_lock(loc.path + ".lock") as held:
            if not held or not os.path.isfile(loc.path) or _local_tag(loc.path) != tag:
                return False
            os.remove(loc.path)
            return True

    def remove() -> bool:
        if not _honours_conditional_delete(loc):
            return _delete_if_unchanged(loc, uri, tag)
        try:
            _s3().delete_object(Bucket=loc.bucket, Key=loc.path, IfMatch=tag)
            return True
        except Exception as exc:
            if _precondition_failed(exc) or isinstance(_classify(exc, uri), ObjectNotFound):
                return False  # changed, or gone (a retry after our own delete's lost answer)
            if _refuses_conditional_delete(exc):
                return _delete_if_unchanged(loc, uri, tag)
            raise

    return _retrying(uri, remove)


#: What a store without conditional deletes (AWS S3 before September 2025, older MinIO) answers to one.
_NO_CONDITIONAL_DELETE = {"NotImplemented", "InvalidArgument", "InvalidRequest"}
#: (endpoint, bucket) -> whether DeleteObject's If-Match is honoured there (probed once per process).
_conditional_delete: dict[tuple[str, str], bool] = {}


def _refuses_conditional_delete(exc: Exception) -> bool:
    code, status = _code(exc)
    return code in _NO_CONDITIONAL_DELETE or status == 501


def _honours_conditional_delete(loc: Location) -> bool:
    """Whether the store applies If-Match to DeleteObject. Some ignore the header and delete anyway (gofakes3;
    stores that predate conditional deletes may too), which would delete a successor's lease: so a probe
    object of our own is deleted once with a tag it cannot have, and must survive."""
    key = (endpoint(), loc.bucket)
    if key not in _conditional_delete:
        probe = f"{loc.path.rsplit('/', 1)[0]}/.assay-delete-probe-{os.getpid()}-{random.getrandbits(48):012x}"
        _s3().put_object(Bucket=loc.bucket, Key=probe, Body=b"")
        try:
            _s3().delete_object(Bucket=loc.bucket, Key=probe, IfMatch='"assay-probe-never-this-tag"')
            honoured = False  # deleted despite the wrong tag
        except Exception as exc:
            if not (_precondition_failed(exc) or _refuses_conditional_delete(exc)):
                raise
            honoured = _precondition_failed(exc)
        _s3().delete_object(Bucket=loc.bucket, Key=probe)
        _conditional_delete[key] = honoured
    return _conditional_delete[key]


def _delete_if_unchanged(loc: Location, uri: str, tag: str) -> bool:
    # Weaker than If-Match on the delete: another writer can replace the object between this read and the
    # delete, and its object is then deleted. The window is one round trip, not a holder's whole pause.
    try:
        current = _s3().head_object(Bucket=loc.bucket, Key=loc.path)["ETag"]
    except Exception as exc:
        if isinstance(_classify(exc, uri), ObjectNotFound):
            return False
        raise
    if current != tag:
        return False
    _s3().delete_object(Bucket=loc.bucket, Key=loc.path)
    return True


def _tag_if_ours(loc: Location, data: bytes) -> str | None:
    """After a 412: the object's tag if it holds exactly ``data`` (our own write, whose answer was lost),
    else None (another writer's)."""
    try:
        resp = _s3().get_object(Bucket=loc.bucket, Key=loc.path)
    except Exception as exc:
        if isinstance(_classify(exc, f"s3://{loc.bucket}/{loc.path}"), ObjectNotFound):
            return None
        raise
    return resp["ETag"] if resp["Body"].read() == data else None


def _local_tag(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def _precondition_failed(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code == "PreconditionFailed" or status == 412


@contextlib.contextmanager
def local_lock(path: str) -> Iterator[bool]:
    """Hold flock(2) on ``path`` (created if missing) for the block; yields False if another process holds
    it. The kernel drops the lock when its holder dies, so a lock is never left stale by a crash."""
    import fcntl

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)

