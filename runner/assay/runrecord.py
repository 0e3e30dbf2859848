"""Who owns a job's output: the run record (which run the results belong to) and the lease (which live
process is writing them).

    <output>/run.json     model and dataset versions and the settings that shape predictions; written once
                          by the first run, checked by every later one, every ppl worker and cmp
    <output>/lease.json   the live run writing into the output (holder, heartbeat); local stores hold a
                          flock(2) on <output>/.lease as well, which the kernel drops when the holder dies

A job whose identity differs from the record is refused, so results of two models, two dataset versions
or two batch sizes can never be scored together; ``--overwrite`` clears the old run's files first. Two
live runs into one output cannot both proceed: the second finds the lease held and stops at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from assay import layout, storage
from assay.errors import AssayError, IntegrityError, ObjectNotFound, SpecError
from assay.spec import env_seconds

if TYPE_CHECKING:
    from assay.packages import ModelManifest
    from assay.shards import DatasetManifest
    from assay.spec import RunContext

FORMAT = "assay.run/v1"
#: Seconds after its last heartbeat that a lease on a remote store counts as abandoned. At least
#: MIN_LEASE_TTL: the heartbeat runs every ttl/3, and a tiny ttl renews in a busy loop.
MIN_LEASE_TTL = 5.0
LEASE_TTL = env_seconds("ASSAY_LEASE_TTL", 60.0, minimum=MIN_LEASE_TTL)


class OutputBusy(AssayError):
    """Another live run holds the output's lease."""


@dataclass(frozen=True)
class RunIdentity:
    """What makes two runs' results comparable: exact model and dataset versions plus the settings
    that change predictions (``settings_hash``)."""

    job: str
    model_name: str
    model_version: str
    dataset_name: str
    dataset_version: str
    settings_hash: str
    settings: dict[str, Any]

    def describe(self) -> str:
        return (f"job {self.job}: model {self.model_name}@{self.model_version} on dataset "
                f"{self.dataset_name}@{self.dataset_version}, settings {self.settings_hash}")

    def same_run(self, other: RunIdentity) -> bool:
        keys = ("model_name", "model_version", "dataset_name", "dataset_version", "settings_hash")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


