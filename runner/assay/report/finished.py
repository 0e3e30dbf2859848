"""Open a finished run for reading: from its job manifest or its output URI, verified as cmp verifies it.

A run is finished when its output holds metrics.json and, where the run left a status.json (local runs),
that status says Succeeded: a run being resumed or overwritten still has the old metrics.json, and its
results are changing under it. Records are read through ``verified.iter_records``, so every results file is
checked against its sha256 record and the pinned model and dataset versions, and its ids against the
dataset's labels, exactly as when the metrics were computed; the coco evaluator's per-sample scores come
from the match tables (``verified.iter_matches``), checked the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay import layout, packages, shards, storage
from assay.errors import EvaluationError, IntegrityError, ObjectNotFound, SpecError
from assay.metrics import Evaluator, get_evaluator


@dataclass
class FinishedRun:
    ref: str  # what the user named: a job manifest or an output URI
    name: str  # the job's metadata.name, or the output folder's name
    output_uri: str
    metrics: dict[str, Any]
    dataset: shards.DatasetManifest
    model: packages.ModelManifest

    @property
    def evaluator_name(self) -> str:
        return self.metrics["evaluator"]

    def identity(self) -> dict[str, Any]:
        """Who made the run, as metrics.json names it: model, dataset (with versions), evaluator, output."""
        return {"ref": self.ref, "output": self.output_uri, "evaluator": self.evaluator_name,
                "model": {k: self.metrics["model"].get(k) for k in ("name", "version", "uri")},
                "dataset": {k: self.metrics["dataset"].get(k) for k in ("name", "version", "uri", "samples")}}

    def records(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(sample id, label, prediction) of every sample, verified (see the module docstring)."""
        from assay.verified import iter_records

        return iter_records(self.dataset, self.model, self.output_uri, self.metrics.get("settings", {}).get("hash"))

    def per_sample(self) -> dict[str, float]:
        """The evaluator's score of each sample. coco's come from the verified match tables, as cmp's
        metrics do (the predictions are not read); a run made before assay kept match tables is scored
        from its predictions, as then."""
        from assay import verified

        if self.evaluator_name == "coco" and verified.has_matches(self.dataset, self.output_uri):
            from assay.metrics.coco import per_sample_from_matches

            settings_hash = self.metrics.get("settings", {}).get("hash")
            return per_sample_from_matches([verified.read_matches(self.output_uri, i, path) for i, path in
                                            verified.iter_matches(self.dataset, self.model, self.output_uri,
                                                                  settings_hash)])
        return self.evaluate().per_sample()

    def verify(self) -> int:
        """Read every record (which verifies it, see ``records``); the number of samples."""
        return sum(1 for _ in self.records())

    def evaluate(self, keep: dict[str, tuple[dict, dict]] | None = None) -> Evaluator:
        """The run's evaluator fed with every record; ``keep`` collects (label, prediction) by id."""
        evaluator = get_evaluator(self.evaluator_name, self.dataset.label_schema)
        for sample_id, label, prediction in self.records():
            evaluator.update(sample_id, label, prediction)
            if keep is not None:
                keep[sample_id] = (label, prediction)
        return evaluator

    def images(self, ids: set[str]) -> dict[str, tuple[str, bytes]]:
        """(extension, bytes) of the named samples' images, from the pinned dataset's verified shards;
        only the shards that hold one of them are downloaded. Samples with no image file (a dataset of
        arrays or text) are left out: the gallery shows their captions alone."""
        found: dict[str, tuple[str, bytes]] = {}
        for index in range(len(self.dataset.shards)):
            if not ids & {r["id"] for r in shards.read_labels(self.dataset, index)}:
                continue
            with shards.fetch_shard(self.dataset, index) as path:
                for sample in shards.iter_shard_samples(path, self.dataset.shard_uri(index)):
                    if sample.id in ids and (image := sample.image_or_none()) is not None:
                        found[sample.id] = image
        return found


