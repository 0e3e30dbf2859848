"""Talking to S3 reliably: one client per process, access and timeouts; errors told apart by error code
and HTTP status (never by message text, which contains the URI); retries within a deadline.

Transient failures (5xx, throttling, resets, timeouts) are retried with exponential backoff, but no
attempt starts that could end after the deadline: a store that stops answering fails the operation in
about a minute, naming the endpoint. Permanent ones (403, no such bucket or key) fail at once with an
error that names the URI. boto3 is imported on first use, never at import.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from assay.errors import AccessDenied, ObjectNotFound, StorageError, TransientStorageError
from assay.storage import access
from assay.storage.config import BOTOCORE_TRIES, StorageSettings, settings
from assay.storage.uri import parse, redact

T = TypeVar("T")

_PERMANENT_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_PERMANENT_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "AllAccessDisabled", "AccountProblem"}
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "Throttling", "InternalError", "ServiceUnavailable",
                    "ConditionalRequestConflict"}  # AWS: a concurrent conditional request; retry

_lock = threading.Lock()
_clients: dict[tuple, Any] = {}
#: What was learnt of a store (``remembered``), forgotten with the clients.
_facts: dict[tuple, Any] = {}


def client():
    """The client for the access and timeouts in force (clients are thread-safe; creating them is not)."""
    explicit = access.current_access()
    cfg = settings()
    # a forked worker must not reuse its parent's connection pool
    key = (os.getpid(), explicit, cfg.timeouts(), cfg.addressing_style)
    with _lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = _new_client(explicit, cfg)
        return found


def _new_client(explicit: access.S3Access | None, cfg: StorageSettings):
    import boto3
    from botocore.config import Config

    extra = {}
    if explicit is not None:
        extra = {k: v for k, v in {
            "endpoint_url": explicit.endpoint_url, "region_name": explicit.region,
            "aws_access_key_id": explicit.access_key_id, "aws_secret_access_key": explicit.secret_access_key,
            "aws_session_token": explicit.session_token}.items() if v}
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
    with _lock:
        _clients.clear()
        _facts.clear()


def remembered(key: tuple, learn: Callable[[], T]) -> T:
    """``learn()``, once per process and ``key`` (until ``reset_clients``): a store's behaviour, probed."""
    if key not in _facts:
        _facts[key] = learn()
    return _facts[key]


def endpoint() -> str:
    """The S3 endpoint in use, credentials hidden, for messages."""
    try:
        return redact(client().meta.endpoint_url)
    except Exception:  # noqa: BLE001 - only for a message
        return "the S3 endpoint"


# ------------------------------------------------------------------------------------ classification


def code(exc: Exception) -> tuple[str, int]:
    """A ClientError's error code and HTTP status (a HEAD answer has no body: its code is the status)."""
    response = getattr(exc, "response", None) or {}
    return (str(response.get("Error", {}).get("Code", "")),
            int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0))


def precondition_failed(exc: Exception) -> bool:
    """Whether a conditional request was refused (412): the object is not as the condition said."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    name, status = code(exc)
    return name == "PreconditionFailed" or status == 412


def classify(exc: Exception, uri: str) -> Exception:
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
    name, status = code(exc)
    shown = name or status
    if name == "NoSuchBucket":
        return no_bucket(uri)
    if name == "NoSuchUpload":  # a concurrent writer's cleanup aborted ours: upload again
        return TransientStorageError(f"the multipart upload of {uri} was aborted before it completed")
    if name in _PERMANENT_NOT_FOUND or status == 404:
        return ObjectNotFound(f"no such object: {uri} ({shown})",
                              "check the URI, or build/upload the object first")
    if name in _PERMANENT_DENIED or status == 403:
        return AccessDenied(f"access denied to {uri} ({shown})",
                            "check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE or the secretRef) "
                            "and the bucket policy")
    if status >= 500 or status == 429 or name in _TRANSIENT_CODES:
        return TransientStorageError(f"store error on {uri}: {name} (HTTP {status})")
    return StorageError(f"store refused {uri}: {name} (HTTP {status}): {redact(exc)}")


def not_found(exc: Exception, uri: str) -> bool:
    return isinstance(classify(exc, uri), ObjectNotFound)


def no_bucket(uri: str) -> ObjectNotFound:
    bucket = parse(uri).bucket
    return ObjectNotFound(f"no such bucket: {uri} (bucket {bucket!r} does not exist at {endpoint()})",
                          "check the bucket name and the endpoint, or create the bucket")


# ------------------------------------------------------------------------------------------- retries


class Clock:
    """When an operation last made progress: its start, or the last bytes it moved."""

    def __init__(self) -> None:
        self.start = self.mark = time.monotonic()

    def progress(self, *_: object) -> None:
        self.mark = time.monotonic()

    def idle(self) -> float:
        return time.monotonic() - self.mark


def retrying(uri: str, op: Callable[[], T], clock: Clock | None = None) -> T:
    """Run ``op``; retry transient failures with exponential backoff and jitter, but never start an attempt
    that could end after the deadline: a store that accepts connections and never answers fails in time."""
    cfg = settings()
    clock = clock or Clock()
    for attempt in range(1, cfg.retries + 1):
        try:
            return op()
        except Exception as exc:
            err = classify(exc, uri)
            if not getattr(err, "retryable", False) or attempt == cfg.retries:
                if err is exc:
                    raise
                raise err from exc
            delay = cfg.retry_delay * (2 ** (attempt - 1)) * (0.5 + random.random())
            if clock.idle() + delay + cfg.attempt_bound() > cfg.deadline:
                raise _past_deadline(uri, cfg, attempt, clock, err, answered=code(exc)[1] > 0) from exc
            time.sleep(delay)
    raise AssertionError("unreachable")


def _past_deadline(uri: str, cfg: StorageSettings, attempts: int, clock: Clock, last: Exception,
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
