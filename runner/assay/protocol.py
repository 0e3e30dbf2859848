"""The run contract, defined once: what the drivers (``assay run``, the pods, the operator) and the readers
share about an evaluation.

- the API identity of EvaluationJobs and the label and annotation keys on their children;
- the steps (roles) and where a pod leaves its report (the termination-log path, and its size bound);
- the phases of a job, local or on a cluster, and which of them are terminal;
- a step's report: one JSON document, ``{"result": {...}}`` or ``{"failure": {...}}``, written by a pod into
  its termination message and by a local worker into its exit file, parsed (never scraped as text) by
  the operator and by ``assay run``;
- the one mapping from an exception to a failure and an exit code.
"""

from __future__ import annotations

import errno
import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from assay.errors import EXIT_PERMANENT, EXIT_RETRYABLE, AssayError

# ------------------------------------------------------------------------------------------ identity

GROUP, VERSION = "assay.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND, PLURAL = "EvaluationJob", "evaluationjobs"

#: Labels on every child Job and pod: the EvaluationJob's name and the step.
JOB_LABEL, ROLE_LABEL = f"{GROUP}/job", f"{GROUP}/role"
#: Annotations on the children: the retry token they were made for, and the suspend edge the operator wrote.
RETRY_TOKEN_ANNOTATION, SUSPEND_ANNOTATION = f"{GROUP}/retry-token", f"{GROUP}/suspend"

# ------------------------------------------------------------------------------------------- steps

RESOLVE, PPL, CMP = "resolve", "ppl", "cmp"
ROLES = (RESOLVE, PPL, CMP)
#: Where Kubernetes reads a container's termination message (the container's terminationMessagePath).
TERMINATION_LOG = "/dev/termination-log"
#: Kubernetes keeps at most 4096 bytes of a termination message; a report stays below this.
MAX_REPORT_BYTES = 4000
#: At most this many summary metrics in a cmp report: the CRD's status.results.summary maxProperties.
MAX_SUMMARY_KEYS = 256

# ------------------------------------------------------------------------------------------ phases

PENDING, RUNNING, EVALUATING, SUCCEEDED, FAILED, SUSPENDED = (
    "Pending", "Running", "Evaluating", "Succeeded", "Failed", "Suspended")
TERMINAL = frozenset({SUCCEEDED, FAILED})

#: Why a run failed, in the same words under `assay run` (status.json) and on a cluster (the CR's status):
#: a step's deterministic failure; a ppl failure worth retrying once no retry is left (a local run has
#: none: rerun it to resume); cmp's failure; the deadline; the output's lease lost to another run.
PERMANENT_ERROR, SHARD_RETRIES_EXHAUSTED, METRICS_FAILED = "PermanentError", "ShardRetriesExhausted", "MetricsFailed"
DEADLINE_EXCEEDED, LEASE_LOST, INTERRUPTED = "DeadlineExceeded", "LeaseLost", "Interrupted"

# ---------------------------------------------------------------------------------------- failures


class Failure(BaseModel):
    """Why a step failed: what, what to do next, the error's kind, and whether a retry can help."""

    model_config = ConfigDict(frozen=True)

    error: str
    hint: str | None = None
    kind: str = "AssayError"
    retryable: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_RETRYABLE if self.retryable else EXIT_PERMANENT

    def text(self) -> str:
        """The ``error:`` line and its ``hint:`` line, as a terminal shows them."""
        return f"error: {self.error}" + (f"\n  hint: {self.hint}" if self.hint else "")


#: OS errors that only a person can fix (retrying cannot help), with what to do.
PERMANENT_ERRNOS = {errno.ENOSPC: "free disk space, then rerun", errno.EROFS: "choose a writable location",
                    errno.EACCES: "fix the permissions, or choose another location",
                    errno.EPERM: "fix the permissions, or choose another location",
                    errno.ENAMETOOLONG: "use a shorter path",
                    errno.ENOTDIR: "a path component is a file, not a folder",
                    errno.EISDIR: "the path is a folder; give a file", errno.ENOENT: "check the path",
                    errno.EDQUOT: "free space under your quota, then rerun"}