@contextlib.contextmanager
def open_run(ref: str) -> Iterator[FinishedRun]:
    """The finished run that ``ref`` names: an EvaluationJob manifest (a file), else an output URI or folder.

    With a manifest, relative local URIs are taken relative to its folder and its spec.storage settings
    apply while the run is read, as for ``assay run``.
    """
    if os.path.isfile(ref):
        from assay.spec import load_job, with_local_uris_relative_to

        job = with_local_uris_relative_to(load_job(ref), Path(ref).resolve().parent)
        with storage.using_spec(job.spec.storage):
            yield _load(ref, job.name, job.spec.output.uri,
                        layout.local_job_dir(job.name, job.spec.output.uri) / "status.json")
        return
    if storage.is_local(ref) and not os.path.isdir(storage.parse(ref).path):
        raise SpecError(f"{ref}: no such job manifest or output folder",
                        "name the job's YAML manifest (as for `assay run`) or its spec.output.uri")
    status = Path(storage.parse(ref).path) / "status.json" if storage.is_local(ref) else None
    yield _load(ref, ref.rstrip("/").rsplit("/", 1)[-1], ref, status)


def _load(ref: str, name: str, output_uri: str, status_path: Path | None) -> FinishedRun:
    status = _read_status(status_path)
    if status is not None and status.get("phase") == "Failed":
        raise EvaluationError(f"{ref}: its run failed" + (f" ({status['reason']})" if status.get("reason") else "")
                              + ": there is no finished run to read",
                              "see why in its status.json and logs/, then run the job again: finished shards "
                              "are kept" + (f" (assay run {ref})" if os.path.isfile(ref) else ""))
    if status is not None and status.get("phase") != "Succeeded":
        why = f"phase {status.get('phase')}" + (f" ({status['reason']})" if status.get("reason") else "")
        raise EvaluationError(f"{ref} has not finished: its run is in {why}",
                              f"wait for it, or finish it: assay run {ref}" if os.path.isfile(ref)
                              else "wait for the run to succeed, or run its job again to finish it")
    try:
        data = storage.read_bytes(layout.metrics_uri(output_uri))
    except ObjectNotFound:
        raise EvaluationError(f"{ref} has not finished: no {layout.METRICS} in {output_uri}",
                              "run the job to the end first (assay run JOB, or assay job watch NAME)") from None
    _check_metrics_digest(output_uri, data)
    try:
        metrics = json.loads(data)
    except ValueError as exc:
        raise EvaluationError(f"{layout.metrics_uri(output_uri)} is not valid JSON ({exc})",
                              "rerun the job's cmp step: assay run JOB") from exc
    dataset = shards.load_manifest(metrics["dataset"]["uri"])
    if dataset.version != metrics["dataset"]["version"]:
        raise EvaluationError(f"{metrics['dataset']['uri']} holds dataset version {dataset.version}, "
                              f"the run's metrics name {metrics['dataset']['version']}",
                              "the run's dataset was replaced; rerun the job")
    model = packages.load_manifest(metrics["model"]["uri"])
    return FinishedRun(ref=ref, name=name, output_uri=output_uri, metrics=metrics, dataset=dataset, model=model)


def _check_metrics_digest(output_uri: str, data: bytes) -> None:
    """Refuse a metrics.json that differs from the one cmp wrote (edited after the run). An output
    without the digest record (made before cmp wrote one) is read as it is."""
    try:
        record = storage.read_bytes(layout.metrics_digest_uri(output_uri)).decode("utf-8", "replace")
    except ObjectNotFound:
        return
    if hashlib.sha256(data).hexdigest() != record.split(" ", 1)[0].strip().lower():
        raise IntegrityError(f"{layout.metrics_uri(output_uri)} does not match the digest recorded when cmp "
                             f"wrote it ({layout.METRICS_DIGEST}): it was changed after the run",
                             "rerun the job's cmp step to write it again from the results: assay run JOB "
                             "(finished shards are kept)")


def _read_status(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"phase": "unknown", "reason": f"{path} is not valid JSON"}
    return doc if isinstance(doc, dict) else {"phase": "unknown"}
