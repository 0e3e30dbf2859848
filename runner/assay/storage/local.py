"""The local backend: objects are files under a folder (plain paths and ``file://`` URIs).

Writes are atomic (a temp file beside the target, renamed over it only when complete) and never replace
anything but a regular file. Compare-and-swap uses link(2), which fails if the name exists, and flock(2),
which the kernel drops when its holder dies. Every function takes the parsed location and the URI as the
caller wrote it (for messages).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from assay.errors import ObjectNotFound, StorageError
from assay.storage import hygiene
from assay.storage.uri import Location

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
    fd, tmp = tempfile.mkstemp(prefix=hygiene.temp_prefix(), dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~hygiene.UMASK)  # mkstemp makes 0600; a store is shared like any folder
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
def local_lock(path: str) -> Iterator[bool]:
    """Hold flock(2) on ``path`` (created if missing) for the block; yields False if another process holds
    it. The kernel drops the lock when its holder dies, so a lock is never left stale by a crash."""
    import fcntl

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~hygiene.UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------- operations


def exists(loc: Location, uri: str) -> bool:
    return os.path.isfile(loc.path)


def size(loc: Location, uri: str) -> int:
    try:
        return os.path.getsize(loc.path)
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"no such file: {uri}") from exc


def read_bytes(loc: Location, uri: str) -> bytes:
    try:
        return Path(loc.path).read_bytes()
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"no such file: {uri}", "check the path or build the object first") from exc
    except IsADirectoryError as exc:
        raise ObjectNotFound(f"{uri} is a folder, not a file") from exc


def write_bytes(loc: Location, uri: str, data: bytes) -> None:
    with atomic_local_file(loc.path) as tmp:
        Path(tmp).write_bytes(data)


def upload(loc: Location, uri: str, local_path: str, move: bool) -> None:
    if move:  # the caller is done with the file: take it by rename when on the same filesystem
        os.makedirs(os.path.dirname(loc.path) or ".", exist_ok=True)
        try:
            os.replace(local_path, loc.path)
            return
        except OSError:  # another filesystem: copy instead
            pass
    with atomic_local_file(loc.path) as tmp:
        shutil.copyfile(local_path, tmp)


def download(loc: Location, uri: str, dest: str) -> None:
    if not os.path.isfile(loc.path):
        raise ObjectNotFound(f"no such file: {uri}", "check the path or build the object first")
    with atomic_local_file(dest) as tmp:
        shutil.copyfile(loc.path, tmp)


def list_names(loc: Location, uri: str) -> list[str]:
    root = Path(loc.path)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith(".tmp-") and ".staging" not in p.parts)


def top_names(loc: Location, uri: str) -> list[str]:
    return hygiene.names(loc.path)


def delete(loc: Location, uri: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(loc.path)


def clean_stale(loc: Location, uri: str, folders: tuple[str, ...], older_than: float) -> list[str]:
    """The temp files of dead writers in each of ``folders`` (listed, never walked) and the temp files and
    scratch folders in ``.staging``: only names assay gives (``hygiene``)."""
    owned = [os.path.join(loc.path, folder, name) for folder in folders
             for name in hygiene.names(os.path.join(loc.path, folder)) if hygiene.TEMP_NAME.fullmatch(name)]
    staging = os.path.join(loc.path, ".staging")
    owned += [os.path.join(staging, name) for name in hygiene.names(staging)
              if hygiene.TEMP_NAME.fullmatch(name) or hygiene.SCRATCH_NAME.fullmatch(name)]
    removed = []
    for path in owned:
        if hygiene.is_stale(path, older_than):
            hygiene.remove(path)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------------- compare-and-swap
# An entity tag is the file's inode, mtime and size: a rename over it or a rewrite changes it.


def create_exclusive(loc: Location, uri: str, data: bytes) -> str | None:
    folder = os.path.dirname(loc.path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=hygiene.temp_prefix(), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~hygiene.UMASK)
        os.link(tmp, loc.path)  # atomic, complete, and fails if the name exists
        return _tag(loc.path)
    except FileExistsError:
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def read_aged(loc: Location, uri: str) -> tuple[bytes, str, float]:
    data = read_bytes(loc, uri)
    return data, _tag(loc.path), max(0.0, time.time() - os.stat(loc.path).st_mtime)


def replace_if(loc: Location, uri: str, data: bytes, tag: str) -> str | None:
    with local_lock(loc.path + ".lock") as held:
        if not held or not os.path.isfile(loc.path) or _tag(loc.path) != tag:
            return None
        write_bytes(loc, uri, data)
        return _tag(loc.path)


def delete_if(loc: Location, uri: str, tag: str) -> bool:
    with local_lock(loc.path + ".lock") as held:
        if not held or not os.path.isfile(loc.path) or _tag(loc.path) != tag:
            return False
        os.remove(loc.path)
        return True


def _tag(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"
