"""Reads what the pods write to a job's output store: dataset/model manifests, progress, metrics.

All reads go through ``assay.storage`` with the job's own endpoint and credentials (from its
secretRef Secret); the operator never execs into pods and pods never talk to the API.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from assay import layout, storage
from assay.errors import AssayError, ObjectNotFound, StorageError
from assay.spec import JobSpec

@dataclass(frozen=True)
class DatasetInfo:
    version: str
    shards: int
    samples: int | None


def access_for(spec: JobSpec, secret: dict[str, str] | None) -> storage.S3Access:
    secret = secret or {}
    return storage.S3Access(endpoint_url=spec.storage.endpoint, region=spec.storage.region,
                            access_key_id=secret.get("AWS_ACCESS_KEY_ID"),
                            secret_access_key=secret.get("AWS_SECRET_ACCESS_KEY"),
                            session_token=secret.get("AWS_SESSION_TOKEN"))


def read_json(uri: str, logger: logging.Logger | None = None) -> dict[str, Any] | None:
    """A small JSON object, or None when it is missing, unreadable or not JSON (logged)."""
    try:
        doc = json.loads(storage.read_bytes(uri))
    except ObjectNotFound:
        return None
    except (StorageError, ValueError) as exc:
        if logger:
            logger.warning("cannot read %s: %s", uri, exc)
        return None
    return doc if isinstance(doc, dict) else None


def dataset_info(uri: str, logger: logging.Logger | None = None) -> DatasetInfo | None:
    """The dataset's manifest (a name folder resolves to its LATEST version), or None when unreadable."""
    from assay.shards import load_manifest

    try:
        m = load_manifest(uri)
    except AssayError as exc:
        if logger:
            logger.warning("cannot read the dataset manifest at %s: %s", uri, exc)
        return None
    return DatasetInfo(version=m.version, shards=len(m.shards), samples=m.samples)


def model_digest(uri: str, logger: logging.Logger | None = None) -> str | None:
    """The model package's version (its content digest), or None when unreadable."""
    from assay.packages import load_manifest

    try:
        return load_manifest(uri).version
    except AssayError as exc:
        if logger:
            logger.warning("cannot read the model manifest at %s: %s", uri, exc)
        return None


def worker_progress(output_uri: str, workers: int, logger: logging.Logger | None = None) -> list[dict[str, Any]]:
    """The progress objects that exist, one per ppl worker that has started."""
    out = []
    for i in range(workers):
        doc = read_json(layout.progress_uri(output_uri, i), logger)
        if doc is not None:
            doc.setdefault("worker", i)
            out.append(doc)
    return out


def metrics(output_uri: str, logger: logging.Logger | None = None) -> dict[str, Any] | None:
    return read_json(layout.metrics_uri(output_uri), logger)
