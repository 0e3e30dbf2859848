"""The S3 backend: objects under ``s3://bucket/prefix``, through ``s3client`` (retries within a deadline).

PUT and multipart uploads only become visible when complete, so writes are atomic; large objects stream
between disk and store. A killed writer's incomplete multipart uploads are aborted by the next upload of
the same key and by ``clean_stale`` (S3 keeps and bills their parts forever otherwise). Every function
takes the parsed location and the URI as the caller wrote it (for messages).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import os
import random

from assay.errors import AccessDenied, ObjectNotFound
from assay.storage.config import settings
from assay.storage.local import atomic_local_file
from assay.storage.s3client import (
    Clock,
    classify,
    client,
    code,
    endpoint,
    no_bucket,
    not_found,
    precondition_failed,
    remembered,
    retrying,
)
from assay.storage.uri import Location


def exists(loc: Location, uri: str) -> bool:
    return retrying(uri, lambda: _head(loc, uri)) is not None


def _head(loc: Location, uri: str) -> dict | None:
    """HEAD the object; None when it does not exist. A HEAD answer has no body, so its 404 does not say
    whether the key or the bucket is missing: ask the bucket then."""
    try:
        return client().head_object(Bucket=loc.bucket, Key=loc.path)
    except Exception as exc:
        if not not_found(exc, uri):
            raise
    _check_bucket(loc, uri)
    return None


def _check_bucket(loc: Location, uri: str) -> None:
    """Raise ObjectNotFound naming the bucket when HEAD bucket says 404; any other answer (403 for
    credentials limited to objects) leaves the question to the object requests."""
    try:
        client().head_bucket(Bucket=loc.bucket)
    except Exception as exc:
        if code(exc)[1] == 404:
            raise no_bucket(uri) from exc
        if getattr(classify(exc, uri), "retryable", False):  # no answer, or a 5xx: for the retry loop
            raise


def size(loc: Location, uri: str) -> int:
    head = retrying(uri, lambda: _head(loc, uri))
    if head is None:
        raise ObjectNotFound(f"no such object: {uri}", "check the URI, or build/upload the object first")
    return head["ContentLength"]


def read_bytes(loc: Location, uri: str) -> bytes:
    return retrying(uri, lambda: client().get_object(Bucket=loc.bucket, Key=loc.path)["Body"].read())


def write_bytes(loc: Location, uri: str, data: bytes) -> None:
    retrying(uri, lambda: client().put_object(Bucket=loc.bucket, Key=loc.path, Body=data))


def upload(loc: Location, uri: str, local_path: str, move: bool) -> None:
    """Upload (in parts from the multipart threshold on), then abort the incomplete multipart uploads of
    the same key that existed before ours: a killed earlier writer's."""
    from boto3.s3.transfer import TransferConfig

    threshold = settings().multipart_threshold
    earlier = _incomplete_uploads(loc, uri, exact=True) if os.path.getsize(local_path) >= threshold else []
    cfg = TransferConfig(multipart_threshold=threshold, multipart_chunksize=min(32 << 20, threshold),
    max_concurrency=4)
    clock = Clock()
    retrying(uri, lambda: client().upload_file(local_path, loc.bucket, loc.path, Config=cfg,
    Callback=clock.progress), clock)
    for upload in earlier:
        _abort(loc, upload)


def download(loc: Location, uri: str, dest: str) -> None:
    clock = Clock()

    def fetch() -> None:
        with atomic_local_file(dest) as tmp:
            body = client().get_object(Bucket=loc.bucket, Key=loc.path)["Body"]
            with open(tmp, "wb") as out:
                for chunk in body.iter_chunks(1 << 20):
                    out.write(chunk)
                    clock.progress()

    retrying(uri, fetch, clock)


def list_names(loc: Location, uri: str) -> list[str]:
    prefix = f"{loc.path}/" if loc.path else ""

    def scan() -> list[str]:
        names = []
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            names.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
        return sorted(names)

    return retrying(uri, scan)