def failure_of(exc: BaseException) -> Failure:
    """The failure an exception stands for: assay's own errors as they say; OS errors a person must fix
    (disk full, read-only, permissions, missing paths) permanent; network errors and anything unexpected
    retryable (exit 1), since a rerun resumes."""
    if isinstance(exc, AssayError):
        return Failure(error=exc.message, hint=exc.hint, kind=type(exc).__name__, retryable=exc.retryable)
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
        where = f": {exc.filename}" if exc.filename else ""
        return Failure(error=f"{exc.strerror or exc}{where}", hint=PERMANENT_ERRNOS[exc.errno],
                       kind=type(exc).__name__, retryable=False)
    if isinstance(exc, ConnectionError | TimeoutError):
        return Failure(error=f"{type(exc).__name__}: {exc}", hint="check the network and the service, then rerun",
                       kind=type(exc).__name__, retryable=True)
    return Failure(error=f"unexpected {type(exc).__name__}: {exc}",
                   hint="rerun with ASSAY_DEBUG=1 to see the traceback, and report it if it is assay's fault",
                   kind=type(exc).__name__, retryable=True)


# ----------------------------------------------------------------------------------------- reports


class Ref(BaseModel):
    """A pinned model or dataset version."""

    uri: str
    name: str
    version: str


class PinnedInputs(BaseModel):
    """What the resolve step reports: the exact inputs of the run and how its shards are split."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    model: Ref
    dataset: Ref
    shards: int
    samples: int
    shards_per_index: int = Field(alias="shardsPerIndex")
    indexes: int


class PplSummary(BaseModel):
    """What one ppl index reports."""

    shards: int
    skipped: int
    samples: int


class MetricsSummary(BaseModel):
    """What cmp reports and the operator copies into status.results as it is: the headline, then the
    summary keys in order as far as the bound allows; ``truncated`` counts the rest (metrics.json holds
    them all). This model is the summary's one bound: at most MAX_SUMMARY_KEYS keys, however it is made
    or parsed, and ``bounded`` fits the cmp pod's report in its termination message."""

    evaluator: str
    headline: dict[str, Any]
    summary: dict[str, float | None]
    truncated: int | None = None

    @model_validator(mode="after")
    def _at_most_max_keys(self) -> MetricsSummary:
        extra = len(self.summary) - MAX_SUMMARY_KEYS
        if extra > 0:
            self.summary = dict(list(self.summary.items())[:MAX_SUMMARY_KEYS])
            self.truncated = (self.truncated or 0) + extra
        return self

    @classmethod
    def bounded(cls, report: Any, limit: int = MAX_REPORT_BYTES - 1000) -> MetricsSummary:
        """``report``'s summary (values to 6 decimals, a non-finite one as null) in at most ``limit`` bytes."""
        doc = cls(evaluator=report.evaluator, headline={"name": report.headline[0], "value": report.headline[1]},
                  summary={key: _shown(value) for key, value in report.summary.items()})
        while doc.summary and len(doc.model_dump_json(exclude_none=True)) > limit:
            doc.summary.popitem()
            doc.truncated = (doc.truncated or 0) + 1
        return doc


def _shown(value: float | None) -> float | None:
    return round(float(value), 6) if value is not None and math.isfinite(value) else None


def result_message(result: BaseModel | None) -> str:
    """A step's report of success (``{"result": {}}`` for a step that reports nothing more)."""
    return json.dumps({"result": result.model_dump(mode="json", by_alias=True, exclude_none=True) if result else {}})


def failure_message(failure: Failure) -> str:
    """A step's report of failure, shortened to fit a termination message."""
    doc = failure.model_dump(mode="json")
    text = json.dumps({"failure": doc})
    if len(text.encode()) > MAX_REPORT_BYTES:
        room = max(200, MAX_REPORT_BYTES - 600 - len((doc.get("hint") or "").encode()))
        doc["error"] = doc["error"].encode()[:room].decode(errors="ignore") + " [...]"
        doc["hint"] = (doc.get("hint") or "")[:400] or None
        text = json.dumps({"failure": doc})
    return text


def parse_result(text: str | None, model: type[BaseModel]) -> BaseModel | None:
    """The result of that type a report holds; None for a failure, another shape or no report."""
    try:
        doc = json.loads(text or "")
        return model.model_validate(doc["result"]) if isinstance(doc, dict) and "result" in doc else None
    except (ValueError, TypeError, ValidationError):
        return None


def parse_failure(text: str | None) -> Failure | None:
    """The failure a report holds; None for a success or no report. A message that is not a report (a pod
    that died before writing one, e.g. killed by the kubelet) is None too: its exit code says enough."""
    try:
        doc = json.loads(text or "")
        return Failure.model_validate(doc["failure"]) if isinstance(doc, dict) and "failure" in doc else None
    except (ValueError, TypeError, ValidationError):
        return None
