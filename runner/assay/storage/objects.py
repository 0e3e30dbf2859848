"""The operations on objects named by URI; each picks the backend for the URI's scheme, here and only here.

Guarantees (each backend keeps them its own way):
- writes are atomic: a reader sees the whole object or none;
- large objects stream between disk and store, never whole in memory;
- errors name the URI; transient ones were retried within a deadline first (``s3client``);
- what a killed writer leaves behind is findable, and ``clean_stale`` removes it.
"""

from __future__ import annotations

import os
from types import ModuleType

from assay.storage import hygiene, local
from assay.storage.uri import Location, is_local, join, parse


def _backend(uri: str) -> tuple[ModuleType, Location]:
    loc = parse(uri)
    if loc.scheme == "s3":
        from assay.storage import s3  # on first use: its settings and client cost local runs import time

        return s3, loc
    return local, loc


def exists(uri: str) -> bool:
    """Whether the object exists. A missing bucket is an error, not False: nothing can be built into it."""
    backend, loc = _backend(uri)
    return backend.exists(loc, uri)


def size(uri: str) -> int:
    backend, loc = _backend(uri)
    return backend.size(loc, uri)


def read_bytes(uri: str) -> bytes:
    """Read a small object whole (manifests, labels, metrics); use ``download`` for shards."""
    backend, loc = _backend(uri)
    return backend.read_bytes(loc, uri)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object atomically."""
    backend, loc = _backend(uri)
    backend.write_bytes(loc, uri, data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload(local_path: str | os.PathLike, uri: str, move: bool = False) -> None:
    """Stream a local file to ``uri`` atomically (multipart for large files).

    ``move``: the caller no longer needs ``local_path``; a local store then takes the file by rename
    when it is on the same filesystem (no second write of the bytes).
    """
    backend, loc = _backend(uri)
    backend.upload(loc, uri, os.fspath(local_path), move)


def download(uri: str, local_path: str | os.PathLike) -> None:
    """Stream ``uri`` to a local file; the file appears only once complete."""
    backend, loc = _backend(uri)
    backend.download(loc, uri, os.fspath(local_path))


def list_names(prefix_uri: str) -> list[str]:
    """Names (relative to ``prefix_uri``, '/'-separated) of every object below it, sorted."""
    backend, loc = _backend(prefix_uri)
    return backend.list_names(loc, prefix_uri)


def top_names(prefix_uri: str) -> list[str]:
    """The entries directly below ``prefix_uri``, hidden files and empty folders included locally (unlike
    ``list_names``): what a check for foreign files must see."""
    backend, loc = _backend(prefix_uri)
    return backend.top_names(loc, prefix_uri)


def delete(uri: str) -> None:
    backend, loc = _backend(uri)
    backend.delete(loc, uri)


# ---------------------------------------------------------------------------------- compare-and-swap
# The run record and the output lease need compare-and-swap: conditional writes on S3, link(2) and
# flock(2) on local stores. An entity tag names one version of an object.


def create_exclusive(uri: str, data: bytes) -> str | None:
    """Write ``uri`` only if no object is there; return its entity tag, or None if one is (another writer won)."""
    backend, loc = _backend(uri)
    return backend.create_exclusive(loc, uri, data)


def read_tagged(uri: str) -> tuple[bytes, str]:
    """An object's bytes and its entity tag, for a later ``replace_if``."""
    data, tag, _ = read_aged(uri)
    return data, tag


def read_aged(uri: str) -> tuple[bytes, str, float]:
    """An object's bytes, entity tag and age in seconds (on S3 by the store's clock: see ``s3.read_aged``)."""
    backend, loc = _backend(uri)
    return backend.read_aged(loc, uri)


def replace_if(uri: str, data: bytes, tag: str) -> str | None:
    """Overwrite ``uri`` only if it still has entity tag ``tag``; return the new tag, or None if someone
    changed or removed it since."""
    backend, loc = _backend(uri)
    return backend.replace_if(loc, uri, data, tag)


def delete_if(uri: str, tag: str) -> bool:
    """Delete ``uri`` only if it still has entity tag ``tag``; False if it changed (another writer's now)
    or is gone."""
    backend, loc = _backend(uri)
    return backend.delete_if(loc, uri, tag)


# ------------------------------------------------------------------------------------------ clean-up


def clean_stale(prefix_uri: str, folders: tuple[str, ...] = ("",),
                older_than: float = hygiene.STALE_AFTER) -> list[str]:
    """Remove what killed assay writers left in ``prefix_uri``; return what was removed.

    Local: the temp files of atomic writes in each of ``folders`` (relative to the prefix; listed, never
    walked) and the temp files and scratch folders in ``<prefix>/.staging``, and of those only entries
    with a name assay gives (``.tmp-<pid>@<host>-XXXXXXXX``, ``assay-<kind>-<pid>@<host>-XXXXXXXX``)
    whose writer is dead (see ``hygiene.is_stale``). Anything else, another tool's ``.tmp-draft.md`` or
    ``.staging/deploy-bundle.tar`` included, is never touched. S3: incomplete multipart uploads
    initiated more than ``older_than`` seconds ago (S3 does not say who started them, so age is the only
    safe sign).
    """
    backend, loc = _backend(prefix_uri)
    return backend.clean_stale(loc, prefix_uri, folders, older_than)


def clean_leftovers(store: str, kind: str, name: str) -> None:
    """Before a build of ``<store>/<kind>/<name>``: remove what killed builds left (temp files in the
    name's folder and its version folders, the store's staging, scratch folders, incomplete uploads)."""
    prefix = join(store, kind, name)
    versions = tuple(d for d in hygiene.names(parse(prefix).path) if not d.startswith(".")) if is_local(store) else ()
    clean_stale(prefix, ("", *versions))
    if is_local(store):
        clean_stale(store, folders=())  # the store's .staging only
    hygiene.clean_stale_scratch()
