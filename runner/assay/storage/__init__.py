"""The only package that reads or writes objects: local paths, ``file://`` and ``s3://bucket/prefix`` URIs.

S3 settings come from the usual AWS sources (environment, ``~/.aws/config``, instance roles), including
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for MinIO and other S3-compatible stores; a job's
``spec.storage`` applies to a run through ``using`` (never through ``os.environ``). Modules:

- ``uri``: parse and join URIs (pure: ``assay.layout`` and the operator use it);
- ``config``: ``ASSAY_STORAGE_*`` (attempts, timeouts, deadline, part size);
- ``access``: which S3 store this context talks to (``using``);
- ``objects``: the operations, each dispatched once on the URI's scheme to
- ``local`` (files: atomic renames, link(2) and flock(2)) or ``s3`` (through ``s3client``: error
  classification, retries within a deadline);
- ``hygiene``: temp names that carry their writer, so a killed writer's leftovers can be removed.
"""

import importlib
from typing import Any

from assay.storage.access import S3Access, current_access, using, using_spec
from assay.storage.hygiene import STALE_AFTER, clean_stale_scratch, is_temp_name, scratch_dir, staging_dir
from assay.storage.local import atomic_local_file, local_lock, writable_target
from assay.storage.objects import (
    clean_leftovers,
    clean_stale,
    create_exclusive,
    delete,
    delete_if,
    download,
    exists,
    list_names,
    read_aged,
    read_bytes,
    read_tagged,
    read_text,
    replace_if,
    size,
    top_names,
    upload,
    write_bytes,
    write_text,
)
from assay.storage.uri import Location, is_local, join, parse, redact

#: Names of the S3 side, loaded on first use: pydantic-settings and the client's modules cost a process
#: about 0.1-0.2 s to import, which a run on local files (cmp, report, the CLI) need not pay.
_S3_SIDE = {"StorageSettings": "config", "settings": "config", "endpoint": "s3client", "reset_clients": "s3client"}


def __getattr__(name: str) -> Any:
    if name in _S3_SIDE:
        return getattr(importlib.import_module(f"assay.storage.{_S3_SIDE[name]}"), name)
    raise AttributeError(f"module 'assay.storage' has no attribute {name!r}")

__all__ = [
    "STALE_AFTER", "Location", "S3Access", "StorageSettings", "atomic_local_file", "clean_leftovers", "clean_stale",
    "clean_stale_scratch", "create_exclusive", "current_access", "delete", "delete_if", "download", "endpoint", "exists",
    "is_local", "is_temp_name", "join", "list_names", "local_lock", "parse", "read_aged", "read_bytes",
    "read_tagged", "read_text", "redact", "replace_if", "reset_clients", "scratch_dir", "settings", "size",
    "staging_dir", "top_names", "upload", "using", "using_spec", "writable_target", "write_bytes", "write_text",
]
