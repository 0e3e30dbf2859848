"""The one error hierarchy of assay.

Every error carries a hint (what to do next) and says whether retrying can help. The pod entrypoint
turns non-retryable errors into EXIT_PERMANENT so the operator's podFailurePolicy fails the job at
once instead of burning retries. Classes also derive from the matching builtin, so callers that only
know ``FileNotFoundError`` or ``ValueError`` still catch them.
"""

from __future__ import annotations

#: Exit code of a runner that hit a deterministic error (bad handler, corrupt shard, bad spec).
#: The operator's podFailurePolicy fails the Job on it at once.
EXIT_PERMANENT = 3
#: Exit code of a runner that hit an error worth retrying (store unreachable, throttled).
EXIT_RETRYABLE = 1


class AssayError(Exception):
    """Base class. ``hint`` tells the user what to do; ``retryable`` tells machines whether to retry."""

    retryable = False
    #: The hint of an error raised without one: every error a user sees says what to do next.
    default_hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class SpecError(AssayError, ValueError):
    """A manifest (EvaluationJob, dataset.yaml, model.yaml) is invalid; names the field."""

    default_hint = "fix what the message names, then run the same command again"


class StorageError(AssayError, OSError):
    """The object store refused or failed a request."""

    default_hint = "check the URI, the credentials and the store"


class TransientStorageError(StorageError):
    """The store failed in a way that a later retry may fix (5xx, timeouts, throttling)."""

    default_hint = "the store may be down or overloaded: run the same command again later"

    retryable = True


class ObjectNotFound(StorageError, FileNotFoundError):
    """No object (or bucket) at that URI."""


class AccessDenied(StorageError, PermissionError):
    """The credentials do not allow this request."""


class IntegrityError(AssayError, ValueError):
    """Stored bytes do not match their recorded digest or shape (corrupt or truncated object)."""

    default_hint = "the object named is damaged or was replaced: rebuild or re-upload it"


class UnsafeArchiveError(IntegrityError):
    """An archive member would escape its folder, or is a link or device."""


class HandlerError(AssayError, RuntimeError):
    """The user's handler failed to import, load or predict."""

    default_hint = "fix the handler code of the model package (see the worker log), then build it again"


class EvaluationError(AssayError, RuntimeError):
    """The results do not match the dataset (missing or duplicated samples) or the evaluator failed."""

    default_hint = "rerun the job: finished shards are kept and missing ones are computed"


class Stopped(SystemExit):
    """The process was told to stop (SIGTERM from the kubelet, Ctrl-C): it unwinds with exit code 128 + the
    signal's number, and does nothing on the way out that could wait on a store."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
