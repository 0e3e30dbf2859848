"""COCO-style box and instance-mask AP: the ``coco`` evaluator.

This module owns the translation from assay's per-sample labels and predictions to COCO-API
in-memory ground-truth and result objects, and the extraction of COCOeval's numbers into a
``MetricsReport``. COCOeval is run exactly as its users run it (ground truth, ``loadRes`` on result
dicts, evaluate, accumulate, summarize). The engine is faster-coco-eval (C++ matching and
accumulation, about 3x pycocotools on 5,000 images; see bench/) whose 12 stats equal pycocotools'
(the reference, checked by tests/unit/test_metrics_coco_engine.py); pycocotools is used when
faster-coco-eval is not installed or ``ASSAY_COCO_ENGINE=pycocotools``. Engines are imported only
when scoring.

Label (ground truth) of one sample::

    {"width": W, "height": H, "objects": [{"category_id": 1, "bbox": [x, y, w, h], "area": a,
      "iscrowd": 0, "segmentation": {"size": [H, W], "counts": "<compressed RLE>"}}]}

Prediction of one sample (numpy arrays, N may be 0)::

    {"boxes": float (N, 4) x1 y1 x2 y2, "scores": float (N,), "labels": int (N,),
     "masks": optional list of N RLE dicts {"size": [H, W], "counts": bytes | str}
              (or an object with ``to_coco()`` returning that list, like ``assay.handler.RLEMasks``)}
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from assay.errors import EvaluationError, SpecError
from assay.metrics import coco_match, coco_merge
from assay.metrics.registry import Evaluator, MetricsReport, register

#: Names of COCOeval's 12 summary stats, in ``COCOeval.stats`` order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: The IoU thresholds of the stored precision curves; "0.50:0.95" is the mean over COCOeval's ten.
CURVE_IOUS = ("0.50", "0.75", "0.50:0.95")
#: What ``CocoEvaluator.per_sample`` scores, in words (for reports and ``assay compare``).
PER_SAMPLE_SCORE = ("bbox AP at IoU 0.50 of the image alone (COCO's 101-point interpolation, every category "
                    "of the image averaged); 1.0 for an image with no objects and no detections")


class _Presence:
    """Whether an optional field (masks, segmentation) is given everywhere or nowhere.

    Half-present data would make segm AP silently skip or miscount samples, so mixing fails early.
    """

    def __init__(self, what: str):
        self.what = what
        self.first_with: str | None = None
        self.first_without: str | None = None

    def note(self, sample_id: str, present: bool) -> None:
        if present and self.first_with is None:
            self.first_with = sample_id
        if not present and self.first_without is None:
            self.first_without = sample_id
        if self.first_with is not None and self.first_without is not None:
            raise EvaluationError(
                f"{self.what} is given for sample '{self.first_with}' but not for '{self.first_without}'",
                hint="give it for every sample (instance segmentation) or for none (boxes only)")

    @property
    def everywhere(self) -> bool:
        return self.first_with is not None


@register
class CocoEvaluator(Evaluator):
    """bbox AP (always) and segm AP (when ground truth and predictions both carry masks)."""

    name = "coco"
    per_sample_score = PER_SAMPLE_SCORE

    def __init__(self, label_schema: dict[str, Any]):
        super().__init__(label_schema)
        self.categories = _parse_categories(label_schema)
        self._cat_ids = {c["id"] for c in self.categories}
        self._sample_ids: list[str] = []  # position i holds the sample of COCO image id i + 1
        self._seen: set[str] = set()
        self._images: list[dict[str, Any]] = []
        self._gt: list[dict[str, Any]] = []
        self._box_dets: list[dict[str, Any]] = []
        self._mask_dets: list[dict[str, Any]] = []
        self._gt_segm = _Presence("ground-truth segmentation")
        self._pred_masks = _Presence("prediction 'masks'")
        self._unknown_category_dets = 0

    @classmethod
    def run_settings(cls) -> dict[str, Any]:
        # the ppl workers match, cmp merges: tables of other parameters must not meet in one run
        return {"matching": coco_match.settings()}

    def update(self, sample_id: str, label: dict[str, Any], prediction: dict[str, Any]) -> None:
        if sample_id in self._seen:
            raise EvaluationError(f"duplicate sample id '{sample_id}'",
                                  hint="each sample must be scored once; look for overlapping shards")
        image_id = len(self._images) + 1
        try:
            image = {"id": image_id, "width": int(label["width"]), "height": int(label["height"])}
            size = [image["height"], image["width"]]
            gt = [self._gt_annotation(sample_id, o, image_id, size) for o in label.get("objects", [])]
            boxes, masks, unknown = self._detections(sample_id, prediction, image_id, size)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise EvaluationError(f"sample '{sample_id}': malformed label or prediction ({exc!r})",
                                  hint="see assay.metrics.coco for the expected dicts") from exc
        for ann in gt:
            self._gt_segm.note(sample_id, "segmentation" in ann)
        # An empty prediction without a 'masks' key says nothing about whether the model makes masks.
        if masks is not None or boxes or unknown:
            self._pred_masks.note(sample_id, masks is not None)
        self._seen.add(sample_id)
        self._sample_ids.append(sample_id)
        self._images.append(image)
        self._gt.extend(gt)
        self._box_dets.extend(boxes)
        self._mask_dets.extend(masks or [])
        self._unknown_category_dets += unknown

    def _gt_annotation(self, sample_id: str, obj: dict[str, Any], image_id: int,
                       size: list[int]) -> dict[str, Any]:
        category_id = int(obj["category_id"])
        if category_id not in self._cat_ids:
            raise EvaluationError(f"sample '{sample_id}': ground-truth category_id {category_id} is not "
                                  f"in the label schema", hint=f"known ids: {sorted(self._cat_ids)}")
        x, y, w, h = (float(v) for v in obj["bbox"])
        ann: dict[str, Any] = {"image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h],
                               "iscrowd": int(obj.get("iscrowd", 0))}
        segm = obj.get("segmentation")
        if segm is not None:
            if isinstance(segm, dict) and [int(v) for v in segm["size"]] != size:
                raise EvaluationError(f"sample '{sample_id}': segmentation size {segm['size']} is not "
                                      f"the image's [height, width] {size}")
            ann["segmentation"] = segm
        ann["area"] = float(obj["area"]) if "area" in obj else _default_area(ann)
        return ann

    def _detections(self, sample_id: str, prediction: dict[str, Any], image_id: int,
                    size: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, int]:
        """Result dicts for bbox and (when masks are given) segm, and how many had an unknown label."""
        boxes, scores, labels = _check_arrays(sample_id, prediction)
        masks = prediction.get("masks")
        if masks is not None:
            masks = _check_masks(sample_id, masks, len(boxes), size)
        # COCOeval only scores the ground truth's categories, so dropping other labels changes no number.
        known = np.array([int(c) in self._cat_ids for c in labels], dtype=bool)
        # Subtract in float64, not in the model's float32: integer-pixel boxes (ground truth fed back
        # as predictions) then round-trip exactly, and the numbers match a float64 reference conversion.
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
        box_dets, mask_dets = [], []
        for i in np.flatnonzero(known).tolist():
            common = {"image_id": image_id, "category_id": int(labels[i]), "score": float(scores[i])}
            box_dets.append({**common, "bbox": xywh[i]})
            if masks is not None:
                mask_dets.append({**common, "segmentation": masks[i]})
        return box_dets, (mask_dets if masks is not None else None), int((~known).sum())

    def compute(self) -> MetricsReport:
        if not self._images:
            raise EvaluationError("the coco evaluator got no samples",
                                  hint="check that the shards are not empty")
        engine = _engine()
        gt = _ground_truth(self._images, self._gt, self.categories, engine)
        iou_types = {"bbox": self._box_dets}
        if self._gt_segm.everywhere and self._pred_masks.everywhere:
            iou_types["segm"] = self._mask_dets
        full = _full_header(engine.label, list(iou_types), list(self._sample_ids), len(self._gt),
                            len(self._box_dets), self._unknown_category_dets, self.categories)
        summary: dict[str, float] = {}
        for iou_type, dets in iou_types.items():
            stats, per_category, curves = _evaluate(gt, dets, iou_type, self.categories, engine)
            _add_iou_type(summary, full, iou_type, stats, per_category, curves)
        return MetricsReport(evaluator=self.name, summary=summary,
                             headline=("bbox/AP", summary["bbox/AP"]), full=full)

    def match(self, image_offset: int = 0) -> coco_match.CocoMatches:
        """The per-image matching of the samples added so far, as ``CocoMatches`` (a shard's match tables).

        ``image_offset`` is the run-wide position of the first sample (the samples of the shards before
        this one), so that tables of every shard merge in the run's image order.
        """
        engine = _Engine("pycocotools")  # the reference's own evaluateImg: what the tables hold is exact
        images = [{**i, "id": i["id"] + image_offset} for i in self._images]
        gt = _ground_truth(images, [{**a, "image_id": a["image_id"] + image_offset} for a in self._gt],
                           self.categories, engine)
        dets = {"bbox": self._box_dets}
        # segm unless a sample of this shard rules it out; the run decides when the shards are merged
        if self._gt_segm.first_without is None and self._pred_masks.first_without is None:
            dets["segm"] = self._mask_dets
        tables = {t: coco_match.match(gt, _load_results(gt, [{**d, "image_id": d["image_id"] + image_offset}
                                                              for d in ds], engine, t), t)
                  for t, ds in dets.items()}
        return coco_match.CocoMatches(
            image_offset=image_offset, sample_ids=list(self._sample_ids), tables=tables,
            num_ground_truth=dict(Counter(a["category_id"] for a in self._gt)),
            num_detections=len(self._box_dets), unknown_category_dets=self._unknown_category_dets,
            presence={"gt_segmentation": [self._gt_segm.first_with, self._gt_segm.first_without],
                      "pred_masks": [self._pred_masks.first_with, self._pred_masks.first_without]})

    def per_sample(self) -> dict[str, float]:
        """Each image's own bbox AP at IoU 0.50 (``PER_SAMPLE_SCORE``), from COCOeval's per-image matching.

        pycocotools, whatever the engine: faster-coco-eval keeps its per-image matches in C++. Only IoU
        0.50 and the "all" area range are evaluated, a fifth of a full evaluation's matching.
        """
        from pycocotools.cocoeval import COCOeval

        engine = _Engine("pycocotools")
        gt = _ground_truth(self._images, self._gt, self.categories, engine)
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, _load_results(gt, self._box_dets, engine, "bbox"), "bbox")
            ev.params.iouThrs = np.array([0.5])
            ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
            ev.evaluate()
        per_image: list[list[float]] = [[] for _ in self._images]
        for e in ev.evalImgs:  # one per (category, image) that has ground truth or detections
            if e is None:
                continue
            keep = ~np.asarray(e["dtIgnore"], dtype=bool).reshape(1, -1)[0]
            ap = coco_match.image_ap(int((~np.asarray(e["gtIgnore"], dtype=bool)).sum()),
                                     (np.asarray(e["dtMatches"]).reshape(1, -1)[0] > 0)[keep],
                                     np.asarray(e["dtScores"], dtype=np.float64)[keep])
            if ap is not None:
                per_image[e["image_id"] - 1].append(ap)
        return {sid: float(np.mean(aps)) if aps else 1.0 for sid, aps in zip(self._sample_ids, per_image, strict=True)}


def report_from_matches(label_schema: dict[str, Any], shards: list[coco_match.CocoMatches]) -> MetricsReport:
    """The coco evaluator's report from every shard's match tables (cmp): the same numbers and layout as
    ``CocoEvaluator.compute`` with pycocotools, without the predictions. Shards may come in any order."""
    with tempfile.TemporaryDirectory(prefix="assay-matches-") as folder:
        merge = MatchesMerge(label_schema, Path(folder))
        for m in shards:
            merge.add(m)
        return merge.report()


class MatchesMerge:
    """``report_from_matches`` one shard at a time, in bounded memory: ``add`` keeps a shard's counts and
    ids and spills its tables into ``folder`` (``coco_merge.Runs``), ``report`` merges and accumulates."""

    def __init__(self, label_schema: dict[str, Any], folder: Path):
        self.categories = _parse_categories(label_schema)
        self.cat_ids = sorted(c["id"] for c in self.categories)  # COCOeval's catIds: the schema's, sorted
        self.folder = folder
        self.shards: list[coco_match.CocoMatches] = []  # without their tables
        self.runs: dict[str, coco_merge.Runs] = {}

    def add(self, matches: coco_match.CocoMatches) -> None:
        for iou_type, table in matches.tables.items():
            if iou_type not in self.runs:
                (self.folder / iou_type).mkdir(parents=True, exist_ok=True)
                self.runs[iou_type] = coco_merge.Runs(self.folder / iou_type, len(self.cat_ids))
            self.runs[iou_type].add(table)
        self.shards.append(dataclasses.replace(matches, tables={t: coco_match.empty_table() for t in matches.tables}))

    def report(self) -> MetricsReport:
        shards, sample_ids = _in_image_order(self.shards)
        gt_segm, pred_masks = _Presence("ground-truth segmentation"), _Presence("prediction 'masks'")
        for m in shards:
            for presence, (first_with, first_without) in ((gt_segm, m.presence["gt_segmentation"]),
                                                          (pred_masks, m.presence["pred_masks"])):
                for sid, present in ((first_with, True), (first_without, False)):
                    if sid is not None:
                        presence.note(sid, present)
        iou_types = ["bbox", "segm"] if gt_segm.everywhere and pred_masks.everywhere else ["bbox"]
        if any(t not in m.tables for m in shards for t in iou_types):
            raise EvaluationError(f"a shard's match tables lack {'/'.join(iou_types)}",
                                  hint="rerun the job: the shard is recomputed")
        num_gt: Counter[int] = Counter()
        for m in shards:
            num_gt.update(m.num_ground_truth)
        full = _full_header(f"assay match tables (pycocotools {metadata.version('pycocotools')} evaluateImg)",
                            iou_types, sample_ids, sum(num_gt.values()), sum(m.num_detections for m in shards),
                            sum(m.unknown_category_dets for m in shards), self.categories)
        summary: dict[str, float] = {}
        for iou_type in iou_types:
            precision, recall = self.runs[iou_type].accumulate()
            stats = coco_match.summarize(precision, recall, iou_type)
            _add_iou_type(summary, full, iou_type, stats,
                          *_per_category(precision, recall, self.cat_ids, self.categories, num_gt))
        return MetricsReport(evaluator=CocoEvaluator.name, summary=summary, headline=("bbox/AP", summary["bbox/AP"]),
                             full=full)


def per_sample_from_matches(shards: list[coco_match.CocoMatches]) -> dict[str, float]:
    """``CocoEvaluator.per_sample`` from the shards' bbox match tables."""
    shards, sample_ids = _in_image_order(shards)
    per_image = coco_match.image_aps(coco_match.MatchTable.concat([m.tables["bbox"] for m in shards]),
                                     len(sample_ids))
    return {sid: float(np.mean(aps)) if aps else 1.0 for sid, aps in zip(sample_ids, per_image, strict=True)}


def _in_image_order(shards: list[coco_match.CocoMatches]) -> tuple[list[coco_match.CocoMatches], list[str]]:
    """The shards by image offset and the run's sample ids; each shard must start where the last ended."""
    shards = sorted(shards, key=lambda m: m.image_offset)
    sample_ids: list[str] = []
    for m in shards:
        if m.image_offset != len(sample_ids):
            raise EvaluationError(f"match tables start at image {m.image_offset} after {len(sample_ids)} images",
                                  hint="a shard's tables are missing or belong to another dataset version")
        sample_ids.extend(m.sample_ids)
    if not sample_ids:
        raise EvaluationError("the coco evaluator got no samples", hint="check that the shards are not empty")
    if len(set(sample_ids)) != len(sample_ids):
        raise EvaluationError("a sample id appears twice in the match tables",
                              hint="each sample must be scored once; look for overlapping shards")
    return shards, sample_ids


def _parse_categories(label_schema: dict[str, Any]) -> list[dict[str, Any]]:
    cats = label_schema.get("categories") if isinstance(label_schema, dict) else None
    if not isinstance(cats, list) or not cats:
        raise SpecError("label_schema.categories must be a non-empty list for the coco evaluator",
                        hint='e.g. categories: [{"id": 1, "name": "pedestrian"}]')
    try:
        parsed = [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"label_schema.categories: each entry needs an integer id and a name ({exc!r})",
                        hint='e.g. {"id": 1, "name": "pedestrian"}') from exc
    ids, names = [c["id"] for c in parsed], [c["name"] for c in parsed]
    if len(set(ids)) != len(ids) or len(set(names)) != len(names):
        raise SpecError("label_schema.categories: ids and names must be unique",
                        hint=f"got ids {ids} and names {names}")
    if min(ids) < 1:
        raise SpecError("label_schema.categories: ids must be >= 1 (COCO reserves 0)")
    return parsed


def _check_arrays(sample_id: str, prediction: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(prediction["boxes"], dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    scores = np.asarray(prediction["scores"], dtype=np.float64)
    labels = np.asarray(prediction["labels"])
    n = len(boxes)
    problem = None
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        problem = f"boxes must have shape (N, 4), got {boxes.shape}"
    elif scores.shape != (n,) or labels.shape != (n,):
        problem = f"scores {scores.shape} and labels {labels.shape} must have shape ({n},) like the boxes"
    elif n and labels.dtype.kind not in "iu":
        problem = f"labels must be integers, got dtype {labels.dtype}"
    elif not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        problem = "boxes and scores must be finite"
    elif (boxes[:, 2:] < boxes[:, :2]).any():
        problem = "boxes must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1"
    if problem:
        raise EvaluationError(f"sample '{sample_id}': {problem}",
                              hint="see assay.metrics.coco for the format")
    return boxes, scores, labels


def _check_masks(sample_id: str, masks: Any, n: int, size: list[int]) -> list[dict[str, Any]]:
    # Results files give masks back as assay.handler.RLEMasks; take anything with its to_coco()
    # rather than import the handler layer from here.
    if hasattr(masks, "to_coco"):
        masks = masks.to_coco()
    if len(masks) != n:
        raise EvaluationError(f"sample '{sample_id}': {len(masks)} masks for {n} boxes")
    out = []
    for m in masks:
        if [int(v) for v in m["size"]] != size:
            raise EvaluationError(f"sample '{sample_id}': mask size {list(m['size'])} is not the image's "
                                  f"[height, width] {size}", hint="masks must be full-image RLEs")
        out.append({"size": size, "counts": m["counts"]})
    return out


def _default_area(ann: dict[str, Any]) -> float:
    segm = ann.get("segmentation")
    if isinstance(segm, dict):
        from pycocotools import mask as mask_utils

        return float(mask_utils.area(segm))
    return ann["bbox"][2] * ann["bbox"][3]


class _Engine:
    """A COCO API implementation: its COCO class, its COCOeval class and a label for reports."""

    def __init__(self, name: str):
        if name == "faster-coco-eval":
            from faster_coco_eval import COCO, COCOeval_faster

            self.coco, self.cocoeval = COCO, COCOeval_faster
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            self.coco, self.cocoeval = COCO, COCOeval
        self.name = name
        self.label = f"{name} {metadata.version(name)}"


def _engine() -> _Engine:
    """faster-coco-eval when installed (unless ASSAY_COCO_ENGINE=pycocotools), else pycocotools."""
    wanted = os.environ.get("ASSAY_COCO_ENGINE", "faster-coco-eval")
    if wanted not in ("faster-coco-eval", "pycocotools"):
        # not the value: it may come from a Secret, and this message reaches the job's status
        raise SpecError("ASSAY_COCO_ENGINE is not an engine", "use faster-coco-eval or pycocotools")
    if wanted == "faster-coco-eval":
        try:
            return _Engine("faster-coco-eval")
        except ImportError:
            pass
    return _Engine("pycocotools")


def _ground_truth(images: list[dict[str, Any]], anns: list[dict[str, Any]],
                  categories: list[dict[str, Any]], engine: _Engine | None = None) -> Any:
    gt = (engine or _engine()).coco()
    # Fresh dicts each time: COCOeval writes into annotations, and compute() may run twice.
    gt.dataset = {"images": [dict(i) for i in images], "categories": [dict(c) for c in categories],
                  "annotations": [{**a, "id": i} for i, a in enumerate(anns, start=1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _load_results(gt: Any, dets: list[dict[str, Any]], engine: _Engine, iou_type: str) -> Any:
    """The result set, built as pycocotools' ``loadRes`` builds it, with areas and boxes in one batched call.

    loadRes computes each mask's area and box one detection at a time; over thousands of detections
    that was a third of cmp's time. The fields and values are the same as loadRes's.
    """
    anns = [dict(d) for d in dets]  # copies: COCOeval writes into them, and compute() may run twice
    if anns and iou_type == "segm":
        from pycocotools import mask as mask_util

        rles = [a["segmentation"] for a in anns]
        # pycocotools' area() builds np.array((n,), dtype=uint8) first, which NumPy 2 refuses for
        # n > 255: call it on chunks of 255.
        areas = np.concatenate([mask_util.area(rles[i:i + 255]) for i in range(0, len(rles), 255)])
        boxes = mask_util.toBbox(rles)
        for a, area, box in zip(anns, areas.tolist(), boxes.tolist(), strict=True):
            a["area"] = area
            a.setdefault("bbox", box)
    elif anns:
        for a in anns:
            x, y, w, h = a["bbox"]
            a["area"] = w * h
            a["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
    for i, a in enumerate(anns, start=1):
        a["id"] = i
        a["iscrowd"] = 0
    res = engine.coco()
    res.dataset = {"images": list(gt.dataset["images"]), "categories": [dict(c) for c in gt.dataset["categories"]],
                   "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def _evaluate(gt: Any, dets: list[dict[str, Any]], iou_type: str, categories: list[dict[str, Any]],
              engine: _Engine | None = None) -> tuple[list[float], dict[str, Any], dict[str, dict[str, list[float]]]]:
    """COCOeval's 12 stats, per-category AP/AR, and per-category precision curves by ``CURVE_IOUS``."""
    engine = engine or _engine()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = engine.cocoeval(gt, _load_results(gt, dets, engine, iou_type), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats[:12]]
    num_gt = Counter(a["category_id"] for a in gt.dataset["annotations"])
    # [iou, recall, category, area, maxDets] and [iou, category, area, maxDets]; -1 where no ground truth
    return (stats, *_per_category(ev.eval["precision"], ev.eval["recall"], list(ev.params.catIds),
                                  categories, num_gt))


def _per_category(precision: np.ndarray, recall: np.ndarray, cat_ids: list[int], categories: list[dict[str, Any]],
                  num_gt: dict[int, int]) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Per-category AP/AR and precision curves by ``CURVE_IOUS`` from COCOeval.accumulate's arrays."""
    t50, t75 = (int(np.flatnonzero(np.isclose(coco_match.IOU_THRESHOLDS, t))[0]) for t in (0.5, 0.75))
    names = {c["id"]: c["name"] for c in categories}
    per_category: dict[str, Any] = {}
    curves: dict[str, dict[str, list[float]]] = {t: {} for t in CURVE_IOUS}
    for k, cid in enumerate(cat_ids):
        # Area "all" (index 0) and the largest maxDets (index -1), as COCOeval's AP and AR100.
        per_category[names[cid]] = {
            "AP": _mean_valid(precision[:, :, k, 0, -1]), "AP50": _mean_valid(precision[t50, :, k, 0, -1]),
            "AP75": _mean_valid(precision[t75, :, k, 0, -1]), "AR100": _mean_valid(recall[:, k, 0, -1]),
            "num_ground_truth": num_gt.get(cid, 0)}
        by_iou = {"0.50": precision[t50, :, k, 0, -1], "0.75": precision[t75, :, k, 0, -1],
                  "0.50:0.95": _mean_curve(precision[:, :, k, 0, -1])}
        for t in CURVE_IOUS:
            curves[t][names[cid]] = by_iou[t].round(6).tolist()
    return per_category, curves


def _full_header(engine: str, iou_types: list[str], sample_ids: list[str], num_gt: int, num_dets: int,
                 unknown: int, categories: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "engine": engine,
        "iou_types": iou_types,
        "sample_ids": sample_ids,
        "num_images": len(sample_ids),
        "num_ground_truth": num_gt,
        "num_detections": num_dets,
        "ignored_detections_unknown_category": unknown,
        "categories": [dict(c) for c in categories],
        "stat_names": list(STAT_NAMES),
        # COCOeval's 101 recall thresholds, the x axis of every precision curve below.
        "recall_thresholds": np.linspace(0.0, 1.0, 101).round(2).tolist(),
    }


def _add_iou_type(summary: dict[str, float], full: dict[str, Any], iou_type: str, stats: list[float],
                  per_category: dict[str, Any], curves: dict[str, dict[str, list[float]]]) -> None:
    summary.update({f"{iou_type}/{n}": v for n, v in zip(STAT_NAMES, stats, strict=True)})
    full[f"{iou_type}/stats"] = stats
    full[f"{iou_type}/per_category"] = per_category
    # the precision-recall curves `assay report` draws: a few KB, so no run has to be re-scored
    full[f"{iou_type}/precision_curves"] = curves


def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries COCOeval filled in; -1 (its own convention) when there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _mean_curve(curves: np.ndarray) -> np.ndarray:
    """The mean of [iou, recall] precision curves over IoU thresholds; -1 (no ground truth) stays -1."""
    if (curves < 0).all():
        return curves[0]
    return np.where(curves > -1, curves, 0.0).mean(axis=0)
