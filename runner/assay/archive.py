"""Deterministic tar writing and safe tar reading, shared by dataset shards and model packages.

Writing: members sorted by the caller, with fixed mtime, owner and mode, so the same inputs give the
same bytes (and so the same content digest). Reading: only regular files whose names stay inside the
destination; links, devices, absolute paths and ``..`` are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from assay.errors import IntegrityError, UnsafeArchiveError


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append one regular file with normalised metadata."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def check_member_name(name: str, archive: str) -> str:
    """Return a safe relative POSIX path for a member, or raise UnsafeArchiveError."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or name.startswith("\\") or ".." in path.parts or ":" in path.parts[0]:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would escape the extraction folder",
                                 "the archive was crafted or corrupted; rebuild it with assay")
    return path.as_posix()


def iter_members(path: str | os.PathLike, archive: str) -> Iterator[tuple[str, bytes]]:
    """Yield (name, bytes) of each regular-file member in order, refusing unsafe members."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                name = check_member_name(member.name, archive)
                if not member.isreg():
                    raise UnsafeArchiveError(f"{archive}: member {name!r} is not a regular file "
                                             f"(links and devices are refused)")
                fileobj = tar.extractfile(member)
                assert fileobj is not None
                yield name, fileobj.read()
    except tarfile.TarError as exc:
        raise IntegrityError(f"{archive}: not a readable tar archive ({exc})",
                             "the object is corrupt or truncated; rebuild it") from exc


def extract_all(path: str | os.PathLike, dest: str | os.PathLike, archive: str) -> list[str]:
    """Extract every member under ``dest`` safely; return the member names."""
    root = Path(dest).resolve()
    names = []
    for name, data in iter_members(path, archive):
        target = (root / name).resolve()
        if root not in target.parents:
            raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside {root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        names.append(name)
    return names


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
