"""COCO evaluation split in two: per-image matching where the images are, merge and accumulate in one place.

COCOeval's ``evaluateImg`` needs only one image's ground truth and detections, so it runs per shard
(``match``) and its outcome is kept as a *match table* (``MatchTable``); ``accumulate`` merges the
tables of every shard, in any order, and gives the same ``precision`` and ``recall`` arrays as
COCOeval.accumulate on the whole set, bit for bit; ``summarize`` then runs COCOeval's own summarize on
them. pycocotools (2.0.x) is the reference: matching is its ``evaluateImg`` itself, and the accumulate
below repeats its float operations in the same order (tests/unit/test_metrics_coco_merge.py checks
max |diff| = 0 against a whole-set COCOeval).

What a table keeps per cell (image, category) that has ground truth or detections: the cell's
detections in ``evaluateImg``'s order (stable sort on -score, at most ``MAX_DETS[-1]``), their float64
scores, for each area range and IoU threshold a matched bit (``dtMatches > 0``, so a ground-truth id 0
reads as unmatched, as in COCOeval) and an ignore bit, and per area range only the number of
non-ignored ground-truth objects. The parameters are COCOeval's defaults and are fixed: a change to
them is a new ``TABLE_VERSION``, and both are part of the run's settings hash (``settings``), so tables
made under other parameters are recomputed or refused, never merged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Bump when the table's layout or the matching parameters change; it is part of the run's settings.
TABLE_VERSION = 1
#: COCOeval's default detection parameters (``Params.setDetParams``).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_LABELS = ("all", "small", "medium", "large")
#: COCOeval's area ranges (px², both bounds inclusive), written as pycocotools writes them.
AREA_RANGES = ((0 ** 2, 1e5 ** 2), (0 ** 2, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e5 ** 2))
#: Bits per area range in a detection's matched/ignored word: one per IoU threshold.
_AREA_BITS = 16


@dataclass(frozen=True)
class MatchTable:
    """The per-image matching of one IoU type over some images, as flat numpy columns.

    Cells (one per (image, category) with ground truth or detections): ``image`` (0-based position in
    the run's global image order), ``category`` (index into the sorted category ids), ``num_dets`` (the
    cell's kept detections, which follow the previous cell's in the detection columns) and
    ``num_gt`` (C, 4): non-ignored ground truth per area range. Detections: ``score`` (float64),
    ``matched`` and ``ignored`` (uint64; bit ``16 * area + threshold``).
    """

    image: np.ndarray
    category: np.ndarray
    num_dets: np.ndarray
    num_gt: np.ndarray
    score: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray

    COLUMNS = ("image", "category", "num_dets", "num_gt", "score", "matched", "ignored")

    @classmethod
    def concat(cls, tables: list[MatchTable]) -> MatchTable:
        """The tables of several shards as one (cells in the order given; ``accumulate`` orders them)."""
        if not tables:
            return empty_table()
        return cls(*(np.concatenate([getattr(t, c) for t in tables]) for c in cls.COLUMNS))

    def check(self) -> None:
        """Raise ValueError when the columns do not fit together (a damaged or foreign table)."""
        c, d = len(self.image), len(self.score)
        if not (len(self.category) == len(self.num_dets) == c and self.num_gt.shape == (c, len(AREA_LABELS))):
            raise ValueError("cell columns differ in length")
        if not (len(self.matched) == len(self.ignored) == d and int(self.num_dets.sum()) == d):
            raise ValueError("detection columns do not add up to the cells' detection counts")
        if c and (self.num_dets.min() < 0 or self.num_dets.max() > MAX_DETS[-1] or self.num_gt.min() < 0):
            raise ValueError("a cell count is out of range")


@dataclass(frozen=True)
class CocoMatches:
    """What one shard's ppl worker hands cmp for the coco evaluator: its match tables and its counts.

    ``tables`` by IoU type ("bbox", and "segm" unless a sample of the shard rules masks out);
    ``presence`` holds, for "gt_segmentation" and "pred_masks", the first sample with and the first
    without that field (None when there is none), so that cmp can refuse a run that mixes them.
    """

    image_offset: int
    sample_ids: list[str]
    tables: dict[str, MatchTable]
    num_ground_truth: dict[int, int]
    num_detections: int
    unknown_category_dets: int
    presence: dict[str, list[str | None]]


def settings() -> dict[str, Any]:
    """What fixes the tables' numbers, for the run's identity (assay.runrecord): the table version and
    COCOeval's parameters. ``digest`` covers their exact values; the rest says them in short."""
    exact = {"version": TABLE_VERSION, "iouThrs": IOU_THRESHOLDS.tolist(), "recThrs": RECALL_THRESHOLDS.tolist(),
             "maxDets": list(MAX_DETS), "areaRng": [list(r) for r in AREA_RANGES]}
    return {"version": TABLE_VERSION, "iouThrs": [round(t, 2) for t in exact["iouThrs"]],
            "recThrs": len(exact["recThrs"]), "maxDets": exact["maxDets"], "areaRng": exact["areaRng"],
            "digest": hashlib.sha256(json.dumps(exact).encode()).hexdigest()[:12]}


def _set_params(params: Any) -> None:
    """COCOeval's parameters from this module's constants, so the tables follow what ``settings`` says."""
    params.iouThrs, params.recThrs = IOU_THRESHOLDS.copy(), RECALL_THRESHOLDS.copy()
    params.maxDets, params.areaRng = list(MAX_DETS), [list(r) for r in AREA_RANGES]
    params.areaRngLbl = list(AREA_LABELS)


