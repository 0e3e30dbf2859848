"""The pipeline check: score a dataset's own ground truth through the real ppl and cmp path.

The built-in oracle handler (``assay.check.oracle``) is packaged as a model into a temporary store and run
as an EvaluationJob by the same local runner as ``assay run`` (shards fetched and verified, decode,
batching, results Parquet files and their records, cmp with the dataset's evaluator). A sound
pipeline on sound labels gives AP 1.000 (coco) or accuracy 1.000 (classification). Anything less is
explained as:
- a labelling fault: what ``assay.check.labels`` finds in the labels (duplicate instance, empty mask,
  box outside the image, ...), with the samples;
- a pipeline fault: a prediction that did not come back from the results files as the oracle made
  it, or an id that did not round-trip, or a score below 1 that no label explains.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assay import packages, protocol, shards
from assay.check.labels import Finding, lint
from assay.check.oracle import ID_FIELD, classification_prediction, coco_prediction
from assay.errors import AssayError, SpecError
from assay.metrics import MetricsReport
from assay.spec import EvaluationJob

#: The metrics that must be exactly 1 with the ground truth as predictions.
HEADLINES = {"coco": ("bbox/AP", "segm/AP"), "classification": ("accuracy",)}
#: Samples named per fault in the one-line verdict (all of them are in ``CheckResult.faults``).
SHOWN = 5


@dataclass
class CheckResult:
    dataset: str  # name@version
    evaluator: str
    samples: int
    scores: dict[str, float] = field(default_factory=dict)
    #: fault kind -> [(sample id, detail)], labelling faults first, then "pipeline: ..." kinds
    faults: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    error: str | None = None  # the run itself failed (the error names the sample when it can)

    @property
    def ok(self) -> bool:
        return (not self.faults and self.error is None and bool(self.scores)
                and all(v == 1.0 for v in self.scores.values()))

    def line(self) -> str:
        scores = ", ".join(f"{k.replace('/', ' ')} {v:.3f}" for k, v in self.scores.items()) or "no score"
        head = f"pipeline check ({self.dataset}, {self.samples} samples, ground truth as predictions): {scores}"
        if self.ok:
            return f"{head}: the pipeline scores exactly"
        parts = [f"run failed: {self.error}"] if self.error else []
        for kind, items in self.faults.items():
            ids = sorted({s for s, _ in items})
            more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
            what = next((f"{prefix} fault" for prefix in ("pipeline", "data") if kind.startswith(f"{prefix}: ")),
                        "labelling fault")
            parts.append(f"{what}: {kind.split(': ', 1)[-1] if what != 'labelling fault' else kind} in "
                         f"{', '.join(ids[:SHOWN])}{more}")
        return f"{head}: FAILED: " + "; ".join(parts or ["a score below 1 that no label explains"])


def default_evaluator(label_schema: dict[str, Any]) -> str:
    if isinstance(label_schema, dict) and label_schema.get("categories"):
        return "coco"
    if isinstance(label_schema, dict) and label_schema.get("classes"):
        return "classification"
    raise SpecError("cannot tell the evaluator from the dataset's label_schema (no categories, no classes)",
                    "pass --evaluator coco or --evaluator classification")


def check(dataset_uri: str, evaluate: Callable[[EvaluationJob], MetricsReport], evaluator: str | None = None,
          workers: int = 1, output: Path | None = None) -> CheckResult:
    """Run the oracle over the dataset into ``output`` (a temporary folder unless given). ``evaluate`` runs an
    EvaluationJob and gives its metrics: `assay.runner.local.evaluate` runs it on this machine, as `assay run`
    does (the check reads what a run wrote; it does not run one itself)."""
    dataset = shards.load_manifest(dataset_uri)
    evaluator = evaluator or default_evaluator(dataset.label_schema)
    if evaluator not in HEADLINES:
        raise SpecError(f"the pipeline check supports coco and classification, not {evaluator!r}")
    records = [r for i in range(len(dataset.shards)) for r in shards.read_labels(dataset, i)]
    result = CheckResult(f"{dataset.name}@{dataset.version}", evaluator, dataset.samples)
    findings = lint(evaluator, dataset.label_schema, records)
    with tempfile.TemporaryDirectory(prefix="assay-check-") as tmp:
        out = Path(output) if output else Path(tmp) / "output"
        masks = any("segmentation" in o for r in records for o in r["label"].get("objects", []))
        model = _oracle_package(Path(tmp), evaluator, masks)
        try:
            report = evaluate(_job(dataset, model, evaluator, out, min(workers, len(dataset.shards))))
            result.scores = {k: float(report.summary[k]) for k in HEADLINES[evaluator] if k in report.summary}
            findings += _round_trip(dataset, model, str(out), evaluator, masks)
        except AssayError as exc:
            result.error = exc.message
    findings += _undecodable(dataset)
    if any(v < 0 for v in result.scores.values()):
        findings += _nothing_to_score(records)
    for f in findings:
        result.faults.setdefault(f.fault, []).append((f.sample_id, f.detail))
    return result


def _undecodable(dataset: shards.DatasetManifest) -> list[Finding]:
    """Samples whose image file does not decode (truncated, not an image): the oracle never opens images, so
    the scores cannot show them, but every model would fail on them."""
    import io

    from PIL import Image

    out = []
    for index in range(len(dataset.shards)):
        uri = dataset.shard_uri(index)
        with shards.fetch_shard(dataset, index) as path:
            for sample in shards.iter_shard_samples(path, uri):
                if (image := sample.image_or_none()) is None:
                    continue
                try:
                    with Image.open(io.BytesIO(image[1])) as img:
                        img.load()
                except Exception as exc:  # noqa: BLE001 - OSError (truncated), UnidentifiedImageError, bombs
                    out.append(Finding(sample.id, "data: image does not decode",
                                       f"shard {index}, {image[0]}, {len(image[1])} bytes: "
                                       f"{str(exc).split(' <_io.')[0]}"))
    return out


def _nothing_to_score(records: list[dict[str, Any]]) -> list[Finding]:
    """COCO scores -1 when no object can be scored: every object is a crowd region (iscrowd: 1), or none."""
    crowd = [r["id"] for r in records if r["label"].get("objects")
             and all(o.get("iscrowd") for o in r["label"]["objects"])]
    if crowd:
        return [Finding(i, "only crowd objects (iscrowd: 1), which COCO never scores: AP is -1, nothing to score",
                        "") for i in crowd]
    return [Finding(r["id"], "no objects: AP is -1, nothing to score", "") for r in records
            if not r["label"].get("objects")]


def _oracle_package(tmp: Path, evaluator: str, masks: bool) -> packages.ModelManifest:
    src = tmp / "oracle"
    src.mkdir()
    (src / "oracle.json").write_text(json.dumps({"evaluator": evaluator, "masks": masks}))
    (src / "model.yaml").write_text("name: assay-oracle\nmodel: [oracle.json]\ncode: []\n"
                                    "run: {handler: 'assay.check.oracle:OracleHandler'}\n"
                                    "desc: the dataset's own ground truth as predictions (assay dataset check)\n")
    return packages.build(packages.load_config(src / "model.yaml"), str(tmp / "store"), log=lambda _: None)


def _job(dataset: shards.DatasetManifest, model: packages.ModelManifest, evaluator: str, output: Path,
         workers: int) -> EvaluationJob:
    return EvaluationJob.from_manifest({
        "apiVersion": protocol.API_VERSION, "kind": protocol.KIND, "metadata": {"name": "pipeline-check"},
        "spec": {"model": {"uri": model.uri}, "dataset": {"uri": dataset.uri}, "output": {"uri": str(output)},
                 "evaluator": evaluator, "ppl": {"workers": max(1, workers), "batchSize": 8, "device": "cpu"}}})


def _round_trip(dataset: shards.DatasetManifest, model: packages.ModelManifest, output_uri: str,
                evaluator: str, masks: bool) -> list[Finding]:
    """Each stored prediction must equal the oracle's prediction from the labels file, under its own id."""
    from assay.verified import iter_records

    out = []
    for sample_id, label, stored in iter_records(dataset, model, output_uri):
        if stored.get(ID_FIELD) != sample_id:
            out.append(Finding(sample_id, "pipeline: id does not round-trip",
                               f"the worker saw {stored.get(ID_FIELD)!r}"))
            continue
        expected = coco_prediction(label, masks) if evaluator == "coco" else classification_prediction(label)
        bad = [k for k, v in expected.items() if not _same(v, stored.get(k))]
        if bad:
            out.append(Finding(sample_id, "pipeline: prediction changed between worker and cmp",
                               f"fields {bad} (or the shard's label differs from the labels file)"))
    return out


def _same(a: Any, b: Any) -> bool:
    if hasattr(a, "to_coco"):
        return hasattr(b, "to_coco") and a.to_coco() == b.to_coco()
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))

