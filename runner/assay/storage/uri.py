"""Storage URIs: local paths, ``file://`` and ``s3://bucket/prefix``. Pure string work, no I/O and no S3
client, so that the naming of objects (``assay.layout``, which the operator imports) can use it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from assay.errors import StorageError


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


def redact(text: str) -> str:
    """Hide ``user:password@`` in any URL inside ``text`` (an endpoint may carry credentials)."""
    return re.sub(r"(?<=://)[^/@\s\"']+@", "***@", str(text))