def identity(ctx: RunContext, model: ModelManifest, dataset: DatasetManifest) -> RunIdentity:
    from assay.metrics import run_settings

    # the evaluator's own settings only where it has some: a classification run keeps its hash
    settings = {**ctx.prediction_settings(), **run_settings(ctx.evaluator or model.evaluator)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return RunIdentity(job=ctx.job_name, model_name=model.name, model_version=model.version,
                       dataset_name=dataset.name, dataset_version=dataset.version, settings_hash=digest,
                       settings=settings)


def record_uri(output_uri: str) -> str:
    return storage.join(output_uri, layout.RUN_RECORD)


def read_record(output_uri: str) -> RunIdentity | None:
    uri = record_uri(output_uri)
    try:
        doc = json.loads(storage.read_bytes(uri))
        if doc.pop("format", None) != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        doc.pop("createdAt", None)
        return RunIdentity(**doc)
    except ObjectNotFound:
        return None
    except (ValueError, TypeError) as exc:
        raise IntegrityError(f"{uri}: not a valid run record ({exc})",
                             "delete it, or run with --overwrite to start the output afresh") from exc


def claim(output_uri: str, ident: RunIdentity) -> None:
    """Make ``output_uri`` this run's, or check that it already is; refuse an output of another run."""
    doc = {"format": FORMAT, **asdict(ident), "createdAt": datetime.now(UTC).isoformat(timespec="seconds")}
    if storage.create_exclusive(record_uri(output_uri), json.dumps(doc, indent=1).encode()) is not None:
        return
    existing = read_record(output_uri)
    if existing is None:  # removed between our create and read: try once more
        return claim(output_uri, ident)
    if not existing.same_run(ident):
        changed = [f"{k} {getattr(existing, k)} -> {getattr(ident, k)}"
                   for k in ("model_name", "model_version", "dataset_name", "dataset_version", "settings_hash")
                   if getattr(existing, k) != getattr(ident, k)]
        changed += setting_changes(existing.settings, ident.settings)
        raise SpecError(
            f"output {output_uri} belongs to another run ({existing.describe()}); this one differs: "
            f"{', '.join(changed)}",
            "evaluate into another output: on a cluster, a new EvaluationJob with its own spec.output.uri (an "
            "EvaluationJob's output never changes); with `assay run`, a new spec.output.uri or `--overwrite` "
            "to discard the old results first")


def setting_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Each setting that differs, as "name old -> new" (nested ones as "matching.maxDets"); "unset" where
    a run did not record it (e.g. an output made before the setting was part of the hash)."""
    out = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key, _UNSET), new.get(key, _UNSET)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += setting_changes(a, b, f"{prefix}{key}.")
        else:
            out.append(f"setting {prefix}{key} {_shown(a)} -> {_shown(b)}")
    return out


_UNSET = object()


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else json.dumps(value, separators=(",", ":"))


#: The entries a run writes into its output; ``clear`` removes only the run's files in them.
RUN_FILES = ("results", "progress", "logs", layout.METRICS, layout.METRICS_DIGEST, layout.SUMMARY, layout.RUN_RECORD)


#: What else lives in an output: the lease, its lock, the local status and the staging folder.
OWN_ENTRIES = (*RUN_FILES, layout.LEASE, ".lease", "status.json", ".staging")


def check_output(output_uri: str, manifest: str | os.PathLike | None = None) -> None:
    """Refuse an output that is the manifest's own folder or already holds entries no assay run writes.

    A run cleans and (with --overwrite) deletes inside its output, so the output must be a folder that
    only assay writes: ``output: {uri: "."}`` next to the manifest would hand it the user's project.
    """
    loc = storage.parse(output_uri)
    if manifest is not None and loc.scheme == "file" \
            and os.path.realpath(loc.path) == os.path.realpath(os.path.dirname(os.path.abspath(manifest))):
        raise SpecError(f"spec.output.uri {output_uri} is the folder of the manifest {manifest}: a run owns its "
                        "output folder and cleans inside it", "set spec.output.uri to a folder of its own, e.g. out")
    foreign = [n for n in storage.top_names(output_uri) if n not in OWN_ENTRIES and not storage.is_temp_name(n)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise SpecError(f"output {output_uri} already holds entries that no assay run writes: {shown}",
                        "set spec.output.uri to a new or empty folder (a run owns its output and cleans inside it)")


#: The names a run gives its files (assay.layout, and the local runner's logs and exit records; progress/
#: objects were written by runs before 0.1.0's step reports): only these are a run's, so --overwrite
#: deletes only these, never a results/README.md beside them.
_RUN_FILE = re.compile(r"results/shard-\d{6}\.(parquet|json|matches\.parquet)|progress/ppl-\d{4}\.json"
                       r"|logs/\.?[a-z]+(-\d{4})?(\.log|\.exit\.json)"
                       rf"|{re.escape(layout.METRICS)}|{re.escape(layout.METRICS_DIGEST)}|{re.escape(layout.SUMMARY)}|{re.escape(layout.RUN_RECORD)}")


def old_run_files(output_uri: str) -> tuple[list[str], list[str]]:
    """(the previous run's files, which --overwrite deletes; the other files under its folders, kept)."""
    names = [n for n in storage.list_names(output_uri) if n.split("/")[0] in RUN_FILES]
    ours = [n for n in names if _RUN_FILE.fullmatch(n)]
    # the record last: an interrupted overwrite leaves an output that is still refused, not half-claimed
    ours.sort(key=lambda n: n == layout.RUN_RECORD)
    return ours, [n for n in names if not _RUN_FILE.fullmatch(n)]


def describe_clear(ours: list[str], kept: list[str]) -> str:
    """One line for the user: what --overwrite deletes (grouped by folder) and what it keeps (named)."""
    groups: dict[str, int] = {}
    for name in ours:
        top = name.split("/")[0] + ("/" if "/" in name else "")
        groups[top] = groups.get(top, 0) + 1
    gone = ", ".join(f"{top} ({n} files)" if top.endswith("/") else top for top, n in groups.items())
    line = f"--overwrite: deleting the old run's {len(ours)} files: {gone or 'none'}"
    if kept:
        line += f"; keeping {len(kept)} files no run writes: " + ", ".join(kept[:10]) + \
            (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
    return line


def clear(output_uri: str, ours: list[str] | None = None) -> int:
    """Delete the previous run's files (``old_run_files``) from the output (the caller holds the lease);
    return how many."""
    ours = old_run_files(output_uri)[0] if ours is None else ours
    for name in ours:
        storage.delete(storage.join(output_uri, name))
    return len(ours)


# ------------------------------------------------------------------------------------------------- lease


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "runId": uuid.uuid4().hex[:12]}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """Exclusive, live ownership of an output while a run writes into it (a context manager).

    Local stores: flock(2) on ``<output>/.lease``, dropped by the kernel when the holder dies.
    S3: ``lease.json`` created with If-None-Match and renewed with If-Match every ttl/3 seconds; a lease
    the store last modified more than its ttl ago (by the store's clock, so skewed nodes cannot steal a
    live lease), or whose holder is a dead process on this host, is taken over with If-Match, so two
    takers cannot both win. On exit it is deleted with If-Match on our own tag, so a holder that paused
    past the ttl cannot delete its successor's lease. ``lost`` turns true if the lease was taken from us.
    """

    def __init__(self, output_uri: str, ttl: float = LEASE_TTL):
        self.output_uri, self.ttl = output_uri, ttl
        self.uri = storage.join(output_uri, layout.LEASE)
        self.holder = _holder()
        self.lost = False
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._tag: str | None = None
        self._thread: threading.Thread | None = None

    def _doc(self) -> bytes:
        now = time.time()
        # the nonce makes every write unique: after a lost answer, the store tells ours from another's
        return json.dumps({**self.holder, "nonce": uuid.uuid4().hex, "renewedAt": now,
                           "ttlSeconds": self.ttl,
                           "renewed": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")}).encode()

    def _busy(self, doc: dict[str, Any]) -> OutputBusy:
        who = f"{doc.get('host', '?')} pid {doc.get('pid', '?')} (run {doc.get('runId', '?')})"
        return OutputBusy(f"output {self.output_uri} is in use by another live run: {who}",
                          "wait for that run to finish (or stop it), or evaluate into another output (on a cluster: a new "
                          "EvaluationJob with its own spec.output.uri)")

    def __enter__(self) -> Lease:
        loc = storage.parse(self.output_uri)
        if loc.scheme == "file":
            held = self._stack.enter_context(storage.local_lock(os.path.join(loc.path, ".lease")))
            if not held:
                raise self._busy(self._peek())
            storage.write_bytes(self.uri, self._doc())
            return self
        self._tag = self._take()
        # in a copy of this context: the renewals go to the store the caller's storage.using names
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._heartbeat,),
                                        name="assay-lease", daemon=True)
        self._thread.start()
        return self

    def _take(self, tries: int = 3) -> str:
        """Create the lease, or take over an abandoned one; our entity tag."""
        tag = storage.create_exclusive(self.uri, self._doc())
        if tag is not None:
            return tag
        try:
            data, old, age = storage.read_aged(self.uri)
        except ObjectNotFound:  # its holder ended between our create and our read: create again
            if tries > 1:
                return self._take(tries - 1)
            raise
        doc = _loads(data)
        if not self._abandoned(doc, age):
            raise self._busy(doc)
        tag = storage.replace_if(self.uri, self._doc(), old)
        if tag is None:  # another taker won the race
            raise self._busy(self._peek())
        return tag

    def _peek(self) -> dict[str, Any]:
        with contextlib.suppress(AssayError, ValueError):
            return _loads(storage.read_bytes(self.uri))
        return {}

    def _abandoned(self, doc: dict[str, Any], age: float) -> bool:
        """``age``: seconds since the store last modified the lease, by the store's clock. The holder's
        renewedAt is only for people: comparing it with this node's clock lets a skewed node steal."""
        if doc.get("host") == self.holder["host"] and isinstance(doc.get("pid"), int):
            return not _pid_alive(doc["pid"])
        ttl = doc.get("ttlSeconds")
        ttl = float(ttl) if isinstance(ttl, int | float) and ttl > 0 else self.ttl
        return age > ttl

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                tag = storage.replace_if(self.uri, self._doc(), self._tag or "")
            except AssayError:
                continue  # a store hiccup: the ttl leaves room for two more tries
            if tag is None:
                self.lost = True
                return
            self._tag = tag

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:  # no renewal in flight while we delete
            self._thread.join(timeout=60)
        with contextlib.suppress(AssayError):
            if storage.is_local(self.output_uri):
                storage.delete(self.uri)  # we hold the flock: nobody else can hold the lease
            elif not self.lost and self._tag:
                storage.delete_if(self.uri, self._tag)  # only our own: a successor's stays
        self._stack.close()


def _loads(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
