"""``status.json`` of a local run: the job folder's record of its phase, inputs and progress, written whole
each time (``storage.write_text`` is atomic), as the operator writes an EvaluationJob's status."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assay import protocol, storage
from assay.spec import EvaluationJob

#: status.json above this size drops its copy of the spec (the spec itself is bounded, this is a backstop).
MAX_STATUS_BYTES = 256 << 10


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StatusFile:
    """The run's status.json: ``doc``, rewritten on each ``update``. It names the spec's environment
    variables but not their values, and the storage endpoint without credentials."""

    def __init__(self, job: EvaluationJob, job_dir: Path):
        self.path = job_dir / "status.json"
        self.previous = _unfinished_previous(self.path)
        spec = job.to_manifest()["spec"]
        if spec.get("storage", {}).get("endpoint"):
            spec["storage"]["endpoint"] = storage.redact(spec["storage"]["endpoint"])
        runtime = spec.get("runtime") or {}
        if runtime.get("env"):  # values may be secrets: the status names the variables only
            runtime["env"] = [{"name": e.get("name")} for e in runtime["env"]]
        self.doc: dict[str, Any] = {"job": job.name, "phase": "Pending", "startTime": now(), "pid": os.getpid(),
                                    "spec": spec}
        if self.previous:
            self.doc["previousRun"] = self.previous

    def update(self, **fields: Any) -> None:
        self.doc.update(fields)
        text = json.dumps(self.doc, indent=1)
        if len(text) > MAX_STATUS_BYTES:
            text = json.dumps({**self.doc, "spec": "(omitted: too large)"}, indent=1)
        storage.write_text(str(self.path), text)


def _unfinished_previous(path: Path) -> dict[str, Any] | None:
    """A status.json left non-terminal means that run was killed before it could say so."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or old.get("phase") in (*protocol.TERMINAL, None):
        return None
    return {"phase": "Failed", "reason": protocol.INTERRUPTED, "startTime": old.get("startTime"),
            "message": f"the run started at {old.get('startTime')} (pid {old.get('pid')}) ended in phase "
                       f"{old.get('phase')} without a final status (killed); this run resumes it"}
