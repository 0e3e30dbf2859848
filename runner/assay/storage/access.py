"""Which S3 store the storage calls of this context talk to, when that is not the usual AWS sources.

A job's ``spec.storage`` (endpoint, region) applies to the storage calls of a run through ``using``,
never through ``os.environ``: the process's environment, and with it what a handler's subprocess
inherits, stays as the user set it. Pods need none of this: the operator gives them AWS_ENDPOINT_URL
and AWS_REGION, which boto3 reads itself.

The setting is context-local (a contextvar): a thread that does storage work for the caller runs in a
copy of the caller's context (``contextvars.copy_context().run``), and a spawned process is handed
``current_access()`` and enters ``using`` itself.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Protocol


@dataclass(frozen=True)
class S3Access:
    """Explicit S3 settings; fields left None fall back to the enclosing ``using``, then to the usual AWS
    sources (environment, ``~/.aws/config``, instance roles). Never log this object's secret fields."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def over(self, base: S3Access | None) -> S3Access:
        """These settings, with the ones left None taken from ``base``."""
        if base is None:
            return self
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)})


class SpecStorage(Protocol):
    """What ``using_spec`` reads of a job's spec.storage (``assay.spec.Storage``; storage and spec are
    independent layers, neither imports the other)."""

    endpoint: str | None
    region: str | None


_access: contextvars.ContextVar[S3Access | None] = contextvars.ContextVar("assay_s3_access", default=None)


def current_access() -> S3Access | None:
    """The explicit S3 settings in force here (None: the usual AWS sources only)."""
    return _access.get()


def using_spec(spec_storage: SpecStorage) -> contextlib.AbstractContextManager:
    """A job's spec.storage (endpoint, region) for the storage calls of a block, over AWS_ENDPOINT_URL and
    AWS_REGION, as pods get them: `assay run` and the report read a job's outputs with it."""
    return using(endpoint_url=spec_storage.endpoint, region=spec_storage.region)


@contextlib.contextmanager
def using(access: S3Access | None = None, /, **settings: str | None) -> Iterator[S3Access | None]:
    """Talk to the store ``access`` (or ``S3Access(**settings)``) names for the storage calls made in this
    block, in this thread or task; what it leaves None stays as it was. ``using(None)`` changes nothing."""
    if settings:
        access = replace(access or S3Access(), **settings)
    if access == S3Access():  # nothing explicit: the same client as none at all
        access = None
    token = _access.set(access.over(current_access()) if access is not None else current_access())
    try:
        yield _access.get()
    finally:
        _access.reset(token)