def top_names(loc: Location, uri: str) -> list[str]:
    return sorted({name.split("/")[0] for name in list_names(loc, uri)})


def delete(loc: Location, uri: str) -> None:
    retrying(uri, lambda: client().delete_object(Bucket=loc.bucket, Key=loc.path))


# ------------------------------------------------------------------------------ incomplete uploads


def clean_stale(loc: Location, uri: str, folders: tuple[str, ...], older_than: float) -> list[str]:
    """Abort the incomplete multipart uploads under the prefix initiated more than ``older_than`` seconds
    ago (S3 does not say who started them, so age is the only safe sign)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    removed = []
    for upload in _incomplete_uploads(loc, uri, exact=False):
        if (now - upload["Initiated"]).total_seconds() > older_than:
            _abort(loc, upload)
            removed.append(f"s3://{loc.bucket}/{upload['Key']} (upload {upload['UploadId']})")
    return removed


def _incomplete_uploads(loc: Location, uri: str, exact: bool) -> list[dict]:
    """Incomplete multipart uploads of the key (``exact``) or under the prefix; [] when the credentials
    may not list them (cleanup is a courtesy, never a reason to fail a write)."""
    prefix = loc.path if exact or not loc.path else f"{loc.path}/"

    def scan() -> list[dict]:
        found = []
        try:
            for page in client().get_paginator("list_multipart_uploads").paginate(Bucket=loc.bucket, Prefix=prefix):
                found.extend(u for u in page.get("Uploads", []) if not exact or u["Key"] == loc.path)
        except Exception as exc:
            if code(exc)[0] != "NoSuchUpload":
                raise
            return []  # gofakes3's answer for a bucket that never had an upload: none to list
        return found

    try:
        return retrying(uri, scan)
    except AccessDenied:
        return []


def _abort(loc: Location, upload: dict) -> None:
    uri = f"s3://{loc.bucket}/{upload['Key']}"

    def abort() -> None:
        try:
            client().abort_multipart_upload(Bucket=loc.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except Exception as exc:
            if code(exc)[0] not in {"NoSuchUpload", "404"}:  # already gone: done
                raise

    with contextlib.suppress(AccessDenied):
        retrying(uri, abort)


# ---------------------------------------------------------------------------------- compare-and-swap
# S3 conditional writes: If-None-Match / If-Match, served by AWS S3 and MinIO.
#
# A conditional PUT whose response was lost is retried (by botocore and by ``retrying``), and the retry
# finds assay's own write: 412. So on 412 the object is read back: if it holds exactly the bytes we sent,
# the write was ours. Callers make writes unique where it matters (each lease write carries a nonce; two
# run records with equal bytes name the same run, so either's claim is the other's).
# 409 ConditionalRequestConflict means a concurrent request was in flight and nothing was written: AWS
# documents it as "retry", so it is classified transient, never as "someone won".


def create_exclusive(loc: Location, uri: str, data: bytes) -> str | None:
    def put() -> str | None:
        try:
            return client().put_object(Bucket=loc.bucket, Key=loc.path, Body=data, IfNoneMatch="*")["ETag"]
        except Exception as exc:
            if precondition_failed(exc):
                return _tag_if_ours(loc, uri, data)
            raise

    return retrying(uri, put)


def read_aged(loc: Location, uri: str) -> tuple[bytes, str, float]:
    """The age is the store's own clock (the answer's Date) minus the object's LastModified, so a skewed
    clock on this node or the writer's cannot make a live object look old."""

    def get() -> tuple[bytes, str, float]:
        resp = client().get_object(Bucket=loc.bucket, Key=loc.path)
        return resp["Body"].read(), resp["ETag"], _store_age(resp)

    return retrying(uri, get)


