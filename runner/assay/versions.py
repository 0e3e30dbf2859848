"""Finding versions in a store: the version folder a dataset or model URI names, and every complete one.

    <store>/<kind>/<name>/LATEST                    the newest version's folder name
    <store>/<kind>/<name>/<version>/manifest.json   written last: its presence means complete
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from assay import storage
from assay.errors import AssayError, ObjectNotFound
from assay.layout import LATEST, MANIFEST

T = TypeVar("T")


def resolve_version(uri: str, what: str, hint: str) -> str:
    """The version folder for ``uri``: itself if it holds a manifest, else the one its LATEST names."""
    if storage.exists(storage.join(uri, MANIFEST)):
        return uri
    latest = storage.join(uri, LATEST)
    if storage.exists(latest):
        return storage.join(uri, storage.read_text(latest).strip())
    raise ObjectNotFound(f"no {what} at {uri} (no {MANIFEST} or {LATEST} there)", hint)


def load_versions(store: str, kind: str, load: Callable[[str], T], damaged: list | None = None) -> list[T]:
    """``load`` of every complete version folder under ``<store>/<kind>``. With ``damaged``, a version that
    does not load for good (an AssayError that is not retryable) is left out and its error appended there,
    so one damaged manifest hides no other version."""
    found = []
    for uri in version_folders(store, kind):
        try:
            found.append(load(uri))
        except AssayError as exc:
            if damaged is None or exc.retryable:
                raise
            damaged.append(exc)
    return found


def version_folders(store: str, kind: str) -> list[str]:
    """URIs of every complete version folder under ``<store>/<kind>`` (``datasets`` or ``models``)."""
    root = storage.join(store, kind)
    out = []
    for name in storage.list_names(root):
        parts = name.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST:
            out.append(storage.join(root, parts[0], parts[1]))
    return out
