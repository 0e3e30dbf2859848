"""The coco evaluator against pycocotools run directly, on PennFudanPed instance masks.

Ground truth is built from the dataset's instance masks (one RLE, box and area per pedestrian).
The reference run is the standard pycocotools flow: COCO(gt.json), loadRes(results.json),
COCOeval evaluate/accumulate/summarize, with files on disk, so it shares no code with the evaluator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from assay.errors import EvaluationError
from assay.handler import RLEMasks
from assay.metrics import MetricsReport, get_evaluator
from assay.metrics.coco import STAT_NAMES

NUM_IMAGES = 20
# Category 2 has no ground truth (COCOeval must skip it); label 99 is outside the schema (ignored).
SCHEMA = {"task": "detection", "categories": [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "bicycle"}]}


# ---------------------------------------------------------------- fixtures: real data and predictions

def _instances(mask_png: Path) -> list[np.ndarray]:
    """Boolean masks of each pedestrian (pixel value k > 0 is instance k)."""
    pixels = np.asarray(Image.open(mask_png))
    return [pixels == k for k in range(1, int(pixels.max()) + 1)]


def _encode(mask: np.ndarray) -> dict[str, Any]:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


@pytest.fixture(scope="module")
def dataset(pennfudan_dir) -> list[dict[str, Any]]:
    """[{sample_id, label, masks}] for the first NUM_IMAGES images, labels in the manifest's format."""
    out = []
    for png in sorted((pennfudan_dir / "PedMasks").glob("*_mask.png"))[:NUM_IMAGES]:
        masks = _instances(png)
        height, width = masks[0].shape
        objects = []
        for m in masks:
            rle = _encode(m)
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            objects.append({"category_id": 1, "bbox": mask_utils.toBbox(rle).tolist(),
                            "area": float(mask_utils.area(rle)), "iscrowd": 0,
                            "segmentation": segmentation})
        out.append({"sample_id": png.name.removesuffix("_mask.png"), "masks": masks,
                    "label": {"width": width, "height": height, "objects": objects}})
    return out


def _gt_as_prediction(sample: dict[str, Any]) -> dict[str, Any]:
    objs = sample["label"]["objects"]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objs)], dtype=np.float32)
    return {"boxes": boxes, "scores": np.ones(len(objs), np.float32), "labels": np.ones(len(objs), np.int64),
            "masks": [dict(o["segmentation"]) for o in objs]}


def _shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = m[max(-dy, 0):h + min(-dy, 0),
                                                                 max(-dx, 0):w + min(-dx, 0)]
    return out


def _dilate(m: np.ndarray, k: int) -> np.ndarray:
    for _ in range(k):
        m = m | _shift(m, 1, 0) | _shift(m, -1, 0) | _shift(m, 0, 1) | _shift(m, 0, -1)
    return m


def _perturb_mask(rng: np.random.Generator, m: np.ndarray) -> np.ndarray:
    kind = rng.integers(4)
    k = int(rng.integers(1, 6))
    if kind == 0:
        return _dilate(m, k)
    if kind == 1:
        return ~_dilate(~m, k)
    if kind == 2:
        return _shift(m, int(rng.integers(-8, 9)), int(rng.integers(-8, 9)))
    return m


def _jitter(rng: np.random.Generator, bbox: list[float], size: tuple[int, int]) -> list[float]:
    x, y, w, h = bbox
    x1, y1 = x + rng.normal(0, 0.08) * w, y + rng.normal(0, 0.08) * h
    x2, y2 = x + w + rng.normal(0, 0.08) * w, y + h + rng.normal(0, 0.08) * h
    x1, x2 = np.clip(sorted((x1, x2)), 0, size[1])
    y1, y2 = np.clip(sorted((y1, y2)), 0, size[0])
    return [x1, y1, x2, y2]


def _perturbed(rng: np.random.Generator, sample: dict[str, Any]) -> dict[str, Any]:
    """Jittered boxes, noisy masks, random (partly tied) scores, misses, duplicates, false positives."""
    h, w = sample["masks"][0].shape
    boxes, labels, masks = [], [], []
    for obj, m in zip(sample["label"]["objects"], sample["masks"], strict=True):
        for _ in range(1 + int(rng.random() < 0.2) - int(rng.random() < 0.15)):
            boxes.append(_jitter(rng, obj["bbox"], (h, w)))
            labels.append(1)
            masks.append(_perturb_mask(rng, m))
    for _ in range(int(rng.integers(0, 4))):
        x1, y1 = rng.random() * w * 0.8, rng.random() * h * 0.8
        x2, y2 = x1 + rng.random() * w * 0.2 + 1, y1 + rng.random() * h * 0.2 + 1
        boxes.append([x1, y1, x2, y2])
        labels.append(int(rng.choice([1, 1, 2, 99])))
        fp = np.zeros((h, w), bool)
        fp[int(y1):int(y2), int(x1):int(x2)] = True
        masks.append(fp)
    n = len(boxes)
    return {"boxes": np.array(boxes, np.float32).reshape(n, 4),
            # Two decimals make ties, so the order of equal scores must match pycocotools' too.
            "scores": rng.random(n).round(2).astype(np.float32),
            "labels": np.array(labels, np.int64), "masks": [_encode(m) for m in masks]}