def _store_age(resp: dict) -> float:
    modified = resp["LastModified"]
    try:
        now = email.utils.parsedate_to_datetime(resp["ResponseMetadata"]["HTTPHeaders"]["date"])
    except (KeyError, TypeError, ValueError):  # no usable Date: only then this node's clock
        now = datetime.datetime.now(datetime.timezone.utc)
    return max(0.0, (now - modified).total_seconds())


def replace_if(loc: Location, uri: str, data: bytes, tag: str) -> str | None:
    def put() -> str | None:
        try:
            return client().put_object(Bucket=loc.bucket, Key=loc.path, Body=data, IfMatch=tag)["ETag"]
        except Exception as exc:
            # Ceph RGW and gofakes3 answer 412 where AWS answers 404 for a missing key: both mean "not ours"
            if precondition_failed(exc):
                return _tag_if_ours(loc, uri, data)
            if not_found(exc, uri):
                return None
            raise

    return retrying(uri, put)


def delete_if(loc: Location, uri: str, tag: str) -> bool:
    def remove() -> bool:
        if not _honours_conditional_delete(loc):
            return _delete_if_unchanged(loc, uri, tag)
        try:
            client().delete_object(Bucket=loc.bucket, Key=loc.path, IfMatch=tag)
            return True
        except Exception as exc:
            if precondition_failed(exc) or not_found(exc, uri):
                return False  # changed, or gone (a retry after our own delete's lost answer)
            if _refuses_conditional_delete(exc):
                return _delete_if_unchanged(loc, uri, tag)
            raise

    return retrying(uri, remove)


#: What a store without conditional deletes (AWS S3 before September 2025, older MinIO) answers to one.
_NO_CONDITIONAL_DELETE = {"NotImplemented", "InvalidArgument", "InvalidRequest"}


def _refuses_conditional_delete(exc: Exception) -> bool:
    name, status = code(exc)
    return name in _NO_CONDITIONAL_DELETE or status == 501


def _honours_conditional_delete(loc: Location) -> bool:
    """Whether the store applies If-Match to DeleteObject. Some ignore the header and delete anyway (gofakes3;
    stores that predate conditional deletes may too), which would delete a successor's lease: so a probe
    object of our own is deleted once with a tag it cannot have, and must survive. Probed once per
    endpoint and bucket."""

    def probe() -> bool:
        key = f"{loc.path.rsplit('/', 1)[0]}/.assay-delete-probe-{os.getpid()}-{random.getrandbits(48):012x}"
        client().put_object(Bucket=loc.bucket, Key=key, Body=b"")
        try:
            client().delete_object(Bucket=loc.bucket, Key=key, IfMatch='"assay-probe-never-this-tag"')
            honoured = False  # deleted despite the wrong tag
        except Exception as exc:
            if not (precondition_failed(exc) or _refuses_conditional_delete(exc)):
                raise
            honoured = precondition_failed(exc)
        client().delete_object(Bucket=loc.bucket, Key=key)
        return honoured

    return remembered(("conditional-delete", endpoint(), loc.bucket), probe)


def _delete_if_unchanged(loc: Location, uri: str, tag: str) -> bool:
    # Weaker than If-Match on the delete: another writer can replace the object between this read and the
    # delete, and its object is then deleted. The window is one round trip, not a holder's whole pause.
    try:
        current = client().head_object(Bucket=loc.bucket, Key=loc.path)["ETag"]
    except Exception as exc:
        if not_found(exc, uri):
            return False
        raise
    if current != tag:
        return False
    client().delete_object(Bucket=loc.bucket, Key=loc.path)
    return True


def _tag_if_ours(loc: Location, uri: str, data: bytes) -> str | None:
    """After a 412: the object's tag if it holds exactly ``data`` (our own write, whose answer was lost),
    else None (another writer's)."""
    try:
        resp = client().get_object(Bucket=loc.bucket, Key=loc.path)
    except Exception as exc:
        if not_found(exc, uri):
            return None
        raise
    return resp["ETag"] if resp["Body"].read() == data else None
