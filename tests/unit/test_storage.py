"""storage on local paths: atomic writes, errors that name the URI (S3: tests/e2e/test_storage.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from assay import storage
from assay.errors import ObjectNotFound, StorageError


def test_local_write_is_atomic_and_listed(tmp_path):
    uri = str(tmp_path / "a" / "b.txt")
    storage.write_text(uri, "hello")
    assert storage.read_text(uri) == "hello"
    assert storage.list_names(str(tmp_path)) == ["a/b.txt"]
    assert oct(os.stat(uri).st_mode & 0o777) != oct(0o600), "objects are as readable as other files"


def test_local_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError), storage.atomic_local_file(str(target)) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert not target.exists() and os.listdir(tmp_path) == []


def test_file_uri_and_join(tmp_path):
    assert storage.parse(f"file://{tmp_path}").path == str(tmp_path)
    assert storage.join("s3://b/p", "x", "y.json") == "s3://b/p/x/y.json"
    assert storage.join("s3://b", "x") == "s3://b/x"
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        storage.parse("gs://bucket/x")


def test_missing_local_object_names_uri(tmp_path):
    with pytest.raises(ObjectNotFound, match=str(tmp_path / "nope")):
        storage.read_bytes(str(tmp_path / "nope"))
