"""Storage settings, from ``ASSAY_STORAGE_*`` variables (and ``ASSAY_S3_ADDRESSING_STYLE``).

Read when an operation first needs them, never at import: a bad value is an error message from the
command that uses it, naming the variable and what it takes, not a crash at start. Read again whenever
the variables change (tests set them between cases), validated once per change.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, SettingsConfigDict

from assay.errors import SpecError

#: Tries botocore makes per call before our own loop sees the error (one fast retry, e.g. per multipart part).
BOTOCORE_TRIES = 2


def _size(value: Any) -> Any:
    """``64M``, ``1G``, ``8MiB`` or a number of bytes; at least 5M (S3's smallest part)."""
    if not isinstance(value, str):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", value, re.IGNORECASE)
    if not m:
        raise ValueError("not a size")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def _setting(variable: str, default: Any, accepts: str, **bounds: Any) -> Any:
    """A field read from ``variable``; ``accepts`` says what it takes, for the message that refuses a value."""
    return Field(default, validation_alias=variable, description=accepts, **bounds)


class StorageSettings(BaseSettings):
    """What each storage operation is allowed: attempts, timeouts, deadline, part size, addressing.
    A field's description is what its variable takes (shown when a value is refused)."""

    # every field names its variable (validation_alias), matched exactly as written
    model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore")

    #: ASSAY_STORAGE_RETRIES: attempts per operation, counting the first (1: no retries).
    retries: int = _setting("ASSAY_STORAGE_RETRIES", 6, "a whole number of attempts >= 1 (1: no retries)", ge=1)
    #: ASSAY_STORAGE_RETRY_DELAY: first backoff delay in seconds; doubles each attempt, with jitter.
    retry_delay: float = _setting("ASSAY_STORAGE_RETRY_DELAY", 0.2, "seconds >= 0, like 0.2", ge=0,
                                  allow_inf_nan=False)
    #: ASSAY_STORAGE_CONNECT_TIMEOUT / _READ_TIMEOUT: seconds to wait for a TCP connection or the next
    #: bytes of an answer before one try counts as failed (capped so that the tries fit the deadline).
    connect_timeout: float = _setting("ASSAY_STORAGE_CONNECT_TIMEOUT", 5.0, "seconds > 0, like 5", gt=0,
                                      allow_inf_nan=False)
    read_timeout: float = _setting("ASSAY_STORAGE_READ_TIMEOUT", 15.0, "seconds > 0, like 15", gt=0,
                                   allow_inf_nan=False)
    #: ASSAY_STORAGE_DEADLINE: seconds an operation may go without progress (no answer, no bytes moved)
    #: before it fails. A long transfer that keeps moving bytes is never cut off.
    deadline: float = _setting("ASSAY_STORAGE_DEADLINE", 60.0, "seconds > 0, like 60", gt=0, allow_inf_nan=False)
    #: ASSAY_STORAGE_MULTIPART_THRESHOLD: uploads at least this large go in parts (bytes, or 64M, 1G).
    multipart_threshold: Annotated[int, BeforeValidator(_size)] = _setting(
        "ASSAY_STORAGE_MULTIPART_THRESHOLD", 64 << 20, "a size of at least 5M, like 64M or 1G", ge=5 << 20)
    #: ASSAY_S3_ADDRESSING_STYLE: how the bucket appears in requests.
    addressing_style: Literal["auto", "virtual", "path"] = _setting(
        "ASSAY_S3_ADDRESSING_STYLE", "auto", "auto, virtual or path")

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise PydanticUseDefault()
            return value.strip()
        return value

    def timeouts(self) -> tuple[float, float]:
        """Connect and read timeouts of one try, capped so that all of botocore's tries fit the deadline."""
        cap = self.deadline / (2 * BOTOCORE_TRIES)
        return min(self.connect_timeout, cap), min(self.read_timeout, cap)

    def attempt_bound(self) -> float:
        """The longest one attempt can wait on a store that accepts connections and never answers
        (botocore sleeps up to a second before its own retry)."""
        return BOTOCORE_TRIES * sum(self.timeouts()) + (BOTOCORE_TRIES - 1)


#: variable -> its field, for every setting
_VARIABLES = {str(f.validation_alias): f for f in StorageSettings.model_fields.values()}


def settings() -> StorageSettings:
    """The settings now in force, from the environment."""
    return _load(tuple((name, os.environ.get(name)) for name in _VARIABLES))


@functools.lru_cache(maxsize=8)
def _load(values: tuple[tuple[str, str | None], ...]) -> StorageSettings:
    try:
        return StorageSettings()
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])  # the alias: the variable
        field = _VARIABLES[name]
        # not the value: it may come from a Secret, and this message reaches the job's status
        raise SpecError(f"{name} is not valid: it takes {field.description}",
                        f"fix or unset {name} (default {field.default})") from None
