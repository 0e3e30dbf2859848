"""What assay's temp files and scratch folders are called, and telling a dead writer's from a live one's.

Every temp name carries its writer's pid and host, so a later run can find what a killed writer left
and remove that, and only that: another tool's ``.tmp-draft.md`` is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from assay.errors import StorageError
from assay.storage.uri import parse

UMASK = os.umask(0)
os.umask(UMASK)
#: ``<pid>@<host>-`` then tempfile's 8 random characters, at the end of every temp name assay makes.
_OWNED = re.compile(r"(\d+)@([A-Za-z0-9._-]+)-[a-z0-9_]{8}$")
#: The only names assay gives its temp files and scratch folders (mkstemp and TemporaryDirectory add
#: the 8 characters); clean-up removes nothing else, so another tool's ``.tmp-*`` is never touched.
TEMP_NAME = re.compile(r"\.tmp-\d+@[A-Za-z0-9._-]+-[a-z0-9_]{8}")
SCRATCH_NAME = re.compile(r"assay-[a-z]+-\d+@[A-Za-z0-9._-]+-[a-z0-9_]{8}")
STALE_AFTER = 24 * 3600.0


def owner() -> str:
    """This writer's tag in temp names: its pid and host, so a later run can tell a dead writer's files."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:63] or "host"
    return f"{os.getpid()}@{host}"


def temp_prefix() -> str:
    """The start of the name of an atomic write's temp file (mkstemp adds 8 characters)."""
    return f".tmp-{owner()}-"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one assay gives the temp file of an atomic write."""
    return TEMP_NAME.fullmatch(name) is not None


def staging_dir(store: str) -> str | None:
    """A folder for temp files that become objects of ``store``: inside it for a local store (so they
    can be renamed into place), else None (the system's temp folder)."""
    loc = parse(store)
    if loc.scheme != "file":
        return None
    path = os.path.join(loc.path, ".staging")
    os.makedirs(path, exist_ok=True)
    return path


@contextlib.contextmanager
def scratch_dir(kind: str, store: str | None = None) -> Iterator[Path]:
    """A temp folder named for its writer (``assay-<kind>-<pid>@<host>-XXXXXXXX``), removed afterwards:
    in ``store``'s ``.staging`` folder for a local store (so files can be renamed into it), else in the
    system's temp folder. A SIGKILLed writer's folder is what ``clean_stale`` and ``clean_stale_scratch``
    remove later."""
    folder = staging_dir(store) if store else None
    with tempfile.TemporaryDirectory(prefix=f"assay-{kind}-{owner()}-", dir=folder) as tmp:
        try:
            yield Path(tmp)
        except OSError as exc:
            # a write() that fills the disk names no file: name the folder that filled up, and its disk
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or exc.filename is not None:
                raise
            parent = os.path.dirname(tmp)
            where = (f"the store's staging folder {parent}" if folder else
                     f"the temp folder {parent} (TMPDIR; the {kind} files go there before the store)")
            hint = ("free space on the store's disk" if folder else
                    f"free space there (`df -h {parent}`), or point TMPDIR at a disk with room") + ", then rerun"
            raise StorageError(f"{exc.strerror}: {where}", hint) from exc


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


def is_stale(path: str, older_than: float) -> bool:
    """A dead writer's entry (its name carries pid@host): its pid is gone on this host; an entry of
    another host only once untouched for ``older_than`` seconds."""
    m = _OWNED.search(os.path.basename(path))
    if m and m.group(2) == owner().partition("@")[2]:
        return not _alive(int(m.group(1)))
    try:
        return time.time() - os.lstat(path).st_mtime > older_than
    except FileNotFoundError:
        return False


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError, PermissionError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def names(folder: str) -> list[str]:
    """The entries of a local folder, sorted; [] when it is missing."""
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
            if SCRATCH_NAME.fullmatch(name) and is_stale(path, older_than):
                remove(path)
                removed.append(path)
    return removed