def empty_table() -> MatchTable:
    return MatchTable(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32),
                      np.zeros((0, len(AREA_LABELS)), np.int32), np.zeros(0, np.float64),
                      np.zeros(0, np.uint64), np.zeros(0, np.uint64))


def match(gt: Any, results: Any, iou_type: str) -> MatchTable:
    """COCOeval.evaluate (pycocotools) on some images; their image ids are global positions + 1.

    ``gt`` must list every category of the label schema (they fix the category index), ``results`` is
    a COCO result set over the same images (as ``loadRes`` builds it).
    """
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, results, iou_type)
        _set_params(ev.params)
        ev.evaluate()
    p = ev.params
    n_img, n_area, n_thr = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    # Held by TABLE_VERSION: every table of a run must use the same parameters.
    assert n_area == len(AREA_LABELS) and list(p.maxDets) == list(MAX_DETS) and n_thr <= _AREA_BITS
    weights = np.left_shift(np.uint64(1), np.arange(n_thr, dtype=np.uint64))
    images, cats, num_dets, num_gt, scores, matched, ignored = [], [], [], [], [], [], []
    for k in range(len(p.catIds)):
        for i in range(n_img):
            cell = [ev.evalImgs[(k * n_area + a) * n_img + i] for a in range(n_area)]
            if cell[0] is None:  # no ground truth and no detection: None for every area range alike
                continue
            images.append(p.imgIds[i] - 1)
            cats.append(k)
            num_dets.append(len(cell[0]["dtScores"]))
            num_gt.append([int(np.count_nonzero(e["gtIgnore"] == 0)) for e in cell])
            scores.append(np.asarray(cell[0]["dtScores"], dtype=np.float64))
            m = np.zeros(num_dets[-1], np.uint64)
            g = np.zeros(num_dets[-1], np.uint64)
            for a, e in enumerate(cell):
                shift = np.uint64(a * _AREA_BITS)
                m |= ((e["dtMatches"] > 0).astype(np.uint64) * weights[:, None]).sum(axis=0, dtype=np.uint64) << shift
                g |= (e["dtIgnore"].astype(bool).astype(np.uint64) * weights[:, None]).sum(
                    axis=0, dtype=np.uint64) << shift
            matched.append(m)
            ignored.append(g)
    if not images:
        return empty_table()
    return MatchTable(np.asarray(images, np.int64), np.asarray(cats, np.int32), np.asarray(num_dets, np.int32),
                      np.asarray(num_gt, np.int32).reshape(-1, n_area), np.concatenate(scores),
                      np.concatenate(matched), np.concatenate(ignored))


def accumulate(table: MatchTable, num_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate's ``precision`` [T, R, K, A, M] and ``recall`` [T, K, A, M] from a merged table
    (its cells in any order), by ``coco_merge.Runs`` with the table as one shard."""
    import tempfile

    from assay.metrics import coco_merge  # built on this module's tables

    with tempfile.TemporaryDirectory(prefix="assay-accumulate-") as folder:
        runs = coco_merge.Runs(folder, num_categories)
        runs.add(table)
        return runs.accumulate()


def summarize(precision: np.ndarray, recall: np.ndarray, iou_type: str) -> list[float]:
    """COCOeval.summarize's 12 stats, by pycocotools' own code on these arrays."""
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(iouType=iou_type)
    _set_params(ev.params)
    ev.eval = {"params": ev.params, "precision": precision, "recall": recall}
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    return [float(s) for s in ev.stats[:12]]


def image_aps(table: MatchTable, num_images: int) -> list[list[float]]:
    """Per image, the bbox AP at IoU 0.50 (area "all") of each of its category cells that counts.

    As ``CocoEvaluator.per_sample`` has always scored it (the 101-point interpolation of COCOeval, with
    its own rounding, kept so that per-sample scores of earlier runs compare).
    """
    out: list[list[float]] = [[] for _ in range(num_images)]
    starts = np.concatenate([[0], np.cumsum(table.num_dets, dtype=np.int64)]).tolist()
    t50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))[0])
    bit = np.uint64(t50)  # area "all" is area index 0
    for c, (image, gt_count) in enumerate(zip(table.image.tolist(), table.num_gt[:, 0].tolist(), strict=True)):
        lo, hi = starts[c], starts[c + 1]
        counted = ~((table.ignored[lo:hi] >> bit) & np.uint64(1)).astype(bool)
        matched = ((table.matched[lo:hi] >> bit) & np.uint64(1)).astype(bool)[counted]
        ap = image_ap(gt_count, matched, table.score[lo:hi][counted])
        if ap is not None:
            out[image].append(ap)
    return out


def image_ap(gt_count: int, matched: np.ndarray, scores: np.ndarray) -> float | None:
    """AP of one cell's counted detections at one threshold; None when neither counts (all ignored)."""
    if gt_count == 0:
        return 0.0 if matched.size else None  # detections where there is nothing: all false positives
    if not matched.size:
        return 0.0  # objects and no detection of them
    order = np.argsort(-scores, kind="mergesort")
    tp, fp = np.cumsum(matched[order]), np.cumsum(~matched[order])
    recall = tp / gt_count
    precision = tp / np.maximum(tp + fp, np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # COCOeval's envelope: non-increasing
    at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    return float(np.where(at < precision.size, precision[np.minimum(at, precision.size - 1)], 0.0).mean())
