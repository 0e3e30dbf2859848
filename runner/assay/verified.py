"""Results verified against their run: the one place that says whether a shard's results belong to this run
(its model, dataset version, shard and settings) and that joins them with the shard's labels.

Used by ppl (is a shard done, or must it be computed again?), cmp (score only this run's results), the
report and the pipeline check (read a finished run): all of them apply the same rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from assay import layout, packages, results, shards, storage
from assay.errors import EvaluationError, IntegrityError
from assay.metrics import coco_match, coco_tables

T = TypeVar("T")

#: What a record must say for its shard's results to be this run's (settings only where the run knows them).
_ORIGIN = ("model_version", "dataset_version", "shard_sha256", "samples", "settings_hash")


def mismatch(record: dict[str, Any], dataset: shards.DatasetManifest, model: packages.ModelManifest, index: int,
             settings_hash: str | None) -> dict[str, tuple[Any, Any]]:
    """The fields of a results record that differ from this run's, as (recorded, this run's); {} when the
    results are this run's."""
    info = dataset.shards[index]
    expected = {"model_version": model.version, "dataset_version": dataset.version, "shard_sha256": info.sha256,
                "samples": info.samples, "settings_hash": settings_hash}
    return {k: (record.get(k), expected[k]) for k in _ORIGIN
            if expected[k] is not None and record.get(k) != expected[k]}


def iter_records(dataset: shards.DatasetManifest, model: packages.ModelManifest, output_uri: str,
                 settings_hash: str | None = None, conditions: list | None = None):
    """Yield (sample_id, label, prediction) for every sample of ``dataset``.

    Only results made by this model on this dataset version and shard (and, given ``settings_hash``,
    these settings) are read; each file is checked against the sha256 recorded when it was written, and
    its ids against the shard's labels. ``conditions`` collects each shard's run conditions.
    """
    records = _records(dataset, model, output_uri, settings_hash, layout.results_uri)
    with storage.scratch_dir("cmp") as tmp:
        for index, record in enumerate(records):
            labels = shards.read_labels(dataset, index)
            path = Path(tmp) / "r.parquet"
            results.fetch_verified(output_uri, index, record, path)
            ids, preds, meta = results.read_local(path)
            if (meta.get("model_version"), meta.get("dataset_version")) != (model.version, dataset.version):
                raise IntegrityError(f"{layout.results_uri(output_uri, index)} disagrees with its record",
                                     "rerun the job: the shard is recomputed")
            if conditions is not None and record.get("conditions") not in conditions:
                conditions.append(record.get("conditions"))
            _check_ids(index, [r["id"] for r in labels], ids)
            by_id = dict(zip(ids, preds, strict=True))
            for label_record in labels:
                yield label_record["id"], label_record["label"], by_id[label_record["id"]]


def iter_matches(dataset: shards.DatasetManifest, model: packages.ModelManifest, output_uri: str,
                 settings_hash: str | None = None, conditions: list[Any] | None = None) -> Iterator[tuple[int, Path]]:
    """Yield (shard index, local path) of every shard's match tables (the coco evaluator's), checked as
    ``iter_records`` checks results files: this run's record, the sha256 recorded beside it, the file's own
    metadata (this shard, starting at its first image) and its sample ids against the shard's labels, in
    their order. The path is valid until the next item; ``read_matches`` reads it."""
    # the results files too: a shard without predictions is not finished, whatever else it has
    records = _records(dataset, model, output_uri, settings_hash, layout.results_uri, layout.matches_uri)
    offset = 0
    with storage.scratch_dir("cmp") as tmp:
        for index, record in enumerate(records):
            uri, info = layout.matches_uri(output_uri, index), dataset.shards[index]
            path = Path(tmp) / "m.parquet"
            results.fetch_verified(output_uri, index, record, path, matches=True)
            if conditions is not None and record.get("conditions") not in conditions:
                conditions.append(record.get("conditions"))
            meta = _readable(uri, coco_tables.read_meta, path)
            if (meta.get("shard_sha256"), meta.get("image_offset")) != (info.sha256, offset):
                raise IntegrityError(f"{uri} is not shard {info.name}'s match tables",
                                     "rerun the job: the shard is recomputed")
            expected, got = [r["id"] for r in shards.read_labels(dataset, index)], meta["sample_ids"]
            _check_ids(index, expected, got)
            if got != expected:  # the order is the run's image order, which COCOeval's ties follow
                raise EvaluationError(f"shard {index}: match tables list the samples in another order than the "
                                      f"dataset", "delete that shard's results record and rerun its ppl worker")
            offset += info.samples
            yield index, path


def read_matches(output_uri: str, index: int, path: Path) -> coco_match.CocoMatches:
    """The match tables at ``path`` (from ``iter_matches``), any damage the sha256 did not catch refused."""
    return _readable(layout.matches_uri(output_uri, index), lambda p: coco_tables.read(p)[0], path)


def has_matches(dataset: shards.DatasetManifest, output_uri: str) -> bool:
    """Whether the run's results records name match tables (runs before assay wrote them have none)."""
    return any((results.read_record(output_uri, i) or {}).get("matches") for i in range(len(dataset.shards)))


def _readable(uri: str, read: Callable[[Path], T], path: Path) -> T:
    try:
        return read(path)
    except Exception as exc:  # pyarrow, JSON, shapes: whatever the bytes are, they are not match tables
        raise IntegrityError(f"{uri} is not readable as match tables ({exc!r})",
                             "rerun the job: the shard is recomputed") from exc


def _records(dataset: shards.DatasetManifest, model: packages.ModelManifest, output_uri: str,
             settings_hash: str | None, *uris_of: Callable[[str, int], str]) -> list[dict[str, Any]]:
    """Every shard's results record, refused when a shard has none (or no object at one of ``uris_of``)
    or another run's."""
    records = [results.read_record(output_uri, i) for i in range(len(dataset.shards))]
    missing = [i for i, r in enumerate(records)
               if r is None or not all(storage.exists(uri_of(output_uri, i)) for uri_of in uris_of)]
    if missing:
        raise EvaluationError(f"{len(missing)} of {len(dataset.shards)} shards have no results "
                              f"(first: {dataset.shards[missing[0]].name})",
                              "run the ppl workers again; finished shards are skipped")
    for index, record in enumerate(records):
        _check_origin(index, record, dataset, model, output_uri, settings_hash)
    return records


def _check_origin(index: int, record: dict[str, Any], dataset: shards.DatasetManifest,
                  model: packages.ModelManifest, output_uri: str, settings_hash: str | None) -> None:
    """Refuse results that another model, dataset version, shard or settings produced."""
    uri = layout.results_uri(output_uri, index)
    wrong = mismatch(record, dataset, model, index, settings_hash)
    if wrong:
        what = ", ".join(f"{k.replace('_', ' ')} {got} (this run: {want})" for k, (got, want) in wrong.items())
        raise EvaluationError(f"{uri} was made by another run: {what}",
                              "score only results of this model and dataset: evaluate into another output (on a "
                              "cluster: a new EvaluationJob with its own spec.output.uri; with `assay run`: "
                              "--overwrite)")


def _check_ids(index: int, expected: list[str], got: list[str]) -> None:
    dupes = [i for i, n in Counter(got).items() if n > 1]
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if dupes or missing or extra:
        raise EvaluationError(
            f"shard {index}: results do not match the dataset: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(dupes)} duplicated (e.g. {dupes[:3]}), {len(extra)} unknown (e.g. {extra[:3]})",
            "delete that shard's results file and rerun its ppl worker")
