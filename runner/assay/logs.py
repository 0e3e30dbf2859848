"""Runner logging: to stderr (JSON lines in pods, plain text locally) and to a file that is copied to
the output store when the process ends, so a worker's log outlives its pod."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from assay import layout, storage
from assay.errors import Stopped


class JsonFormatter(logging.Formatter):
    def __init__(self, **static):
        super().__init__()
        self.static = static

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage(), **self.static}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


#: (local log file, its URI in the store) of the active setup_logging block, for checkpoint().
_active: tuple[Path, str] | None = None


def failure_of(log: logging.Logger, exc: BaseException):
    """The step's failure (``protocol.failure_of``), logged: assay's own errors as a line, anything else with
    its traceback."""
    from assay.errors import AssayError
    from assay.protocol import failure_of as failure

    found = failure(exc)
    if isinstance(exc, AssayError):
        log.error("%s: %s", type(exc).__name__, exc)
    else:
        log.exception("%s", found.error)
    return found


def checkpoint() -> None:
    """Copy the log written so far to the store (after each shard), so a killed pod's log survives too."""
    if _active is not None:
        path, uri = _active
        with contextlib.suppress(Exception):  # logging must never fail the work it describes
            for h in logging.getLogger("assay").handlers:
                h.flush()
            storage.upload(path, uri)


@contextlib.contextmanager
def setup_logging(ctx, role: str, worker: int | None, json_format: bool = False,
                  stream=None, upload: bool = True) -> Iterator[Path]:
    """Log the ``assay`` loggers to ``stream`` and a temp file; upload the file on exit (if ``upload``)."""
    static = {"job": ctx.job_name, "role": role}
    if worker is not None:
        static["worker"] = worker
    fmt: logging.Formatter = (JsonFormatter(**static) if json_format else
                              logging.Formatter(f"%(asctime)s %(levelname)s [{role}"
                                                f"{'' if worker is None else f' {worker}'}] %(message)s"))
    root = logging.getLogger("assay")
    root.setLevel(logging.INFO)
    with storage.scratch_dir("log") as tmp:
        path = Path(tmp) / "run.log"
        handlers = [logging.StreamHandler(stream or sys.stderr), logging.FileHandler(path)]
        for h in handlers:
            h.setFormatter(fmt)
            root.addHandler(h)
        global _active
        if upload:
            _active = (path, layout.log_uri(ctx.output_uri, role, worker))
        try:
            yield path
        except Stopped:
            upload = False  # a stuck store must not hold up the exit past the kubelet's grace period
            raise
        finally:
            _active = None
            for h in handlers:
                root.removeHandler(h)
                h.close()
            if upload:
                with contextlib.suppress(Exception):  # a store that is down must not mask the real error
                    storage.upload(path, layout.log_uri(ctx.output_uri, role, worker))
