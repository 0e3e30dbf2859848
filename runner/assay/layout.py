"""Names of the objects a job writes to its output store: one place, shared by runner, CLI and operator.

    <output>/run.json                       the run that owns the output (model, dataset, settings)
    <output>/lease.json                     the live run writing into it (see assay.runrecord)
    <output>/results/shard-000003.parquet   predictions of one shard, one row per sample
    <output>/results/shard-000003.matches.parquet  the coco evaluator's match tables of that shard
    <output>/results/shard-000003.json      its sha256, size and versions: written last (the commit point)
    <output>/logs/ppl-0001.log              log of ppl worker 1, copied before the process ends
    <output>/metrics.json                   every metric, with the full arrays
    <output>/summary.txt                    the readable metrics table
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from assay.storage.uri import join, parse

#: Every dataset and model version folder holds this file, written last (its presence means complete).
MANIFEST = "manifest.json"
#: ``<store>/<kind>/<name>/LATEST`` holds the newest version's folder name.
LATEST = "LATEST"
METRICS = "metrics.json"
#: ``<sha256>  metrics.json``, written by cmp right after metrics.json (``sha256sum -c`` reads it): the
#: report and compare refuse a metrics.json edited after the run.
METRICS_DIGEST = "metrics.sha256"
SUMMARY = "summary.txt"
RUN_RECORD = "run.json"
LEASE = "lease.json"


#: The store everything uses unless told otherwise (CLI, demo, examples): one place, so what the demo
#: builds is what `assay dataset list` shows. Relative to the working folder, like the examples' job.yaml
#: URIs are relative to the repository root.
DEFAULT_STORE = ".assay/store"


def default_store() -> str:
    """``$ASSAY_STORE`` when set, else ``.assay/store``."""
    return os.environ.get("ASSAY_STORE") or DEFAULT_STORE


def resolve_ref(ref: str, store: str, kind: str) -> str:
    """A dataset or model reference as a URI: ``NAME`` or ``NAME@VERSION`` in ``store``, else ``ref`` itself.

    ``kind`` is ``datasets`` or ``models``. Anything with a scheme or a slash is a URI or a path; a bare
    word is a name in the store, unless a local folder of that name holds a manifest or LATEST.
    """
    if "://" in ref or "/" in ref or os.sep in ref:
        return ref
    if os.path.isfile(os.path.join(ref, MANIFEST)) or os.path.isfile(os.path.join(ref, LATEST)):
        return ref
    name, _, version = ref.partition("@")
    return join(store, kind, name, version) if version else join(store, kind, name)


def local_job_dir(job_name: str, output_uri: str) -> Path:
    """Where `assay run` keeps a job's status and logs: the output folder itself when it is local, else
    ./.assay/jobs/<name>-<8 hex digits of the output URI's SHA-256> (two jobs of one name writing different
    outputs must not share logs and status)."""
    loc = parse(output_uri)
    if loc.scheme == "file":
        return Path(loc.path)
    digest = hashlib.sha256(f"s3://{loc.bucket}/{loc.path}".encode()).hexdigest()[:8]
    return Path(".assay") / "jobs" / f"{job_name}-{digest}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def results_uri(output_uri: str, shard_index: int) -> str:
    return join(output_uri, "results", f"{shard_name(shard_index)}.parquet")


def matches_uri(output_uri: str, shard_index: int) -> str:
    """The coco evaluator's match tables of one shard (assay.metrics.coco_tables), beside its results."""
    return join(output_uri, "results", f"{shard_name(shard_index)}.matches.parquet")


def results_record_uri(output_uri: str, shard_index: int) -> str:
    return join(output_uri, "results", f"{shard_name(shard_index)}.json")


def log_uri(output_uri: str, role: str, worker_index: int | None = None) -> str:
    name = role if worker_index is None else f"{role}-{worker_index:04d}"
    return join(output_uri, "logs", f"{name}.log")


def metrics_uri(output_uri: str) -> str:
    return join(output_uri, METRICS)


def metrics_digest_uri(output_uri: str) -> str:
    return join(output_uri, METRICS_DIGEST)


def summary_uri(output_uri: str) -> str:
    return join(output_uri, SUMMARY)


def shards_of_index(shard_count: int, index: int, per_index: int) -> list[int]:
    """The consecutive shards of work item (Job index) ``index``; ``per_index`` 0 means one item of all."""
    if per_index <= 0:
        return list(range(shard_count)) if index == 0 else []
    return list(range(index * per_index, min(shard_count, (index + 1) * per_index)))


def index_count(shard_count: int, per_index: int) -> int:
    """How many work items (Job indexes) ``shard_count`` shards make, ``per_index`` at a time."""
    return max(1, -(-shard_count // per_index)) if per_index > 0 else 1


def auto_shards_per_index(shard_count: int, workers: int) -> int:
    """About four work items per worker. Workers take items as they finish the last, so a slow or
    preempted worker holds back at most a quarter of its share; each item pays a pod start and a model
    load on a cluster, so many more items would waste that time (spec.ppl.shardsPerIndex overrides)."""
    return max(1, -(-shard_count // (max(1, workers) * 4)))