# ---------------------------------------------------------------- the reference: pycocotools, directly

def _reference_stats(tmp_path: Path, samples: list[dict[str, Any]],
                     predictions: list[dict[str, Any]], iou_types: tuple[str, ...]) -> dict[str, list[float]]:
    images, anns, results = [], [], {"bbox": [], "segm": []}
    for image_id, (sample, pred) in enumerate(zip(samples, predictions, strict=True), start=1):
        label = sample["label"]
        images.append({"id": image_id, "width": label["width"], "height": label["height"]})
        for obj in label["objects"]:
            anns.append({**obj, "id": len(anns) + 1, "image_id": image_id})
        xyxy = np.asarray(pred["boxes"], np.float64)
        for i in range(len(xyxy)):
            common = {"image_id": image_id, "category_id": int(pred["labels"][i]),
                      "score": float(pred["scores"][i])}
            x1, y1, x2, y2 = xyxy[i].tolist()
            results["bbox"].append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            if "masks" in pred:
                masks = pred["masks"]
                rle = (masks.to_coco() if isinstance(masks, RLEMasks) else masks)[i]
                counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
                results["segm"].append({**common, "segmentation": {"size": rle["size"], "counts": counts}})
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns,
                                   "categories": SCHEMA["categories"]}))
    gt = COCO(str(gt_file))
    stats = {}
    for iou_type in iou_types:
        res_file = tmp_path / f"{iou_type}.json"
        res_file.write_text(json.dumps(results[iou_type]))
        ev = COCOeval(gt, gt.loadRes(str(res_file)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats[iou_type] = [float(s) for s in ev.stats]
    return stats


def _evaluate(samples: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> MetricsReport:
    ev = get_evaluator("coco", SCHEMA)
    for sample, pred in zip(samples, predictions, strict=True):
        ev.update(sample["sample_id"], sample["label"], pred)
    return ev.compute()


# ---------------------------------------------------------------- tests

def test_ground_truth_as_predictions_scores_exactly_one(dataset):
    report = _evaluate(dataset, [_gt_as_prediction(s) for s in dataset])
    assert report.summary["bbox/AP"] == 1.0
    assert report.summary["segm/AP"] == 1.0
    assert report.headline == ("bbox/AP", 1.0)
    assert report.full["sample_ids"] == [s["sample_id"] for s in dataset]


def test_perturbed_predictions_match_pycocotools(dataset, tmp_path):
    rng = np.random.default_rng(20240611)
    samples = [dict(s) for s in dataset]
    # One crowd region, so COCOeval's crowd matching is exercised on both sides.
    samples[0] = {**samples[0], "label": {**samples[0]["label"], "objects": [
        {**o, "iscrowd": int(i == 0)} for i, o in enumerate(samples[0]["label"]["objects"])]}}
    preds = [_perturbed(rng, s) for s in samples]
    report = _evaluate(samples, preds)
    expected = _reference_stats(tmp_path, samples, preds, ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        got = [report.summary[f"{iou_type}/{name}"] for name in STAT_NAMES]
        np.testing.assert_allclose(got, expected[iou_type], rtol=0, atol=1e-9, err_msg=iou_type)
        assert report.full[f"{iou_type}/stats"] == got
        assert 0.05 < report.summary[f"{iou_type}/AP"] < 0.99, "neither hopeless nor perfect predictions"
        assert report.full[f"{iou_type}/per_category"]["bicycle"]["AP"] == -1.0  # no ground truth
    assert report.full["ignored_detections_unknown_category"] > 0
    json.dumps(report.full, allow_nan=False)
    assert _evaluate(samples, preds).summary == report.summary  # the evaluator's state is reusable


def _as_results_file_gives_them(pred: dict[str, Any]) -> dict[str, Any]:
    """Masks as assay.results.read_local returns them: one RLEMasks per image."""
    masks = pred["masks"]
    size = tuple(masks[0]["size"]) if masks else (1, 1)
    return {**pred, "masks": RLEMasks(size, tuple(m["counts"] for m in masks))}


def test_empty_predictions_for_some_images(dataset, tmp_path):
    rng = np.random.default_rng(7)
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "labels": np.zeros(0, np.int64), "masks": []}
    preds = [empty if i % 3 == 0 else _perturbed(rng, s) for i, s in enumerate(dataset)]
    # Half the images carry their masks the way cmp reads them back from results files.
    preds = [_as_results_file_gives_them(p) if i % 2 else p for i, p in enumerate(preds)]
    report = _evaluate(dataset, preds)
    expected = _reference_stats(tmp_path, dataset, preds, ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        got = [report.summary[f"{iou_type}/{name}"] for name in STAT_NAMES]
        np.testing.assert_allclose(got, expected[iou_type], rtol=0, atol=1e-9, err_msg=iou_type)


def test_no_predictions_at_all_score_zero(dataset):
    # pycocotools' loadRes cannot take an empty list; the evaluator must still answer.
    no_masks = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                "labels": np.zeros(0, np.int64)}
    report = _evaluate(dataset[:3], [no_masks] * 3)
    assert report.summary["bbox/AP"] == 0.0
    assert "segm/AP" not in report.summary


def test_duplicate_sample_id_raises(dataset):
    ev = get_evaluator("coco", SCHEMA)
    sample = dataset[0]
    ev.update(sample["sample_id"], sample["label"], _gt_as_prediction(sample))
    with pytest.raises(EvaluationError, match=sample["sample_id"]):
        ev.update(sample["sample_id"], sample["label"], _gt_as_prediction(sample))


def test_box_only_labels_give_only_bbox_metrics(dataset):
    rng = np.random.default_rng(3)
    preds = [_perturbed(rng, s) for s in dataset[:8]]
    box_only = [{**s, "label": {**s["label"], "objects": [
        {k: v for k, v in o.items() if k != "segmentation"} for o in s["label"]["objects"]]}}
        for s in dataset[:8]]
    full = _evaluate(dataset[:8], preds)
    boxes = _evaluate(box_only, preds)
    assert set(boxes.summary) == {f"bbox/{n}" for n in STAT_NAMES}
    assert "segm/stats" not in boxes.full
    assert boxes.full["bbox/stats"] == full.full["bbox/stats"]


def test_masks_for_some_samples_only_raise(dataset):
    ev = get_evaluator("coco", SCHEMA)
    first, second = dataset[0], dataset[1]
    ev.update(first["sample_id"], first["label"], _gt_as_prediction(first))
    no_masks = {k: v for k, v in _gt_as_prediction(second).items() if k != "masks"}
    with pytest.raises(EvaluationError, match="masks"):
        ev.update(second["sample_id"], second["label"], no_masks)


def test_malformed_prediction_names_the_sample(dataset):
    ev = get_evaluator("coco", SCHEMA)
    one_too_many = len(dataset[0]["label"]["objects"]) + 1
    bad = {**_gt_as_prediction(dataset[0]), "scores": np.ones(one_too_many, np.float32)}
    with pytest.raises(EvaluationError, match=dataset[0]["sample_id"]):
        ev.update(dataset[0]["sample_id"], dataset[0]["label"], bad)


def test_summary_names_and_table(dataset):
    report = _evaluate(dataset[:4], [_gt_as_prediction(s) for s in dataset[:4]])
    expected = [f"{t}/{n}" for t in ("bbox", "segm") for n in STAT_NAMES]
    assert list(report.summary) == expected
    assert [n for n in STAT_NAMES] == ["AP", "AP50", "AP75", "APs", "APm", "APl",
                                       "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    table = report.table()
    for name in expected:
        assert name in table


def test_many_detections_per_run_match_pycocotools(dataset, tmp_path):
    """Over 255 mask detections: pycocotools' batched area() overflows a uint8 under NumPy 2, so the
    evaluator computes areas in chunks; the stats must still equal pycocotools' own loadRes path."""
    rng = np.random.default_rng(7)
    preds = []
    for sample in dataset:
        base = _perturbed(rng, sample)
        # repeat each detection with falling scores: 20 images x ~15 detections > 255 in total
        reps = 5
        preds.append({"boxes": np.tile(np.asarray(base["boxes"]).reshape(-1, 4), (reps, 1)),
                      "scores": np.concatenate([np.asarray(base["scores"]) * (1 - k / 10) for k in range(reps)]),
                      "labels": np.tile(np.asarray(base["labels"]), reps),
                      "masks": list(base["masks"]) * reps})
    assert sum(len(p["boxes"]) for p in preds) > 255
    report = _evaluate(dataset, preds)
    expected = _reference_stats(tmp_path, dataset, preds, ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        got = [report.summary[f"{iou_type}/{name}"] for name in STAT_NAMES]
        np.testing.assert_allclose(got, expected[iou_type], rtol=0, atol=1e-9, err_msg=iou_type)
